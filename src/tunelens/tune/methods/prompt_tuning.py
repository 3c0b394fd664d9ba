"""Prompt tuning (Lester et al., 2021): num_virtual_tokens trainable embeddings before the input; the model is
frozen, and soft prompts need a large step."""

from __future__ import annotations

from . import TuningMethod, register


@register("prompt-tuning")
class PromptTuning(TuningMethod):
    default_lr = 3e-2
    rank = 30
    description = "trainable virtual tokens (num_virtual_tokens)"

    def peft_config(self, cfg):
        from peft import PromptTuningConfig, TaskType

        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens)
