"""forgetting: general knowledge (built-in multiple choice) and held-out general text loss, before vs after."""

from __future__ import annotations

from ..data import load_task
from ..scoring import context_length, encode, loglikelihood
from .common import eval_both, pool_size, task_entries, task_headline
from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register

LOSS_SPAN = 1.0  # nats per token: a passage's loss delta is clipped into ±this for the confidence sequence


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
    rank = 40
    description = "General-knowledge accuracy and general-text cross-entropy decided (after minus before)."
    flip_rank = 3
    sweep_metrics = ("general_knowledge.accuracy", "text_loss")

    def headline_count(self, ctx: AuditContext) -> int:
        return 2

    def run(self, ctx: AuditContext) -> SuiteResult:
        spec = load_task("general-knowledge")
        res = eval_both(ctx, spec)
        entries = [e for e in task_entries(ctx, spec, res, "general_knowledge.")
                   if e.metric.endswith((".accuracy", ".p_vocab_correct"))]
        text_spec = load_task("general-text")
        passages, pool = ctx.draw(text_spec), len(ctx.pool(text_spec))
        texts = [p.fields["prompt"] for p in passages]
        losses = ctx.per_model_chunks(("text_loss", "pool", pool), len(texts),
                                      lambda role, h, a, b: text_losses(h, texts[a:b], ctx.progress))
        entries.append(paired_entry("text_loss", losses["base"], losses["tuned"], higher_is_better=False,
                                    n_boot=ctx.boot, seed=ctx.seed, unit="nats per token"))
        clipped = sum(abs(t - b) > LOSS_SPAN for b, t in zip(losses["base"], losses["tuned"]))
        headline = [task_headline(spec, res, pool_size(ctx, spec), "general_knowledge."),
                    Headline("text_loss", losses["base"], losses["tuned"], pool,
                             higher_is_better=False, span=(-LOSS_SPAN, LOSS_SPAN), clipped=clipped)]
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
        if clipped:
            notes.append(f"text_loss: {clipped} passage(s) changed by more than {LOSS_SPAN} nats per token; their "
                         "deltas are clipped to that in the confidence sequence (the entry's values are not)")
        return SuiteResult(records, entries, notes, headline=headline)
