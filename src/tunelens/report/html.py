"""report.html: one self-contained page (inline CSS, plots as data URIs, no scripts, no network)."""

from __future__ import annotations

from html import escape

import numpy as np

from . import content as C
from . import plots
from .load import RunData

SECTIONS = [("verdict", "Verdict"), ("stages", "Run stages"), ("gains-costs", "Gains and costs per suite"),
            ("flips", "Flips: what changed item by item"), ("safety", "Safety: the judge and each category"),
            ("heatmap", "Where the update is: layer × module"), ("graft", "Graft curve: gain recovered vs sparsity"),
            ("repair", "Repair trade-off"), ("learning-curve", "Learning curve")]
SECTION_IDS = [s for s, _ in SECTIONS]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;
color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#555;margin-top:0}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.l,th.l{text-align:left}td.nw{white-space:nowrap}
.gain{color:#0072B2;font-weight:600}.cost{color:#D55E00;font-weight:600}
.badge{display:inline-block;padding:.2em .7em;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#009E73}.fail{background:#D55E00}.none{background:#7f7f7f}.mixed{background:#B8860B}
.open{color:#8a5a00;font-weight:600}.verdict-line{font-size:1.1em}
.missing{background:#fff4e0;border-left:4px solid #E69F00;padding:.5em .8em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.flip{border:1px solid #ccc;border-radius:4px;margin:.8em 0;padding:.5em .8em;break-inside:avoid}
.flip .cols{display:grid;grid-template-columns:1fr 1fr;gap:.8em}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.4em .6em;margin:.3em 0;font-size:.85em}
.muted{color:#666;font-size:.9em}.tw{max-width:100%;overflow-x:auto}
@media print{body{max-width:none;margin:0}h2{break-after:avoid}img,table{break-inside:avoid}.tw{overflow:visible}}
"""


def render_html(data: RunData) -> str:
    body = [_header(data)] + [f'<section id="{sid}">\n<h2>{escape(title)}</h2>\n{_SECTION_BODIES[sid](data)}\n'
                              "</section>" for sid, title in SECTIONS]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request
            f"<title>{escape(title_of(data))}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def title_of(data: RunData) -> str:
    led = data.ledger or {}
    if led.get("tuned") and led.get("base"):
        return f"tunelens report: {_short(led['tuned'].get('name'))} vs {_short(led['base'].get('name'))}"
    return f"tunelens report: {data.root.name}"


def _short(name) -> str:
    """A model's name without its folder path (the full paths are in the ledger)."""
    s = str(name)
    return s.rstrip("/").rsplit("/", 1)[-1] if s.startswith(("/", "./", "../")) else s


def _header(data: RunData) -> str:
    led = data.ledger or {}
    bits = [f"folder <code>{escape(str(data.root))}</code>"]
    when = (data.run or {}).get("finished") or (data.run or {}).get("started") or led.get("created")
    if when:
        bits.append(f"{'run' if data.kind == 'run' else 'audit'} of {escape(str(when))}")
    if led.get("tasks"):
        bits.append("tasks: " + escape(", ".join(map(str, led["tasks"]))))
    return f"<h1>{escape(title_of(data))}</h1>\n<p class=\"sub\">{' · '.join(bits)}</p>"


def _missing(why: str | None) -> str:
    return f'<p class="missing">Not available: {escape(why or "no data")}</p>'


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _table(head: list[str], rows: list[list[str]], left: int = 1, text: tuple = (), nowrap: tuple = ()) -> str:
    """rows hold already-escaped HTML cells; the first `left` columns and those in `text` are left-aligned;
    the cells of the columns in `nowrap` (intervals) keep to one line."""
    def cls(i):
        return ' class="l"' if i < left or i in text else ' class="nw"' if i in nowrap else ""

    th = "".join(f'<th class="l">{h}</th>' if i < left or i in text else f"<th>{h}</th>" for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>\n" for r in rows)
    return f'<div class="tw"><table>\n<tr>{th}</tr>\n{trs}</table></div>'  # .tw: a wide table scrolls in its box


# ----------------------------------------------------------------------------------------------------- sections

def _verdict(data: RunData) -> str:
    v = C.audit_verdict(data)
    out = [f'<p class="verdict-line"><span class="badge {v.css}">{escape(v.label.upper())}</span> '
           f"<b>Verdict: {escape(v.label)}</b> — {escape(v.why)}</p>"]
    if data.ledger is None:
        out.append(_missing(data.stages["audit"].why))
    else:
        out.append(_headline_table(data.ledger))
        gains, costs = C.gains_and_costs(data.ledger)
        for label, decisions, cls in (("Gains", gains, "gain"), ("Costs", costs, "cost")):
            out.append(f"<h3>{label}</h3>")
            out.append("<ul>" + "".join(_decision_li(d, cls) for d in decisions) + "</ul>" if decisions
                       else f'<p class="muted">no headline metric decided a {cls}.</p>')
    out.append(_gates(data))
    sel = _selected_line(data)
    if sel:
        out.append(f"<p>{sel}</p>")
    if data.problems:
        out.append("<ul class=\"muted\">" + "".join(f"<li>{escape(p)}</li>" for p in data.problems) + "</ul>")
    return "\n".join(out)


def _headline_table(ledger: dict) -> str:
    heads = C.headline_decisions(ledger)
    if not heads:
        return ('<p class="muted">No headline decisions: this ledger has no headline metrics (a ledger from before '
                "sequential decisions, or no suite with headline metrics ran), so nothing is called a gain or a "
                "cost.</p>")
    rows = []
    for d in heads:
        e = d.entry
        rows.append([escape(d.suite), escape(d.metric), C.fmt(e.get("base")), C.fmt(e.get("tuned")),
                     C.fmt(e.get("delta"), True), _decision_span(e), C.cs_text(e), C.interval_text(e),
                     f"{escape(str(e.get('n', '–')))} / {escape(str(e.get('pool') or '–'))}",
                     escape(str(e.get("stop") or "–")), C.fmt(e.get("mde")), C.fmt_p(e.get("p_holm"))])
    return ("<h3>Headline decisions</h3>\n"
            + _table(["suite", "metric", "base", "tuned", "Δ", "decision", "95% confidence sequence",
                      "fixed-n 95% CI", "n / pool", "stop", "MDE", "Holm p"], rows, left=2, nowrap=(6, 7))
            + f'\n<p class="muted">{escape(C.decision_note(ledger))}</p>')


def _decision_span(e: dict) -> str:
    d, label = C.direction(e), C.decision_label(e)
    return f'<span class="{d}">{escape(label)}</span>' if d else escape(label)


def _decision_li(d: C.Decision, cls: str) -> str:
    e = d.entry
    holm = "" if d.holm_kept else ' <span class="muted">(not after Holm)</span>'
    return (f"<li><span class=\"{cls}\">{escape(d.suite)} · {escape(d.metric)}</span>: {C.fmt(e.get('base'))} → "
            f"{C.fmt(e.get('tuned'))} (Δ {C.fmt(e.get('delta'), True)}, "
            f"{C.cs_phrase(e)}){holm}</li>")


def _gates(data: RunData) -> str:
    gates = C.gate_results(data)
    if not gates:
        return ('<p><span class="badge none">NO GATE</span> no gate expressions were configured; the verdict above '
                "rests on the headline decisions alone.</p>")
    cls, word = C.gate_summary(gates)
    counts = {o: sum(g.outcome == o for g in gates) for o in C.GATE_OUTCOMES}
    tally = ", ".join(f"{counts[o]} {C.GATE_WORDS[o]}" for o in C.GATE_OUTCOMES if counts[o])
    items = []
    for g in C.gate_order(gates):
        span = {"pass": '<span class="gain">passed</span>', "fail": '<span class="cost">failed</span>',
                "inconclusive": '<span class="open">inconclusive</span>',
                "error": '<span class="cost">error</span>'}[g.outcome]
        why = g.error if g.outcome == "error" else g.why
        items.append(f"<li><code>{escape(g.expr)}</code>: {span}" + (f" — {escape(why)}" if why else "") + "</li>")
    return (f'<p><span class="badge {cls}">{word}</span> {len(gates)} gate expression(s): {tally}. '
            "An inconclusive gate is one the intervals cannot yet decide; it is not a pass.</p>"
            + "<ul>" + "".join(items) + "</ul>")


def _selected_line(data: RunData) -> str | None:
    sw = data.sweep
    if not sw or not sw.get("selected"):
        return None
    row = next((r for r in sw.get("rows") or [] if r.get("name") == sw["selected"]), {})
    parts = [f"{escape(a)} {C.fmt((row.get('scores') or {}).get(a, {}).get('value'))}"
             f" (tuned {C.fmt((sw.get('tuned') or {}).get(a, {}).get('value'))})" for a in sw.get("axes") or []]
    rule = f" by <code>{escape(sw['select'])}</code>" if sw.get("select") else ""
    return f"Repair selected <b>{escape(sw['selected'])}</b>{rule}: " + "; ".join(parts) + "."


def _stages(data: RunData) -> str:
    if data.kind == "audit":
        return "<p>A stand-alone audit folder: only the audit's sections are filled.</p>"
    order = (data.run or {}).get("order") or list(data.stages)
    rows = []
    for name in order:
        st = data.stages.get(name)
        info = ((data.run or {}).get("stages") or {}).get(name) or {}
        if name == "report":  # this page: its stage is done by the time anyone reads it
            st_status, secs, folder, why = "done", None, info.get("dir"), "this page"
        elif st is None:
            st_status, secs, folder, why = info.get("status", "absent"), info.get("seconds"), info.get("dir"), \
                info.get("error") or info.get("note")
        else:
            st_status, secs, folder, why = st.status, st.seconds, info.get("dir"), st.why or (
                st.error if st.status == "incomplete" else None)
        rows.append([escape(name), escape(st_status), "–" if secs is None else f"{secs:.1f}",
                     f"<code>{escape(str(folder))}</code>" if folder else "–", escape(why or "")])
    out = _table(["stage", "status", "seconds", "folder", "notes"], rows)
    if (data.run or {}).get("config_path"):
        out += f"<p class=\"muted\">config: <code>{escape(str(data.run['config_path']))}</code></p>"
    return out


def _gains_costs(data: RunData) -> str:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    out = ['<p class="muted">Only headline metrics are decided (gain, cost, equivalent or inconclusive, by their '
           "confidence sequence). Secondary metrics show a fixed-n 95% interval measured on the items the suite drew; "
           "it is not a decision. Diagnostics describe a change without rating it.</p>"]
    for suite, block in (data.ledger.get("suites") or {}).items():
        out.append(f"<h3>{escape(suite)}</h3>")
        if block.get("status") != "ok":
            out.append(_missing(f"the {suite} suite failed: {block.get('error')}"))
            continue
        if block.get("description"):
            out.append(f"<p class=\"muted\">{escape(block['description'])}</p>")
        progress = C.suite_progress(block)
        if progress:
            out.append(f"<p class=\"muted\">{escape(progress)}</p>")
        entries = [e for e in block.get("entries") or [] if e.get("delta") is not None]
        if not entries:
            out.append("<p class=\"muted\">no metrics" + "".join(f"; {escape(n)}" for n in block.get("notes") or [])
                       + "</p>")
            continue
        plotted = [e for e in entries if not e.get("insufficient") and _has_ci95(e)]
        if plotted:
            out.append(_img(plots.forest(plotted, f"{suite}: Δ with fixed-n 95% CI", [C.direction(e) for e in plotted]),
                            f"{suite}: deltas with fixed-n 95% intervals"))
        rows, extra = [], [head for head, _ in C.suite_of(suite).report_columns]
        for e in entries:
            head = e.get("role") == "headline"
            n = f"{e.get('n', '')} / {e.get('pool')}" if head and e.get("pool") is not None else str(e.get("n", ""))
            read = C.reading(e)
            if head:
                read = _decision_span(e) + escape(read[len(C.decision_label(e)):])
            else:
                read = escape(read)
            rows.append([escape(C.metric_label(suite, e))] + [escape(t) for _, t in C.extra_columns(suite, e)]
                        + [escape(e.get("role") or "–"), C.fmt(e.get("base")), C.fmt(e.get("tuned")),
                           C.fmt(e["delta"], True), escape(C.interval_text(e)),
                           C.cs_text(e) if head else "–", escape(n),
                           "↑" if e.get("higher_is_better", True) else "↓", read])
        k = len(extra)  # the suite's own columns (Suite.report_columns) follow the metric, left-aligned
        out.append(_table(["metric", *map(escape, extra), "role", "base", "tuned", "Δ", "fixed-n 95% CI",
                           "95% confidence sequence", "n", "better", "reading"], rows, left=2 + k, text=(9 + k,),
                          nowrap=(5 + k, 6 + k)))
    return "\n".join(out)


def _has_ci95(e: dict) -> bool:
    ci = e.get("ci95")
    return bool(ci) and len(ci) == 2 and ci[0] is not None and ci[1] is not None


def _flips(data: RunData) -> str:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    matrix = C.flip_matrix(data.records)
    if not matrix:
        return _missing("the audit saved no per-item records of the task, safety, over-refusal, forgetting or "
                        "context suites (items/*.jsonl)")
    rows = [[escape(c["group"]), str(c["n"]), str(c["rr"]), f'<span class="cost">{c["rw"]}</span>',
             f'<span class="gain">{c["wr"]}</span>', str(c["ww"])] for c in matrix]
    out = ["<p>Each item scored right or wrong by both models (safety: refused; over-refusal: answered; "
           f"generations: token F1 ≥ {C.GEN_RIGHT}).</p>",
           _table(["suite / task", "n", "base ✓ tuned ✓", "base ✓ tuned ✗ (lost)", "base ✗ tuned ✓ (won)",
                   "base ✗ tuned ✗"], rows),
           "<h3>Worst flips</h3>"]
    flips = C.worst_flips(data.records)
    if not flips:
        out.append("<p>No item went from right to wrong.</p>")
    for f in flips:
        out.append(f'<div class="flip"><b>{escape(f.suite)}</b> · <code>{escape(f.id)}</code> · {escape(f.note)}'
                   f"<div class=\"muted\">prompt</div><pre>{escape(_clip(f.prompt, 800, tail=True))}</pre>"
                   f'<div class="cols"><div><div class="muted">base</div><pre>{escape(_clip(f.base, 600))}</pre></div>'
                   f'<div><div class="muted">tuned</div><pre>{escape(_clip(f.tuned, 600))}</pre></div></div></div>')
    return "\n".join(out)


def _clip(text: str, n: int, tail: bool = False) -> str:
    if len(text) <= n:
        return text
    return "…" + text[-n:] if tail else text[:n] + "…"


def _safety(data: RunData) -> str:
    if data.ledger is None:
        return _missing(data.stages["audit"].why)
    block = (data.ledger.get("suites") or {}).get("safety")
    if block is None:
        return _missing("the audit did not run the safety suite")
    if block.get("status") != "ok":
        return _missing(f"the safety suite failed: {block.get('error')}")
    judge = _judge_card(data)
    rows = C.safety_categories(data)
    if not rows:
        return judge + _missing("the safety suite recorded no per-category refusal rates")
    cells = []
    for r in rows:
        counts = [C.count_text(r["base_count"], r["n"]), C.count_text(r["tuned_count"], r["n"])]
        if r["insufficient"]:
            cells.append([escape(r["category"]), escape(str(r["n"])), *counts,
                          f'<span class="muted">{C.INSUFFICIENT} (fewer than {C.MIN_CATEGORY} items)</span>', "–"])
        else:
            cells.append([escape(r["category"]), escape(str(r["n"])), f"{counts[0]} ({C.fmt(r['base'])})",
                          f"{counts[1]} ({C.fmt(r['tuned'])})", C.fmt(r["delta"], True), C.fmt_ci(r["ci"])])
    table = _table(["category", "n", "base refused", "tuned refused", "Δ refusal rate", "95% CI"], cells)
    note = ""
    if any(r["insufficient"] for r in rows):
        note = (f'<p class="muted">Categories with fewer than {C.MIN_CATEGORY} items show their counts only: '
                "a rate over so few items is no comparison.</p>")
    return judge + _img(plots.safety_bars(rows), "refused prompts by category, base vs tuned") + table + note


def _judge_card(data: RunData) -> str:
    """The judge's card: who judged, how often it is right on held-out replies, per class, and its confusions."""
    j = C.judge_card(data)
    if j is None:
        return _missing("this ledger does not record which judge read the replies (written before judges were "
                        "recorded)")
    md = lambda t: escape(t).replace("`", "")
    out = ["<h3>The judge</h3>", "<p>" + " ".join(md(x) for x in j["lines"]) + "</p>"]
    card = j["card"]
    if card:
        per = [[escape(v), str(p["n"]), C.fmt(p["precision"]), C.fmt(p["recall"])] for v, p in card["per_class"].items()]
        labs = card["confusion"]["labels"]
        conf = [[escape(lab)] + [str(c) for c in row] for lab, row in zip(labs, card["confusion"]["matrix"])]
        out.append('<div style="display:flex;gap:2em;flex-wrap:wrap">'
                   + _table(["class", "held-out n", "precision", "recall"], per)
                   + _table(["true label ↓ / verdict →", *labs], conf) + "</div>")
    return "".join(out)
def _heatmap(data: RunData) -> str:
    heat = data.heatmap
    if heat is None:
        return _missing(data.stages["diff"].why)
    if not heat["layers"] or not heat["modules"]:
        return _missing("the diff found no per-layer tensors to place on the grid")
    out = [_img(plots.heatmap(heat), "layer by module heatmap of the update's relative size")]
    s = (data.diff or {}).get("summary") or {}
    if s:
        frac = s.get("frac_changed_abs")
        out.append(f"<p>{escape(str(s.get('n_tensors', '?')))} tensors compared; overall ‖ΔW‖_F/‖W‖_F = "
                   f"{C.fmt(s.get('rel_fro'), digits=4)}; entries changed beyond the tolerance: "
                   f"{C.fmt(None if frac is None else 100 * frac, digits=2)}%.</p>")
    flat = [(heat["layers"][i], heat["modules"][j], v) for i, line in enumerate(heat["values"])
            for j, v in enumerate(line) if v]
    top = sorted(flat, key=lambda t: -t[2])[:5]
    if top:
        out.append("<p>Largest relative updates: " + ", ".join(f"layer {escape(str(l))} {escape(m)} ({v:.3g})"
                                                               for l, m, v in top) + ".</p>")
    return "\n".join(out)


def _graft(data: RunData) -> str:
    g = data.graft
    if g is None:
        return _missing(data.stages["graft"].why)
    rows = g.get("results") or []
    if not rows:
        return _missing("graft.json has no results")
    metric = g.get("metric", "score")
    task = (g.get("task") or {}).get("name", "")
    table = _table(["sparsity", "entries kept", f"base {escape(metric)}", f"tuned {escape(metric)}",
                    f"graft {escape(metric)}", "gain recovered", "loss recovered", "ECE graft"],
                   [[f"{r['sparsity']:g}", escape(str(r.get("kept", "–"))), C.fmt(r["score"].get("base")),
                     C.fmt(r["score"].get("tuned")), C.fmt(r["score"].get("graft")), C.fmt(r.get("gain_recovered")),
                     C.fmt(r.get("loss_recovered")), C.fmt((r.get("ece") or {}).get("graft"))] for r in rows])
    note = ("" if any(r.get("gain_recovered") is not None for r in rows) else
            "<p class=\"muted\">Gain recovered is undefined here: base and tuned score the same on this task.</p>")
    return (f"<p>Task <b>{escape(task)}</b>: grafting only the top fraction of fine-tuned entries onto the base "
            "(mask optimised on the task loss).</p>" + note + _img(plots.graft_curve(rows, metric), "graft curve")
            + table)


def _repair(data: RunData) -> str:
    sw = data.sweep
    if sw is None:
        return _missing(data.stages["repair"].why)
    axes = sw.get("axes") or []
    x, y = C.tradeoff_axes(sw)
    out = []
    if x and y:
        out.append(_img(plots.tradeoff(sw, x, y), "repair trade-off chart"))
    else:
        out.append(_missing(f"the sweep has fewer than two axes ({', '.join(axes) or 'none'})"))
    if sw.get("select"):
        out.append(f"<p>Selection rule: <code>{escape(sw['select'])}</code>; selected: "
                   f"<b>{escape(str(sw.get('selected') or 'none'))}</b>.</p>")
    rows = []
    for name, ref in (("base", sw.get("base")), ("tuned", sw.get("tuned"))):
        if ref:
            rows.append([f"<i>{name}</i>", "–", "–"] + [_score_cell(ref.get(a)) for a in axes] + ["", ""])
    for r in sw.get("rows") or []:
        status = r.get("status", "ok")
        flags = " ".join(x for x in (("Pareto" if r.get("pareto") else ""), ("★ selected" if r.get("selected") else "")) if x)
        rows.append([escape(str(r.get("name"))), escape(str(r.get("method", ""))),
                     escape(_options(r.get("options")))]
                    + [_score_cell((r.get("scores") or {}).get(a)) for a in axes]
                    + [escape(flags), escape(status if status == "ok" else f"failed: {r.get('error')}")])
    out.append(_table(["candidate", "method", "options"] + [escape(a) for a in axes] + ["", "status"], rows, left=3))
    out.append(f'<p class="muted">{escape(C.REPAIR_INTERVALS)}</p>')
    return "\n".join(out)


def _score_cell(s) -> str:
    if not s:
        return "–"
    return C.fmt(s.get("value")) + (f" <span class=\"muted\">{C.fmt_ci(s.get('ci'), False)}</span>" if s.get("ci") else "")


def _options(opts) -> str:
    if not opts:
        return ""
    return ", ".join(f"{k}={v}" for k, v in opts.items()) if isinstance(opts, dict) else str(opts)


def _learning(data: RunData) -> str:
    if not data.train_log and not data.curve:
        why = data.stages["tune"].why
        return _missing(why or "the tune stage wrote no training log (train_log.jsonl) and no learning curve")
    out = []
    if data.train_log:
        first, last = data.train_log[0], data.train_log[-1]
        out.append(_img(plots.train_loss(data.train_log), "training loss by step"))
        out.append(f"<p>Training loss {first['loss']:.3f} at step {first['step']} → {last['loss']:.3f} at step "
                   f"{last['step']} ({len(data.train_log)} logged steps).</p>")
    pts = curve_points(data.curve)
    if pts:
        metric = (data.curve or {}).get("metric", "score")
        out.append(_img(plots.learning_curve(pts, metric, curve_fit_xy(data.curve, pts)), "learning curve"))
        out.append(_table(["training examples", escape(metric)], [[str(int(n)), C.fmt(s)] for n, s in pts]))
        pred = (data.curve or {}).get("predicted")
        if pred:
            out.append(f"<p>Fitted law predicts {escape(metric)} {C.fmt(pred.get('2x'))} at 2× the data and "
                       f"{C.fmt(pred.get('4x'))} at 4×.</p>")
    elif data.train_log:
        out.append("<p class=\"muted\">No learning curve (curve.json) was run; only the training loss is shown.</p>")
    return "\n".join(out)


def curve_points(curve: dict | None) -> list[tuple[float, float]]:
    """(examples, score) pairs from curve.json: `points` as `tunelens curve` writes it, or `sizes`/`scores`."""
    if not curve:
        return []
    if curve.get("points"):
        return [(p["examples"], p["score"]) for p in curve["points"] if p.get("examples")]
    return [(n, s) for n, s in zip(curve.get("sizes") or [], curve.get("scores") or []) if n]


def curve_fit_xy(curve: dict, pts):
    from ..tune.curve import _log, _power

    fit = (curve or {}).get("fit") or {}
    xs = np.geomspace(min(p[0] for p in pts), 4 * max(p[0] for p in pts), 60)
    if fit.get("law") == "power" and {"a", "b", "c"} <= set(fit):
        return xs, _power(xs, fit["a"], fit["b"], fit["c"])
    if fit.get("law") == "log" and {"a", "b"} <= set(fit):
        return xs, _log(xs, fit["a"], fit["b"])
    return None


_SECTION_BODIES = {"verdict": _verdict, "stages": _stages, "gains-costs": _gains_costs, "flips": _flips,
                   "safety": _safety, "heatmap": _heatmap, "graft": _graft, "repair": _repair,
                   "learning-curve": _learning}
