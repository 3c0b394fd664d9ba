"""Helpers several suites use: evaluating a task with both models (cached), and turning two eval
results on the same items into ledger entries and side-by-side records."""

from __future__ import annotations

import numpy as np

from .. import metrics as M
from ..evaluate import CHOICE_ITEM_METRICS, CHOICE_TYPES, evaluate
from .core import AuditContext, paired_entry, paired_stat_entry


def eval_key(spec, limit: int | None, *, split: str | None = None, template: str | None = None,
             key: str | None = None) -> tuple:
    """The cache key of a task eval (in AuditContext.cache and base_cache)."""
    return ("eval", key or spec.name, split, template, limit, spec.chat_template)


def eval_both(ctx: AuditContext, spec, *, split: str | None = None, template: str | None = None,
              limit: int | None = None, key: str | None = None) -> dict:
    """{"base": EvalResult, "tuned": EvalResult} for the same items, computed once per audit."""
    limit = limit if limit is not None else ctx.limit
    cache_key = eval_key(spec, limit, split=split, template=template, key=key)
    return ctx.per_model(cache_key, lambda role, handle: evaluate(
        handle, spec, split=split, limit=limit, template=template, n_boot=ctx.n_boot, seed=ctx.seed,
        batch_size=ctx.batch_size, progress=ctx.progress))


def cached_eval(ctx: AuditContext, spec) -> dict | None:
    """The task's own eval (its template, eval split, the audit's limit) if a suite has already run it."""
    return ctx.cache.get(eval_key(spec, ctx.limit))


def _ece_stat(records):
    conf = np.array([r["confidence"] for r in records])
    ok = np.array([bool(r["correct"]) for r in records])
    return lambda idx: M.ece(conf[idx], ok[idx])


def task_entries(ctx: AuditContext, spec, res: dict, prefix: str = "") -> list[dict]:
    """Paired entries for every headline metric of a task eval (same items for both models)."""
    b, t = res["base"].records, res["tuned"].records
    kw = dict(n_boot=ctx.n_boot, seed=ctx.seed, task=spec.name)
    out = []
    if spec.type in CHOICE_TYPES:
        for name, (fn, hib) in CHOICE_ITEM_METRICS.items():
            out.append(paired_entry(prefix + name, [fn(r) for r in b], [fn(r) for r in t], higher_is_better=hib, **kw))
        # ECE is not a mean over items: recompute it on each resample, per model
        out.append(paired_stat_entry(prefix + "ece", len(b), _ece_stat(b), _ece_stat(t), higher_is_better=False, **kw))
    else:
        for name in ("exact_match", "token_f1", "rouge_l", "bleu"):
            out.append(paired_entry(prefix + name, [r[name] for r in b], [r[name] for r in t], **kw))
    return out


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
