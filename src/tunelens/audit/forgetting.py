"""forgetting: general knowledge (built-in multiple choice) and held-out general text loss, before vs after."""

from __future__ import annotations

from ..data import load_items, load_task
from ..scoring import context_length, encode, loglikelihood
from .common import eval_both, task_entries
from .core import AuditContext, Suite, SuiteResult, paired_entry, register


def _text_limit(handle) -> int:
    return context_length(handle.model) - 1  # one position for the end-of-text token the text is conditioned on


def text_losses(handle, texts: list[str], progress: bool = False) -> list[float]:
    """Mean per-token cross-entropy of each text (conditioned on the end-of-text token only); a text longer than
    the context is scored on its first tokens (the suite's notes count them)."""
    limit = _text_limit(handle)
    tok = handle.tokenizer
    texts = [t if len(ids := encode(tok, t)) <= limit else tok.decode(ids[:limit]) for t in texts]
    scores = loglikelihood(handle.model, tok, [("", [t]) for t in texts], progress=progress, desc="text loss")
    return [-s[0].logprob / len(s[0].tokens) for s in scores]


@register("forgetting")
class ForgettingSuite(Suite):
    description = "General-knowledge accuracy and general-text cross-entropy (after minus before)."

    def run(self, ctx: AuditContext) -> SuiteResult:
        spec = load_task("general-knowledge")
        res = eval_both(ctx, spec)
        entries = [e for e in task_entries(ctx, spec, res, "general_knowledge.")
                   if e["metric"].endswith((".accuracy", ".p_vocab_correct"))]
        passages = load_items(load_task("general-text"), "test")
        if ctx.limit:
            passages = passages[: ctx.limit]
        texts = [p.fields["prompt"] for p in passages]
        losses = ctx.per_model(("text_loss", len(texts)), lambda role, h: text_losses(h, texts, ctx.progress))
        entries.append(paired_entry("text_loss", losses["base"], losses["tuned"], higher_is_better=False,
                                    n_boot=ctx.n_boot, seed=ctx.seed))
        limit = min(_text_limit(ctx.base), _text_limit(ctx.tuned))
        cut = sum(len(encode(ctx.base.tokenizer, t)) > limit for t in texts)
        notes = [f"{cut} of {len(texts)} general-text passages are longer than the model's context ({limit} tokens) "
                 "and were scored on their first tokens"] if cut else []
        records = [{"id": p.id, "kind": "text_loss", "base": {"loss": lb}, "tuned": {"loss": lt}}
                   for p, lb, lt in zip(passages, losses["base"], losses["tuned"])]
        for rb, rt in zip(res["base"].records, res["tuned"].records):
            records.append({"id": rb["id"], "kind": "general_knowledge", "prompt": rb["prompt"],
                            "answer": rb["choices"][rb["answer"]],
                            "base": {"pred": rb["choices"][rb["pred"]], "correct": rb["correct"]},
                            "tuned": {"pred": rt["choices"][rt["pred"]], "correct": rt["correct"]}})
        return SuiteResult(records, entries, notes)
