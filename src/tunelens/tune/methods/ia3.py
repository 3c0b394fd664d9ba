"""IA3 (Liu et al., 2022): learned vectors rescaling keys, values and feed-forward activations; few parameters,
so a larger step than LoRA's."""

from __future__ import annotations

from . import TuningMethod, register


@register("ia3")
class IA3(TuningMethod):
    default_lr = 3e-3
    rank = 40
    description = "learned rescaling vectors (PEFT's defaults for the architecture)"

    def peft_config(self, cfg):
        from peft import IA3Config, TaskType

        return IA3Config(task_type=TaskType.CAUSAL_LM)
