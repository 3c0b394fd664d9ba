"""The tuning recipe's settings: plain data, loadable from YAML, every key checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import TunelensError, suggest

METHODS = ("lora", "full", "prompt-tuning", "ia3")


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
    learning_rate: float | None = None  # default by method: 2e-4 LoRA/IA3, 2e-5 full, 3e-2 prompt tuning
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
        if self.method not in METHODS:
            raise TunelensError(f"unknown tuning method '{self.method}'"
                                + suggest(self.method, METHODS, f"; choose one of {', '.join(METHODS)}"))
        for name in ("replay", "safety_mix"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise TunelensError(f"{name} must be a fraction in [0, 1), got {v}")
        if self.replay + self.safety_mix >= 1.0:
            raise TunelensError("replay + safety_mix must leave room for the task data (sum < 1)")
        from transformers.training_args import OptimizerNames

        optims = [o.value for o in OptimizerNames]
        if self.optim not in optims:
            raise TunelensError(f"unknown optimizer '{self.optim}'"
                                + suggest(self.optim, optims, "; e.g. adamw_torch, sgd, adafactor"))
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if not self.data and not self.mix:
            raise TunelensError("no training data: pass --data TASK or --mix TASK:WEIGHT")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return {"lora": 2e-4, "ia3": 3e-3, "full": 2e-5, "prompt-tuning": 3e-2}[self.method]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in dataclasses.fields(TuneConfig))


def load_config(path: str | Path | None = None, **overrides) -> TuneConfig:
    """Config from YAML (if given) with CLI overrides on top; unknown keys are errors with a suggestion."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TunelensError(f"no such config file: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise TunelensError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise TunelensError(f"{path}: expected a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key in raw:
        if key not in KEYS:
            where = f"{path}: " if path else ""
            raise TunelensError(f"{where}unknown setting '{key}'" + suggest(key, KEYS))
    try:
        return TuneConfig(**raw)
    except TypeError as e:
        raise TunelensError(f"bad tuning config: {e}") from None
