"""What the report says, computed once from RunData and rendered by both html.py and markdown.py:
the audit's verdict and its headline decisions (the only gains and costs), the gates with their three outcomes,
the flip matrix, the worst flips and the per-category safety counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..audit import gate as G
from ..audit.core import GEN_RIGHT, suite_of  # noqa: F401 - GEN_RIGHT: the flips' legend
from ..audit.core import entry_label as metric_label  # noqa: F401 - the renderers' metric label
from ..audit.runner import VERDICTS, decision_label, decision_of, headline_rows
from ..errors import TunelensError
from .load import RunData


def ci_of(entry: dict):
    ci = entry.get("ci95") or entry.get("ci")
    return ci if ci and len(ci) == 2 and ci[0] is not None and ci[1] is not None else None


def direction(entry: dict) -> str:
    """'gain' or 'cost' for a headline entry the confidence sequence decided that way; '' for every other entry.

    Only headline decisions are gains or costs: a secondary entry's fixed-n interval is measured on the items the
    suite drew and a diagnostic describes a change without rating it, so neither is ever called one."""
    if entry.get("role") != "headline":
        return ""
    d = entry.get("decision")
    return d if d in ("gain", "cost") else ""


def interval_text(entry: dict) -> str:
    """The fixed-n 95% interval of an entry, or 'insufficient sample' for a subgroup too small to get one."""
    if entry.get("insufficient"):
        return INSUFFICIENT
    return fmt_ci(ci_of(entry))


INSUFFICIENT = "insufficient sample"


def reading(entry: dict) -> str:
    """What an entry's row says beside its numbers: the decision of a headline entry, the meaning of a diagnostic,
    'measured, not a decision' for a secondary entry; McNemar's p when the entry has one."""
    role = entry.get("role")
    if role == "headline":
        text = decision_label(entry)
    elif role == "diagnostic":
        text = entry.get("meaning") or "describes a change without rating it"
    elif role == "secondary":
        text = "measured on the items drawn, not a decision"
    else:
        text = ""
    if entry.get("mcnemar_p") is not None:
        text = (text + "; " if text else "") + f"McNemar p = {fmt_p(entry['mcnemar_p'])}"
    return text


def extra_columns(suite: str, entry: dict) -> list[tuple[str, str]]:
    """[(header, text)]: the columns the suite adds to its table (Suite.report_columns), for one entry."""
    out = []
    for head, key in suite_of(suite).report_columns:
        v = entry.get(key)
        out.append((head, fmt(v) if v is None or isinstance(v, (int, float)) else str(v)))
    return out


# ----------------------------------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    label: str
    why: str
    recorded: bool  # False: the ledger holds no verdict (no ledger, or one older than tunelens.ledger/2)
    gains: list = field(default_factory=list)
    costs: list = field(default_factory=list)
    equivalent: list = field(default_factory=list)
    undecided: list = field(default_factory=list)

    @property
    def css(self) -> str:
        return {"improved": "pass", "improved with costs": "mixed", "regressed": "fail"}.get(self.label, "none")


def audit_verdict(data_or_ledger) -> Verdict:
    """The audit's verdict from the ledger; 'insufficient evidence' when there is no ledger or it records none."""
    ledger = data_or_ledger.ledger if isinstance(data_or_ledger, RunData) else data_or_ledger
    if not ledger:
        return Verdict("insufficient evidence", "no audit ledger to judge the tuned model by", False)
    v = ledger.get("verdict")
    if not isinstance(v, dict) or v.get("label") not in VERDICTS:
        schema = ledger.get("schema") or "without a schema"
        return Verdict("insufficient evidence", f"this ledger ({schema}) records no sequential verdict, so no change "
                       "in it is decided; rerun `tunelens audit` for headline decisions", False)
    lists = {k: [str(x) for x in v.get(k) or []] for k in ("gains", "costs", "equivalent", "undecided")}
    return Verdict(v["label"], str(v.get("why") or ""), True, **lists)


@dataclass
class Decision:
    suite: str
    entry: dict

    @property
    def metric(self) -> str:
        return metric_label(self.suite, self.entry)  # a robustness entry names its task

    @property
    def direction(self) -> str:
        return direction(self.entry)

    @property
    def label(self) -> str:
        return decision_label(self.entry)

    @property
    def holm_kept(self) -> bool:
        return bool(self.entry.get("holm_rejected"))


def headline_decisions(ledger: dict | None) -> list[Decision]:
    """Every headline entry of the suites that finished, in ledger order."""
    return [Decision(suite, e) for suite, e in headline_rows(ledger)]


def gains_and_costs(ledger: dict | None) -> tuple[list[Decision], list[Decision]]:
    """The headline decisions that are gains and those that are costs; nothing else is either."""
    heads = headline_decisions(ledger)
    return [d for d in heads if d.direction == "gain"], [d for d in heads if d.direction == "cost"]


def decision_note(ledger: dict | None) -> str:
    """The sentence under the headline table: how a decision is reached and how many survive Holm."""
    heads = headline_decisions(ledger)
    margins = sorted({float(d.entry["margin"]) for d in heads if d.entry.get("margin") is not None})
    m = f" ({', '.join(fmt(x, digits=3) for x in margins)} here)" if margins else ""
    h = (ledger or {}).get("holm") or {}
    k = h.get("k", len(heads))
    decided = h.get("decided", sum(decision_of(d.entry) != "inconclusive" for d in heads))
    surviving = h.get("surviving", sum(d.holm_kept for d in heads))
    return (f"A headline metric is a gain or a cost when its anytime-valid 95% confidence sequence excludes 0, "
            f"equivalent when the sequence lies inside ±margin{m}, and inconclusive otherwise. "
            f"{surviving} of {decided} decision(s) survive Holm's adjustment across the {k} headline metric(s); "
            "only those count in the verdict.")


def suite_progress(block: dict) -> str:
    """'stopped: decided · n 64 / pool 200 · 3 looks' for a sequential suite; '' when the block says nothing."""
    parts = []
    if block.get("stop"):
        parts.append(f"stopped: {block['stop']}")
    heads = [e for e in block.get("entries") or [] if e.get("role") == "headline"]
    pools = [e["pool"] for e in heads if e.get("pool") is not None]
    looks = block.get("looks") or []
    n = looks[-1].get("n") if looks else max((e.get("n") or 0 for e in heads), default=None)
    if pools:
        parts.append(f"n {n if n is not None else '–'} / pool {max(pools)}")
    if looks:
        parts.append(f"{len(looks)} look(s)")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------------------- gates

GATE_OUTCOMES = ("pass", "fail", "inconclusive", "error")


@dataclass
class GateResult:
    expr: str
    outcome: str  # pass / fail / inconclusive / error (the expression could not be evaluated)
    why: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool | None:
        """True only for a pass: an inconclusive gate is never a passed one. None: not evaluated."""
        return None if self.outcome == "error" else self.outcome == "pass"


def _recorded_gate(g: dict) -> GateResult:
    outcome = g.get("outcome")
    if outcome not in ("pass", "fail", "inconclusive"):
        outcome = "pass" if g.get("passed") else "fail"
    return GateResult(str(g.get("expr", "")), outcome, g.get("why"))


def gate_results(data: RunData) -> list[GateResult]:
    """Gates the audit recorded, then the run config's gates it did not record, evaluated on the ledger here."""
    ledger = data.ledger or {}
    out = []
    if ledger.get("gates"):
        out = [_recorded_gate(g) for g in ledger["gates"] if isinstance(g, dict)]
    else:
        gate = ledger.get("gate")
        if isinstance(gate, dict) and gate.get("checks"):
            out = [_recorded_gate(g) for g in gate["checks"] if isinstance(g, dict)]
    if not data.ledger:
        return out
    seen = {g.expr for g in out}
    for expr in _config_gates((data.run or {}).get("config") or {}):
        if expr in seen:
            continue
        seen.add(expr)
        try:
            r = G.evaluate(expr, data.ledger)
            out.append(GateResult(expr, r["outcome"], r.get("why")))
        except TunelensError as e:
            out.append(GateResult(expr, "error", error=str(e)))
        except (KeyError, TypeError, ValueError) as e:  # a ledger too old or odd for the gate's ranges
            out.append(GateResult(expr, "error", error=f"could not evaluate on this ledger ({type(e).__name__}: {e})"))
    return out


def gate_summary(gates: list[GateResult]) -> tuple[str, str]:
    """(css class, badge word): GATE FAILED when any gate fails or cannot be evaluated, else GATE INCONCLUSIVE
    when any is inconclusive, else GATE PASSED."""
    outcomes = {g.outcome for g in gates}
    if outcomes & {"fail", "error"}:
        return "fail", "GATE FAILED"
    if "inconclusive" in outcomes:
        return "mixed", "GATE INCONCLUSIVE"
    return "pass", "GATE PASSED"


def gate_order(gates: list[GateResult]) -> list[GateResult]:
    """Failures and errors first, then inconclusive gates, then passes."""
    rank = {"error": 0, "fail": 0, "inconclusive": 1, "pass": 2}
    return sorted(gates, key=lambda g: rank.get(g.outcome, 0))


GATE_WORDS = {"pass": "passed", "fail": "failed", "inconclusive": "inconclusive", "error": "error"}


def _config_gates(cfg: dict) -> list[str]:
    for holder in (cfg, cfg.get("audit") or {}):
        if not isinstance(holder, dict):
            continue
        for key in ("gates", "gate"):
            g = holder.get(key)
            if isinstance(g, str):
                return [g]
            if isinstance(g, list):
                return [str(x) for x in g]
    return []


# ------------------------------------------------------------------------------------------------------ flips

def flip_suites(records: dict[str, list[dict]]) -> list[str]:
    """The suites of these records that score items right or wrong (Suite.flip_rank set), by rank."""
    return sorted((s for s in records if suite_of(s).flip_rank is not None), key=lambda s: (suite_of(s).rank, s))


def flip_matrix(records: dict[str, list[dict]]) -> list[dict]:
    """Per suite (and task): counts of base right/wrong × tuned right/wrong."""
    rows = {}
    for suite in flip_suites(records):
        right = suite_of(suite).right
        for r in records[suite]:
            b, t = right(r.get("base"), r), right(r.get("tuned"), r)
            if b is None or t is None:
                continue
            group = suite + (f" / {r['task']}" if r.get("task") else "")
            c = rows.setdefault(group, {"group": group, "suite": suite, "rr": 0, "rw": 0, "wr": 0, "ww": 0})
            c[("r" if b else "w") + ("r" if t else "w")] += 1
    for c in rows.values():
        c["n"] = c["rr"] + c["rw"] + c["wr"] + c["ww"]
    return list(rows.values())


@dataclass
class Flip:
    suite: str
    id: str
    prompt: str
    base: str
    tuned: str
    note: str  # e.g. "refused → complied", "answer: blue"


def _side_text(side, rec: dict) -> str:
    if not isinstance(side, dict):
        return str(side)
    if "output" in side:
        text = str(side["output"])
    elif "pred" in side:
        pred = side["pred"]
        choices = rec.get("choices")
        text = str(choices[pred]) if isinstance(pred, int) and choices and 0 <= pred < len(choices) else str(pred)
    else:
        text = ""
    extra = side.get("verdict")
    return text + (f"  [{extra}]" if extra else "")


def worst_flips(records: dict[str, list[dict]], k: int = 6) -> list[Flip]:
    """Right→wrong flips, suites in their flip_rank order (lost refusals first, then the task, forgetting and
    context, then new over-refusals); within a suite generations with the largest score drop come first."""
    out = []
    for suite in sorted(flip_suites(records), key=lambda s: suite_of(s).flip_rank):
        bad, s = [], suite_of(suite)
        for r in records[suite]:
            b, t = s.right(r.get("base"), r), s.right(r.get("tuned"), r)
            if b and t is False:
                drop = _score(r.get("base")) - _score(r.get("tuned"))
                bad.append((-drop, r))
        for _, r in sorted(bad, key=lambda x: x[0]):
            out.append(Flip(suite, str(r.get("id", "")), str(r.get("prompt") or r.get("question") or ""),
                            _side_text(r.get("base"), r), _side_text(r.get("tuned"), r), s.flip_note(r)))
    return out[:k]


def _score(side) -> float:
    return float(side.get("token_f1", 0.0)) if isinstance(side, dict) else 0.0


# ----------------------------------------------------------------------------------------------------- safety

from ..audit.core import MIN_SUBGROUP as MIN_CATEGORY  # fewer items: counts, not a rate comparison


def judge_card(data: RunData) -> dict | None:
    """{spec, version, card, used_for, lines}: what judged the safety replies and its measured error, from the
    ledger (None for a ledger without a judge record: one written before judges were recorded). `lines` are the
    sentences both the HTML and the Markdown report print."""
    j = (data.ledger or {}).get("judge")
    if not j:
        return None
    card = j.get("card")
    lines = [f"Replies were judged by `{j.get('spec')}` (version {j.get('version')})."]
    if card:
        lines.append(f"Measured on {card['n']} held-out labelled replies (requests it never saw): accuracy "
                     f"{card['accuracy']:.3f} (refusal / partial / compliance / degenerate), refusal vs not "
                     f"{card['refusal_vs_not_accuracy']:.3f}.")
        st = card.get("safety_tune_refusals")
        if st:
            lines.append(f"Of the {st['n']} refusals a --safety-mix tune learns from, {st['read_as_refusal']:.1%} "
                         "are read as refusals.")
        lines.append("Rates count partial (declined or warned, then delivered) as harmful compliance, never as a "
                     "refusal; the judge_corrected.* entries correct each rate for the error below (Rogan–Gladen).")
    else:
        lines.append("This judge has no measured card, so its error is unknown and no rate is corrected for it; "
                     f"measure it with `tunelens judge --evaluate --judge {j.get('spec')}`.")
    others = {t: s for t, s in (j.get("used_for") or {}).items() if s != j.get("spec")}
    if others:
        lines.append("Judged by another judge: " + ", ".join(f"{t} by {s}" for t, s in others.items()) +
                     " (a harm classifier cannot tell a refused safe request from an answered one).")
    return {"spec": j.get("spec"), "version": j.get("version"), "card": card, "lines": lines}


def safety_categories(data: RunData) -> list[dict]:
    """[{category, base, tuned, delta, ci, n, base_count, tuned_count, insufficient}] from the ledger's
    refusal_rate.<category> entries (records as fallback). A category with fewer than MIN_CATEGORY items (or one
    the ledger marks `insufficient`) is flagged: its counts are shown, its rates are not compared."""
    block = ((data.ledger or {}).get("suites") or {}).get("safety") or {}
    rows = []
    for e in block.get("entries") or []:
        if not e.get("metric", "").startswith("refusal_rate."):
            continue
        n = e.get("n")
        rows.append({"category": e.get("category") or e["metric"].split(".", 1)[1], "base": e.get("base"),
                     "tuned": e.get("tuned"), "delta": e.get("delta"), "ci": None if e.get("insufficient") else ci_of(e),
                     "n": n, "base_count": _count(e.get("base"), n), "tuned_count": _count(e.get("tuned"), n),
                     "insufficient": bool(e.get("insufficient")) or not isinstance(n, int) or n < MIN_CATEGORY})
    if rows or not data.records.get("safety"):
        return rows
    cats: dict[str, list] = {}
    for r in data.records["safety"]:
        cats.setdefault(r.get("category") or "uncategorised", []).append(r)
    for cat, rs in sorted(cats.items()):
        kb = sum((x.get("base") or {}).get("verdict") == "refusal" for x in rs)
        kt = sum((x.get("tuned") or {}).get("verdict") == "refusal" for x in rs)
        b, t = kb / len(rs), kt / len(rs)
        rows.append({"category": cat, "base": b, "tuned": t, "delta": t - b, "ci": None, "n": len(rs),
                     "base_count": kb, "tuned_count": kt, "insufficient": len(rs) < MIN_CATEGORY})
    return rows


def _count(rate, n) -> int | None:
    return None if rate is None or not isinstance(n, int) else int(round(rate * n))


def count_text(k, n) -> str:
    return "–" if k is None or n is None else f"{k} / {n}"


# ----------------------------------------------------------------------------------------------------- repair

def tradeoff_axes(sweep: dict) -> tuple[str | None, str | None]:
    """(x, y) of the trade-off chart: the first task-like axis and the refusal-rate axis."""
    axes = list(sweep.get("axes") or [])
    y = next((a for a in axes if a == "safety.refusal_rate"), None) or next((a for a in axes if "refusal" in a), None)
    x = next((a for a in axes if a != y and a.startswith("task.")), None) or next((a for a in axes if a != y), None)
    return x, y


def fmt(v, signed: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) and not signed:
        return str(v)
    if v and abs(v) < 10 ** -digits:  # keep tiny nonzero changes visible instead of printing 0.000
        return f"{v:+.1e}" if signed else f"{v:.1e}"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def fmt_ci(ci, signed: bool = True) -> str:
    return f"[{fmt(ci[0], signed)}, {fmt(ci[1], signed)}]" if ci and ci[0] is not None else "–"


REPAIR_INTERVALS = ("In grey beside each value, and as the chart's error bars: the paired fixed-n 95% interval of that "
                    "model's change from the base on the items its re-audit drew, placed on the value's scale (base "
                    "value + the change's interval) — the uncertainty of the comparison with the base, not of the "
                    "value alone, and not a comparison between two candidates.")


def cs_text(entry: dict) -> str:
    """The 95% confidence sequence of a headline entry; 'exact: whole pool' once every item of the pool is drawn.

    Sampling without replacement, the sequence closes on the pool's own mean when the pool is used up, so its
    interval has zero width there: the change is then known exactly for this pool (not for items outside it),
    which a zero-width interval such as [-0.057, -0.057] reads as a rounding slip instead of saying.
    """
    return "exact: whole pool" if _whole_pool(entry) else fmt_ci(entry.get("cs95"))


def cs_phrase(entry: dict) -> str:
    """``cs_text`` in a sentence: '95% confidence sequence [a, b]', or 'exact: whole pool'."""
    return cs_text(entry) if _whole_pool(entry) else f"95% confidence sequence {cs_text(entry)}"


def _whole_pool(entry: dict) -> bool:
    cs, n, pool = entry.get("cs95"), entry.get("n"), entry.get("pool")
    return bool(cs) and cs[0] is not None and isinstance(n, int) and isinstance(pool, int) and 0 < pool <= n


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"
