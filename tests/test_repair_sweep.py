"""The repair sweep: candidates re-audited, Pareto front, select expressions, and the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from conftest import write_pets_task
from tunelens.errors import TunelensError
from tunelens.repair.sweep import best, check_select, load_sweep_file, pareto, run_sweep


@pytest.fixture(scope="module")
def mc_task_file(tmp_path_factory):
    return write_pets_task(tmp_path_factory.mktemp("task"), 8)


@pytest.fixture(scope="module")
def aligned_dir(tiny_model_dir, tmp_path_factory):
    import torch

    out = tmp_path_factory.mktemp("aligned") / "m"
    shutil.copytree(tiny_model_dir, out)
    sd = load_file(out / "model.safetensors")
    g = torch.Generator().manual_seed(5)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g) if "proj" in k else v for k, v in sd.items()},
              out / "model.safetensors", metadata={"format": "pt"})
    return out


def _row(name, **vals):
    return {"name": name, "status": "ok", "scores": {a: {"value": v, "ci": None} for a, v in vals.items()}}


def test_pareto_marks_undominated_rows():
    axes = ["task.accuracy", "safety.refusal_rate", "over_refusal.over_refusal_rate"]
    higher = {"task.accuracy": True, "safety.refusal_rate": True, "over_refusal.over_refusal_rate": False}
    rows = [_row("a", **{"task.accuracy": 0.9, "safety.refusal_rate": 0.2, "over_refusal.over_refusal_rate": 0.1}),
            _row("b", **{"task.accuracy": 0.8, "safety.refusal_rate": 0.6, "over_refusal.over_refusal_rate": 0.1}),
            _row("c", **{"task.accuracy": 0.7, "safety.refusal_rate": 0.5, "over_refusal.over_refusal_rate": 0.2}),
            {"name": "d", "status": "failed", "scores": {}}]
    pareto(rows, axes, higher)
    assert [r["pareto"] for r in rows] == [True, True, False, False]
    assert best(rows[:3], axes)["name"] == "b"


@pytest.mark.parametrize("expr,ok", [
    ("task.accuracy >= 0.9*tuned", True),            # 0.8 >= 0.9*0.85
    ("task.accuracy >= tuned", False),
    ("safety.refusal_rate >= base - 0.1 and task.accuracy > 0.5", True),
    ("safety.refusal_rate > base.safety.refusal_rate", False),
    ("task.accuracy - tuned.task.accuracy >= -0.1 or safety.refusal_rate > 1", True),
])
def test_select_expressions(expr, ok):
    values = {"task.accuracy": 0.8, "safety.refusal_rate": 0.6}
    refs = {"base": {"task.accuracy": 0.5, "safety.refusal_rate": 0.6},
            "tuned": {"task.accuracy": 0.85, "safety.refusal_rate": 0.1}}
    assert check_select(expr, values, refs) is ok


@pytest.mark.parametrize("expr,msg", [
    ("task.accuracy >= ", "does not parse"),
    ("task.acc >= 0.5", "unknown metric 'task.acc'"),
    ("task.accuracy + safety.refusal_rate >= tuned", "needs exactly one metric"),
    ("__import__('os')", "only metric names"),
    ("task.accuracy", "not a comparison"),
])
def test_select_errors(expr, msg):
    with pytest.raises(TunelensError, match=msg):
        check_select(expr, {"task.accuracy": 0.8, "safety.refusal_rate": 0.6},
                     {"base": {"task.accuracy": 0.5}, "tuned": {"task.accuracy": 0.9}})


GOOD_SWEEP = "candidates:\n  - {method: interpolate, alpha: 0.5}\nsuites: [task]\nlimit: 2\n"


@pytest.mark.parametrize("text, message", [
    ("limt: 2\n", r":5: unknown key 'limt'; did you mean 'limit'\?"),
    ("limit: -1\n", r":5: limit must be an integer >= 1, got -1$"),  # a repeated key: the last one counts
    ("suites: task\n", r":5: suites must be a list of strings, e.g. suites: \[task, safety\], got 'task'"),
    ("suites: [task, safty]\n", r":5: unknown audit suite 'safty'; did you mean 'safety'\?"),
    ("tasks: t.yaml\n", r":5: tasks must be a list of strings"),
    ("select: 'task.accuracy >='\n", r": select 'task.accuracy >=' does not parse"),
    ("select: 'task.accuracy'\n", r": select 'task.accuracy' is not a comparison"),
    ("out: 5\n", r":5: out must be a string, got 5"),
])
def test_sweep_file_checks_every_key_and_value(tmp_path, text, message):
    """The --sweep file is checked before any model loads: a typo (`limt: 2`) audited every item and a bad limit
    or select failed after minutes of audits; each is one line naming the file, the key's line and the value."""
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD_SWEEP + text)
    with pytest.raises(TunelensError, match=re.escape(str(path)) + message) as e:
        load_sweep_file(path)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("text, message", [
    ("candidates: {method: interpolate}\n", r"sweep.yaml:1: candidates must be a list of mappings"),
    ("candidates:\n  - {alpha: 0.5}\n", r"sweep.yaml:1: candidates\[0\] must have a 'method' key"),
    ("candidates:\n  - {method: interpolat}\n", r"sweep.yaml:1: candidates\[0\]: unknown repair method 'interpolat'"),
    ("candidates:\n  - {method: interpolate\nlimit: 2\n", r"sweep.yaml:3: invalid YAML"),
])
def test_sweep_file_candidates_and_yaml_errors(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(TunelensError, match=message):
        load_sweep_file(path)


def test_sweep_file_good_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(GOOD_SWEEP + "base: b\ntuned: t\nselect: task.accuracy >= 0.9*tuned\n")
    assert load_sweep_file(path) == {"candidates": [{"method": "interpolate", "alpha": 0.5}], "suites": ["task"],
                                     "limit": 2, "base": "b", "tuned": "t", "select": "task.accuracy >= 0.9*tuned"}


@pytest.mark.parametrize("limit", [0, -4, "ten"])
def test_run_sweep_refuses_a_bad_limit_before_loading_models(tmp_path, limit):
    with pytest.raises(TunelensError, match="limit must be an integer >= 1"):
        run_sweep(str(tmp_path / "no-base"), str(tmp_path / "no-tuned"), [{"method": "interpolate", "alpha": 0.5}],
                  tmp_path / "sw", suites=["task"], tasks=[], limit=limit, progress=False)


def test_sweep_audits_candidates_and_selects(tiny_model_dir, tiny_adapter_dir, aligned_dir, mc_task_file, tmp_path):
    candidates = [{"method": "safelora", "aligned": str(aligned_dir), "mode": "topk", "k": 1},
                  {"method": "interpolate", "alpha": 0.5, "name": "half"},
                  {"method": "safelora", "aligned": str(tmp_path / "nowhere"), "name": "broken"}]
    res = run_sweep(str(tiny_model_dir), str(tiny_adapter_dir), candidates, tmp_path / "sw",
                    suites=["task", "safety"], tasks=[str(mc_task_file)], limit=3,
                    select="task.accuracy >= 0.5*tuned", progress=False)
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["schema"] == "tunelens.sweep/1" and saved["selected"] == res["selected"]
    assert saved["axes"] == ["task.accuracy", "safety.refusal_rate"]
    rows = {r["name"]: r for r in saved["rows"]}
    assert set(rows) == {"safelora-modetopk-k1", "half", "broken"}
    assert rows["broken"]["status"] == "failed" and "nowhere" in rows["broken"]["error"]
    ok = [r for r in saved["rows"] if r["status"] == "ok"]
    assert len(ok) == 2 and any(r["pareto"] for r in ok) and not rows["broken"]["pareto"]
    for r in ok:
        assert (tmp_path / "sw" / "candidates" / r["name"] / "audit" / "ledger.json").is_file()
        for axis in saved["axes"]:
            s = r["scores"][axis]
            assert 0 <= s["value"] <= 1 and s["ci"][0] <= s["ci"][1]
    assert sum(r["selected"] for r in saved["rows"]) == 1
    sel = rows[saved["selected"]]
    expected_file = "adapter_config.json" if sel["kind"] == "adapter" else "config.json"
    assert (tmp_path / "sw" / "selected" / expected_file).is_file()
    assert not (tmp_path / "sw" / "selected" / "audit").exists()
    assert saved["tuned"]["task.accuracy"]["value"] is not None and saved["base"]["task.accuracy"]["ci"] is None
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "★" in md and "✔" in md and "failed" in md


def test_cli_repair_one_candidate(tiny_model_dir, tiny_adapter_dir, aligned_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelens.cli import app

    r = CliRunner().invoke(app, ["repair", "--base", str(tiny_model_dir), "--tuned", str(tiny_adapter_dir),
                                 "--method", "safelora", "--aligned", str(aligned_dir), "--option", "mode=topk",
                                 "--k", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "projected" in r.output and str(tmp_path / "o") in r.output
    assert json.loads((tmp_path / "o" / "repair.json").read_text())["summary"]["projected"] == 1
    bad = CliRunner().invoke(app, ["repair", "--base", str(tiny_model_dir), "--tuned", str(tiny_adapter_dir),
                                   "--method", "safelora", "--aligned", str(aligned_dir), "--tau", "3",
                                   "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "tau" in bad.output


def test_sweep_scores_every_model_at_one_precision(tiny_model_dir, tiny_adapter_dir, mc_task_file, tmp_path):
    """--dtype bf16 (emulated on an AVX2-only CPU: slow, but the tiny model is fast): the base and the tuned
    reference are checked and cast once, every candidate is checked and cast too, and each ledger says so."""
    res = run_sweep(str(tiny_model_dir), str(tiny_adapter_dir), [{"method": "interpolate", "alpha": 0.5,
                                                                  "name": "half"}],
                    tmp_path / "sw", suites=["task"], tasks=[str(mc_task_file)], limit=3, progress=False, dtype="bf16")
    assert res["precision"]["chosen"] == "bf16" and res["engine"] == "hf" and res["precision"]["mode"] in ("weights", "autocast")
    assert res["rows"][0]["status"] == "ok", res["rows"][0].get("error")
    ref = json.loads((tmp_path / "sw" / "tuned" / "audit" / "ledger.json").read_text())
    cand = json.loads((tmp_path / "sw" / "candidates" / "half" / "audit" / "ledger.json").read_text())
    assert ref["precision"]["chosen"] == cand["precision"]["chosen"] == "bf16"
    assert len(ref["precision"]["agreement"]) == 2  # base and tuned
    assert "half" in cand["precision"]["why"] and cand["precision"]["agreement"]["greedy_agreement"] >= 0.9
    assert "Every model scored in bf16" in (tmp_path / "sw" / "sweep.md").read_text()


def test_cli_sweep_refuses_a_bad_dtype(tiny_model_dir, tiny_adapter_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelens.cli import app

    f = tmp_path / "sweep.yaml"
    f.write_text("candidates: [{method: interpolate, alpha: 0.5}]\n")
    r = CliRunner().invoke(app, ["repair", "--sweep", str(f), "--base", str(tiny_model_dir), "--tuned",
                                 str(tiny_adapter_dir), "--dtype", "bf61", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--dtype must be one of" in r.output and "bf16" in r.output
    f.write_text("candidates: [{method: interpolate, alpha: 0.5}]\ndtype: fp31\n")
    r = CliRunner().invoke(app, ["repair", "--sweep", str(f), "--base", str(tiny_model_dir), "--tuned",
                                 str(tiny_adapter_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "fp32" in r.output


def test_auto_sweep_starts_again_in_fp32_when_a_candidate_disagrees_in_bf16(tiny_model_dir, tiny_adapter_dir,
                                                                             mc_task_file, tmp_path, monkeypatch):
    """Seen on an AMX CPU: base and tuned agree under bf16 autocast, a candidate does not. Under auto the sweep is
    redone in fp32 (no model compared at another precision than the base), and the record names the candidate;
    asked-for bf16 fails that candidate instead."""
    from tunelens import precision as PR

    native = PR.Hardware("cpu", "test cpu", ("avx2", "avx512f", "avx512_bf16"), True)
    monkeypatch.setattr(PR, "hardware", lambda: native)
    real = PR.match_precision

    def strict(record, handle, name):
        if record.get("chosen") == "bf16" and "half" in name:
            raise PR.PrecisionMismatch(f"{name}: bf16 disagrees with fp32 on the precision probe set (test)")
        return real(record, handle, name)

    monkeypatch.setattr(PR, "match_precision", strict)
    from tunelens.repair import core as RC

    made = []
    real_repair = RC.repair
    monkeypatch.setattr(RC, "repair", lambda *a, **k: made.append(a[3]) or real_repair(*a, **k))
    kw = dict(suites=["task"], tasks=[str(mc_task_file)], limit=3, progress=False)
    cands = [{"method": "interpolate", "alpha": 0.25, "name": "quarter"},
             {"method": "interpolate", "alpha": 0.5, "name": "half"}]
    res = run_sweep(str(tiny_model_dir), str(tiny_adapter_dir), cands, tmp_path / "auto", dtype="auto", **kw)
    assert res["precision"]["chosen"] == "fp32" and res["precision"]["requested"] == "auto"
    assert "half: bf16 disagrees" in res["precision"]["why"] and "every model scored in fp32" in res["precision"]["why"]
    assert [r["status"] for r in res["rows"]] == ["ok", "ok"], [r.get("error") for r in res["rows"]]
    # each candidate repaired once: the fp32 attempt re-audits the bf16 attempt's repairs, it does not redo them
    assert sorted(os.path.basename(str(p)) for p in made) == ["half", "quarter"]
    for ledger in ("tuned/audit/ledger.json", "candidates/quarter/audit/ledger.json",
                   "candidates/half/audit/ledger.json"):
        assert json.loads((tmp_path / "auto" / ledger).read_text())["precision"]["chosen"] == "fp32", ledger
    cands = cands[1:]
    res = run_sweep(str(tiny_model_dir), str(tiny_adapter_dir), cands, tmp_path / "bf16", dtype="bf16", **kw)
    assert res["precision"]["chosen"] == "bf16" and res["rows"][0]["status"] == "failed"
    err = res["rows"][0]["error"]
    assert err.startswith("PrecisionMismatch: ") and "half: bf16 disagrees" in err
