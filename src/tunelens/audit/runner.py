"""Run the suites for a base/tuned pair and write the ledger, per-suite items and a PR-ready summary.

A suite with headline metrics runs sequentially: items are drawn from its pool in chunks, in a seeded uniformly
random order, and after each chunk every headline delta gets its anytime-valid confidence sequence (stats.py).
The suite stops when each of them is decided — equivalent (the sequence lies inside ±margin), gain or cost (it
excludes 0) — firmly enough to survive Holm's adjustment across the audit, or when its pool, its limit or its
share of the time budget runs out; what is undecided then stays inconclusive. The audit's verdict is built from
the decisions that survive Holm's adjustment across all headline metrics of the audit.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .. import progress as P
from .. import stats as S
from ..errors import TunelensError
from ..io import atomic_open, read_jsonl, write_json, write_jsonl
from ..outdir import put_back, set_aside
from . import gate as G
from .core import SUITES, AuditContext, Headline, SuiteResult, default_suites, entry_label, suite_of

LEDGER_SCHEMA = "tunelens.ledger/2"  # 2: typed entries with roles, confidence sequences, decisions, verdict
DEFAULT_MARGIN = 0.05  # equivalence margin of a headline delta: 5 points of a rate, 0.05 nats of a loss


def check_tokenizers(base, tuned, allow_mismatch: bool = False) -> None:
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        if allow_mismatch:
            return
        raise TunelensError(f"base '{base.name}' and tuned '{tuned.name}' have different tokenizers or vocabularies "
                            f"({len(base.tokenizer)} vs {len(tuned.tokenizer)} tokens); per-item log-probabilities "
                            "would not be comparable. Pass --allow-tokenizer-mismatch to audit anyway")


def run_audit(ctx: AuditContext, suites: list[str] | None = None, out: str | Path | None = None,
              gates: list[str] | None = None, resume: bool = False) -> dict:
    """Run suites (by default every registered suite that says `default`, by rank: core.default_suites); a failing
    suite is marked failed, the rest go on.

    `resume`: `out` holds an earlier attempt of this same audit (same models and settings; the caller vouches
    for that, as the pipeline's stage hash does) in which some suites failed. The suites that succeeded there
    are taken from its ledger and items files, and only the others run; `reused_suites` in the ledger names them.
    """
    from ..engines import check_engines, engine_of

    check_engines(ctx.base, ctx.tuned)  # the comparison is of models, never of engines
    suites = list(suites or default_suites())
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise TunelensError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(SUITES)}")
    ledger = {"schema": LEDGER_SCHEMA, "tunelens_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "base": _model_info(ctx.base), "tuned": _model_info(ctx.tuned),
              "tasks": [s.name for s in ctx.tasks], "seed": ctx.seed, "limit": ctx.limit,
              "mode": "sequential" if ctx.sequential else "full", "chunk": ctx.chunk, "budget": ctx.budget,
              "alpha": S.ALPHA, "margins": dict(ctx.margins), "engine": engine_of(ctx.base),
              "precision": ctx.precision or {"requested": "fp32", "chosen": "fp32", "why": "not chosen by the caller"},
              "suites": {}}
    out = Path(out) if out else None
    earlier = _earlier_attempt(out, suites) if resume and out else {}
    # an earlier audit's results here are moved aside, so items/ starts empty and no stale items file can be
    # read as part of this audit; deleted once this audit is written, put back if it fails
    aside = set_aside(out, ".previous-audit-", _RESULTS) if out and out.is_dir() and not resume else None
    try:
        ledger, gate_error = _run(ctx, suites, out, gates, ledger, earlier)
    except BaseException:
        if aside is not None:
            put_back(out, aside)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    if gate_error:  # what was measured is written; then the bad gate is reported
        raise gate_error
    return ledger


_RESULTS = ("items", "ledger.json", "summary.md")


def _run(ctx: AuditContext, suites: list[str], out: Path | None, gates, ledger: dict,
         earlier: dict) -> tuple[dict, TunelensError | None]:
    if earlier:
        ledger["reused_suites"] = list(earlier)
    start = time.perf_counter()
    deadline = None if ctx.budget is None else start + ctx.budget
    # a suite stops when each of its decisions would survive Holm across the audit's k headline metrics: its
    # anytime-valid p-value is at most alpha / k (Holm rejects every such one, whatever the others do)
    k = sum(SUITES[name]().headline_count(ctx) for name in suites if name not in earlier)
    k += sum(e.get("role") == "headline" for b, _ in earlier.values() for e in b.get("entries", []))
    ledger["stop_alpha"] = stop_alpha = S.ALPHA / max(1, k)
    for i, name in enumerate(suites):
        P.step(i, len(suites))
        if name in earlier:
            ledger["suites"][name], ctx.cache.setdefault("records", {})[name] = earlier[name]
            continue
        t0 = time.perf_counter()
        # the budget left is shared by the suites still to run; one finishing early leaves more to the next
        share = None if deadline is None else t0 + (deadline - t0) / (len(suites) - i)
        try:
            res, looks, stop = _run_suite(ctx, SUITES[name](), share, stop_alpha)
        except Exception as e:  # a broken suite must not take the whole audit down
            ledger["suites"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(limit=5), "entries": [],
                                      "seconds": round(time.perf_counter() - t0, 2)}
            continue
        finally:
            ctx.look, ctx.quick = None, False
        ledger["suites"][name] = {"status": "ok", "description": SUITES[name].description,
                                  "entries": [e.to_dict() for e in res.entries], "notes": res.notes,
                                  "n_records": len(res.records), "looks": looks, "stop": stop,
                                  "order": _order_digest(res.records),
                                  "seconds": round(time.perf_counter() - t0, 2)}
        if out:
            write_jsonl(out / "items" / f"{name}.jsonl", res.records)
        ctx.cache.setdefault("records", {})[name] = res.records
    judges = ctx.cache.get("judges") or {}
    if judges:
        ledger["judge"] = judge_record(judges)
    P.step(len(suites), len(suites))
    ledger["seconds"] = round(time.perf_counter() - start, 2)
    ledger["generated_tokens"] = ctx.cache.get("generated_tokens", 0)
    ledger["holm"] = apply_holm(ledger)
    ledger["verdict"] = overall_verdict(ledger)
    gate_error = None
    if gates:
        try:
            ledger["gates"] = [G.evaluate(g, ledger) for g in gates]
        except TunelensError as e:  # still write what was measured, then report the bad gate
            gate_error = e
    if out:
        write_json(out / "ledger.json", ledger)
        with atomic_open(out / "summary.md") as f:
            f.write(summary_markdown(ledger, ctx.cache.get("records", {})))
    return ledger, gate_error


def judge_record(judges: dict) -> dict:
    """What judged the replies: the audit's judge (spec, version, scope, measured card) and, per prompt set, the
    judge used there when it differs (a harm-only guard leaves safe prompts to the default judge)."""
    first = next(iter(judges.values()))
    rec = first.describe()
    rec["used_for"] = {task: j.spec for task, j in judges.items()}
    others = {j.spec: j.describe() for j in judges.values() if j.spec != first.spec}
    if others:
        rec["also"] = others
    return rec


def _margin(ctx: AuditContext, suite: str, metric: str) -> float:
    m = ctx.margins
    return float(m.get(f"{suite}.{metric}", m.get(metric, m.get(metric.split(".")[-1], DEFAULT_MARGIN))))


def _sequences(ctx: AuditContext, suite: str, headline: list[Headline]) -> dict[str, tuple]:
    """metric -> (sequence, decision) for each headline series."""
    out = {}
    for h in headline:
        d = [t - b for b, t in zip(h.base, h.tuned)]
        cs = S.sequence(d, h.pool, span=h.span, margin=_margin(ctx, suite, h.metric))
        out[h.metric] = (cs, S.decide(cs, higher_is_better=h.higher_is_better))
    return out


def _run_suite(ctx: AuditContext, suite, deadline: float | None,
               stop_alpha: float = S.ALPHA) -> tuple[SuiteResult, list[dict], str | None]:
    """Run one suite: sequentially (looks after each chunk) when it has headline metrics and the audit is
    sequential, else once on its whole pool. It stops once every headline metric is decided with an
    anytime-valid p-value ≤ `stop_alpha`. Returns the result (entries annotated), the looks, the stop reason."""
    tokens_before = ctx.cache.get("generated_tokens", 0)
    looks: list[dict] = []
    t_start = time.perf_counter()
    cap = lambda h: h.cap if h.cap is not None else ctx.capped(h.pool)
    if not (ctx.sequential and suite.sequential):
        res = suite.run(ctx)
        stop = None if not res.headline else "full pool" if all(cap(h) >= h.pool for h in res.headline) else \
            "limit reached"
        _annotate(ctx, suite, res, stop)
        return res, looks, stop
    ctx.look, ctx.quick = ctx.chunk, True
    while True:
        ctx.cache["generated_tokens"] = tokens_before  # a look recounts every item it uses
        res = suite.run(ctx)
        if not res.headline:
            stop = None
            break
        seqs = _sequences(ctx, suite.name, res.headline)
        drawn = max(len(h.base) for h in res.headline)
        hib = {h.metric: h.higher_is_better for h in res.headline}
        firm = [m for m, (cs, d) in seqs.items() if d != "inconclusive" and S.decision_p(cs, d, hib[m]) <= stop_alpha]
        looks.append({"n": drawn, "seconds": round(time.perf_counter() - t_start, 2),
                      "decided": sum(d != "inconclusive" for _, d in seqs.values()), "firm": len(firm)})
        if len(firm) == len(seqs):
            stop = "decided"
            break
        if ctx.look >= max(cap(h) for h in res.headline):  # every series has drawn all it may
            stop = "pool exhausted" if all(cap(h) >= h.pool for h in res.headline) else "limit reached"
            break
        if deadline is not None and time.perf_counter() >= deadline:
            stop = "budget"
            break
        ctx.look += ctx.chunk
    ctx.quick = False
    ctx.cache["generated_tokens"] = tokens_before
    res = suite.run(ctx)  # the final pass: every model result is cached; now with the fixed-n intervals
    _annotate(ctx, suite, res, stop)
    return res, looks, stop


def _annotate(ctx: AuditContext, suite, res: SuiteResult, stop: str | None) -> None:
    """Give each headline entry its sequence, decision, margin, p-value, MDE and stop reason; mark the others
    as measured on the items the suite drew."""
    seqs = _sequences(ctx, suite.name, res.headline)
    by_name = {h.metric: h for h in res.headline}
    small = sorted({h.pool for h in res.headline if ctx.limit is not None and h.pool < ctx.limit})
    if small:
        res.notes.append(f"limit {ctx.limit} is larger than the pool ({', '.join(map(str, small))} items): "
                         "the whole pool is used")
    for e in res.entries:
        h = by_name.get(e.metric)
        if h is None:
            continue
        cs, decision = seqs[e.metric]
        d = [t - b for b, t in zip(h.base, h.tuned)]
        e.role, e.pool, e.cs95, e.decision, e.margin = "headline", h.pool, cs.as_list(), decision, cs.margin
        e.p = S.decision_p(cs, decision, h.higher_is_better)
        e.mde, e.stop = S.mde(d), stop
        if h.clipped:
            e.extra["clipped"] = h.clipped


def apply_holm(ledger: dict) -> dict:
    """Holm's adjustment across every headline decision of the audit: each entry gets `p_holm` and
    `holm_rejected`; returns a summary (k, decided, surviving)."""
    entries = [e for _, e in headline_rows(ledger) if e.get("p") is not None]
    if not entries:
        return {"k": 0, "decided": 0, "surviving": 0}
    adj, rejected = S.holm([e["p"] for e in entries])
    for e, a, r in zip(entries, adj, rejected):
        e["p_holm"], e["holm_rejected"] = a, bool(r and e["decision"] != "inconclusive")
    decided = sum(e["decision"] != "inconclusive" for e in entries)
    return {"k": len(entries), "decided": decided, "surviving": sum(e["holm_rejected"] for e in entries)}


VERDICTS = ("improved", "improved with costs", "regressed", "no material change", "insufficient evidence")


def overall_verdict(ledger: dict) -> dict:
    """One verdict from the headline decisions that survive Holm: `improved` (gains, no cost), `improved with
    costs`, `regressed` (costs and no gain on the task), `no material change` (every headline metric shown
    equivalent) or `insufficient evidence`. Nothing the sequences did not decide is labelled."""
    heads = headline_rows(ledger)
    kept = [(s, e) for s, e in heads if e.get("holm_rejected") and e.get("decision") not in (None, "inconclusive")]
    gains = [f"{s}.{e['metric']}" for s, e in kept if e["decision"] == "gain"]
    costs = [f"{s}.{e['metric']}" for s, e in kept if e["decision"] == "cost"]
    equiv = [f"{s}.{e['metric']}" for s, e in kept if e["decision"] == "equivalent"]
    open_ = [f"{s}.{e['metric']}" for s, e in heads
             if not e.get("holm_rejected") or e.get("decision") in (None, "inconclusive")]
    task_gain = [g for g in gains if g.startswith("task.")]
    if costs and (task_gain or (gains and not any(s == "task" for s, _ in heads))):
        label = "improved with costs"
    elif costs:
        label = "regressed"
    elif gains:
        label = "improved"
    elif heads and len(equiv) == len(heads):
        label = "no material change"
    else:
        label = "insufficient evidence"
    parts = []
    if gains:
        parts.append("gain in " + ", ".join(gains))
    if costs:
        parts.append("cost in " + ", ".join(costs))
    if equiv:
        parts.append("no material change in " + ", ".join(equiv))
    if open_:
        parts.append(f"{len(open_)} of {len(heads)} headline metric(s) not decided: " + ", ".join(open_))
    if not heads:
        parts.append("no suite with headline metrics ran")
    return {"label": label, "why": "; ".join(parts), "gains": gains, "costs": costs, "equivalent": equiv,
            "undecided": open_}


def _order_digest(records: list[dict]) -> str | None:
    """A short hash of the item ids the suite used, in draw order: two audits that drew the same items in the
    same order (same pools, seed and stopping point) have the same one."""
    import hashlib

    ids = [str(r["id"]) for r in records if "id" in r]
    return hashlib.blake2b("\0".join(ids).encode(), digest_size=8).hexdigest() if ids else None


def failed_suites(ledger: dict) -> list[str]:
    """The suites of a ledger that did not finish ok."""
    return [s for s, b in ledger["suites"].items() if b.get("status") != "ok"]


def _earlier_attempt(out: Path, suites: list[str]) -> dict[str, tuple[dict, list[dict]]]:
    """{suite: (ledger block, records)} for the suites an earlier ledger in `out` has as ok, with their items."""
    try:
        prev = json.loads((out / "ledger.json").read_text())
    except (OSError, ValueError):
        return {}
    found = {}
    for name in suites:
        block = (prev.get("suites") or {}).get(name)
        items = out / "items" / f"{name}.jsonl"
        if not isinstance(block, dict) or block.get("status") != "ok" or not items.is_file():
            continue
        try:
            records = read_jsonl(items)
        except ValueError:
            continue
        if len(records) == block.get("n_records"):
            found[name] = (block, records)
    return found


def _model_info(h) -> dict:
    from ..engines import engine_info

    return {"name": h.name, "kind": h.kind, "path": str(h.path) if h.path else None, "base": h.base,
            **engine_info(h)}


def _fmt(v, signed=False) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def decision_of(entry: dict) -> str:
    """A headline entry's decision (gain / cost / equivalent / inconclusive); '' for every other entry (its
    interval is measured, not decided)."""
    if entry.get("role") != "headline":
        return ""
    d = entry.get("decision")
    return d if d in S.DECISIONS else "inconclusive"


def decision_label(entry: dict) -> str:
    """The decision as summary.md, the CLI, the sweep table and the report print it: ' (not after Holm)'
    appended to a decision Holm's adjustment undoes."""
    d = decision_of(entry)
    return d if d in ("", "inconclusive") or entry.get("holm_rejected") else f"{d} (not after Holm)"


def _interval(ci) -> str:
    return f"[{_fmt(ci[0], True)}, {_fmt(ci[1], True)}]" if ci and ci[0] is not None else ""


def headline_rows(ledger: dict | None) -> list[tuple[str, dict]]:
    """(suite, entry) for every headline entry of the suites that finished, in ledger order."""
    return [(s, e) for s, b in ((ledger or {}).get("suites") or {}).items()
            if isinstance(b, dict) and b.get("status") == "ok" for e in b.get("entries") or []
            if e.get("role") == "headline"]


def verdict_line(ledger: dict) -> str:
    v = ledger.get("verdict") or {}
    return f"**Verdict: {v.get('label', 'insufficient evidence')}** — {v.get('why', '')}"


def summary_markdown(ledger: dict, records: dict) -> str:
    lines = [f"## tunelens audit: `{ledger['tuned']['name']}` vs `{ledger['base']['name']}`", "", verdict_line(ledger), ""]
    for g in ledger.get("gates", []):
        lines.append(f"- gate `{g['expr']}`: **{g.get('outcome', 'pass' if g.get('passed') else 'fail')}**"
                     + (f" ({g['why']})" if g.get("why") else ""))
    if ledger.get("gates"):
        lines.append("")
    heads = headline_rows(ledger)
    if heads:
        lines += ["### Headline decisions", "",
                  "| suite | metric | base | tuned | delta | decision | 95% confidence sequence | fixed-n 95% CI | "
                  "n / pool | stop | MDE | Holm p |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for suite, e in heads:
            decision = decision_label(e)
            lines.append(f"| {suite} | {entry_label(suite, e)} | {_fmt(e['base'])} | {_fmt(e['tuned'])} | "
                         f"{_fmt(e['delta'], True)} | **{decision}** | {_interval(e.get('cs95'))} | "
                         f"{_interval(e.get('ci95'))} | {e['n']} / {e.get('pool')} | {e.get('stop') or ''} | "
                         f"{_fmt(e.get('mde'))} | {_fmt(e.get('p_holm'))} |")
        h = ledger.get("holm") or {}
        lines += ["", f"Decisions: a gain or cost when the anytime-valid confidence sequence excludes 0, equivalent "
                      f"when it lies inside ±margin ({DEFAULT_MARGIN} by default); {h.get('surviving', 0)} of "
                      f"{h.get('k', 0)} headline metric(s) stay decided after Holm's adjustment.", ""]
    lines += ["### Everything measured", "",
              "Secondary metrics are measured on the items each suite drew; their fixed-n interval is not a decision. "
              "Diagnostics describe a change without rating it.", "",
              "| suite | metric | role | base | tuned | delta | fixed-n 95% CI | n | |", "|---|---|---|---|---|---|---|---|---|"]
    for suite, block in ledger["suites"].items():
        if block["status"] != "ok":
            lines.append(f"| {suite} | **failed**: {block['error'][:120]} | | | | | | | |")
            continue
        for e in block["entries"]:
            if e.get("role") == "headline":
                continue
            ci_s = "insufficient sample" if e.get("insufficient") else _interval(e.get("ci95"))
            note = e.get("meaning") or ""
            if e.get("mcnemar_p") is not None:
                note = (note + "; " if note else "") + f"McNemar p = {e['mcnemar_p']:.3g}"
            lines.append(f"| {suite} | {entry_label(suite, e)} | {e.get('role', '')} | {_fmt(e['base'])} | {_fmt(e['tuned'])} | "
                         f"{_fmt(e['delta'], True)} | {ci_s} | {e['n']} | {note} |")
    worst = _worst_flips(records)
    if worst:
        lines += ["", "### Worst flips", ""]
        for suite, r in worst:
            prompt = str(r.get("prompt") or r.get("question") or "")[-300:].replace("\n", " ")
            lines += [f"- **{suite}** `{r.get('id')}`: {prompt}",
                      f"  - base: {_quote(r['base'])}", f"  - tuned: {_quote(r['tuned'])}"]
    lines.append("")
    return "\n".join(lines)


def _quote(side) -> str:
    if isinstance(side, dict):
        text = side.get("output", side.get("pred", ""))
        extra = side.get("verdict")
        return f"`{str(text)[:200]!s}`" + (f" ({extra})" if extra else "")
    return f"`{str(side)[:200]}`"


def _worst_flips(records: dict, k: int = 5) -> list[tuple[str, dict]]:
    """Each suite's own worst flips (Suite.summary_flips: the safety suite's lost refusals, the compatibility
    suite's negative flips), suites by rank."""
    out = []
    for suite in sorted(records, key=lambda s: (suite_of(s).rank, s)):
        out += [(suite, r) for r in suite_of(suite).summary_flips(records[suite])]
    return out[:k]
