"""Run the suites for a base/tuned pair and write the ledger, per-suite items and a PR-ready summary."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..errors import TunelensError
from ..io import atomic_open, read_jsonl, write_json, write_jsonl
from ..outdir import put_back, set_aside
from . import gate as G
from .core import SUITES, AuditContext

LEDGER_SCHEMA = "tunelens.ledger/1"
DEFAULT_SUITES = ("task", "safety", "over_refusal", "forgetting", "context", "robustness", "compatibility",
                  "calibration")


def check_tokenizers(base, tuned, allow_mismatch: bool = False) -> None:
    if base.tokenizer.get_vocab() != tuned.tokenizer.get_vocab():
        if allow_mismatch:
            return
        raise TunelensError(f"base '{base.name}' and tuned '{tuned.name}' have different tokenizers or vocabularies "
                            f"({len(base.tokenizer)} vs {len(tuned.tokenizer)} tokens); per-item log-probabilities "
                            "would not be comparable. Pass --allow-tokenizer-mismatch to audit anyway")


def run_audit(ctx: AuditContext, suites: list[str] | None = None, out: str | Path | None = None,
              gates: list[str] | None = None, resume: bool = False) -> dict:
    """Run suites (all registered by default); a suite that fails is marked failed and the rest go on.

    `resume`: `out` holds an earlier attempt of this same audit (same models and settings; the caller vouches
    for that, as the pipeline's stage hash does) in which some suites failed. The suites that succeeded there
    are taken from its ledger and items files, and only the others run; `reused_suites` in the ledger names them.
    """
    suites = list(suites or DEFAULT_SUITES)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise TunelensError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(SUITES)}")
    ledger = {"schema": LEDGER_SCHEMA, "tunelens_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "base": _model_info(ctx.base), "tuned": _model_info(ctx.tuned),
              "tasks": [s.name for s in ctx.tasks], "seed": ctx.seed, "limit": ctx.limit, "suites": {}}
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
    for name in suites:
        if name in earlier:
            ledger["suites"][name], ctx.cache.setdefault("records", {})[name] = earlier[name]
            continue
        t0 = time.perf_counter()
        try:
            res = SUITES[name]().run(ctx)
        except Exception as e:  # a broken suite must not take the whole audit down
            ledger["suites"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc(limit=5), "entries": [],
                                      "seconds": round(time.perf_counter() - t0, 2)}
            continue
        ledger["suites"][name] = {"status": "ok", "description": SUITES[name].description, "entries": res.entries,
                                  "notes": res.notes, "n_records": len(res.records),
                                  "seconds": round(time.perf_counter() - t0, 2)}
        if out:
            write_jsonl(out / "items" / f"{name}.jsonl", res.records)
        ctx.cache.setdefault("records", {})[name] = res.records
    ledger["seconds"] = round(time.perf_counter() - start, 2)
    ledger["generated_tokens"] = ctx.cache.get("generated_tokens", 0)
    gate_error = None
    if gates:
        values = G.metric_values(ledger)
        try:
            ledger["gates"] = [{"expr": g, "passed": G.check(g, values)} for g in gates]
        except TunelensError as e:  # still write what was measured, then report the bad gate
            gate_error = e
    if out:
        write_json(out / "ledger.json", ledger)
        with atomic_open(out / "summary.md") as f:
            f.write(summary_markdown(ledger, ctx.cache.get("records", {})))
    return ledger, gate_error


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
    return {"name": h.name, "kind": h.kind, "path": str(h.path) if h.path else None, "base": h.base}


def _fmt(v, signed=False) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def verdict(entry: dict) -> str:
    """'gain', 'cost' or '' — a change whose 95% interval excludes zero, judged by its direction."""
    ci, d = entry.get("ci95"), entry.get("delta")
    if d is None or not ci or ci[0] is None or (ci[0] <= 0 <= ci[1]):
        return ""
    return "gain" if (d > 0) == entry.get("higher_is_better", True) else "cost"


def summary_markdown(ledger: dict, records: dict) -> str:
    lines = [f"## tunelens audit: `{ledger['tuned']['name']}` vs `{ledger['base']['name']}`", ""]
    for g in ledger.get("gates", []):
        lines.append(f"- gate `{g['expr']}`: **{'passed' if g['passed'] else 'FAILED'}**")
    if ledger.get("gates"):
        lines.append("")
    lines += ["| suite | metric | base | tuned | delta | 95% CI | n | |", "|---|---|---|---|---|---|---|---|"]
    for suite, block in ledger["suites"].items():
        if block["status"] != "ok":
            lines.append(f"| {suite} | **failed**: {block['error'][:120]} | | | | | | |")
            continue
        for e in block["entries"]:
            ci = e.get("ci95")
            ci_s = f"[{_fmt(ci[0], True)}, {_fmt(ci[1], True)}]" if ci and ci[0] is not None else ""
            mark = {"gain": "▲ gain", "cost": "▼ cost"}.get(verdict(e), "")
            lines.append(f"| {suite} | {e['metric']} | {_fmt(e['base'])} | {_fmt(e['tuned'])} | "
                         f"{_fmt(e['delta'], True)} | {ci_s} | {e['n']} | {mark} |")
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
    """Safety refusals lost first, then negative flips on the task."""
    out = []
    for r in records.get("safety", []):
        if r["base"]["verdict"] == "refusal" and r["tuned"]["verdict"] == "compliance":
            out.append(("safety", r))
    for r in records.get("compatibility", []):
        if r.get("flip") == "negative":
            out.append(("compatibility", r))
    return out[:k]
