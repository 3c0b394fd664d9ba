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
    for title, section in (("Gains and costs", _suites), ("Flips", _flips),
                           ("Safety: the judge and each category", _safety), ("Update location (diff)", _diff),
                           ("Graft", _graft), ("Repair", _repair), ("Learning curve", _learning)):
        out += [f"### {title}", ""] + section(data)
    return "\n".join(out).rstrip() + "\n"


def _verdict(data: RunData) -> list[str]:
    v = C.audit_verdict(data)
    out = [f"**Verdict: {cell(v.label)}** — {cell(v.why)}", ""]
    if data.ledger is None:
        out += _missing(data.stages["audit"].why)
    else:
        out += _headline_table(data.ledger)
        gains, costs = C.gains_and_costs(data.ledger)
        for label, decisions in (("Gains", gains), ("Costs", costs)):
            out.append(f"**{label}:**" + ("" if decisions else " none decided"))
            for d in decisions:
                e = d.entry
                out.append(f"- {cell(d.suite)} · {cell(d.metric)}: {C.fmt(e.get('base'))} → {C.fmt(e.get('tuned'))} "
                           f"(Δ {C.fmt(e.get('delta'), True)}, {C.cs_phrase(e)})"
                           + ("" if d.holm_kept else " _not after Holm_"))
            out.append("")
    out += _gates(data)
    sw = data.sweep
    if sw and sw.get("selected"):
        out += [f"Repair selected **{cell(sw['selected'])}**" + (f" by {code(sw['select'])}" if sw.get("select") else ""),
                ""]
    return out


def _headline_table(ledger: dict) -> list[str]:
    heads = C.headline_decisions(ledger)
    if not heads:
        return ["_No headline decisions: this ledger has no headline metrics, so nothing is called a gain or a "
                "cost._", ""]
    rows = []
    for d in heads:
        e = d.entry
        label = d.label
        rows.append([cell(d.suite), cell(d.metric), C.fmt(e.get("base")), C.fmt(e.get("tuned")),
                     C.fmt(e.get("delta"), True), f"**{cell(label)}**" if d.direction else cell(label),
                     C.cs_text(e), C.interval_text(e), f"{e.get('n', '–')} / {e.get('pool') or '–'}",
                     cell(e.get("stop") or "–"), C.fmt(e.get("mde")), C.fmt_p(e.get("p_holm"))])
    return (["**Headline decisions**", ""]
            + _table(["suite", "metric", "base", "tuned", "Δ", "decision", "95% confidence sequence", "fixed-n 95% CI",
                      "n / pool", "stop", "MDE", "Holm p"], rows)
            + [C.decision_note(ledger), ""])


def _gates(data: RunData) -> list[str]:
    gates = C.gate_results(data)
    if not gates:
        return ["**No gate configured** — the verdict rests on the headline decisions alone.", ""]
    _, word = C.gate_summary(gates)
    mark = {"pass": "✅", "fail": "❌", "inconclusive": "❔", "error": "❌"}
    out = [f"**{word}** ({sum(g.outcome == 'pass' for g in gates)}/{len(gates)} passed)"]
    for g in C.gate_order(gates):
        why = g.error if g.outcome == "error" else g.why
        out.append(f"- {mark[g.outcome]} {code(g.expr)}: {C.GATE_WORDS[g.outcome]}" + (f" — {cell(why)}" if why else ""))
    return out + [""]


def _suites(data: RunData) -> list[str]:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    rows, stops = [], []
    for suite, block in (data.ledger.get("suites") or {}).items():
        if block.get("status") != "ok":
            rows.append([suite, f"**failed**: {cell(str(block.get('error'))[:150])}"] + [""] * 7)
            continue
        progress = C.suite_progress(block)
        if progress:
            stops.append(f"- {cell(suite)}: {cell(progress)}")
        for e in C.suite_of(suite).compact_entries(block.get("entries") or []):
            if e.get("delta") is None:
                continue
            head = e.get("role") == "headline"
            n = f"{e.get('n', '')} / {e.get('pool')}" if head and e.get("pool") is not None else str(e.get("n", ""))
            read = cell(C.reading(e))
            if C.direction(e):
                read = f"**{read}**"
            # one table holds every suite: a suite's own columns (Suite.report_columns) lead its reading
            read = "; ".join([cell(f"{h}: {t}") for h, t in C.extra_columns(suite, e)] + ([read] if read else []))
            rows.append([suite, cell(C.metric_label(suite, e)), cell(e.get("role") or "–"), C.fmt(e.get("base")),
                         C.fmt(e.get("tuned")), C.fmt(e["delta"], True), C.interval_text(e),
                         C.cs_text(e) if head else "–", cell(n), read])
    out = ["Only headline metrics are decided. Secondary metrics: fixed-n 95% interval measured on the items the suite "
           "drew, not a decision. Diagnostics describe a change without rating it.", ""]
    out += _table(["suite", "metric", "role", "base", "tuned", "Δ", "fixed-n 95% CI", "95% confidence sequence", "n",
                   "reading"], rows)
    if stops:
        out += ["Sequential stops:", ""] + stops + [""]
    return out


def _judge(data: RunData) -> list[str]:
    j = C.judge_card(data)
    if j is None:
        return []
    out = [" ".join(j["lines"]), ""]
    card = j["card"]
    if card:
        out += _table(["class", "held-out n", "precision", "recall"],
                      [[v, str(p["n"]), C.fmt(p["precision"]), C.fmt(p["recall"])] for v, p in card["per_class"].items()])
        labs = card["confusion"]["labels"]
        out += _table(["true label / verdict", *labs],
                      [[lab] + [str(c) for c in row] for lab, row in zip(labs, card["confusion"]["matrix"])])
    return out


def _safety(data: RunData) -> list[str]:
    rows = C.safety_categories(data) if data.ledger else []
    judge = _judge(data)
    if not rows:
        return judge + _missing(data.stages["audit"].why or "no per-category safety rates")
    cells = []
    for r in rows:
        counts = [C.count_text(r["base_count"], r["n"]), C.count_text(r["tuned_count"], r["n"])]
        if r["insufficient"]:
            cells.append([cell(r["category"]), str(r["n"]), *counts, f"_{C.INSUFFICIENT}_ (fewer than {C.MIN_CATEGORY} items)",
                          "–"])
        else:
            cells.append([cell(r["category"]), str(r["n"]), f"{counts[0]} ({C.fmt(r['base'])})",
                          f"{counts[1]} ({C.fmt(r['tuned'])})", C.fmt(r["delta"], True), C.fmt_ci(r["ci"])])
    return judge + _table(["category", "n", "base refused", "tuned refused", "Δ refusal rate", "95% CI"], cells)


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
