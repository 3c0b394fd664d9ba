"""Direct preference optimisation (Rafailov et al. 2023) through TRL's DPOTrainer, on preference pairs.

L = -log σ(β[(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))]), β = `beta` (TRL's 0.1).
The reference is the model before tuning: for an adapter (LoRA, IA3, prompt tuning) the same model with its
adapter switched off; for full tuning a frozen copy taken before the first step. Pairs come from `preference`
tasks (prompt, chosen, rejected), conversational, so DPOTrainer applies the chat template itself; --safety-mix
blends in the built-in safety pairs (a helpful refusal preferred over compliance). Checkpoints, resume,
train_log.jsonl and the final save are the same as SFT's (tune/trainer.py).
"""

from __future__ import annotations

from . import Objective, register


@register("dpo")
class DPO(Objective):
    rank = 30
    description = "DPO on preference pairs (prompt, chosen, rejected) through TRL; beta sets the KL strength"
    unit = "pair"
    loss_type = "sigmoid"  # TRL's name for the DPO loss

    def check(self, cfg) -> None:
        from ...checks import BadSetting

        if cfg.compat_weight:
            raise BadSetting("compat_weight", f"--compat-weight is for --objective sft, not {self.name}")
        if cfg.packing:
            raise BadSetting("packing", f"--packing is not supported for --objective {self.name}")
        if cfg.replay:
            raise BadSetting("replay", f"--replay mixes chats; --objective {self.name} trains on pairs only "
                                       "(--safety-mix adds the built-in safety pairs)")

    def examples(self, cfg, tokenizer):
        from ..examples import build_pairs

        return build_pairs(cfg, tokenizer)

    def trainer(self, cfg, *, model, tokenizer, rows, args: dict, callbacks: list):
        import copy

        from datasets import Dataset
        from trl import DPOConfig

        from ..trainer import dpo_trainer_class

        ref = None if hasattr(model, "disable_adapter") else copy.deepcopy(model).eval().requires_grad_(False)
        dargs = DPOConfig(**args, beta=cfg.beta, loss_type=[self.loss_type], max_length=cfg.max_length,
                          dataset_num_proc=None)
        trainer = dpo_trainer_class()(model=model, ref_model=ref, args=dargs, train_dataset=Dataset.from_list(rows),
                                      processing_class=tokenizer, callbacks=callbacks)
        if "ref" in getattr(trainer.model, "peft_config", {}):
            # TRL copies an adapter it is handed into a frozen "ref" adapter, for adapters trained before; ours is
            # fresh (LoRA's B = 0: the model is the base), so the reference is the adapter switched off, and no
            # second adapter is carried through every step and saved beside the tune
            trainer.model.delete_adapter("ref")
        return trainer
