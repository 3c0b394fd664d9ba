"""LoRA adapters as weight updates: now :mod:`tunelens.weights.lora`, the one home of the factors and of
``lora_scale``; the names stay importable from here."""

from ..weights.lora import FactorDelta, LoraAdapter, LoraModule, lora_scale

__all__ = ["FactorDelta", "LoraAdapter", "LoraModule", "lora_scale"]
