"""What ``resolve_model`` hands back: the loaded model and tokenizer, with where they came from.

Its own module because every layer that holds a loaded model (audit, graft, tuning) names this type, and none
of them should have to import the loaders to do so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ModelHandle:
    model: "PreTrainedModel"  # eval mode; fp32 on CPU unless asked otherwise (a PeftModel for unmerged adapters)
    tokenizer: "PreTrainedTokenizerBase"  # pad token set (eos if it had none); padding_side 'right' by default
    name: str  # what the user asked for
    path: Path | None  # local folder actually loaded (the cached conversion folder for gguf/default)
    kind: str  # "embedded" | "hf_folder" | "peft_adapter" | "gguf" | "hub"
    base: str | None = None  # for adapters: the base model spec used
