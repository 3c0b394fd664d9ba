"""Evaluate one model on one task: per-item records, metrics with bootstrap intervals, results.json.

A record keeps everything later stages need to compare two models item by item (audit, flips,
calibration), so the metrics are always recomputable from `items.jsonl` alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, metrics
from . import checks as C
from .data import TaskSpec, answer_text, continuations, fewshot_examples, load_items, render_prompt
from .data.tasks import check_template
from .errors import TunelensError
from .io import write_json, write_jsonl
from .run.config import EvalSettings  # the defaults: `tunelens eval`'s
from .scoring import generate, loglikelihood

RESULTS_SCHEMA = "tunelens.results/1"
CHOICE_TYPES = ("multiple_choice", "classification")


@dataclass
class EvalResult:
    records: list[dict]
    metrics: dict[str, dict]
    info: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        write_jsonl(out / "items.jsonl", self.records)
        write_json(out / "results.json", {"schema": RESULTS_SCHEMA, **self.info, "metrics": self.metrics})
        return out


def evaluate(
    handle,
    spec: TaskSpec,
    *,
    split: str | None = None,
    limit: int | None = None,
    start: int = 0,
    pool: int | None = None,
    template: str | None = None,
    token_budget: int = EvalSettings.token_budget,
    batch_size: int = EvalSettings.batch_size,
    n_boot: int = 1000,
    seed: int | None = None,
    progress: bool = True,
    summarize: bool = True,
) -> EvalResult:
    """Score `handle` (a models.ModelHandle) on the task's split; returns records and metrics.

    Items are taken in the split's stratified, seeded order (data/order.py), so `limit` N is the first N of
    that order: a stratified random sample, never the first N rows of a file (None: all; more than the split
    has: all). `pool` (the audit's): the first `pool` items of that order, drawn in a seeded uniformly random
    order (data.order.draw_order); `start`/`limit` then index the draws (the audit evaluates chunk by chunk). A limit
    below 1 or a negative few-shot k is refused here, for every caller (a negative limit would slice items off
    the end). `summarize` False skips the metrics and their bootstrap (a caller that pools records)."""
    from .data.order import draw_order, order_digest, ordered

    C.integer(limit, "limit", 1, null=True)
    C.integer(start, "start", 0)
    C.integer(spec.fewshot, "fewshot", 0)  # callers (the CLI's --fewshot) may set it after the spec was checked
    if template is not None:
        check_template(template, spec.path or spec.name)
    split = split or spec.eval_split
    seed = spec.seed if seed is None else seed
    every = load_items(spec, split)
    pool = ordered(spec, every, seed) if pool is None else draw_order(spec, every, seed, pool)
    items = pool[start:limit]
    shots_pool = load_items(spec, "train") if spec.fewshot else []
    tok = handle.tokenizer

    def prompt_for(item):
        shots = fewshot_examples(spec, shots_pool, spec.fewshot, seed, exclude_id=item.id) if spec.fewshot else []
        return render_prompt(spec, item, tok, shots=shots, template=template)

    start = time.perf_counter()
    prompts = [prompt_for(it) for it in items]
    if spec.type in CHOICE_TYPES:
        conts = [continuations(spec, it) for it in items]
        scores = loglikelihood(handle.model, tok, list(zip(prompts, conts)), token_budget=token_budget,
                               progress=progress, desc=f"{spec.name} [{split}]")
        records = [_choice_record(it, p, s) for it, p, s in zip(items, prompts, scores)]
        summary = choice_metrics(records, spec.type, n_boot=n_boot, seed=seed) if summarize else {}
    elif spec.type == "generation":
        gens = generate(handle.model, tok, prompts, max_new_tokens=spec.max_new_tokens, stop=spec.stop,
                        batch_size=batch_size, progress=progress, desc=f"{spec.name} [{split}]")
        records = [_generation_record(it, p, g) for it, p, g in zip(items, prompts, gens)]
        summary = generation_metrics(records, n_boot=n_boot, seed=seed) if summarize else {}
    elif spec.type == "preference":
        raise TunelensError(f"task '{spec.name}' holds preference pairs: audit it with the preference suite "
                            f"(`tunelens audit --suites preference --task ...`), or tune on it (--objective dpo)")
    else:
        raise TunelensError(f"task '{spec.name}' is of type '{spec.type}', which is for training; "
                            "evaluate a multiple_choice, classification or generation task")
    seconds = time.perf_counter() - start
    info = {
        "tunelens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": handle.name, "kind": handle.kind, "path": str(handle.path) if handle.path else None,
                  "base": handle.base},
        "task": {"name": spec.name, "type": spec.type, "split": split, "n_items": len(records),
                 "pool": len(pool), "order": order_digest(pool), "start": start,
                 "n_truncated": sum(1 for r in records if r.get("truncated")),  # prompts cut to fit the context
                 "fewshot": spec.fewshot, "chat_template": spec.chat_template,
                 "template": template or spec.template},
        "seed": seed,
        "timing": {"seconds": round(seconds, 3), "items_per_second": round(len(records) / seconds, 3)},
    }
    return EvalResult(records, summary, info)


# ---------------------------------------------------------------- records


def _choice_record(item, prompt: str, scores) -> dict:
    logps = [s.logprob for s in scores]
    p_vocab = [math.exp(lp) for lp in logps]
    m = max(logps)  # renormalise in log space: p_vocab can underflow for long choices
    w = [math.exp(lp - m) for lp in logps]
    p_choices = [x / sum(w) for x in w]
    pred = int(np.argmax(logps))
    return {
        "id": item.id,
        "source": item.source,
        "prompt": prompt,
        "choices": item.choices,
        "answer": item.answer,
        "pred": pred,
        "correct": pred == item.answer,
        "logprob": logps,
        "token_logprobs": [s.token_logprobs for s in scores],
        "p_vocab": p_vocab,
        "p_choices": p_choices,
        "confidence": p_choices[pred],
        "truncated": scores[0].truncated,  # prompt tokens cut from the left to fit the context
    }


def _generation_record(item, prompt: str, gen) -> dict:
    refs = item.references or []
    return {
        "id": item.id,
        "source": item.source,
        "prompt": prompt,
        "references": refs,
        "output": gen.text,
        "output_logprob": gen.logprob,
        "truncated": gen.truncated,  # prompt tokens cut from the left to fit the context
        "n_tokens": len(gen.tokens),
        "exact_match": metrics.exact_match(gen.text, refs),
        "token_f1": metrics.token_f1(gen.text, refs),
        "rouge_l": metrics.rouge_l(gen.text, refs),
        "bleu": metrics.sentence_bleu(gen.text, refs),
    }


# ---------------------------------------------------------------- metrics from records


def _mean_entry(values, n_boot: int, seed: int) -> dict:
    values = np.asarray(values, dtype=float)
    lo, hi = metrics.bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return metrics.metric_entry(float(values.mean()), lo, hi)


# per-item quantities of a choice record whose mean is a headline metric: name -> (value, higher is better)
CHOICE_ITEM_METRICS = {
    "accuracy": (lambda r: float(r["correct"]), True),
    "p_vocab_correct": (lambda r: r["p_vocab"][r["answer"]], True),
    "p_vocab_incorrect_mass": (lambda r: sum(p for c, p in enumerate(r["p_vocab"]) if c != r["answer"]), False),
    "brier": (lambda r: sum((float(c == r["answer"]) - p) ** 2 for c, p in enumerate(r["p_choices"])), False),
}


def choice_metrics(records: list[dict], task_type: str, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Headline metrics of multiple-choice/classification records, each with a bootstrap 95% interval."""
    if not records:
        raise TunelensError("no items were evaluated")
    conf = np.array([r["confidence"] for r in records])
    answers = [r["answer"] for r in records]
    out = {name: _mean_entry([fn(r) for r in records], n_boot, seed) for name, (fn, _) in CHOICE_ITEM_METRICS.items()}
    ok = np.array([bool(r["correct"]) for r in records])
    ece_ci = metrics.bootstrap_ci_paired(lambda i: metrics.ece(conf[i], ok[i]), len(records), n_boot=n_boot, seed=seed)
    out["ece"] = metrics.metric_entry(metrics.ece(conf, ok), *ece_ci)
    if task_type == "classification":
        labels = records[0]["choices"]
        pred = np.array([r["pred"] for r in records])
        gold = np.array(answers)
        f1 = lambda i: metrics.macro_f1(pred[i].tolist(), gold[i].tolist(), labels=list(range(len(labels))))
        out["macro_f1"] = metrics.metric_entry(f1(np.arange(len(records))),
                                               *metrics.bootstrap_ci_paired(f1, len(records), n_boot=n_boot, seed=seed))
    return out


def generation_metrics(records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    if not records:
        raise TunelensError("no items were evaluated")
    out = {k: _mean_entry([r[k] for r in records], n_boot, seed) for k in ("exact_match", "token_f1", "rouge_l")}
    preds = [r["output"] for r in records]
    refs = [r["references"] for r in records]
    corpus = lambda i: metrics.bleu([preds[k] for k in i], [refs[k] for k in i])
    # corpus BLEU is slow to resample; 200 draws keep the interval stable to ~0.01
    out["bleu"] = metrics.metric_entry(corpus(range(len(preds))),
                                       *metrics.bootstrap_ci_paired(corpus, len(preds), n_boot=min(n_boot, 200), seed=seed))
    return out
