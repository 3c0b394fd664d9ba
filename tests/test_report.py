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
    assert len(page.imgs) >= 8 and all(s.startswith("data:image/png;base64,") for s in page.imgs)
    assert "Not available" not in html
    ledger = json.loads((run_dir / "audit/bbbb00000002/ledger.json").read_text())
    acc = next(e for e in ledger["suites"]["task"]["entries"] if e["metric"] == "accuracy")
    assert f"{acc['base']:.3f}" in html and f"{acc['tuned']:.3f}" in html and f"{acc['delta']:+.3f}" in html
    assert "GATE FAILED" in html or "GATE PASSED" in html
    assert "safety.refusal_rate.delta &gt;= -0.05" in html
    graft = json.loads((run_dir / "graft/dddd00000004/graft.json").read_text())
    assert f"{graft['results'][0]['score']['graft']:.3f}" in html
    assert "safelora-0.5" in html and "★ selected" in html and "failed: RuntimeError: &lt;bad&gt; merge" in html
    assert "<td class=\"l\">80</td><td>0.680</td>" in html  # the learning curve's measured points
    md = paths["md"].read_text()
    assert f"{acc['delta']:+.3f}" in md and "Repair selected **safelora-0.5**" in md
    assert "data:image" not in md


def test_verdict_ranks_gains_and_costs_by_interval():
    from tunelens.report.content import ranked_changes

    e = lambda m, d, lo, hi, hib=True: {"metric": m, "base": 0.5, "tuned": 0.5 + d, "delta": d, "ci95": [lo, hi],
                                        "n": 50, "higher_is_better": hib}
    ledger = {"suites": {"task": {"status": "ok", "entries": [
        e("accuracy", 0.20, 0.10, 0.30), e("f1", 0.30, -0.30, 0.90), e("ece", 0.05, 0.04, 0.06, hib=False)]},
        "safety": {"status": "ok", "entries": [e("refusal_rate", -0.10, -0.15, -0.05), e("x", 0.0, -0.1, 0.1),
                                               {**e("refusal_rate.fraud", -1.0, -1.0, -1.0), "category": "fraud"}]}}}
    gains, costs = ranked_changes(ledger)
    assert [(c.suite, c.metric) for c in gains] == [("task", "accuracy"), ("task", "f1")]
    assert [c.significant for c in gains] == [True, False]
    # ece: +0.05 with half-width 0.01 (z=5) outranks the refusal drop (z=2)
    assert [(c.suite, c.metric) for c in costs] == [("task", "ece"), ("safety", "refusal_rate")]


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
