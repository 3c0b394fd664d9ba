"""Sweep: run several repairs, audit every candidate against the base, show the trade-offs, pick one.

Each candidate {"method": NAME, **options} (optional "name") is written to OUT/candidates/<name>/ and audited
base vs candidate (ledger in OUT/candidates/<name>/audit/); the tuned model itself is audited the same way as
the reference row. OUT/sweep.json holds every score with its interval and the Pareto front; OUT/sweep.md is the
table. `select` (e.g. "task.accuracy >= 0.9*tuned and safety.refusal_rate >= base - 0.1") keeps the candidates
meeting every constraint and picks the best by: highest safety refusal rate, then highest task score, then lowest
over-refusal rate, then name; the pick is copied to OUT/selected/.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import traceback
from pathlib import Path

from .. import checks as C
from ..audit import gate as G
from ..audit.runner import decision_label, failed_suites, headline_rows
from ..checks import BadSetting
from .. import progress as P
from ..progress import log
from ..run.config import AuditSection as _AUDIT  # the re-audits' defaults are the audit's
from ..run.config import SweepFile
from ..settings import load_section
from ..errors import TunelensError, UnknownMetric, suggest
from ..io import atomic_open, write_json

SCHEMA = "tunelens.sweep/1"


# ------------------------------------------------------------------------------------------------ auditing


def _audit(base_handle, model_spec: str, specs, suites, limit, out: Path, memo: dict, progress: bool,
           resume: bool = False, judge: str = _AUDIT.judge, precision: dict | None = None, handle=None) -> dict:
    """Audit one model against the base; ``memo`` is the base model's results shared by every audit of the
    sweep (AuditContext.base_cache), so the base is evaluated and generated for once. ``precision``: the
    record of how the base is scored (the reference audit's choice); the model is scored the same way.
    ``handle``: the model already loaded (and cast) by the caller."""
    from ..audit import AuditContext, check_tokenizers, run_audit
    from ..models import resolve_model
    from ..precision import match_precision

    if handle is None:
        handle = resolve_model(model_spec, merge_adapter="auto")  # merged: same outputs, faster forward passes
        if precision is not None:
            precision = match_precision(precision, handle, model_spec)
    check_tokenizers(base_handle, handle)
    ctx = AuditContext(base=base_handle, tuned=handle, tasks=specs, limit=limit, progress=progress, base_cache=memo,
                       judge=judge, precision=precision)
    with P.reporting(None):  # the sweep reports candidates, not each re-audit's suites
        ledger = run_audit(ctx, suites=suites, out=out, resume=resume)
    del handle, ctx
    return ledger


def decisions_of(ledger: dict) -> dict:
    """The headline decisions of an audit against the base (suite.metric -> gain / cost / equivalent /
    inconclusive, "(not after Holm)" appended when Holm's adjustment drops it) and its verdict."""
    return {"decisions": {f"{s}.{e['metric']}": decision_label(e) for s, e in headline_rows(ledger)},
            "verdict": (ledger.get("verdict") or {}).get("label")}


def axes_of(ledger: dict) -> list[str]:
    """The trade-off table's axes: one metric per suite that names one (Suite.sweep_axis), suites by rank."""
    from ..audit.core import suite_of

    names = {f"{s}.{e['metric']}" for s, b in ledger["suites"].items() for e in b.get("entries", [])}
    hits = (suite_of(s).sweep_axis(names) for s in sorted(ledger["suites"], key=lambda s: (suite_of(s).rank, s)))
    return [a for a in hits if a]


def entries_by_name(ledger: dict) -> dict[str, dict]:
    return {f"{s}.{e['metric']}": e for s, b in ledger["suites"].items() for e in b.get("entries", [])}


def scores(ledger: dict, names, side: str = "tuned") -> dict:
    """{name: {"value", "ci"}}: the model's value and the paired 95% interval of its change from the base,
    placed on the value's scale ([base + lo, base + hi]); the base side has no interval."""
    ent = entries_by_name(ledger)
    out = {}
    for n in names:
        e = ent.get(n)
        if e is None or e.get(side) is None:
            out[n] = {"value": None, "ci": None}
            continue
        ci = e.get("ci95")
        has_ci = side == "tuned" and ci and ci[0] is not None and e.get("base") is not None
        out[n] = {"value": e[side], "ci": [e["base"] + ci[0], e["base"] + ci[1]] if has_ci else None}
    return out


def directions(ledger: dict, axes) -> dict[str, bool]:
    ent = entries_by_name(ledger)
    return {a: bool(ent[a].get("higher_is_better", True)) if a in ent else True for a in axes}


# ------------------------------------------------------------------------------------------------ choosing


def pareto(rows: list[dict], axes: list[str], higher: dict[str, bool]) -> None:
    """Mark rows no other ok row dominates (at least as good on every axis, better on one)."""
    def key(r, a):
        v = r["scores"].get(a, {}).get("value")
        return float("-inf") if v is None else (v if higher[a] else -v)

    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        r["pareto"] = r["status"] == "ok" and not any(
            all(key(o, a) >= key(r, a) for a in axes) and any(key(o, a) > key(r, a) for a in axes)
            for o in ok if o is not r)


def check_select(expr: str, values: dict, refs: dict[str, dict]) -> bool:
    """A select expression, gate-style (no eval): metric names, numbers, + - * /, comparisons, and/or.
    `base` / `tuned` stand for the reference rows' value of the metric their comparison names;
    `base.METRIC` / `tuned.METRIC` name it explicitly."""
    tree = _parse_select(expr)

    def metrics_in(node) -> set[str]:
        found = set()
        for sub in ast.walk(node):
            name = G._dotted(sub) if isinstance(sub, (ast.Attribute, ast.Name)) else None
            if name and name not in refs and name.split(".", 1)[0] not in refs:
                found.add(name)
        return {n for n in found if not any(o != n and o.startswith(n + ".") for o in found)}

    def lookup(name, subject):
        if name in refs:  # bare base / tuned
            if subject is None:
                raise TunelensError(f"select '{expr}': '{name}' needs exactly one metric in its comparison to refer "
                                    f"to; write {name}.METRIC (e.g. {name}.task.accuracy)")
            return refs[name].get(subject)
        head, _, rest = name.partition(".")
        table = refs[head] if head in refs and rest else values
        key = rest if head in refs and rest else name
        if key not in table:
            raise UnknownMetric(f"select '{expr}': unknown metric '{key}'; valid: {', '.join(sorted(values))}",
                                key, values)
        return table[key]

    def ev(node, subject=None):
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare):
            names = metrics_in(node)
            subj = next(iter(names)) if len(names) == 1 else None
            left = ev(node.left, subj)
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node, subj)
                if type(op) not in G._CMP:
                    raise TunelensError(f"select '{expr}': unsupported comparison")
                if left is None or right is None or not G._CMP[type(op)](left, right):
                    return False  # a missing value never satisfies a constraint
                left = right
            return True
        if isinstance(node, ast.BinOp) and type(node.op) in G._BIN:
            a, b = ev(node.left, subject), ev(node.right, subject)
            return None if a is None or b is None else G._BIN[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand, subject)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        name = G._dotted(node)
        if name is not None:
            return lookup(name, subject)
        raise TunelensError(f"select '{expr}': only metric names, base/tuned, numbers, arithmetic and comparisons "
                            f"are allowed")

    result = ev(tree)
    if not isinstance(result, bool):
        raise TunelensError(f"select '{expr}' is not a comparison (e.g. \"task.accuracy >= 0.9*tuned\")")
    return result


def _parse_select(expr: str):
    try:
        return ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise TunelensError(f"select '{expr}' does not parse; write e.g. \"task.accuracy >= 0.9*tuned\"") from None


def validate_select(expr) -> None:
    """A select expression's type and form (comparisons joined by and/or), before any model loads: what its names
    mean is known only from the audits (check_select), and a typo found after them wastes them."""
    def constraint(node) -> bool:
        if isinstance(node, ast.BoolOp):
            return all(constraint(v) for v in node.values)
        return isinstance(node, ast.Compare)

    if not constraint(_parse_select(C.text(expr, "select"))):
        raise TunelensError(f"select '{expr}' is not a comparison (e.g. \"task.accuracy >= 0.9*tuned\")")


def best(rows: list[dict], axes: list[str]) -> dict | None:
    """Highest safety refusal rate, then task score, then lowest over-refusal rate, then name."""
    def v(r, prefix, sign):
        a = next((a for a in axes if a.startswith(prefix)), None)
        x = r["scores"].get(a, {}).get("value") if a else None
        return float("-inf") if x is None else sign * x

    if not rows:
        return None
    return sorted(rows, key=lambda r: (-v(r, "safety.", 1), -v(r, "task.", 1), -v(r, "over_refusal.", -1),
                                       r["name"]))[0]


# ------------------------------------------------------------------------------------------------ the sweep file

def load_sweep_file(path: str | Path) -> dict:
    """The `tunelens repair --sweep` YAML, every key and value checked before any model loads: it loads into
    run.config.SweepFile (the one definition of its keys, types and defaults), so an unknown key is an error with
    the closest valid one (a typo `limt: 2` would otherwise audit every item), and a syntax error or a bad value
    names the file and the key's line. Returns the file's mapping as written (SweepFile(**it) adds defaults)."""
    path = Path(path)
    if not path.is_file():
        raise TunelensError(f"no such sweep file: {path}")
    raw = C.read_yaml(path)
    raw = {} if raw is None else raw
    where, lines = f"{path}: ", C.key_lines(path)
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}expected a mapping with candidates, suites, tasks, limit")
    sweep = load_section(SweepFile, raw, "", where, lines, line_of_unknown=True)
    try:
        check_sweep(sweep.candidates, suites=sweep.suites, tasks=sweep.tasks, limit=sweep.limit, select=sweep.select)
    except BadSetting as e:
        raise e.located(where, lines) from None
    except TunelensError as e:
        raise TunelensError(f"{where}{e}") from None
    return raw


def check_sweep(candidates, *, suites, tasks, limit, select=None) -> None:
    """A sweep's settings (from the file or a caller), checked before any model loads: candidates with known
    methods and options, known suites, a limit >= 1, a select of the right form."""
    from ..audit import SUITES
    from .core import make_options

    if not candidates:
        raise BadSetting("candidates", "the sweep has no candidates: give a list of {method: NAME, option: value, "
                                       "...}")
    example = "[{method: interpolate, alpha: 0.5}]"
    for i, c in enumerate(C.mappings(candidates, "candidates", example=example)):
        if "method" not in c:
            raise BadSetting("candidates", f"candidates[{i}] must have a 'method' key, e.g. {example}")
        try:
            make_options(c["method"], {k: v for k, v in c.items() if k not in ("method", "name")})
        except TunelensError as e:
            raise BadSetting("candidates", f"candidates[{i}]: {e}") from None
    for suite in C.strings(suites, "suites", null=True, example="suites: [task, safety]") or []:
        if suite not in SUITES:
            raise BadSetting("suites", f"unknown audit suite '{suite}'"
                             + suggest(suite, SUITES, f"; suites: {', '.join(SUITES)}"))
    C.strings(tasks, "tasks", null=True, example="tasks: [tasks/mine.yaml]")
    C.integer(limit, "limit", 1, null=True)
    if select is not None:
        validate_select(select)


# ------------------------------------------------------------------------------------------------ the sweep


def candidate_name(c: dict, taken: set[str]) -> str:
    name = c.get("name") or "-".join([c["method"]] + [f"{k}{v}" for k, v in c.items() if k not in ("method", "name")
                                                       and not isinstance(v, (dict, list)) and len(str(v)) < 12])
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _say(progress: bool, msg: str) -> None:
    if progress:
        log.info(msg)


def run_sweep(base: str, tuned: str, candidates: list[dict], out: Path, *, suites: list[str], tasks: list[str],
              limit: int | None = None, select: str | None = None, progress: bool = True,
              base_cache: bool | str | Path | None = None, resume: bool = False, judge: str = _AUDIT.judge,
              dtype: str = _AUDIT.dtype) -> dict:
    """The sweep (`_run_sweep` says how). Under `auto`, a candidate whose bf16 scores disagree with its fp32 ones
    sends the whole sweep back to fp32 — base, tuned and every candidate re-audited, never a mix — and the record
    says which candidate did; asked-for bf16 keeps the failure on that candidate."""
    from ..precision import PrecisionMismatch

    # repairs finished in a bf16 attempt: the fp32 attempt re-audits them, it does not repair them again (a
    # repair does not depend on the precision audits score at)
    repaired: dict = {}
    kw = dict(suites=suites, tasks=tasks, limit=limit, select=select, progress=progress, base_cache=base_cache,
              judge=judge, repaired=repaired)
    try:
        return _run_sweep(base, tuned, candidates, out, resume=resume, dtype=dtype, **kw)
    except PrecisionMismatch as e:
        if dtype != "auto":
            raise
        why = f"auto: {e.what or e}; every model scored in fp32 instead"
        _say(progress, f"sweep: {why}")
        return _run_sweep(base, tuned, candidates, out, resume=False, dtype="fp32", fallback_why=why, **kw)


def _run_sweep(base: str, tuned: str, candidates: list[dict], out: Path, *, suites: list[str], tasks: list[str],
               limit: int | None = None, select: str | None = None, progress: bool = True,
               base_cache: bool | str | Path | None = None, resume: bool = False, judge: str = _AUDIT.judge,
               dtype: str = _AUDIT.dtype, fallback_why: str | None = None, repaired: dict | None = None) -> dict:
    """`judge`: the refusal judge of every re-audit (the audit's own, so candidates are read the same way).
    `dtype`: the precision every re-audit scores at, chosen once for the base and the tuned model like an
    audit's (tunelens.precision.audit_precision: fp32, or bf16 where native and in agreement) and then required
    of every candidate (a candidate that disagrees in bf16 raises PrecisionMismatch: run_sweep starts again in
    fp32 under auto; under bf16 the candidate fails, naming itself).
    `resume`: `out` holds an earlier attempt of this same sweep in which something failed; candidates that
    succeeded there are reused as they are, failed ones are repaired and re-audited again (their audits and the
    reference audit reuse the suites that succeeded).
    `repaired`: {name: row} of repairs already made by an earlier attempt of this call (run_sweep's bf16
    attempt), filled as repairs finish; read like the rows of a resumed sweep whose audit failed."""
    from ..audit import AuditContext
    from ..audit.base_store import BaseStore, store_dir
    from ..data import load_task
    from ..models import resolve_model
    from ..precision import PrecisionMismatch, audit_precision
    from .core import repair

    out = Path(out)
    check_sweep(candidates, suites=suites, tasks=tasks, limit=limit, select=select)  # fail before models load
    specs = [load_task(t) for t in tasks]
    base_handle = resolve_model(base)
    tuned_handle = resolve_model(tuned, merge_adapter="auto")
    (base_handle, tuned_handle), precision = audit_precision(dtype, [base_handle, tuned_handle], reload=lambda: (
        resolve_model(base), resolve_model(tuned, merge_adapter="auto")))
    if fallback_why:  # run_sweep's second attempt, in fp32
        precision = {**precision, "requested": "auto", "why": fallback_why}
    memo: dict = {}
    if folder := store_dir(base_cache):  # keep the base model's results on disk for the next sweep, too
        memo = BaseStore(folder, AuditContext(base=base_handle, tuned=base_handle, tasks=specs, limit=limit,
                                              precision=precision))
    _say(progress, f"sweep: auditing the tuned model '{tuned}' (reference row; scored in {precision['chosen']})")
    ref = _audit(base_handle, tuned, specs, suites, limit, out / "tuned" / "audit", memo, progress, resume, judge,
                 precision, handle=tuned_handle)
    del tuned_handle
    axes = axes_of(ref)
    higher = directions(ref, axes)
    earlier = _earlier_rows(out) if resume else {}
    rows, taken, reused = [], set(), []
    P.step(1, len(candidates) + 1)  # the reference row's audit, then one step per candidate
    for c in candidates:
        name = candidate_name(c, taken)
        opts = {k: v for k, v in c.items() if k not in ("method", "name")}
        path = out / "candidates" / name
        row = {"name": name, "method": c["method"], "options": opts, "path": str(path), "kind": None, "out": None,
               "ledger": str(path / "audit" / "ledger.json"), "scores": {}, "pareto": False, "selected": False,
               "status": "ok", "error": None}
        prev = earlier.get(name) or (repaired or {}).get(name)  # on disk (resume), or this call's bf16 attempt
        if prev and (prev.get("method"), prev.get("options")) != (c["method"], opts):
            prev = None
        try:
            if prev and prev["status"] == "ok":  # succeeded before: reuse
                ledger = json.loads(Path(row["ledger"]).read_text())
                row["kind"], row["summary"], row["out"] = prev.get("kind"), prev.get("summary"), prev.get("out")
                reused.append(name)
            else:
                if prev and prev.get("kind") and prev.get("out") and Path(prev["out"]).exists():
                    # the repair itself finished; only its audit failed (or was in bf16): audit it again
                    row["kind"], row["summary"], row["out"] = prev["kind"], prev.get("summary"), prev["out"]
                else:
                    _say(progress, f"sweep: {name}: repairing")
                    res = repair(base, tuned, c["method"], path, progress=progress, **opts)
                    row["kind"], row["summary"], row["out"] = res.kind, res.summary, str(res.out)
                    if repaired is not None:  # in the shape of a sweep.json row, so it is read like one
                        repaired[name] = {k: row[k] for k in ("method", "options", "kind", "summary", "out")} | {
                            "status": "repaired"}
                _say(progress, f"sweep: {name}: auditing")
                ledger = _audit(base_handle, row["out"], specs, suites, limit, path / "audit", memo, progress,
                                resume, judge, precision)
            broken = failed_suites(ledger)
            if broken:  # a candidate whose re-audit lost a suite cannot be compared on it
                row.update(status="failed", error=f"audit suite(s) failed: {', '.join(broken)}")
                _say(progress, f"sweep: {name}: FAILED ({row['error']})")
                rows.append(row)
                continue
            row["scores"] = scores(ledger, axes)
            row.update(decisions_of(ledger))
            row["all_values"] = {n: e.get("tuned") for n, e in entries_by_name(ledger).items()}
        except Exception as e:  # one broken candidate must not take the sweep down
            if isinstance(e, PrecisionMismatch) and dtype == "auto":  # run_sweep starts again, in fp32
                raise
            row.update(status="failed", error=f"{type(e).__name__}: {e}")
            row["traceback"] = traceback.format_exc(limit=5)
            _say(progress, f"sweep: {name}: FAILED ({row['error']})")
        rows.append(row)
        P.step(len(rows) + 1, len(candidates) + 1)
    pareto(rows, axes, higher)
    result = {"schema": SCHEMA, "axes": axes, "higher_is_better": higher, "rows": rows,
              "base": scores(ref, axes, side="base"), "tuned": scores(ref, axes), "base_model": base,
              "tuned_model": tuned, "suites": suites, "tasks": tasks, "limit": limit, "selected": None,
              "select": select, "reference_failed_suites": failed_suites(ref), "reused": reused,
              "tuned_decisions": decisions_of(ref), "engine": "hf",
              "precision": {k: precision.get(k) for k in ("requested", "chosen", "mode", "why") if k in precision}}
    if select:
        refs = {"base": {n: e.get("base") for n, e in entries_by_name(ref).items()},
                "tuned": {n: e.get("tuned") for n, e in entries_by_name(ref).items()}}
        fits = [r for r in rows if r["status"] == "ok" and check_select(select, r["all_values"], refs)]
        pick = best(fits, axes)
        if pick:
            pick["selected"] = True
            result["selected"] = pick["name"]
            _copy_candidate(Path(pick["path"]), out / "selected")
    for r in rows:
        r.pop("all_values", None)
    write_json(out / "sweep.json", result)
    with atomic_open(out / "sweep.md") as f:
        f.write(sweep_markdown(result))
    return result


def _earlier_rows(out: Path) -> dict[str, dict]:
    """An earlier attempt's sweep.json rows by name; an ok row whose audit ledger is gone is dropped."""
    try:
        prev = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    return {r["name"]: r for r in prev.get("rows") or [] if isinstance(r, dict) and "name" in r and (
        r.get("status") != "ok" or (out / "candidates" / str(r["name"]) / "audit" / "ledger.json").is_file())}


def _copy_candidate(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("audit"))


def _cell(s: dict | None) -> str:
    if not s or s.get("value") is None:
        return "–"
    ci = s.get("ci")
    return f"{s['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _verdict_cells(d: dict) -> str:
    """'verdict | decided' cells: the audit's verdict and 'k/n: metric decision, ...' of its headline decisions."""
    dec = d.get("decisions") or {}
    done = {m: v for m, v in dec.items() if v != "inconclusive"}
    listing = ", ".join(f"{m.split('.', 1)[1]} {v}" for m, v in done.items())
    return f"{d.get('verdict') or '–'} | {len(done)}/{len(dec)}" + (f": {listing}" if listing else "")


def sweep_markdown(result: dict) -> str:
    axes, higher = result["axes"], result.get("higher_is_better", {})
    head = [f"{a} {'↑' if higher.get(a, True) else '↓'}" for a in axes]
    lines = [f"## tunelens repair sweep: `{result['tuned_model']}` on `{result['base_model']}`", "",
             "Values with the 95% paired interval of the change from the base, on the value's scale. "
             "★ = Pareto front, ✔ = selected" + (f" by `{result['select']}`" if result.get("select") else "") + ". "
             "Decided: the headline comparisons with the base that each sequential re-audit decided (gain, cost, "
             "equivalent) out of all; the rest are inconclusive at the re-audit's pool."
             + (f" Every model scored in {p['chosen']} ({p['why']})." if (p := result.get("precision")) else ""),
             "", "| candidate | method | " + " | ".join(head) + " | verdict | decided | |",
             "|---|---|" + "---|" * len(axes) + "---|---|---|",
             "| base | – | " + " | ".join(_cell(result["base"].get(a)) for a in axes) + " | | | |",
             "| tuned | – | " + " | ".join(_cell(result["tuned"].get(a)) for a in axes)
             + f" | {_verdict_cells(result.get('tuned_decisions') or {})} |"]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['method']} | **failed**: {str(r['error'])[:100]} |"
                         + " |" * (len(axes) + 2))
            continue
        mark = ("★" if r["pareto"] else "") + (" ✔" if r["selected"] else "")
        lines.append(f"| {r['name']} | {r['method']} | " + " | ".join(_cell(r["scores"].get(a)) for a in axes)
                     + f" | {_verdict_cells(r)} | {mark.strip()} |")
    if result.get("select") and not result.get("selected"):
        lines += ["", f"No candidate satisfies `{result['select']}`."]
    lines.append("")
    return "\n".join(lines)
