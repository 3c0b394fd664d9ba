"""tunelens tune: supervised fine-tuning (LoRA, full, prompt tuning, IA3) with mixtures and safety mixing."""

from .config import METHODS, TuneConfig, load_config
from .trainer import tune

__all__ = ["METHODS", "TuneConfig", "load_config", "tune"]
