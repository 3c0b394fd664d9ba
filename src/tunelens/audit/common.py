"""Helpers several suites use: evaluating a task with both models (cached), and turning two eval
results on the same items into ledger entries and side-by-side records."""

from __future__ import annotations

import numpy as np

from .. import metrics as M
from ..evaluate import CHOICE_ITEM_METRICS, CHOICE_TYPES, EvalResult, evaluate
from .core import AuditContext, Headline, paired_entry, paired_stat_entry

# what a choice metric shows, for those that describe a change rather than rate it (see Entry.role)
DIAGNOSTICS = {
    "p_vocab_correct": "probability of the right choice among all tokens: rises when tuning moves mass onto the "
                       "answer format, not only when answers get better",
    "p_vocab_incorrect_mass": "probability on the wrong choices among all tokens: tuning to a format moves mass "
                              "onto the whole choice set, so this rises with the format, whatever the accuracy",
    "ece": "expected calibration error (10 bins) over the choices",
    "brier": "Brier score over the choices",
}


def eval_key(spec, *, split: str | None = None, template: str | None = None, key: str | None = None) -> tuple:
    """The cache key of a task eval (in AuditContext.cache and base_cache); the chunk bounds follow it."""
    return ("eval", key or spec.name, split, template, spec.chat_template)


def pool_size(ctx: AuditContext, spec, split: str | None = None) -> int:
    """Items in the split the task evaluates (read once per audit)."""
    bridged = ctx.cache.get(("bridged", spec.name))
    if bridged is not None:
        return len(bridged["base"].records)
    return len(ctx.pool(spec, split or spec.eval_split))


def eval_both(ctx: AuditContext, spec, *, split: str | None = None, template: str | None = None,
              limit: int | None = None, key: str | None = None) -> dict:
    """{"base": EvalResult, "tuned": EvalResult} for the same items: the first n draws of the task's pool (its
    split, drawn in a seeded uniformly random order), n = the look capped by `limit` and ctx.limit, evaluated
    chunk by chunk, each chunk once per audit."""
    pool = pool_size(ctx, spec, split)
    cap = ctx.capped(pool) if limit is None else min(ctx.capped(pool), limit)
    n = cap if ctx.look is None else min(cap, ctx.look)
    drawn = ctx.cache.setdefault("drawn", {})
    if ctx.look is None and ctx.sequential and (spec.name, pool) in drawn:
        n = drawn[(spec.name, pool)]  # a suite without a headline of its own: the items the others drew
    drawn[(spec.name, pool)] = max(drawn.get((spec.name, pool), 0), n)
    bridged = ctx.cache.get(("bridged", spec.name))
    if bridged is not None:  # an lm-eval task: both models were scored up front, in lm-eval's order
        return {role: EvalResult(res.records[:n], {}, res.info) for role, res in bridged.items()}
    cache_key = (*eval_key(spec, split=split, template=template, key=key), "pool", pool)
    parts = ctx.per_model_chunks(cache_key, n, lambda role, handle, a, b: evaluate(
        handle, spec, split=split, pool=pool, start=a, limit=b, template=template, n_boot=ctx.n_boot,
        seed=ctx.seed, batch_size=ctx.batch_size, progress=ctx.progress, summarize=False).records)
    out = {role: EvalResult(records, {}, {"task": {"name": spec.name, "n_items": len(records), "pool": pool}})
           for role, records in parts.items()}
    ctx.cache[("last-eval", eval_key(spec, split=split, template=template, key=key))] = out
    return out


def _ece_stat(records):
    conf = np.array([r["confidence"] for r in records])
    ok = np.array([bool(r["correct"]) for r in records])
    return lambda idx: M.ece(conf[idx], ok[idx])


def task_entries(ctx: AuditContext, spec, res: dict, prefix: str = "") -> list[dict]:
    """Paired entries for every headline metric of a task eval (same items for both models)."""
    b, t = res["base"].records, res["tuned"].records
    kw = dict(n_boot=ctx.boot, seed=ctx.seed, task=spec.name)
    out = []
    if spec.type in CHOICE_TYPES:
        for name, (fn, hib) in CHOICE_ITEM_METRICS.items():
            role = "diagnostic" if name in DIAGNOSTICS else "secondary"
            out.append(paired_entry(prefix + name, [fn(r) for r in b], [fn(r) for r in t], higher_is_better=hib,
                                    role=role, meaning=DIAGNOSTICS.get(name), **kw))
        # ECE is not a mean over items: recompute it on each resample, per model
        out.append(paired_stat_entry(prefix + "ece", len(b), _ece_stat(b), _ece_stat(t), higher_is_better=False,
                                     role="diagnostic", meaning=DIAGNOSTICS["ece"], **kw))
    else:
        for name in ("exact_match", "token_f1", "rouge_l", "bleu"):
            out.append(paired_entry(prefix + name, [r[name] for r in b], [r[name] for r in t], **kw))
    return out


def task_headline(spec, res: dict, pool: int, prefix: str = ""):
    """The task's headline series: accuracy for a choice task, token F1 for a generation task."""
    b, t = res["base"].records, res["tuned"].records
    if spec.type in CHOICE_TYPES:
        return Headline(prefix + "accuracy", [float(r["correct"]) for r in b], [float(r["correct"]) for r in t], pool)
    return Headline(prefix + "token_f1", [r["token_f1"] for r in b], [r["token_f1"] for r in t], pool)


def side_by_side(spec, res: dict) -> list[dict]:
    rows = []
    for rb, rt in zip(res["base"].records, res["tuned"].records):
        row = {"task": spec.name, "id": rb["id"], "prompt": rb["prompt"]}
        if "choices" in rb:
            row.update(choices=rb["choices"], answer=rb["answer"],
                       base={"pred": rb["pred"], "correct": rb["correct"], "confidence": rb["confidence"]},
                       tuned={"pred": rt["pred"], "correct": rt["correct"], "confidence": rt["confidence"]})
        else:
            row.update(references=rb["references"],
                       base={"output": rb["output"], "token_f1": rb["token_f1"]},
                       tuned={"output": rt["output"], "token_f1": rt["token_f1"]})
        rows.append(row)
    return rows
