"""What every audit suite shares: the two models, the registry, and base-vs-tuned metric entries.

A suite is a small object: `run(ctx)` takes the audit context (both models, the user's tasks,
settings) and returns per-item records (both models side by side) and a list of metric entries,
each computed from those records: base value, tuned value, delta and a paired 95% interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks as C
from .. import metrics as M
from ..registry import registrar

SUITES: dict[str, type["Suite"]] = {}

register = registrar(SUITES)


@dataclass
class AuditContext:
    base: object  # models.ModelHandle
    tuned: object
    tasks: list = field(default_factory=list)  # TaskSpec objects given with --task
    limit: int | None = None  # cap items per suite (quick looks)
    n_boot: int = 1000
    seed: int = 0
    progress: bool = True
    batch_size: int = 64  # generation batch: a decode step at 64 rows yields ~1.5x the tokens/s of 32 on 2 CPU cores
    cache: dict = field(default_factory=dict)  # results shared between suites (e.g. task evals)
    # the base model's results by key. Pass one dict to several audits against the same base with the same
    # settings (a repair sweep re-auditing candidates) and the base model's work is done once; a
    # base_store.BaseStore keeps them on disk for the next audit.
    base_cache: dict = field(default_factory=dict)

    def __post_init__(self):
        # every suite slices its items by the limit: a negative one would cut items off the end, a string fail
        # the suite at run time
        C.integer(self.limit, "limit", 1, null=True)

    def models(self):
        return (("base", self.base), ("tuned", self.tuned))

    def cached(self, key, fn: Callable):
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def per_model(self, key, fn: Callable) -> dict:
        """{"base": fn("base", base handle), "tuned": fn("tuned", tuned handle)}, computed once per audit, the
        base half taken from ``base_cache`` when another audit already computed it."""
        def both():
            out = {}
            for role, handle in self.models():
                if role == "base":
                    if key not in self.base_cache:
                        self.base_cache[key] = fn(role, handle)
                    out[role] = self.base_cache[key]
                else:
                    out[role] = fn(role, handle)
            return out

        return self.cached(key, both)


@dataclass
class SuiteResult:
    records: list[dict]
    entries: list[dict]
    notes: list[str] = field(default_factory=list)


class Suite:
    name = "suite"
    description = ""

    def run(self, ctx: AuditContext) -> SuiteResult:  # pragma: no cover - interface
        raise NotImplementedError


def paired_stat_entry(metric: str, n: int, f_base: Callable, f_tuned: Callable, *, higher_is_better: bool = True,
                      n_boot: int = 1000, seed: int = 0, **extra) -> dict:
    """A ledger entry for a metric computed on the same n items for both models.

    `f_base(idx)` / `f_tuned(idx)` compute the metric over an index array; the interval of the delta
    is a paired bootstrap (items resampled together for both models).
    """
    if n == 0:
        return {"metric": metric, "base": None, "tuned": None, "delta": None, "ci95": None, "n": 0,
                "higher_is_better": higher_is_better, **extra}
    full = np.arange(n)
    base_v, tuned_v = float(f_base(full)), float(f_tuned(full))
    lo, hi = M.bootstrap_ci_paired(lambda idx: f_tuned(idx) - f_base(idx), n, n_boot=n_boot, seed=seed)
    return {"metric": metric, "base": base_v, "tuned": tuned_v, "delta": tuned_v - base_v, "ci95": [lo, hi],
            "n": n, "higher_is_better": higher_is_better, **extra}


def paired_entry(metric: str, base_vals, tuned_vals, **kw) -> dict:
    """paired_stat_entry for per-item values whose metric is their mean (accuracy, rates, losses)."""
    b = np.asarray(base_vals, dtype=float)
    t = np.asarray(tuned_vals, dtype=float)
    if len(b) != len(t):
        raise ValueError(f"{metric}: base and tuned have different item counts ({len(b)} vs {len(t)})")
    return paired_stat_entry(metric, len(b), lambda i: b[i].mean(), lambda i: t[i].mean(), **kw)


def value_entry(metric: str, base_v: float | None, tuned_v: float | None, *, n: int, higher_is_better: bool = True,
                ci95=None, **extra) -> dict:
    """An entry for a quantity without per-item pairing (e.g. a rate with its own test)."""
    delta = None if base_v is None or tuned_v is None else tuned_v - base_v
    return {"metric": metric, "base": base_v, "tuned": tuned_v, "delta": delta, "ci95": ci95, "n": n,
            "higher_is_better": higher_is_better, **extra}


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs."""
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5).pvalue)
