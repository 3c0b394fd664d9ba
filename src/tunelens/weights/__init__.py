"""The one reader of a base and its fine-tunes, tensor by tensor.

Diff, graft and every repair compare or combine a base model with fine-tunes saved as full checkpoints
(single or sharded safetensors, or the cached conversion of a .gguf / the default model) or as PEFT LoRA
adapters. They all read through here, so a fine-tune means the same tensors to each of them and memory stays
flat: headers are read up front, tensors one at a time (full checkpoints a row slab at a time, adapters as
their factors). ``checkpoint``: safetensors files; ``lora``: adapter factors and ``lora_scale``; ``source``:
``Weights``, one model's tensors whatever its form.
"""

from .checkpoint import Checkpoint, TensorInfo, weight_files
from .lora import FactorDelta, LoraAdapter, LoraModule, lora_scale, unit_alpha
from .source import Weights, check_fits, open_base, open_weights, same_model

__all__ = ["Checkpoint", "TensorInfo", "weight_files", "FactorDelta", "LoraAdapter", "LoraModule", "lora_scale",
           "unit_alpha", "Weights", "check_fits", "open_base", "open_weights", "same_model"]
