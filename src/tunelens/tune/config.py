"""The tuning recipe's settings: plain data, loadable from YAML, every key checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks as C
from ..checks import BadSetting
from ..errors import TunelensError, suggest
from ..settings import setting

from .methods import TUNING_METHODS
from .objectives import OBJECTIVES

METHODS = tuple(TUNING_METHODS)  # registered tuning methods (tune/methods/), in the order the CLI lists them
# the learning rate each method gets when none is given (the CLI's --lr help is built from this table)
DEFAULT_LR = {name: cls.default_lr for name, cls in TUNING_METHODS.items()}


@dataclass
class TuneConfig:
    """Every tuning setting: `tunelens tune`'s options, a tune YAML's keys and a run config's `tune:` section."""

    model: str = setting("default", "Model to tune: an HF folder, a hub id, or default (the embedded "
                         "model, the default).", short="-m", says_default=True)
    data: list[str] = setting(help="Task spec, data file or built-in task; repeat for several (all items used).",
                              factory=list, short="-d")
    mix: list[str] = setting(help="TASK:WEIGHT, repeatable: sample tasks to these weights (a multi-task cocktail).",
                             factory=list)
    replay: float = setting(0.0, "Fraction of general-instruction replay examples (0-1).")
    safety_mix: float = setting(0.0, "Fraction of built-in safety refusals blended in (SafeInstruct), e.g. 0.03.")
    split: str = setting("train", "Split of the task data to train on.")
    out: str = setting("out/tune", "Run folder.", short="-o")
    method: str = setting("lora", " | ".join(m + (" (default)" if m == "lora" else "") for m in METHODS)
                         + " (tune/methods/).", says_default=True)
    objective: str = setting("sft", " | ".join(o + (" (default)" if o == "sft" else "") for o in OBJECTIVES)
                             + " (tune/objectives/): what the tune learns from.", says_default=True)
    beta: float = setting(0.1, "DPO / IPO: strength of the pull toward the reference model (TRL's beta).")
    compat_weight: float = setting(0.0, "Flip-aware SFT: weight of the distillation toward the base on the examples "
                                        "the base already answers right (focal distillation; 0: off).")
    compat_alpha: float = setting(0.0, "Flip-aware SFT: distillation weight on every example besides the "
                                       "base-right ones (0: base-right examples only).")
    min_doc_tokens: int = setting(32, "Continued pretraining: documents shorter than this many tokens are left "
                                      "out (and counted).")
    lora_r: int = setting(16, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = setting(0.05, "LoRA dropout.")
    target_modules: list[str] | str = setting("all-linear", "LoRA/IA3 target modules: all-linear or a list of names.",
                                              cli=False)
    num_virtual_tokens: int = setting(20, "Prompt tuning: virtual tokens.")
    epochs: float = setting(1.0, "Epochs over the training set.")
    max_steps: int = setting(-1, "Stop after this many optimizer steps (-1: train by epochs).")
    batch_size: int = setting(8, "Examples per device per step.")
    grad_accum: int = setting(1, "Gradient accumulation steps.")
    learning_rate: float | None = setting(None, "Learning rate; default by method: " + ", ".join(
        f"{v:g} {k}" for k, v in DEFAULT_LR.items()) + ".", flag="--lr")  # None: the method's default_lr
    weight_decay: float = setting(0.0, "Weight decay.")
    optim: str = setting("adamw_torch", "Optimizer, any transformers name (sgd, adafactor, adamw_torch_fused, ...).")
    warmup_ratio: float = setting(0.03, "Share of the steps spent warming the learning rate up.")
    lr_scheduler: str = setting("linear", "Learning-rate schedule, any transformers name (linear, cosine, ...).")
    max_length: int = setting(512, "Longest example in tokens; longer ones are truncated and counted.")
    max_examples: int | None = setting(None, "Cap the training set after mixing (quick runs).")
    packing: bool = setting(False, "Padding-free packing (GPU + flash attention only; slower on CPU).")
    dtype: str = setting("auto", "Training precision: auto (the default: bf16 autocast only where the hardware runs "
                         "bf16 natively and a short calibration, cached per machine, measured it faster for this "
                         "model; fp32 elsewhere), fp32, or bf16 (autocast; emulated and slow on CPUs without "
                         "AVX512-BF16/AMX).", says_default=True)
    seed: int = setting(0, "Seed for sampling, shuffling and initialisation.")
    save_steps: int = setting(50, "Checkpoint every N steps.")
    save_total_limit: int = setting(2, "Checkpoints kept.")
    logging_steps: int = setting(1, "Log every N steps to train_log.jsonl.")
    report_to: list[str] = setting(help="Also log to these trackers, e.g. tensorboard, wandb.", factory=list)
    resume: bool = setting(False, "Continue from the last checkpoint in --out.")
    overwrite: bool = setting(False, "Replace a different run already in --out.")
    progress: bool = setting(True, "Show a progress bar.")

    def __post_init__(self):
        self._check_values()
        if self.method not in METHODS:
            raise TunelensError(f"unknown tuning method '{self.method}'"
                                + suggest(self.method, METHODS, f"; choose one of {', '.join(METHODS)}"))
        if self.objective not in OBJECTIVES:
            raise BadSetting("objective", f"unknown objective '{self.objective}'"
                             + suggest(self.objective, list(OBJECTIVES), f"; choose one of {', '.join(OBJECTIVES)}"))
        OBJECTIVES[self.objective]().check(self)
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
        for name in ("model", "split", "out", "method", "objective", "optim", "lr_scheduler"):
            C.text(getattr(self, name), name)
        from ..precision import check_dtype

        check_dtype(self.dtype)
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
        C.number(self.beta, "beta", above=0)
        for name in ("compat_weight", "compat_alpha"):
            C.number(getattr(self, name), name, at_least=0)
        C.integer(self.min_doc_tokens, "min_doc_tokens", 1)
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


@dataclass
class CurveSettings:
    """`tunelens curve`'s own settings (its tuning settings are TuneConfig's); learning_curve() takes its
    defaults from them."""

    fractions: list[float] = setting(help="Comma-separated fractions of the training set.",
                                     factory=lambda: [0.1, 0.25, 0.5, 1.0], each="comma")
    eval_task: str | None = setting(None, "Task to score (default: the first --data).", says_default=True)
    metric: str = setting("accuracy", "Metric to fit.")
    target: float | None = setting(None, "Report the examples needed to reach this score.")
    split: str = setting("validation", "Split each run is scored on.")

    def __post_init__(self):
        if not isinstance(self.fractions, list) or not self.fractions:
            raise BadSetting("fractions", f"fractions must be a non-empty list of numbers in (0, 1], got "
                                          f"{C.got(self.fractions)}")
        for x in self.fractions:
            C.number(x, "fractions", above=0, at_most=1)
        C.text(self.eval_task, "eval_task", null=True)
        C.text(self.metric, "metric")
        C.number(self.target, "target", null=True)
        C.text(self.split, "split")


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
