"""LoRA (Hu et al., 2021): a low-rank update B·A beside each targeted weight, scaled by lora_alpha / lora_r."""

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
