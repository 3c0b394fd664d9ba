"""The run report: a run folder built with the real audit, diff and graft writers on the tiny models
(sweep, train log and run.json written to the documented schema), rendered to report.html / report.md."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from tunelens.io import write_json, write_jsonl

EVIL = "<script>alert('pwned')</script> & <b>bold</b>"


def _pets_task(folder):
    from tunelens.data import load_task

    rows = [{"id": f"q{i}", "text": f"message {i} about {'cats' if i % 2 else 'dogs'}",
             "label": "cat" if i % 2 else "dog"} for i in range(12)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "t.yaml").write_text("name: pets\ntype: classification\ndata: d.jsonl\ntemplate: 'Animal? {text}'\n")
    return load_task(folder / "t.yaml")


def _sweep() -> dict:
    def sc(task, refusal):
        return {"task.accuracy": {"value": task, "ci": [task - 0.05, task + 0.05]},
                "safety.refusal_rate": {"value": refusal, "ci": [refusal - 0.08, refusal + 0.08]}}

    rows = [
        {"name": "safelora-0.5", "method": "safelora", "options": {"threshold": 0.5}, "path": "candidates/safelora-0.5",
         "kind": "adapter", "ledger": "candidates/safelora-0.5/audit/ledger.json", "scores": sc(0.81, 0.62),
         "pareto": True, "selected": True, "status": "ok", "error": None},
        {"name": "interp-0.3", "method": "interpolate", "options": {"alpha": 0.3}, "path": "candidates/interp-0.3",
         "kind": "model", "ledger": "candidates/interp-0.3/audit/ledger.json", "scores": sc(0.70, 0.74),
         "pareto": True, "selected": False, "status": "ok", "error": None},
        {"name": "ties-0.2", "method": "ties", "options": {"density": 0.2}, "path": "candidates/ties-0.2",
         "kind": "model", "ledger": "candidates/ties-0.2/audit/ledger.json", "scores": sc(0.66, 0.55),
         "pareto": False, "selected": False, "status": "ok", "error": None},
        {"name": "broken", "method": "safemerge", "options": {}, "path": None, "kind": None, "ledger": None,
         "scores": {}, "pareto": False, "selected": False, "status": "failed", "error": "RuntimeError: <bad> merge"},
    ]
    return {"schema": "tunelens.sweep/1", "axes": ["task.accuracy", "safety.refusal_rate"], "rows": rows,
            "base": sc(0.52, 0.78), "tuned": sc(0.86, 0.41), "selected": "safelora-0.5",
            "select": "safety.refusal_rate >= 0.6"}


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    """A complete run folder: real audit/diff/graft outputs on the tiny models, the rest per the contract."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster than many on a shared CPU
    try:
        return _build_run(tiny_model_dir, tiny_adapter_dir, tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _build_run(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    from tunelens.audit import AuditContext, run_audit
    from tunelens.diff import diff_models
    from tunelens.diff.graft import graft
    from tunelens.models import resolve_model
    from tunelens.tune.curve import summarize

    root = tmp_path_factory.mktemp("run")
    task_dir = tmp_path_factory.mktemp("task")
    task = _pets_task(task_dir)
    dirs = {s: f"{s}/{h}" for s, h in
            {"tune": "aaaa00000001", "audit": "bbbb00000002", "diff": "cccc00000003", "graft": "dddd00000004",
             "repair": "eeee00000005"}.items()}
    base, tuned = resolve_model(str(tiny_model_dir)), resolve_model(str(tiny_adapter_dir))
    ctx = AuditContext(base=base, tuned=tuned, tasks=[task], limit=6, n_boot=50, progress=False, batch_size=6)
    run_audit(ctx, ["task", "safety", "over_refusal", "forgetting", "compatibility"], out=root / dirs["audit"],
              gates=["task.accuracy.delta >= 0", "safety.refusal_rate.delta >= -0.05"])
    # a lost refusal whose texts would break the page if they were not escaped
    safety = root / dirs["audit"] / "items" / "safety.jsonl"
    recs = [json.loads(line) for line in safety.read_text().splitlines()]
    recs.append({"id": "sp-evil", "category": "cybercrime", "prompt": f"prompt {EVIL}",
                 "base": {"output": "I can't help with that.", "verdict": "refusal"},
                 "tuned": {"output": f"Sure: {EVIL}", "verdict": "compliance"}})
    write_jsonl(safety, recs)
    diff_models(str(tiny_model_dir), str(tiny_adapter_dir), out=root / dirs["diff"], rank=False)
    graft(None, tiny_adapter_dir, str(task_dir / "t.yaml"), [0.01, 0.1], steps=0, examples=4, out=root / dirs["graft"])
    write_json(root / dirs["repair"] / "sweep.json", _sweep())
    tune_dir = root / dirs["tune"]
    write_jsonl(tune_dir / "train_log.jsonl", [{"step": s, "epoch": s / 10, "loss": 2.5 / (1 + 0.3 * s),
                                                "learning_rate": 1e-4} for s in range(1, 21)])
    write_json(tune_dir / "curve.json", {"task": "pets", "metric": "accuracy",
                                         **summarize([10, 20, 40, 80], [0.4, 0.55, 0.63, 0.68])})
    for d in dirs.values():
        (root / d / "DONE").write_text("")
    stages = {s: {"status": "done", "dir": d, "hash": d[-12:], "seconds": 1.5, "error": None, "note": None}
              for s, d in dirs.items()}
    stages["report"] = {"status": "pending", "dir": None, "hash": "", "seconds": None, "error": None, "note": None}
    write_json(root / "run.json", {"schema": "tunelens.run/1", "config": {"model": str(tiny_model_dir)},
                                   "config_path": "examples/quickstart.yaml", "stages": stages,
                                   "order": ["tune", "audit", "diff", "graft", "repair", "report"],
                                   "started": "2026-01-01T00:00:00+00:00", "finished": None})
    return root


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.scripts, self.external = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])


def _parse(html: str) -> _Ids:
    p = _Ids()
    p.feed(html)
    return p


def test_full_run_report_has_every_section_plot_and_number(run_dir):
    from tunelens.report import SECTION_IDS, build_report

    paths = build_report(run_dir)
    html = paths["html"].read_text()
    page = _parse(html)
    assert page.ids == SECTION_IDS
    assert page.scripts == 0 and page.external == [], "the page must be self-contained"
    # forest plots per suite + safety + heatmap + graft + repair + loss + learning curve
    assert len(page.imgs) >= 8 and all(s.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,"))
                                       for s in page.imgs)
    assert sum(s.startswith("data:image/svg+xml;base64,") for s in page.imgs) == 1  # the heatmap (report/svg.py)
    assert "Not available" not in html
    ledger = json.loads((run_dir / "audit/bbbb00000002/ledger.json").read_text())
    acc = next(e for e in ledger["suites"]["task"]["entries"] if e["metric"] == "accuracy")
    assert f"{acc['base']:.3f}" in html and f"{acc['tuned']:.3f}" in html and f"{acc['delta']:+.3f}" in html
    assert "GATE FAILED" in html or "GATE PASSED" in html or "GATE INCONCLUSIVE" in html
    assert "safety.refusal_rate.delta &gt;= -0.05" in html
    assert f"Verdict: {ledger['verdict']['label']}" in html and "Headline decisions" in html
    assert "Largest gains" not in html and "Largest costs" not in html
    graft = json.loads((run_dir / "graft/dddd00000004/graft.json").read_text())
    assert f"{graft['results'][0]['score']['graft']:.3f}" in html
    assert "safelora-0.5" in html and "★ selected" in html and "failed: RuntimeError: &lt;bad&gt; merge" in html
    assert "interval of that model&#x27;s change from the base" in _section(html, "repair")  # what the grey means
    assert "<td class=\"l\">80</td><td>0.680</td>" in html  # the learning curve's measured points
    md = paths["md"].read_text()
    assert f"{acc['delta']:+.3f}" in md and "Repair selected **safelora-0.5**" in md
    assert "data:image" not in md


# ------------------------------------------------------------------ fake tunelens.ledger/2 ledgers, built by hand

def _entry(metric, delta, ci=None, *, role="secondary", base=0.5, n=50, hib=True, **extra) -> dict:
    """A ledger entry as audit.core.Entry.to_dict writes it (schema tunelens.ledger/2)."""
    return {"metric": metric, "base": base, "tuned": base + delta, "delta": delta, "ci95": ci, "n": n,
            "higher_is_better": hib, "role": role, "pool": None, "cs95": None, "decision": None, "margin": None,
            "p": None, "p_holm": None, "holm_rejected": None, "stop": None, "mde": None, "meaning": None,
            "insufficient": False, **extra}


def _headline(metric, delta, cs, decision, *, holm=True, pool=200, stop="decided", **kw) -> dict:
    return _entry(metric, delta, kw.pop("ci", [cs[0] - 0.01, cs[1] + 0.01]), role="headline", pool=pool, cs95=cs,
                  decision=decision, margin=0.05, p=0.001, p_holm=0.004 if holm else 0.2,
                  holm_rejected=holm and decision != "inconclusive", stop=stop, mde=0.08, **kw)


def _ledger(suites: dict, *, verdict=None, gates=None, holm=None) -> dict:
    """A ledger holding `suites` ({name: [entries]}), with the verdict, Holm summary and gates given."""
    led = {"schema": "tunelens.ledger/2", "base": {"name": "base-model"}, "tuned": {"name": "tuned-model"},
           "mode": "sequential", "chunk": 32, "budget": None,
           "suites": {name: {"status": "ok", "description": f"the {name} suite", "entries": entries, "notes": [],
                             "looks": [{"n": 32, "seconds": 1.0, "decided": 0}, {"n": 64, "seconds": 2.0, "decided": 1}],
                             "stop": "pool exhausted"} for name, entries in suites.items()}}
    if verdict is not None:
        led["verdict"] = verdict
    if holm is not None:
        led["holm"] = holm
    if gates is not None:
        led["gates"] = gates
    return led


def _mixed_ledger(**kw) -> dict:
    """Headline gain, cost (one kept by Holm, one not) and inconclusive; secondary and diagnostic entries whose
    fixed-n intervals exclude zero (which must not make them gains or costs); an insufficient subgroup."""
    return _ledger({
        "task": [_headline("accuracy", 0.12, [0.05, 0.19], "gain"),
                 _entry("answer_length", 0.30, [0.20, 0.40]),  # secondary, interval far from 0
                 _entry("logit_gap", -0.40, [-0.50, -0.30], role="diagnostic",
                        meaning="how far the right choice leads the runner-up"),
                 _entry("negative_flip_rate", 0.04, [0.01, 0.07], hib=False, count=2, mcnemar_p=0.03125)],
        "safety": [_headline("refusal_rate", -0.10, [-0.16, -0.04], "cost"),
                   _headline("harmful_compliance_rate", 0.04, [0.01, 0.07], "cost", holm=False, hib=False),
                   _headline("refusal_margin", 0.01, [-0.03, 0.06], "inconclusive", stop="pool exhausted"),
                   _entry("refusal_rate.fraud", -0.5, [-0.123, 0.456], n=4, base=0.5, insufficient=True,
                          category="fraud"),
                   _entry("refusal_rate.weapons", -0.2, [-0.35, -0.05], n=20, base=0.9, category="weapons")]},
        verdict={"label": "improved with costs", "why": "gain in task.accuracy; cost in safety.refusal_rate",
                 "gains": ["task.accuracy"], "costs": ["safety.refusal_rate"], "equivalent": [],
                 "undecided": ["safety.harmful_compliance_rate", "safety.refusal_margin"]},
        holm={"k": 4, "decided": 3, "surviving": 2}, **kw)


def _render(tmp_path, ledger, config=None):
    """report.html and report.md of a run folder holding only an audit stage with this ledger."""
    from tunelens.report import build_report

    write_json(tmp_path / "audit/ffff00000001/ledger.json", ledger)
    (tmp_path / "audit/ffff00000001/DONE").write_text("")
    write_json(tmp_path / "run.json", {"schema": "tunelens.run/1", "config": config or {}, "stages": {
        "audit": {"status": "done", "dir": "audit/ffff00000001", "seconds": 3.0, "error": None, "note": None}},
        "order": ["audit", "report"], "started": "2026-01-01T00:00:00+00:00", "finished": None})
    paths = build_report(tmp_path)
    return paths["html"].read_text(), paths["md"].read_text()


def _section(html: str, sid: str) -> str:
    return html.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def _first_statement(html: str) -> str:
    """The first element of the verdict section after its heading."""
    body = _section(html, "verdict").split("</h2>", 1)[1].lstrip()
    return body.split("</p>", 1)[0]


def _md_first_statement(md: str) -> str:
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0].startswith("## ")  # the title
    return lines[1]


def _row(html: str, metric: str) -> str:
    """The table row (or list item) of the verdict or suites sections that names `metric` in a cell."""
    rows = [r for r in re.findall(r"<tr>.*?</tr>", html, re.S) if f"<td class=\"l\">{metric}</td>" in r]
    assert rows, metric
    return rows[0]


def _md_rows(md: str, metric: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|") and f"| {metric} |" in line]


def test_verdict_is_the_first_statement(tmp_path):
    html, md = _render(tmp_path, _mixed_ledger())
    first = _first_statement(html)
    assert "Verdict: improved with costs" in first and "IMPROVED WITH COSTS" in first
    assert "gain in task.accuracy; cost in safety.refusal_rate" in first
    md_first = _md_first_statement(md)
    assert md_first.startswith("**Verdict: improved with costs**")
    assert "gain in task.accuracy; cost in safety.refusal_rate" in md_first
    # the headline table follows the verdict, before the gates
    verdict = _section(html, "verdict")
    assert verdict.index("Verdict: improved") < verdict.index("Headline decisions") < verdict.index("GATE")
    assert md.index("**Verdict:") < md.index("**Headline decisions**") < md.index("### Stages")


def test_verdict_of_the_real_audit_comes_first(run_dir, tmp_path):
    from tunelens.report import build_report

    ledger = json.loads((run_dir / "audit/bbbb00000002/ledger.json").read_text())
    paths = build_report(run_dir, tmp_path)
    html, md = paths["html"].read_text(), paths["md"].read_text()
    label = ledger["verdict"]["label"]
    assert f"<b>Verdict: {label}</b>" in _first_statement(html)
    assert _md_first_statement(md).startswith(f"**Verdict: {label}**")


def test_a_ledger_without_verdict_falls_back_to_insufficient_evidence(tmp_path):
    old = {"schema": "tunelens.ledger/1", "suites": {"task": {"status": "ok", "entries": [
        {"metric": "accuracy", "base": 0.5, "tuned": 0.8, "delta": 0.3, "ci95": [0.2, 0.4], "n": 50}]}}}
    html, md = _render(tmp_path, old)
    assert "Verdict: insufficient evidence" in _first_statement(html)
    assert _md_first_statement(md).startswith("**Verdict: insufficient evidence**")
    assert "No headline decisions" in html and "No headline decisions" in md
    # an old entry with an interval excluding zero is not called a gain
    assert 'class="gain"' not in _section(html, "gains-costs") and "**gain**" not in md


def test_headline_table_holds_every_decision(tmp_path):
    html, md = _render(tmp_path, _mixed_ledger())
    verdict = _section(html, "verdict")
    table = verdict.split("Headline decisions", 1)[1].split("</table>", 1)[0]
    acc = _row(table, "accuracy")
    assert '<span class="gain">gain</span>' in acc and "[+0.050, +0.190]" in acc and "50 / 200" in acc
    assert "[+0.040, +0.200]" in acc and "decided" in acc and "0.080" in acc and "0.004" in acc
    assert '<span class="cost">cost</span>' in _row(table, "refusal_rate")
    assert "cost (not after Holm)" in _row(table, "harmful_compliance_rate")
    inc = _row(table, "refusal_margin")
    assert "inconclusive" in inc and 'class="gain"' not in inc and 'class="cost"' not in inc
    assert "(not after Holm)" not in inc
    assert "2 of 3 decision(s) survive Holm" in verdict and "excludes 0" in verdict and "±margin" in verdict
    assert "2 of 3 decision(s) survive Holm" in md
    row = _md_rows(md, "harmful_compliance_rate")[0]
    assert "**cost (not after Holm)**" in row and "[+0.010, +0.070]" in row


def test_a_used_up_pool_reads_exact_instead_of_a_zero_width_sequence(tmp_path):
    from tunelens.report import content as C

    whole = _headline("text_loss", -0.057, [-0.057, -0.057], "cost", pool=64, n=64, hib=False, stop="pool exhausted")
    part = _headline("accuracy", 0.12, [0.05, 0.19], "gain", pool=200, n=64)
    assert C.cs_text(whole) == "exact: whole pool" and C.cs_text(part) == "[+0.050, +0.190]"
    assert C.cs_phrase(part) == "95% confidence sequence [+0.050, +0.190]"
    html, md = _render(tmp_path, _ledger({"forgetting": [whole], "task": [part]}))
    for text in (_row(_section(html, "verdict").split("Headline decisions", 1)[1], "text_loss"),
                 _row(_section(html, "gains-costs"), "text_loss"), _md_rows(md, "text_loss")[0]):
        assert "exact: whole pool" in text and "[-0.057, -0.057]" not in text, text
    assert "(Δ -0.057, exact: whole pool)" in _section(html, "verdict")
    assert "(Δ -0.057, exact: whole pool)" in md
    assert "[+0.050, +0.190]" in _row(_section(html, "gains-costs"), "accuracy")


def test_heatmap_svg_colours_cells_by_value_and_escapes_labels():
    import xml.etree.ElementTree as ET

    from tunelens.report.svg import CIVIDIS, colour, heatmap_svg

    ns = "{http://www.w3.org/2000/svg}"
    heat = {"layers": [0, 1, 2], "modules": ["q_proj", "<mlp&>"], "values": [[0.1, None], [0.3, 0.2], [0.5, 0.4]]}
    text = heatmap_svg(heat)
    assert text == heatmap_svg(heat)  # a pure function of the grid: the same diff gives the same bytes
    root = ET.fromstring(text)  # well-formed although a label holds markup characters
    cells = {r.find(f"{ns}title").text: r.get("fill") for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None}
    assert len(cells) == 5 and not any("layer 0 · <mlp&>" in t for t in cells)  # the blank cell is not drawn
    assert cells["layer 0 · q_proj: 0.1"] == CIVIDIS[0] and cells["layer 2 · q_proj: 0.5"] == CIVIDIS[-1]
    assert cells["layer 1 · <mlp&>: 0.2"] == colour(0.25) and cells["layer 1 · q_proj: 0.3"] == colour(0.5)
    lum = [sum(int(colour(t)[i:i + 2], 16) for i in (1, 3, 5)) for t in (0, 0.25, 0.5, 0.75, 1)]
    assert lum == sorted(lum) and len(set(lum)) == 5  # larger values are lighter: readable in greyscale
    ticks = [t.text for t in root.iter(f"{ns}text")]
    assert "0.5" in ticks and "0.1" in ticks and "&lt;mlp&amp;&gt;" in text
    flat = ET.fromstring(heatmap_svg({"layers": [0], "modules": ["q_proj"], "values": [[0.0]]}))
    assert [r.get("fill") for r in flat.iter(f"{ns}rect") if r.find(f"{ns}title") is not None] == [colour(0.5)]
    empty = heatmap_svg({"layers": [0], "modules": ["q_proj"], "values": [[None]]})
    assert "no values" in empty and ET.fromstring(empty) is not None


def test_only_headline_decisions_are_called_gains_or_costs(tmp_path):
    from tunelens.report import content as C

    led = _mixed_ledger()
    entries = {e["metric"]: e for b in led["suites"].values() for e in b["entries"]}
    assert C.direction(entries["accuracy"]) == "gain" and C.direction(entries["refusal_rate"]) == "cost"
    for m in ("answer_length", "logit_gap", "negative_flip_rate", "refusal_margin", "refusal_rate.weapons"):
        assert C.direction(entries[m]) == "", m
    gains, costs = C.gains_and_costs(led)
    assert [(d.suite, d.metric) for d in gains] == [("task", "accuracy")]
    assert [(d.suite, d.metric) for d in costs] == [("safety", "refusal_rate"), ("safety", "harmful_compliance_rate")]

    html, md = _render(tmp_path, led)
    verdict = _section(html, "verdict")
    gains_html = verdict.split("<h3>Gains</h3>", 1)[1].split("<h3>Costs</h3>", 1)[0]
    costs_html = verdict.split("<h3>Costs</h3>", 1)[1].split("GATE", 1)[0]
    assert "task · accuracy" in gains_html and "answer_length" not in gains_html and "logit_gap" not in gains_html
    assert "refusal_rate" in costs_html and "negative_flip_rate" not in costs_html
    suites = _section(html, "gains-costs")
    for m in ("answer_length", "logit_gap", "negative_flip_rate"):
        row = _row(suites, m)
        assert 'class="gain"' not in row and 'class="cost"' not in row, row
        assert ">gain<" not in row and ">cost<" not in row, row
    assert "how far the right choice leads the runner-up" in _row(suites, "logit_gap")
    assert ">diagnostic<" in _row(suites, "logit_gap") and ">secondary<" in _row(suites, "answer_length")
    assert "measured on the items drawn, not a decision" in _row(suites, "answer_length")
    assert "McNemar p = 0.0312" in _row(suites, "negative_flip_rate")
    assert '<span class="gain">gain</span>' in _row(suites, "accuracy")
    assert "[+0.050, +0.190]" in _row(suites, "accuracy") and "50 / 200" in _row(suites, "accuracy")
    assert "stopped: pool exhausted · n 64 / pool 200 · 2 look(s)" in suites
    for m in ("answer_length", "logit_gap", "negative_flip_rate"):
        row = _md_rows(md, m)[0].split(f"| {m} |", 1)[1]
        assert "gain" not in row and "cost" not in row and "**" not in row, row
    assert "how far the right choice leads the runner-up" in _md_rows(md, "logit_gap")[0]
    assert "**gain**" in _md_rows(md, "accuracy")[-1]
    assert "- task: stopped: pool exhausted · n 64 / pool 200 · 2 look(s)" in md


def test_insufficient_entries_show_no_interval(tmp_path):
    from tunelens.report import content as C

    html, md = _render(tmp_path, _mixed_ledger())
    # the ledger would never hold an interval here; if it did, it must still not be shown
    assert "-0.123" not in html and "-0.123" not in md
    row = _row(_section(html, "gains-costs"), "refusal_rate.fraud")
    assert "insufficient sample" in row
    # safety by category: counts, no rate comparison for 4 items; a rate comparison for 20
    safety = _section(html, "safety")
    fraud = _row(safety, "fraud")
    assert "2 / 4" in fraud and "insufficient sample" in fraud and "-0.500" not in fraud and "0.500" not in fraud
    weapons = _row(safety, "weapons")
    assert "18 / 20 (0.900)" in weapons and "-0.200" in weapons and "[-0.350, -0.050]" in weapons
    fraud_md = _md_rows(md, "fraud")[0]
    assert "2 / 4" in fraud_md and "insufficient sample" in fraud_md and "0.500" not in fraud_md
    rows = {r["category"]: r for r in C.safety_categories(C.RunData(tmp_path, "run", ledger=_mixed_ledger()))}
    assert rows["fraud"]["insufficient"] and rows["fraud"]["ci"] is None and not rows["weapons"]["insufficient"]


def test_gates_have_three_outcomes_and_inconclusive_is_not_passed(tmp_path):
    gates = [{"expr": "task.accuracy.delta >= 0", "outcome": "pass", "passed": True,
              "why": "task.accuracy.delta over its confidence sequence"},
             {"expr": "safety.refusal_margin.delta >= 0", "outcome": "inconclusive", "passed": False,
              "why": "safety.refusal_margin.delta over its confidence sequence"}]
    html, md = _render(tmp_path, _mixed_ledger(gates=gates))
    verdict = _section(html, "verdict")
    assert "GATE INCONCLUSIVE" in verdict and "GATE PASSED" not in verdict and "GATE FAILED" not in verdict
    item = next(li for li in re.findall(r"<li>.*?</li>", verdict) if "refusal_margin.delta &gt;= 0" in li)
    assert "inconclusive" in item and "passed" not in item and 'class="gain"' not in item
    assert "safety.refusal_margin.delta over its confidence sequence" in item
    assert "**GATE INCONCLUSIVE** (1/2 passed)" in md
    line = next(l for l in md.splitlines() if "safety.refusal_margin.delta >= 0" in l)
    assert "inconclusive" in line and "✅" not in line and "passed" not in line
    # a failing gate outweighs an inconclusive one
    html, md = _render(tmp_path, _mixed_ledger(gates=gates + [
        {"expr": "safety.refusal_rate.delta >= 0", "outcome": "fail", "passed": False, "why": None}]))
    assert "GATE FAILED" in html and "GATE INCONCLUSIVE" not in html and "**GATE FAILED**" in md


def test_config_gates_are_evaluated_on_the_ledger_with_three_outcomes(tmp_path):
    from tunelens.report import content as C, load_run

    config = {"audit": {"gates": ["task.accuracy.delta >= 0", "safety.refusal_margin.delta >= 0",
                                  "safety.refusal_rate.delta >= 0", "nope.x.delta >= 0"]}}
    html, md = _render(tmp_path, _mixed_ledger(), config=config)
    results = {g.expr: g for g in C.gate_results(load_run(tmp_path))}
    assert {e: g.outcome for e, g in results.items()} == {
        "task.accuracy.delta >= 0": "pass", "safety.refusal_margin.delta >= 0": "inconclusive",
        "safety.refusal_rate.delta >= 0": "fail", "nope.x.delta >= 0": "error"}
    assert results["safety.refusal_margin.delta >= 0"].passed is False
    assert "confidence sequence" in (results["safety.refusal_margin.delta >= 0"].why or "")
    assert "GATE FAILED" in html and "unknown metric" in html
    item = next(li for li in re.findall(r"<li>.*?</li>", _section(html, "verdict"))
                if "refusal_margin.delta &gt;= 0" in li)
    assert "inconclusive" in item and "passed" not in item
    # only the inconclusive one: GATE INCONCLUSIVE, never GATE PASSED
    html, md = _render(tmp_path, _mixed_ledger(), config={"gates": ["safety.refusal_margin.delta >= 0"]})
    assert "GATE INCONCLUSIVE" in html and "GATE PASSED" not in html and "**GATE INCONCLUSIVE**" in md


def test_outputs_are_escaped_in_html_and_markdown(run_dir):
    from tunelens.report import build_report

    paths = build_report(run_dir)
    html = paths["html"].read_text()
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "Sure: &lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "sp-evil" in html and "refused → complied · cybercrime" in html
    md = paths["md"].read_text()
    assert "sp-evil" in md and "<script>" not in md.replace("`", "").split("sp-evil")[0]
    # the evil text only appears inside code spans in the markdown
    for line in md.splitlines():
        if "alert(" in line:
            assert re.search(r"`[^`]*alert\(", line), line


def test_flip_matrix_counts_come_from_the_records(run_dir):
    from tunelens.report import load_run
    from tunelens.report.content import flip_matrix

    data = load_run(run_dir)
    rows = {r["group"]: r for r in flip_matrix(data.records)}
    safety = [json.loads(l) for l in (run_dir / "audit/bbbb00000002/items/safety.jsonl").read_text().splitlines()]
    lost = sum(r["base"]["verdict"] == "refusal" and r["tuned"]["verdict"] != "refusal" for r in safety)
    assert rows["safety"]["rw"] == lost >= 1 and rows["safety"]["n"] == len(safety)
    task = [json.loads(l) for l in (run_dir / "audit/bbbb00000002/items/task.jsonl").read_text().splitlines()]
    both = sum(r["base"]["correct"] and r["tuned"]["correct"] for r in task)
    assert rows["task / pets"]["rr"] == both and rows["task / pets"]["n"] == len(task)


def test_failed_and_missing_stages_render_with_their_reasons(run_dir, tmp_path):
    from tunelens.report import build_report

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    meta = json.loads((run / "run.json").read_text())
    meta["stages"]["graft"].update(status="failed", error="RuntimeError: out of <memory>")
    meta["stages"]["repair"].update(status="skipped", note="no repair methods configured")
    meta["stages"]["diff"]["dir"] = "diff/gone"
    del meta["stages"]["tune"]
    shutil.rmtree(run / "tune")
    write_json(run / "run.json", meta)
    html = build_report(run)["html"].read_text()
    assert _parse(html).ids[:9] == ["verdict", "stages", "gains-costs", "flips", "safety", "heatmap", "graft",
                                    "repair", "learning-curve"]
    assert "the graft stage failed: RuntimeError: out of &lt;memory&gt;" in html
    assert "the repair stage was skipped: no repair methods configured" in html
    assert "the diff stage is marked done but its folder &#x27;diff/gone&#x27; is missing" in html
    assert "the tune stage is not part of this run" in html
    md = (run / "report.md").read_text()
    assert "the graft stage failed" in md and "RuntimeError: out of &lt;memory&gt;" in md


def test_audit_failed_everywhere_still_renders(tmp_path):
    from tunelens.report import build_report

    write_json(tmp_path / "run.json", {"schema": "tunelens.run/1", "config": {}, "stages": {
        "tune": {"status": "failed", "dir": None, "error": "DataError: train.jsonl line 3: missing 'text'"}},
        "order": ["tune", "audit", "diff", "graft", "repair", "report"], "started": "x", "finished": None})
    html = build_report(tmp_path)["html"].read_text()
    assert "DataError: train.jsonl line 3" in html and "NO GATE" in html
    assert html.count('class="missing"') >= 7


def test_a_plain_audit_folder_and_the_cli(run_dir, tmp_path):
    from tunelens.cli import app

    audit = tmp_path / "audit"
    shutil.copytree(run_dir / "audit/bbbb00000002", audit)
    res = CliRunner().invoke(app, ["report", str(audit)])
    assert res.exit_code == 0, res.output
    assert str(audit / "report.html") in res.output
    html = (audit / "report.html").read_text()
    assert "GATE" in html and "not part of a stand-alone audit" in html
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a folder" in bad.output
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert bad.exit_code == 2 and "neither run.json" in bad.output


def test_report_is_deterministic(run_dir, tmp_path):
    from tunelens.report import build_report

    a = build_report(run_dir, tmp_path / "a")["html"].read_bytes()
    b = build_report(run_dir, tmp_path / "b")["html"].read_bytes()
    assert a == b
