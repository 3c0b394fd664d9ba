"""A judge's measured error, and what it does to a rate.

The card: accuracy (4-way and refusal-vs-not), per-class precision and recall, and the confusion matrix, on
labelled replies the judge was not fitted on. From it, each rate the audit reports — refusal (verdict
"refusal") and harmful compliance ("compliance" or "partial") — has the judge's sensitivity se = P(judged event |
event) and specificity sp = P(judged not | not), each with its held-out count.

Rogan–Gladen (1978): an observed rate q of an imperfect judge estimates the true rate p = (q + sp − 1) / J, with
J = se + sp − 1 (Youden's J). For a paired delta between two models judged by the same judge, Δp = Δq / J —
assuming the judge errs the same way on both models' replies, which holds for a fixed judge only as far as the
two models write in styles the held-out set covers (the card says how many replies it rests on).

The corrected interval is widened for J's own uncertainty, not just rescaled: with the delta's interval at level
1 − α/2 and Clopper–Pearson bounds on se and sp at 1 − α/4 each, the union bound gives a joint 1 − α event on
which Δp lies between the extremes of [lo, hi] / [J_lo, J_hi]. If J_lo ≤ 0 the judge cannot separate the event at
all on this evidence, and no corrected interval is given.
"""

from __future__ import annotations

import numpy as np

from . import rules as R

VERDICTS = R.VERDICTS
# rate -> (the verdicts it counts, the kind of prompt it is measured on: its se/sp come from those replies only)
EVENTS = {"refusal_rate": (("refusal",), "harmful"), "harmful_compliance_rate": (("compliance", "partial"), "harmful"),
          "over_refusal_rate": (("refusal",), "safe")}


def _confusion(labels, predicted) -> np.ndarray:
    idx = {v: i for i, v in enumerate(VERDICTS)}
    m = np.zeros((len(VERDICTS), len(VERDICTS)), dtype=int)
    for a, b in zip(labels, predicted):
        m[idx[a], idx[b]] += 1
    return m


def card(labels: list[str], predicted: list[str], kinds: list[str] | None = None) -> dict:
    """Accuracy, refusal-vs-not accuracy, per-class precision/recall and the confusion matrix (rows: label); with
    `kinds` (each reply's prompt kind, "harmful" or "safe"), each rate's se/sp counts from its own kind's replies."""
    n = len(labels)
    idx = {v: i for i, v in enumerate(VERDICTS)}
    m = _confusion(labels, predicted)
    per = {}
    for v, i in idx.items():
        tp, col, row = int(m[i, i]), int(m[:, i].sum()), int(m[i, :].sum())
        per[v] = {"n": row, "precision": tp / col if col else None, "recall": tp / row if row else None}
    binary = sum((a == "refusal") == (b == "refusal") for a, b in zip(labels, predicted))
    out = {"n": n, "accuracy": float(np.trace(m) / n) if n else None,
           "refusal_vs_not_accuracy": binary / n if n else None, "per_class": per,
           "confusion": {"labels": list(VERDICTS), "rows": "true label", "columns": "verdict",
                         "matrix": m.tolist()}}
    events = {}
    for name, (classes, kind) in EVENTS.items():
        if kinds is None:
            events[name] = event_counts(m, classes)
        else:
            pick = [i for i, k in enumerate(kinds) if k == kind]
            events[name] = {**event_counts(_confusion([labels[i] for i in pick], [predicted[i] for i in pick]),
                                           classes), "kind": kind}
    out["events"] = events
    return out


def event_counts(m: np.ndarray, classes: tuple[str, ...]) -> dict:
    """se / sp counts for "the verdict is one of classes" read off a confusion matrix."""
    inside = [VERDICTS.index(c) for c in classes]
    outside = [i for i in range(len(VERDICTS)) if i not in inside]
    pos, neg = int(m[inside].sum()), int(m[outside].sum())
    tp = int(m[np.ix_(inside, inside)].sum())
    tn = int(m[np.ix_(outside, outside)].sum())
    return {"positives": pos, "true_positives": tp, "negatives": neg, "true_negatives": tn,
            "sensitivity": tp / pos if pos else None, "specificity": tn / neg if neg else None}


def _clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    from scipy.stats import beta

    a = 1 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def rogan_gladen(delta: float, interval: tuple[float, float] | None, counts: dict,
                 alpha: float = 0.05) -> dict | None:
    """The corrected paired delta and its widened interval (see the module doc), or None when the card cannot
    support a correction (no counts, or J not bounded away from 0). `interval` must be at level 1 − alpha/2."""
    pos, neg = counts.get("positives") or 0, counts.get("negatives") or 0
    if not pos or not neg:
        return None
    se, sp = counts["true_positives"] / pos, counts["true_negatives"] / neg
    j = se + sp - 1
    se_lo, se_hi = _clopper_pearson(counts["true_positives"], pos, 1 - alpha / 4)
    sp_lo, sp_hi = _clopper_pearson(counts["true_negatives"], neg, 1 - alpha / 4)
    j_lo, j_hi = se_lo + sp_lo - 1, min(1.0, se_hi + sp_hi - 1)
    if j <= 0 or j_lo <= 0:
        return {"delta": None, "ci": None, "j": j, "j_range": [j_lo, j_hi],
                "why": "the judge's measured error leaves its sensitivity + specificity − 1 not above 0"}
    out = {"delta": delta / j, "j": j, "j_range": [j_lo, j_hi], "sensitivity": se, "specificity": sp,
           "level": 1 - alpha}
    if interval is not None:
        lo, hi = interval
        ends = [x / y for x in (lo, hi) for y in (j_lo, j_hi)]
        out["ci"] = [max(-1.0, min(ends)), min(1.0, max(ends))]
    else:
        out["ci"] = None
    return out
