"""The tuning recipe's settings: plain data, loadable from YAML, every key checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks as C
from ..checks import BadSetting
from ..errors import TunelensError, suggest

from .methods import TUNING_METHODS

METHODS = tuple(TUNING_METHODS)  # registered tuning methods (tune/methods/), in the order the CLI lists them
# the learning rate each method gets when none is given (the CLI's --lr help is built from this table)
DEFAULT_LR = {name: cls.default_lr for name, cls in TUNING_METHODS.items()}


@dataclass
class TuneConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)  # task specs; with several, weights come from `mix`
    mix: list[str] = field(default_factory=list)  # "task:weight" entries (cocktail mixture)
    replay: float = 0.0  # fraction of the final set drawn from the built-in general-instruction replay set
    safety_mix: float = 0.0  # fraction drawn from the built-in safety set (SafeInstruct), e.g. 0.03
    split: str = "train"
    out: str = "out/tune"
    method: str = "lora"
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    # prompt tuning
    num_virtual_tokens: int = 20
    # optimisation
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float | None = None  # None: DEFAULT_LR[method]
    weight_decay: float = 0.0
    optim: str = "adamw_torch"  # any transformers optimizer name, e.g. sgd, adafactor, adamw_torch_fused
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_length: int = 512
    max_examples: int | None = None  # cap on the training set after mixing (for quick runs)
    packing: bool = False  # padding-free packing: for GPUs with flash attention; slower on CPU
    seed: int = 0
    # bookkeeping
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=list)  # e.g. ["tensorboard"], ["wandb"]
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self._check_values()
        if self.method not in METHODS:
            raise TunelensError(f"unknown tuning method '{self.method}'"
                                + suggest(self.method, METHODS, f"; choose one of {', '.join(METHODS)}"))
        if self.replay + self.safety_mix >= 1.0:
            raise TunelensError("replay + safety_mix must leave room for the task data (sum < 1)")
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        optims = [o.value for o in OptimizerNames]
        if self.optim not in optims:
            raise TunelensError(f"unknown optimizer '{self.optim}'"
                                + suggest(self.optim, optims, "; e.g. adamw_torch, sgd, adafactor"))
        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise BadSetting("lr_scheduler", f"unknown lr_scheduler '{self.lr_scheduler}'"
                             + suggest(self.lr_scheduler, schedulers, f"; one of {', '.join(schedulers)}"))
        if not self.data and not self.mix:
            raise TunelensError("no training data: pass --data TASK or --mix TASK:WEIGHT")

    def _check_values(self):
        """Every setting's type and range, before anything loads: a YAML or flag value that would fail deep
        inside training, or silently do something else (max_steps -3 trains a whole epoch), is named here."""
        for name in ("data", "mix", "report_to"):  # one string is a list of one; null is none
            value = getattr(self, name)
            setattr(self, name, C.strings([value] if isinstance(value, str) else value or [], name))
        if not isinstance(self.target_modules, str):
            C.strings(self.target_modules, "target_modules", example='"all-linear" or [q_proj, v_proj]')
        for name in ("model", "split", "out", "method", "optim", "lr_scheduler"):
            C.text(getattr(self, name), name)
        for name in ("lora_r", "num_virtual_tokens", "batch_size", "grad_accum", "max_length", "save_steps",
                     "save_total_limit", "logging_steps"):
            C.integer(getattr(self, name), name, 1)
        C.integer(self.max_examples, "max_examples", 1, null=True)
        C.integer(self.max_steps, "max_steps", 1, also=(-1,), what="-1 (train by epochs) or an integer >= 1")
        C.integer(self.seed, "seed", 0)
        for name in ("lora_alpha", "epochs"):
            C.number(getattr(self, name), name, above=0)
        C.number(self.learning_rate, "learning_rate", above=0, null=True)
        C.number(self.weight_decay, "weight_decay", at_least=0)
        for name in ("lora_dropout", "warmup_ratio", "replay", "safety_mix"):
            C.number(getattr(self, name), name, at_least=0, below=1)
        for name in ("packing", "resume", "overwrite", "progress"):
            C.flag(getattr(self, name), name)

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR[self.method]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in dataclasses.fields(TuneConfig))


def load_config(path: str | Path | None = None, **overrides) -> TuneConfig:
    """Config from YAML (if given) with CLI overrides on top; unknown keys are errors with a suggestion, and a
    bad value read from the file names the file and the key's line."""
    raw: dict = {}
    where, lines = "", {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TunelensError(f"no such config file: {path}")
        raw = C.read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise TunelensError(f"{path}: expected a mapping of settings")
        where, lines = f"{path}: ", C.key_lines(path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    from_file = set(raw) - set(overrides)
    raw.update(overrides)
    for key in raw:
        if key not in KEYS:
            raise TunelensError(f"{where if key in from_file else ''}unknown setting '{key}'" + suggest(key, KEYS))
    try:
        return TuneConfig(**raw)
    except BadSetting as e:
        if e.key not in from_file:
            raise
        raise e.located(where, lines) from None
    except TypeError as e:
        raise TunelensError(f"bad tuning config: {e}") from None
