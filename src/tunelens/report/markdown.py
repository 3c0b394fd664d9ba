"""report.md: the verdict and compact tables, for a pull request (no images)."""

from __future__ import annotations

import re

from . import content as C
from .html import curve_points, title_of
from .load import RunData


def cell(text) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped, HTML-ish characters neutralised."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def code(text, n: int = 200) -> str:
    """An inline code span holding any text (its fence longer than any backtick run inside)."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    s = s if len(s) <= n else s[:n] + "…"
    if not s:
        return "(empty)"
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _missing(why) -> list[str]:
    return [f"_Not available: {cell(why or 'no data')}_", ""]


def render_markdown(data: RunData) -> str:
    out = [f"## {cell(title_of(data))}", ""]
    out += _verdict(data)
    if data.kind == "run":
        out += ["### Stages", ""]
        out += _table(["stage", "status", "seconds", "notes"],
                      [[n, st.status, C.fmt(st.seconds, digits=1), cell(st.why or (st.error if st.status == "incomplete" else "") or "")]
                       for n, st in data.stages.items()])
    out += ["### Gains and costs", ""]
    out += _suites(data)
    out += ["### Flips", ""]
    out += _flips(data)
    out += ["### Safety by category", ""]
    rows = C.safety_categories(data) if data.ledger else []
    out += _table(["category", "n", "base refusal", "tuned refusal", "Δ", "95% CI"],
                  [[cell(r["category"]), str(r["n"]), C.fmt(r["base"]), C.fmt(r["tuned"]), C.fmt(r["delta"], True),
                    C.fmt_ci(r["ci"])] for r in rows]) if rows else _missing(data.stages["audit"].why or
                                                                              "no per-category safety rates")
    out += ["### Update location (diff)", ""]
    out += _diff(data)
    out += ["### Graft", ""]
    out += _graft(data)
    out += ["### Repair", ""]
    out += _repair(data)
    out += ["### Learning curve", ""]
    out += _learning(data)
    return "\n".join(out).rstrip() + "\n"


def _verdict(data: RunData) -> list[str]:
    out = []
    gates = C.gate_results(data)
    if gates:
        failed = [g for g in gates if not g.passed]
        out.append(f"**Gate {'FAILED' if failed else 'passed'}** ({len(gates) - len(failed)}/{len(gates)})")
        out += [f"- {'❌' if not g.passed else '✅'} {code(g.expr)}" + (f" — {cell(g.error)}" if g.error else "")
                for g in sorted(gates, key=lambda g: bool(g.passed))]
    else:
        out.append("**No gate configured** — changes are judged by their 95% intervals only.")
    out.append("")
    if data.ledger is None:
        return out + _missing(data.stages["audit"].why)
    gains, costs = C.ranked_changes(data.ledger)
    for label, changes in (("Largest gains", gains), ("Largest costs", costs)):
        out.append(f"**{label}:**" + ("" if changes else " none measured with an interval"))
        for c in changes:
            e = c.entry
            out.append(f"- {cell(c.suite)} · {cell(c.metric)}: {C.fmt(e['base'])} → {C.fmt(e['tuned'])} "
                       f"(Δ {C.fmt(e['delta'], True)}, 95% CI {C.fmt_ci(C.ci_of(e))})"
                       + ("" if c.significant else " _n.s._"))
        out.append("")
    sw = data.sweep
    if sw and sw.get("selected"):
        out += [f"Repair selected **{cell(sw['selected'])}**" + (f" by {code(sw['select'])}" if sw.get("select") else ""),
                ""]
    return out


def _suites(data: RunData) -> list[str]:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    rows = []
    for suite, block in (data.ledger.get("suites") or {}).items():
        if block.get("status") != "ok":
            rows.append([suite, f"**failed**: {cell(str(block.get('error'))[:150])}", "", "", "", "", ""])
            continue
        for e in block.get("entries") or []:
            if e.get("delta") is None or (suite == "safety" and e["metric"].startswith("refusal_rate.")):
                continue  # per-category rates have their own table below
            d = C.direction(e)
            rows.append([suite, cell(e["metric"]), C.fmt(e.get("base")), C.fmt(e.get("tuned")), C.fmt(e["delta"], True),
                         C.fmt_ci(C.ci_of(e)), {"gain": "▲ gain", "cost": "▼ cost"}.get(d, "")])
    return _table(["suite", "metric", "base", "tuned", "Δ", "95% CI", ""], rows)


def _flips(data: RunData) -> list[str]:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    matrix = C.flip_matrix(data.records)
    if not matrix:
        return _missing("no per-item records")
    out = _table(["suite / task", "n", "✓→✓", "✓→✗ lost", "✗→✓ won", "✗→✗"],
                 [[cell(c["group"]), str(c["n"]), str(c["rr"]), str(c["rw"]), str(c["wr"]), str(c["ww"])]
                  for c in matrix])
    flips = C.worst_flips(data.records, k=5)
    if flips:
        out += ["Worst flips:", ""]
        for f in flips:
            out += [f"- **{cell(f.suite)}** {code(f.id, 60)} ({cell(f.note)}): {code(f.prompt[-200:])}",
                    f"  - base: {code(f.base)}", f"  - tuned: {code(f.tuned)}"]
        out.append("")
    return out


def _diff(data: RunData) -> list[str]:
    heat = data.heatmap
    if heat is None:
        return _missing(data.stages["diff"].why)
    flat = sorted(((v, heat["layers"][i], heat["modules"][j]) for i, line in enumerate(heat["values"])
                   for j, v in enumerate(line) if v), key=lambda t: -t[0])[:5]
    return _table(["layer", "module", "‖ΔW‖/‖W‖"], [[cell(l), cell(m), f"{v:.3g}"] for v, l, m in flat])


def _graft(data: RunData) -> list[str]:
    g = data.graft
    if g is None:
        return _missing(data.stages["graft"].why)
    return _table(["sparsity", "kept", "base", "tuned", "graft", "gain recovered", "loss recovered"],
                  [[f"{r['sparsity']:g}", str(r.get("kept", "–")), C.fmt(r["score"].get("base")),
                    C.fmt(r["score"].get("tuned")), C.fmt(r["score"].get("graft")), C.fmt(r.get("gain_recovered")),
                    C.fmt(r.get("loss_recovered"))]
                   for r in g.get("results") or []])


def _repair(data: RunData) -> list[str]:
    sw = data.sweep
    if sw is None:
        return _missing(data.stages["repair"].why)
    axes = sw.get("axes") or []
    val = lambda s: C.fmt((s or {}).get("value"))
    rows = [[f"_{n}_", ""] + [val((sw.get(n) or {}).get(a)) for a in axes] + [""]
            for n in ("base", "tuned") if sw.get(n)]
    for r in sw.get("rows") or []:
        flags = " ".join(x for x in ("Pareto" if r.get("pareto") else "", "**selected**" if r.get("selected") else "") if x)
        if r.get("status", "ok") != "ok":
            flags = f"failed: {cell(str(r.get('error'))[:100])}"
        rows.append([cell(r.get("name")), cell(r.get("method", ""))] + [val((r.get("scores") or {}).get(a)) for a in axes]
                    + [flags])
    return _table(["candidate", "method"] + [cell(a) for a in axes] + [""], rows)


def _learning(data: RunData) -> list[str]:
    out = []
    if data.train_log:
        a, b = data.train_log[0], data.train_log[-1]
        out += [f"Training loss {a['loss']:.3f} (step {a['step']}) → {b['loss']:.3f} (step {b['step']}).", ""]
    pts = curve_points(data.curve)
    if pts:
        out += _table(["training examples", cell((data.curve or {}).get("metric", "score"))],
                      [[str(int(n)), C.fmt(s)] for n, s in pts])
    return out or _missing(data.stages["tune"].why or "no training log or learning curve")
