"""Training objectives, registered by name: one file each — what it trains on and the trainer that does it.

An objective turns the composed training data (task items, mixtures, replay and safety sets: tune/examples.py)
into rows (`examples`) and builds the transformers Trainer that learns from them (`trainer`), given the
`TrainingArguments` settings every objective shares (output folder, steps, batch, learning rate, checkpointing,
seeds, multi-process backend). What follows is the same for all: resume from the last intact checkpoint, atomic
checkpoints, `train_log.jsonl`, the final save of an adapter or a whole model, `run.json`. So an objective is
one new file here that registers itself (every module in this folder is imported), or a plug-in.

Built-in: `sft` (supervised fine-tuning, loss on the reply; with `compat_weight`, flip-aware), `cpt`
(continued pretraining on raw documents), `dpo` and `ipo` (preference pairs, through TRL's DPOTrainer).
"""

from __future__ import annotations

from ...registry import registrar

OBJECTIVES: dict[str, type["Objective"]] = {}

register = registrar(OBJECTIVES)


class Objective:
    name: str = "?"
    description: str = ""
    rank: int = 100  #: place in listings (`tune --help`): the built-ins 10..40, the default first
    #: the unit of training data composed for it (tune/examples.units): "chat", "text" or "pair"
    unit: str = "chat"

    def check(self, cfg) -> None:
        """Refuse settings this objective cannot honour (cfg: TuneConfig), before anything loads."""

    def examples(self, cfg, tokenizer):
        """(rows, ExampleStats): the training rows, with how many came from each source."""
        raise NotImplementedError

    def trainer(self, cfg, *, model, tokenizer, rows, args: dict, callbacks: list):
        """The transformers Trainer (a subclass of tune.trainer.AtomicCheckpoints) for these rows; `args` are the
        shared TrainingArguments keywords."""
        raise NotImplementedError


from ... import plugins  # noqa: E402

plugins.import_builtins(__name__, __path__)
plugins.load(plugins.OBJECTIVES)
_ranked = sorted(OBJECTIVES.items(), key=lambda kv: (vars(kv[1]).get("rank", Objective.rank), kv[0]))
OBJECTIVES.clear()
OBJECTIVES.update(_ranked)
