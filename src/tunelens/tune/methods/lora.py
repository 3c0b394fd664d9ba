"""LoRA (Hu et al., 2021): a low-rank update B·A beside each targeted weight, scaled by lora_alpha / lora_r.

PEFT builds the adapters; before training tune/fastlora.py gives each a cheaper dropout mask and one fused
forward/backward (the same computation; on a CPU PEFT's dropout and elementwise passes were a third of a step).
"""

from __future__ import annotations

from . import TuningMethod, register


@register("lora")
class LoRA(TuningMethod):
    default_lr = 2e-4
    rank = 10
    description = "low-rank adapters (lora_r, lora_alpha, lora_dropout, target_modules)"

    def peft_config(self, cfg):
        from peft import LoraConfig, TaskType

        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules)

    def prepare(self, model, cfg):
        from ..fastlora import speed_up_lora

        speed_up_lora(model)
        return model
