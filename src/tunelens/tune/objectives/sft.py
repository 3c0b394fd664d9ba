"""Supervised fine-tuning: chat examples, the loss on the final reply only — and, with `compat_weight`, flip-aware.

Flip-aware tuning is focal distillation (Yan et al., "Positive-congruent training", CVPR 2021; MUSCLE, Echterhoff
et al. 2024, builds its compatibility training on it):

    L = CE(y, p_tuned) + λ · (α + 1[base right]) · KL(p_base ‖ p_tuned)

over the reply tokens, λ = `compat_weight`, α = `compat_alpha` (0: only the examples the base already gets right
are held to it). "Base right" is what the audit counts as right, so the term guards exactly the answers whose
loss would be a negative flip: for an example made from a multiple-choice or classification item, the base ranks
the right choice first by log-likelihood (the task suite's scoring, computed once before the first step); for
a free-text reply, the base's own greedy token matches the target at every reply position (teacher forced).
The counts are in run.json (`compat`). p_base is the model with its adapter switched off (LoRA,
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

        return build_examples(cfg, tokenizer, choices=bool(cfg.compat_weight))

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
        flags = None
        if cfg.compat_weight:
            flags = base_right(model, tokenizer, rows)
            rows = [{**{k: v for k, v in r.items() if k != "_choice"}, "base_right": f} for r, f in zip(rows, flags)]
            collator = WithBaseRight(collator)
        kw = dict(model=model, args=targs, train_dataset=Dataset.from_list(rows), data_collator=collator,
                  callbacks=callbacks)
        if cfg.compat_weight:
            return FlipAwareTrainer(**kw, weight=cfg.compat_weight, alpha=cfg.compat_alpha, flags=flags)
        return AtomicCheckpointTrainer(**kw, compute_loss_func=loss_func)


def base_right(model, tokenizer, rows: list[dict]) -> list[int]:
    """Per row: 1 if the base ranks the right choice of the row's item first (the audit's task scoring), 0 if
    not, -1 for a row without choices (decided in the loss, by teacher-forced greedy). The base is `model`
    before its first step with any adapter switched off; each distinct item is scored once."""
    from contextlib import nullcontext

    import torch

    from ...progress import log
    from ...scoring import loglikelihood

    def key(r):
        return r["_choice"][0], tuple(r["_choice"][1])

    keys = list(dict.fromkeys(key(r) for r in rows if "_choice" in r))
    if not keys:
        return [-1] * len(rows)
    peft_cfg = getattr(model, "active_peft_config", None)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    off = model.disable_adapter() if peft_cfg is not None and not peft_cfg.is_prompt_learning else nullcontext()
    was = model.training
    model.eval()
    try:
        with off, torch.no_grad():
            scores = loglikelihood(inner, tokenizer, [(p, list(c)) for p, c in keys], progress=False,
                                   desc="flip-aware: the base on the training items")
    finally:
        model.train(was)
    pred = {k: max(range(len(sc)), key=lambda i: sc[i].logprob) for k, sc in zip(keys, scores)}
    flags = [int(pred[key(r)] == r["_choice"][2]) if "_choice" in r else -1 for r in rows]
    scored = [f for f in flags if f >= 0]
    log.info(f"tunelens: flip-aware: the base ranks the right choice first on {sum(scored)} of {len(scored)} "
             f"training examples with choices" + (f"; {len(flags) - len(scored)} free-text example(s) are judged "
                                                  f"by teacher-forced greedy" if len(scored) < len(flags) else ""))
    return flags


class WithBaseRight:
    """A collator that adds each row's `base_right` flag (see base_right) to the batch of another."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features: list[dict]) -> dict:
        import torch

        batch = self.inner(features)
        batch["base_right"] = torch.tensor([int(f["base_right"]) for f in features], dtype=torch.long)
        return batch


def _flip_aware_trainer():
    """The class is built on first use: it subclasses the trainer module's Trainer, which imports transformers."""
    import copy

    import torch
    import torch.nn.functional as F

    from ..examples import IGNORE
    from ..trainer import AtomicCheckpointTrainer, completion_loss

    class FlipAware(AtomicCheckpointTrainer):
        def __init__(self, *a, weight: float, alpha: float, flags: list[int] | None = None, **k):
            super().__init__(*a, **k)
            self.compat = (float(weight), float(alpha))
            flags = flags or []
            self.compat_rows = {"rows": len(flags), "with_choices": sum(f >= 0 for f in flags),
                                "base_right_by_choice": sum(f == 1 for f in flags)}
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

        def compat_summary(self) -> dict:
            """For run.json: the training rows the base gets right, and the rows the distillation weighed
            (counted once per step they were in; with alpha 0 only those)."""
            return {**self.compat_rows, "weight": self.compat[0], "alpha": self.compat[1],
                    "distilled_rows": self.compat_log["right"], "seen_rows": self.compat_log["seen"]}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            given = inputs.pop("base_right", None)
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
            if given is not None:  # rows made from choice items: the base's ranking of the choices, as audited
                right = torch.where(given.to(right.device) >= 0, given.to(right.device) > 0, right)
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
