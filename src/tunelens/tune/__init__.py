"""tunelens tune: supervised fine-tuning (LoRA, full, prompt tuning, IA3) with mixtures and safety mixing.

`tune` (the trainer, which imports transformers' Trainer and takes seconds) loads on first use, so reading the
settings (`tunelens.tune.config`) — as the CLI does for its option help — stays cheap.
"""

from .config import DEFAULT_LR, METHODS, TuneConfig, load_config

__all__ = ["DEFAULT_LR", "METHODS", "TuneConfig", "load_config", "tune"]


def __getattr__(name):
    if name == "tune":
        from .trainer import tune

        return tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
