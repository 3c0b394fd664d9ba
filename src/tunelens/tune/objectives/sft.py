"""Supervised fine-tuning: chat examples, the loss on the final reply only — and, with `compat_weight`, flip-aware.

Flip-aware tuning is focal distillation (Yan et al., "Positive-congruent training", CVPR 2021; MUSCLE, Echterhoff
et al. 2024, builds its compatibility training on it):

    L = CE(y, p_tuned) + λ · (α + 1[base right]) · KL(p_base ‖ p_tuned)

over the reply tokens, λ = `compat_weight`, α = `compat_alpha` (0: only the examples the base already gets right
are held to it). "Base right" is the base's own greedy choice at every reply position matching the target
(teacher forced): for a label, the base would answer it. p_base is the model with its adapter switched off (LoRA,
IA3, prompt tuning: the same forward pass, no second copy) or, for full tuning, a frozen copy taken before the
first step. It costs one more forward pass per step, no backward. The KL is summed over reply tokens and divided
by the batch's reply tokens, as the cross-entropy is.
"""

from __future__ import annotations

from . import Objective, register


@register("sft")
class SFT(Objective):
    rank = 10
    description = "supervised fine-tuning: loss on the reply (compat_weight > 0: flip-aware, focal distillation)"
    unit = "chat"

    def examples(self, cfg, tokenizer):
        from ..examples import build_examples

        return build_examples(cfg, tokenizer)

    def trainer(self, cfg, *, model, tokenizer, rows, args: dict, callbacks: list):
        import torch
        from datasets import Dataset
        from transformers import TrainingArguments

        from ...errors import TunelensError
        from ..trainer import AtomicCheckpointTrainer, CompletionCollator, completion_loss, pad_id

        collator, loss_func = CompletionCollator(pad_id(tokenizer)), completion_loss
        if cfg.packing:
            # padding-free packing: correct only with an attention kernel that honours position_ids resets
            # (flash attention); on CPU SDPA falls back to a dense block mask and is slower than padding
            if not torch.cuda.is_available() or getattr(model.config, "_attn_implementation", "") != "flash_attention_2":
                raise TunelensError("--packing needs a GPU model loaded with flash_attention_2; on CPU it is slower "
                                    "than length-grouped padding (the default)")
            if cfg.compat_weight:
                raise TunelensError("--compat-weight works on padded batches; drop --packing")
            from transformers import DataCollatorWithFlattening

            collator, loss_func = DataCollatorWithFlattening(), None
        targs = TrainingArguments(**args, train_sampling_strategy="group_by_length", remove_unused_columns=False)
        kw = dict(model=model, args=targs, train_dataset=Dataset.from_list(rows), data_collator=collator,
                  callbacks=callbacks)
        if cfg.compat_weight:
            return FlipAwareTrainer(**kw, weight=cfg.compat_weight, alpha=cfg.compat_alpha)
        return AtomicCheckpointTrainer(**kw, compute_loss_func=loss_func)


def _flip_aware_trainer():
    """The class is built on first use: it subclasses the trainer module's Trainer, which imports transformers."""
    import copy

    import torch
    import torch.nn.functional as F

    from ..examples import IGNORE
    from ..trainer import AtomicCheckpointTrainer, completion_loss

    class FlipAware(AtomicCheckpointTrainer):
        def __init__(self, *a, weight: float, alpha: float, **k):
            super().__init__(*a, **k)
            self.compat = (float(weight), float(alpha))
            model = self.model
            self._frozen = None
            if not hasattr(model, "disable_adapter"):  # full tuning: the base is a frozen copy
                self._frozen = copy.deepcopy(model).eval().requires_grad_(False)
            self.compat_log = {"right": 0, "seen": 0}

        def _base_logits(self, model, inputs):
            with torch.no_grad():
                if self._frozen is not None:
                    return self._frozen(**inputs).logits
                plain = self.accelerator.unwrap_model(model)
                with plain.disable_adapter():
                    return plain(**inputs).logits

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            ce = completion_loss(outputs, labels, num_items_in_batch)
            base = self._base_logits(model, inputs)
            logits = outputs.logits
            k = logits.shape[1]
            targets = labels[:, labels.shape[1] - k + 1:]
            mask = targets != IGNORE
            lp_new = F.log_softmax(logits[:, :-1].float(), -1)
            lp_base = F.log_softmax(base[:, :-1].float(), -1)
            kl = (lp_base.exp() * (lp_base - lp_new)).sum(-1)  # KL(p_base ‖ p_new) per position
            right = ((lp_base.argmax(-1) == targets) | ~mask).all(-1)  # base greedy = target at every reply token
            weight, alpha = self.compat
            per_row = (alpha + right.float())[:, None]
            n = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            loss = ce + weight * (kl * per_row * mask).sum() / n
            self.compat_log["right"] += int(right.sum())
            self.compat_log["seen"] += int(right.numel())
            return (loss, outputs) if return_outputs else loss

    return FlipAware


def FlipAwareTrainer(*a, **k):  # noqa: N802 - a class, built lazily
    return _flip_aware_trainer()(*a, **k)
