"""What every audit suite shares: the two models, the registry, and base-vs-tuned metric entries.

A suite is a small object: `run(ctx)` takes the audit context (both models, the user's tasks,
settings) and returns per-item records (both models side by side), a list of metric entries
(base value, tuned value, delta and a paired 95% interval, each an `Entry`), and its headline series: the
per-item values of the few metrics the suite's verdict rests on. The runner draws items in chunks, in a seeded
uniformly random order of the pool (data/order.draw_order: what the confidence sequences assume), calls `run`
again after each chunk (every model result is cached chunk by chunk, so a look costs no model work twice), and
stops the suite once every headline metric is decided (runner.py, stats.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks as C
from .. import metrics as M
from ..registry import registrar
from ..run.config import AuditSection

SUITES: dict[str, type["Suite"]] = {}

register = registrar(SUITES)


def default_suites() -> tuple[str, ...]:
    """The suites an audit runs when none are named: every registered suite that says `default`, by rank — so a
    suite registered by a plug-in joins without an edit here."""
    return tuple(sorted((n for n, c in SUITES.items() if c.default), key=lambda n: (SUITES[n].rank, n)))


@dataclass
class AuditContext:
    base: object  # models.ModelHandle
    tuned: object
    tasks: list = field(default_factory=list)  # TaskSpec objects given with --task
    limit: int | None = None  # the most items drawn from each pool (the pool stays whole: see capped)
    n_boot: int = 1000
    seed: int = AuditSection.seed  # (the settings' defaults: `tunelens audit` and a run config's audit section)
    progress: bool = True
    batch_size: int = 64  # generation batch: a decode step at 64 rows yields ~1.5x the tokens/s of 32 on 2 CPU cores
    cache: dict = field(default_factory=dict)  # results shared between suites (e.g. task evals)
    # the base model's results by key. Pass one dict to several audits against the same base with the same
    # settings (a repair sweep re-auditing candidates) and the base model's work is done once; a
    # base_store.BaseStore keeps them on disk for the next audit.
    base_cache: dict = field(default_factory=dict)
    sequential: bool = True  # stop a suite once its headline metrics are decided; False: every item of the pool
    chunk: int = AuditSection.chunk  # items drawn between two looks (and the unit the base model's results are cached in)
    budget: float | None = None  # seconds for the whole audit (sequential); None: no bound
    margins: dict = field(default_factory=dict)  # equivalence margins: "suite.metric" or "metric" -> margin
    judge: str = AuditSection.judge  # the refusal judge's spec (tunelens.judge): rules, probe, rules+probe, hf:PATH, guard:PATH
    precision: dict | None = None  # how both models are scored: precision.audit_precision's record (None: fp32)
    look: int | None = None  # set by the runner: items drawn so far in the running suite (None: the whole pool)
    quick: bool = False  # set by the runner during looks: entries skip their bootstrap

    def __post_init__(self):
        # every suite slices its items by the limit: a negative one would cut items off the end, a string fail
        # the suite at run time
        C.integer(self.limit, "limit", 1, null=True)
        C.integer(self.chunk, "chunk", 1)
        C.number(self.budget, "budget", above=0, null=True)
        for k, v in (self.margins or {}).items():
            C.number(v, f"margin {k}", above=0)

    @property
    def boot(self) -> int:
        """Bootstrap draws for an entry's fixed-n interval: none during the runner's looks."""
        return 0 if self.quick else self.n_boot

    def capped(self, pool: int) -> int:
        """The most items a suite draws from a pool of `pool`: all of them, or `limit`. The limit caps the draws,
        not the pool: the confidence sequences stay about the whole pool, so 12 drawn items of 228 never pass for
        a census of 12."""
        return pool if self.limit is None else min(pool, self.limit)

    def n_items(self, pool: int) -> int:
        """How many items of a pool of `pool` the running suite uses now: the look, capped by the limit."""
        n = self.capped(pool)
        return n if self.look is None else min(n, self.look)

    def pool(self, spec, split: str = "test") -> list:
        """A pool's items in draw order — seeded, uniformly random (data/order.py says why) — read once per
        audit, not once per look."""
        from ..data import load_items
        from ..data.order import draw_order

        key = ("pool", spec.name, spec.path, split)
        if key not in self.cache:
            self.cache[key] = draw_order(spec, load_items(spec, split), self.seed)
        return self.cache[key]

    def draw(self, spec, split: str = "test") -> list:
        """The items a suite uses now: the first draws of its pool, as many as the look and the limit allow."""
        items = self.pool(spec, split)
        return items[: self.n_items(len(items))]

    def per_model_chunks(self, key, n: int, fn: Callable) -> dict:
        """{"base": [...], "tuned": [...]} for items [0, n) of a draw order, computed chunk by chunk:
        `fn(role, handle, a, b)` returns the list for items [a, b). Each chunk is cached like `per_model`, so a
        later look (or the next audit, through a BaseStore) computes only the chunks it has not seen. `key` must
        name the pool (its size): another pool is drawn in another order."""
        out = {"base": [], "tuned": []}
        for a in range(0, n, self.chunk):
            b = min(a + self.chunk, n)
            part = self.per_model((*key, a, b), lambda role, h, a=a, b=b: fn(role, h, a, b))
            for role in out:
                out[role] += list(part[role])
        return out

    def models(self):
        return (("base", self.base), ("tuned", self.tuned))

    @property
    def eval_tasks(self) -> list:
        """The user's tasks the task-scoring suites evaluate: all but preference pairs, which only the preference
        suite reads (a pair has no single right answer to score)."""
        return [s for s in self.tasks if s.type != "preference"]

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
class Entry:
    """One metric of one suite in the ledger (schema tunelens.ledger/2; docs/audit.md lists the fields).

    Every entry has the fixed-n paired interval `ci95` over the `n` items used. A headline entry (`role`
    "headline") also has the anytime-valid confidence sequence `cs95` of the delta over a pool of `pool` items,
    its `decision` (gain / cost / equivalent / inconclusive) at `margin`, the anytime-valid `p` behind it and
    its Holm-adjusted reading `p_holm`, the `stop` reason, and `mde`: the smallest delta a fixed-n test at this
    n would detect with 80% power. A "diagnostic" entry describes a change without calling it good or bad
    (`meaning` says what it shows); a "secondary" entry is measured on the items the suite used, and its
    interval is not a decision."""

    metric: str
    base: float | None
    tuned: float | None
    delta: float | None
    ci95: list | None
    n: int
    higher_is_better: bool = True
    role: str = "secondary"
    pool: int | None = None
    cs95: list | None = None
    decision: str | None = None
    margin: float | None = None
    p: float | None = None
    p_holm: float | None = None
    holm_rejected: bool | None = None
    stop: str | None = None
    mde: float | None = None
    meaning: str | None = None
    insufficient: bool = False  # a subgroup too small for an interval: none is given
    extra: dict = field(default_factory=dict)  # task, category, count, mcnemar_p, templates, cluster, ...

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


@dataclass
class Headline:
    """The per-item values of a headline metric, in draw order, and the pool they are drawn from."""

    metric: str
    base: list
    tuned: list
    pool: int
    higher_is_better: bool = True
    span: tuple = (-1.0, 1.0)  # the range one item's delta can take
    cap: int | None = None  # the most items the suite draws (None: the pool, or the audit's limit)
    clipped: int = 0  # items whose delta was clipped into the span (reported)


@dataclass
class SuiteResult:
    records: list[dict]
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    headline: list[Headline] = field(default_factory=list)


class Suite:
    """An audit suite, declared whole in its own class: what it runs (`run`, `headline_count`), whether and where
    a default audit runs it, and how its results read in the CLI table, summary.md, the report and a repair
    sweep. The readers ask the suite (`suite_of`) and know no suite by name, so a new suite is one file; every
    declaration below has a default that suits a suite with plain metric entries."""

    name = "suite"
    description = ""
    sequential = True  # draws items in chunks until its headline metrics are decided (no headline: runs once)
    default = True  # runs when no suites are named (default_suites); False: only when asked for
    rank = 100  # place in the default audit and in listings (built-ins 10..80): the ledger's order
    #: extra columns of the suite's table in the report, after the metric: (header, entry field) pairs
    report_columns: tuple[tuple[str, str], ...] = ()
    #: None: its records are not scored right or wrong item by item; else they are (`right`), in the report's
    #: flip matrix, and its right-to-wrong flips come in this place among the worst flips
    flip_rank: int | None = None
    #: the metrics a repair sweep's trade-off table may take for the suite, in order of preference (`sweep_axis`)
    sweep_metrics: tuple[str, ...] = ()

    def headline_count(self, ctx: AuditContext) -> int:
        """How many headline metrics `run` will return: the runner needs the audit's total before it starts, to
        stop each suite only when its decisions are strong enough to survive Holm's adjustment across all."""
        return 0

    def run(self, ctx: AuditContext) -> SuiteResult:  # pragma: no cover - interface
        raise NotImplementedError

    def label(self, entry: dict) -> str:
        """The entry's metric as the CLI table, summary.md and the report name it."""
        return str(entry.get("metric", ""))

    def compact_entries(self, entries: list[dict]) -> list[dict]:
        """The entries report.md's one table of every suite lists (all of them unless the suite shows some in a
        table of their own)."""
        return entries

    def right(self, side, record: dict) -> bool | None:
        """Whether one model's answer to one record was right (None: the record has no such notion): a choice
        is correct, an instruction followed, a generation close to the reference (token F1 >= GEN_RIGHT)."""
        if not isinstance(side, dict):
            return None
        if "correct" in side:
            return bool(side["correct"])
        if "follows" in side:
            return float(side["follows"]) >= 0.5
        if "token_f1" in side:
            return float(side["token_f1"]) >= GEN_RIGHT
        return None

    def flip_note(self, record: dict) -> str:
        """What a right-to-wrong flip of this record lost, as the report's worst flips say it."""
        answer = record.get("answer")
        if isinstance(answer, int) and record.get("choices"):
            answer = record["choices"][answer]
        if answer is None and record.get("references"):
            answer = record["references"][0]
        return ((f"{record['task']} · " if record.get("task") else "")
                + (f"expected: {answer}" if answer is not None else "right → wrong"))

    def summary_flips(self, records: list[dict]) -> list[dict]:
        """The records summary.md lists as worst flips (none unless the suite says)."""
        return []

    def sweep_axis(self, names: set[str]) -> str | None:
        """The `suite.metric` a repair sweep's trade-off table uses for this suite, among the entry names of an
        audit: the first of `sweep_metrics` present."""
        return next((f"{self.name}.{m}" for m in self.sweep_metrics if f"{self.name}.{m}" in names), None)


GEN_RIGHT = 0.5  # a generation counts as right when its token F1 against the reference reaches this


def suite_of(name: str) -> Suite:
    """The registered suite of that name, to ask how its results read; a ledger's suite not registered in this
    process (a plug-in not loaded) reads as a plain Suite."""
    return SUITES[name]() if name in SUITES else Suite()


def entry_label(suite: str, entry: dict) -> str:
    """An entry's metric as the suite names it in tables (Suite.label)."""
    return suite_of(suite).label(entry)


def paired_stat_entry(metric: str, n: int, f_base: Callable, f_tuned: Callable, *, higher_is_better: bool = True,
                      n_boot: int = 1000, seed: int = 0, role: str = "secondary", meaning: str | None = None,
                      **extra) -> Entry:
    """A ledger entry for a metric computed on the same n items for both models.

    `f_base(idx)` / `f_tuned(idx)` compute the metric over an index array; the interval of the delta
    is a paired bootstrap (items resampled together for both models; an item stands for its whole cluster, e.g.
    all its paraphrases). `n_boot` 0 skips the interval (the runner's looks).
    """
    if n == 0:
        return Entry(metric, None, None, None, None, 0, higher_is_better, role=role, meaning=meaning, extra=extra)
    full = np.arange(n)
    base_v, tuned_v = float(f_base(full)), float(f_tuned(full))
    ci = None
    if n_boot:
        ci = list(M.bootstrap_ci_paired(lambda idx: f_tuned(idx) - f_base(idx), n, n_boot=n_boot, seed=seed))
    return Entry(metric, base_v, tuned_v, tuned_v - base_v, ci, n, higher_is_better, role=role, meaning=meaning,
                 extra=extra)


MIN_SUBGROUP = 10  # fewer items than this: a subgroup gets no interval (a percentile bootstrap of a handful of
# paired rates is [0, 0] whenever none of them changed), only its counts


def subgroup_entry(metric: str, base_vals, tuned_vals, **kw) -> Entry:
    """paired_entry for a subgroup (a safety category, ...): below MIN_SUBGROUP items it is marked
    `insufficient` and given no interval."""
    e = paired_entry(metric, base_vals, tuned_vals, **kw)
    if e.n < MIN_SUBGROUP:
        e.ci95, e.insufficient = None, True
    return e


def paired_entry(metric: str, base_vals, tuned_vals, **kw) -> Entry:
    """paired_stat_entry for per-item values whose metric is their mean (accuracy, rates, losses)."""
    b = np.asarray(base_vals, dtype=float)
    t = np.asarray(tuned_vals, dtype=float)
    if len(b) != len(t):
        raise ValueError(f"{metric}: base and tuned have different item counts ({len(b)} vs {len(t)})")
    return paired_stat_entry(metric, len(b), lambda i: b[i].mean(), lambda i: t[i].mean(), **kw)


def value_entry(metric: str, base_v: float | None, tuned_v: float | None, *, n: int, higher_is_better: bool = True,
                ci95=None, role: str = "secondary", meaning: str | None = None, **extra) -> Entry:
    """An entry for a quantity without per-item pairing (e.g. a rate with its own test)."""
    delta = None if base_v is None or tuned_v is None else tuned_v - base_v
    return Entry(metric, base_v, tuned_v, delta, ci95, n, higher_is_better, role=role, meaning=meaning, extra=extra)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs."""
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5).pvalue)
