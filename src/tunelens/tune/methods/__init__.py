"""Tuning methods, registered by name: one file each, its settings' meaning and its PEFT config beside its code.

A method says how the model is wrapped for training (`peft_config`, or None to train every weight), what it
changes in the wrapped model before training (`prepare`, e.g. LoRA's faster dropout) and the learning rate it gets when none is given. Adding one is a new file here that registers itself (every module in
this folder is imported) — or, outside the package, one file loaded as a plug-in (tunelens.plugins: entry points
`tunelens.tuning_methods` and TUNELENS_PLUGINS), read here before anything lists the names. `tune --method`, the
run config and the CLI help read the names from the registry, and a name taken twice is an error
(tunelens.registry).
"""

from __future__ import annotations

from ...registry import registrar

TUNING_METHODS: dict[str, type["TuningMethod"]] = {}

register = registrar(TUNING_METHODS)


class TuningMethod:
    name: str = "?"
    #: the learning rate when none is given: each family wants a very different step size
    default_lr: float = 2e-4
    description: str = ""
    rank: int = 100  #: place in listings (`tune --help`): the built-ins 10..40, the default first

    def peft_config(self, cfg):
        """The PEFT config that wraps the model (cfg: TuneConfig), or None to train the model itself."""
        return None

    def prepare(self, model, cfg):
        """Adjust the wrapped model before training (cfg: TuneConfig); returns the model. Default: as it is."""
        return model


from ... import plugins  # noqa: E402

plugins.import_builtins(__name__, __path__)
plugins.load(plugins.TUNING_METHODS)  # before tune.config and the CLI help read the names
# listings go by rank, each class's own (a subclass of LoRA does not take LoRA's place), not by file name
_ranked = sorted(TUNING_METHODS.items(), key=lambda kv: (vars(kv[1]).get("rank", TuningMethod.rank), kv[0]))
TUNING_METHODS.clear()
TUNING_METHODS.update(_ranked)
