"""tunelens run: the config checks, stage caching by hash, failure and resume, --from/--only, the CLI.

The pipeline logic is exercised with stand-in stage functions (instant, counted); one test runs the real
stages on the tiny model, and an integration test runs the quickstart config on the default model."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelens.cli import app
from tunelens.errors import TunelensError
from tunelens.run import STAGES, load_run_config, parse_config, run_pipeline
from tunelens.run import stages as S

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_task(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "text": f"the {'cat' if i % 2 else 'dog'} sat on the mat {i}",
             "label": "cat" if i % 2 else "dog"} for i in range(2 * n)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = folder / "t.yaml"
    spec.write_text("name: pets\ntype: classification\ndata: d.jsonl\ntemplate: 'Animal? {text}'\n")
    return spec


def raw_config(model, task) -> dict:
    return {
        "model": str(model),
        "tune": {"data": [str(task)], "max_steps": 2, "batch_size": 4, "save_steps": 50, "seed": 0},
        "audit": {"suites": ["task"], "limit": 4},
        "diff": {"rank": False},
        "graft": {"sparsities": [0.1], "steps": 1, "examples": 4, "eval_limit": 4, "select_limit": 4},
        "repair": {"candidates": [{"method": "interpolate", "alpha": 0.5}], "limit": 4},
    }


class Spy:
    """Stand-in stage functions: each call is counted and leaves a file in the stage folder."""

    def __init__(self, monkeypatch, fail: set | None = None):
        self.calls: list[str] = []
        self.fail = set(fail or ())
        for stage in STAGES:
            monkeypatch.setitem(S.FUNCS, stage, self._make(stage))

    def _make(self, stage):
        def fn(ctx):
            self.calls.append(ctx.stage if stage == "tune" else stage)  # a named tune stage: tune:NAME
            if stage in self.fail:
                raise RuntimeError(f"{stage} broke")
            (ctx.out / "artifact.txt").write_text(stage)
            if stage == "report":
                (ctx.run_dir / "report.html").write_text(json.dumps(json.loads((ctx.run_dir / "run.json").read_text())))
            return {"note": f"{stage} ran"}

        return fn


def statuses(run_dir: Path) -> dict:
    return {s: v["status"] for s, v in json.loads((run_dir / "run.json").read_text())["stages"].items()}


@pytest.fixture
def cfg_raw(tmp_path):
    return raw_config(tmp_path / "no-model-needed", write_task(tmp_path / "data"))


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("patch, named, suggested", [
    ({"stagse": ["tune"]}, "stagse", "stages"),
    ({"audit": {"limt": 3}}, "audit.limt", "audit.limit"),
    ({"graft": {"sparsity": [0.1]}}, "graft.sparsity", "graft.sparsities"),
    ({"diff": {"rank_max_dims": 8}}, "diff.rank_max_dims", "diff.rank_max_dim"),
    ({"repair": {"candidate": []}}, "repair.candidate", "repair.candidates"),
    ({"tune": {"learning_rat": 1e-3, "data": ["x"]}}, "tune.learning_rat", "tune.learning_rate"),
    ({"stages": ["tune", "audti"]}, "audti", "audit"),
    ({"stages": {"graf": False}}, "stages.graf", "stages.graft"),
])
def test_unknown_key_names_it_and_suggests(cfg_raw, patch, named, suggested):
    raw = {**cfg_raw, **patch}
    with pytest.raises(TunelensError) as e:
        parse_config(raw, "run.yaml: ")
    msg = str(e.value)
    assert f"'{named}'" in msg and f"'{suggested}'" in msg and msg.startswith("run.yaml: ")


def test_config_rules(cfg_raw, tmp_path):
    cfg = parse_config(cfg_raw)
    assert cfg.repair.candidates == [{"name": "interpolate-alpha0.5", "method": "interpolate",
                                      "options": {"alpha": 0.5}}]
    assert cfg.audit_tasks() == cfg_raw["tune"]["data"]
    with pytest.raises(TunelensError, match="tuned"):  # no tune stage and no tuned model
        parse_config({**cfg_raw, "stages": {"tune": False}})
    with pytest.raises(TunelensError, match="set by the pipeline"):
        parse_config({**cfg_raw, "tune": {**cfg_raw["tune"], "out": "x"}})
    with pytest.raises(TunelensError, match="candidates"):
        parse_config({**cfg_raw, "repair": {}})
    off = parse_config({**cfg_raw, "stages": ["tune", "audit", "report"], "repair": None})
    assert off.stages == ["tune", "audit", "report"]
    p = tmp_path / "bad.yaml"
    p.write_text("model: default\naudit: {suites: [task], limt: 2}\n")
    with pytest.raises(TunelensError, match=r"bad.yaml: unknown key 'audit.limt'; did you mean 'audit.limit'"):
        load_run_config(p)


@pytest.mark.parametrize("section, patch, message", [
    ("audit", {"limit": -5}, "section 'audit': limit must be an integer >= 1, got -5"),
    ("audit", {"limit": "ten"}, "section 'audit': limit must be an integer >= 1, got 'ten' (a string)"),
    ("audit", {"limit": True}, "section 'audit': limit must be an integer >= 1, got true (a boolean)"),
    ("audit", {"suites": "task"}, "section 'audit': suites must be a list of strings, e.g. suites: [task, safety], "
                                  "got 'task' (a string)"),
    ("audit", {"gate": "safety.refusal_rate.delta >= -0.05"}, "section 'audit': gate must be a list of strings"),
    ("audit", {"gate": [0.5]}, "section 'audit': gate must be a list of strings"),
    ("audit", {"seed": "x"}, "section 'audit': seed must be an integer >= 0"),
    ("repair", {"limit": 0}, "section 'repair': limit must be an integer >= 1, got 0"),
    ("repair", {"candidates": {"method": "interpolate"}}, "section 'repair': candidates must be a list of mappings"),
    ("repair", {"suites": "safety"}, "section 'repair': suites must be a list of strings"),
    ("repair", {"select": "task.accuracy >="}, "section 'repair': select 'task.accuracy >=' does not parse"),
    ("graft", {"select_limit": -1}, "section 'graft': select_limit must be an integer >= 1, got -1"),
    ("graft", {"eval_limit": 0}, "section 'graft': eval_limit must be an integer >= 1, got 0"),
    ("graft", {"examples": "64"}, "section 'graft': examples must be an integer >= 1, got '64' (a string)"),
    ("graft", {"steps": -1}, "section 'graft': steps must be an integer >= 0, got -1"),
    ("graft", {"sparsities": [0.0]}, "section 'graft': sparsities must be a number in (0, 1], got 0.0"),
    ("graft", {"sparsities": [1.5]}, "section 'graft': sparsities must be a number in (0, 1], got 1.5"),
    ("graft", {"sparsities": 0.1}, "section 'graft': sparsities must be a non-empty list of fractions in (0, 1]"),
    ("graft", {"lr": -1}, "section 'graft': lr must be a number > 0, got -1"),
    ("graft", {"seed": 1.5}, "section 'graft': seed must be an integer >= 0, got 1.5"),
    ("diff", {"rank_max_dim": 0}, "section 'diff': rank_max_dim must be an integer >= 1, got 0"),
    ("tune", {"batch_size": 0}, "section 'tune': batch_size must be an integer >= 1, got 0"),
    ("tune", {"max_steps": -3}, "section 'tune': max_steps must be -1 (train by epochs) or an integer >= 1, got -3"),
])
def test_bad_values_name_section_key_value_and_range(cfg_raw, section, patch, message):
    """A value of the wrong type or out of range is refused when the config is read, not minutes later: a negative
    audit limit sliced 1 of 6 items, "ten" failed the suite at run time and `suites: task` was read letter by
    letter."""
    raw = {**cfg_raw, section: {**(cfg_raw.get(section) or {}), **patch}}
    with pytest.raises(TunelensError) as e:
        parse_config(raw, "run.yaml: ")
    assert str(e.value).startswith(f"run.yaml: {message}") and e.value.exit_code == 2


def test_bad_value_and_yaml_error_name_file_and_line(cfg_raw, tmp_path):
    """From a file, a bad value names the file and its key's line; a YAML syntax error names the line it is on."""
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({**cfg_raw, "audit": {"suites": ["task"], "limit": -5}}, sort_keys=False))
    line = next(i for i, text in enumerate(p.read_text().splitlines(), 1) if "limit: -5" in text)
    with pytest.raises(TunelensError, match=rf"^{re.escape(str(p))}:{line}: section 'audit': limit must be an "
                                            r"integer >= 1, got -5$"):
        load_run_config(p)
    p.write_text("model: default\naudit:\n  suites: [task]\n   limit: 3\n")
    with pytest.raises(TunelensError, match=rf"^{re.escape(str(p))}:4: invalid YAML: expected <block end>"):
        load_run_config(p)
    r = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and f"{p}:4: invalid YAML" in r.output


def test_cli_unknown_key_exits_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("modle: default\n")
    r = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert "unknown key 'modle'; did you mean 'model'?" in r.output


def test_unknown_suite_fails_before_any_stage(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    cfg = parse_config({**cfg_raw, "audit": {"suites": ["task", "safty"]}})
    with pytest.raises(TunelensError, match="did you mean 'safety'"):
        run_pipeline(cfg, tmp_path / "run", display=False)
    assert spy.calls == []


# ---------------------------------------------------------------------------------------------------- caching


def test_rerun_skips_everything_and_repair_change_reruns_repair_and_report(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    run_dir = tmp_path / "run"
    r1 = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert r1.exit_code == 0 and spy.calls == list(STAGES)
    state = json.loads((run_dir / "run.json").read_text())
    assert state["schema"] == "tunelens.run/1" and state["order"] == list(STAGES) and state["finished"]
    for stage, st in state["stages"].items():
        assert st["status"] == "done" and (run_dir / st["dir"] / "DONE").is_file()
        assert st["dir"] == f"{stage}/{st['hash']}" and len(st["hash"]) == 12

    spy.calls.clear()
    r2 = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert spy.calls == [] and r2.exit_code == 0
    assert all(st["cached"] and st["status"] == "done" for st in r2.state["stages"].values())

    changed = {**cfg_raw, "repair": {**cfg_raw["repair"], "limit": 2}}
    r3 = run_pipeline(parse_config(changed), run_dir, display=False)
    assert spy.calls == ["repair", "report"]
    assert {s for s, st in r3.state["stages"].items() if not st["cached"]} == {"repair", "report"}
    assert r3.state["stages"]["repair"]["hash"] != r1.state["stages"]["repair"]["hash"]
    assert r3.state["stages"]["audit"]["hash"] == r1.state["stages"]["audit"]["hash"]

    spy.calls.clear()  # back to the first settings: every stage folder exists, the report is restored
    (run_dir / "report.html").write_text("stale")
    run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert spy.calls == []
    assert (run_dir / "report.html").read_text() == (run_dir / r1.state["stages"]["report"]["dir"] /
                                                      "report.html").read_text() != "stale"


def test_tune_change_reruns_everything_downstream(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    run_pipeline(parse_config(cfg_raw), tmp_path / "run", display=False)
    spy.calls.clear()
    run_pipeline(parse_config({**cfg_raw, "tune": {**cfg_raw["tune"], "max_steps": 3}}), tmp_path / "run",
                 display=False)
    assert spy.calls == list(STAGES)


def test_repair_reads_the_graft_mask_only_when_a_candidate_uses_it(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    raw = {**cfg_raw, "repair": {"candidates": [{"method": "graft", "mask": "graft", "sparsity": 0.1},
                                                {"method": "interpolate", "alpha": 0.5}]}}
    run_pipeline(parse_config(raw), tmp_path / "run", display=False)
    spy.calls.clear()
    changed = {**raw, "graft": {**raw["graft"], "steps": 2}}
    run_pipeline(parse_config(changed), tmp_path / "run", display=False)
    assert spy.calls == ["graft", "repair", "report"]
    spy.calls.clear()
    run_pipeline(parse_config({**cfg_raw, "graft": changed["graft"]}), tmp_path / "run", display=False)
    assert spy.calls == ["repair", "report"]  # the interpolation-only repair ignores the graft


def test_graft_mask_candidate_gets_the_graft_stage_mask(cfg_raw, tmp_path):
    raw = {**cfg_raw, "repair": {"candidates": [{"method": "graft", "mask": "graft", "sparsity": 0.1}]}}
    cfg = parse_config(raw)
    graft_dir = tmp_path / "graft"
    ctx = S.StageContext(cfg=cfg, run_dir=tmp_path, out=tmp_path / "repair", base="b", tuned="t",
                         dirs={"graft": graft_dir})
    with pytest.raises(TunelensError, match="no mask for sparsity 0.1"):
        S._candidates(ctx)
    from tunelens.diff.graft import sparsity_tag

    graft_dir.mkdir()
    (graft_dir / f"mask-s{sparsity_tag(0.1)}.safetensors").write_bytes(b"")
    (c,) = S._candidates(ctx)
    assert c["options"] == {"mask": str(graft_dir / f"mask-s{sparsity_tag(0.1)}.safetensors")}
    assert cfg.repair.candidates[0]["options"]["mask"] == "graft"  # the config itself is left as written


# ---------------------------------------------------------------------------------------------------- failure, resume


def test_failed_stage_is_recorded_dependants_skipped_report_built_then_resumed(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch, fail={"tune"})
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert r.exit_code == 1
    assert statuses(run_dir) == {"tune": "failed", "audit": "skipped", "diff": "skipped", "graft": "skipped",
                                 "repair": "skipped", "report": "done"}
    state = r.state["stages"]
    assert "tune broke" in state["tune"]["error"] and "needs the tune stage" in state["audit"]["note"]
    assert "RuntimeError" in (run_dir / state["tune"]["dir"] / "error.txt").read_text()
    assert json.loads((run_dir / "report.html").read_text())["stages"]["tune"]["status"] == "failed"
    assert not (run_dir / state["tune"]["dir"] / "DONE").exists()

    spy.fail.clear()
    spy.calls.clear()
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert r.exit_code == 0 and spy.calls == list(STAGES)  # the report is rebuilt: it had a failure in it


def test_failure_midway_resumes_from_there(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch, fail={"graft"})
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert r.exit_code == 1 and statuses(run_dir)["graft"] == "failed"
    assert statuses(run_dir)["repair"] == "done"  # the repair does not read the graft
    spy.fail.clear()
    spy.calls.clear()
    assert run_pipeline(parse_config(cfg_raw), run_dir, display=False).exit_code == 0
    assert spy.calls == ["graft", "report"]


def test_stopped_stage_without_done_restarts_in_a_clean_folder(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    audit_dir = run_dir / r.state["stages"]["audit"]["dir"]
    (audit_dir / "DONE").unlink()  # as if the run was killed while the audit was writing
    (audit_dir / "half-written.tmp").write_text("x")
    spy.calls.clear()
    run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert spy.calls == ["audit", "report"]
    assert not (audit_dir / "half-written.tmp").exists() and (audit_dir / "DONE").is_file()


def test_gate_failure_exits_3(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    monkeypatch.setitem(S.FUNCS, "audit", lambda ctx: {"gate_failed": ["task.accuracy.delta >= 1"]})
    r = run_pipeline(parse_config(cfg_raw), tmp_path / "run", display=False)
    assert r.exit_code == 3 and "report" in spy.calls
    assert run_pipeline(parse_config(cfg_raw), tmp_path / "run", display=False).exit_code == 3  # cached too


# ---------------------------------------------------------------------------------------------------- --from / --only


def test_from_and_only(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    run_dir = tmp_path / "run"
    with pytest.raises(TunelensError, match="--only repair needs the tune stage"):
        run_pipeline(parse_config(cfg_raw), run_dir, only="repair", display=False)
    run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    spy.calls.clear()
    run_pipeline(parse_config(cfg_raw), run_dir, from_stage="graft", display=False)
    assert spy.calls == ["graft", "repair", "report"]
    spy.calls.clear()
    r = run_pipeline(parse_config(cfg_raw), run_dir, only="diff", display=False)
    assert spy.calls == ["diff"] and all(st["status"] == "done" for st in r.state["stages"].values())
    with pytest.raises(TunelensError, match="disabled"):
        run_pipeline(parse_config({**cfg_raw, "stages": ["tune", "report"]}), run_dir, only="audit", display=False)
    with pytest.raises(TunelensError, match="not a stage"):
        run_pipeline(parse_config(cfg_raw), run_dir, from_stage="reapir", display=False)


def test_cli_run_from_only_and_exit_code(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch, fail={"diff"})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(cfg_raw))
    r = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "diff    failed" in r.output and "report:" in r.output
    spy.fail.clear()
    spy.calls.clear()
    r = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "--only", "diff", "--no-progress"])
    assert r.exit_code == 0 and spy.calls == ["diff"]
    r = CliRunner().invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "--from", "a", "--only", "b"])
    assert r.exit_code == 2


def test_external_tuned_model_without_tune_stage(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "adapter_config.json").write_text("{}")
    raw = {**cfg_raw, "stages": {"tune": False}, "tuned": str(tuned)}
    raw.pop("tune")
    r = run_pipeline(parse_config(raw), tmp_path / "run", display=False)
    assert "tune" not in spy.calls and r.state["stages"]["tune"]["status"] == "skipped"
    assert r.exit_code == 0 and statuses(tmp_path / "run")["audit"] == "done"


# ---------------------------------------------------------------------------------------------------- real stages


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def test_real_stages_on_tiny_model(tiny_model_dir, tmp_path):
    raw = raw_config(tiny_model_dir, write_task(tmp_path / "data"))
    enabled = ["tune", "audit", "diff", "graft"] + [s for s, m in (("repair", "tunelens.repair.sweep"),
                                                                    ("report", "tunelens.report")) if _importable(m)]
    raw["stages"] = enabled
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    st = r.state["stages"]
    assert r.exit_code == 0, {s: v["error"] for s, v in st.items()}
    d = {s: run_dir / v["dir"] for s, v in st.items() if v["dir"]}
    assert (d["tune"] / "model" / "adapter_config.json").is_file() and (d["tune"] / "train_log.jsonl").is_file()
    assert json.loads((d["audit"] / "ledger.json").read_text())["suites"]["task"]["status"] == "ok"
    assert (d["diff"] / "diff.json").is_file() and (d["graft"] / "graft.json").is_file()
    if "repair" in enabled:
        assert json.loads((d["repair"] / "sweep.json").read_text())["rows"]
    if "report" in enabled:
        assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    t0 = time.perf_counter()
    again = run_pipeline(parse_config(raw), run_dir, display=False)
    assert all(v["cached"] for s, v in again.state["stages"].items() if s in enabled)
    assert time.perf_counter() - t0 < 5


def test_audit_base_cache_serves_the_next_run(tiny_model_dir, tmp_path):
    """audit.base_cache keeps the base model's results: a second run in another folder reuses them (the audit
    stage says so) for the audit and the repair re-audits, with the same ledger."""
    raw = raw_config(tiny_model_dir, write_task(tmp_path / "data"))
    raw.update(stages=["audit", "repair"], tuned=str(tiny_model_dir))
    raw["audit"].update(tasks=raw.pop("tune")["data"], base_cache=str(tmp_path / "bc"))
    first = run_pipeline(parse_config(raw), tmp_path / "run1", display=False)
    second = run_pipeline(parse_config(raw), tmp_path / "run2", display=False)
    for r in (first, second):
        assert r.exit_code == 0, {s: v["error"] for s, v in r.state["stages"].items()}
    assert "reused" not in (first.state["stages"]["audit"]["note"] or "")
    assert "base model: 1 result(s) reused from" in second.state["stages"]["audit"]["note"]
    ledgers = [json.loads((tmp_path / f"run{i}" / r.state["stages"]["audit"]["dir"] / "ledger.json").read_text())
               for i, r in ((1, first), (2, second))]
    assert all(ledgers[0]["suites"][s]["entries"] == ledgers[1]["suites"][s]["entries"] for s in ledgers[0]["suites"])
    assert len(list((tmp_path / "bc").iterdir())) == 1  # audit and repair share one base fingerprint (limit 4)
    with pytest.raises(TunelensError, match="section 'audit': base_cache must be true, false or a folder"):
        parse_config({**raw, "audit": {**raw["audit"], "base_cache": 3}})


def test_stopped_tune_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    raw = raw_config(tiny_model_dir, write_task(tmp_path / "data"))
    raw["tune"].update(max_steps=4, save_steps=2)
    raw["stages"] = ["tune"]
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    tune_dir = run_dir / r.state["stages"]["tune"]["dir"]
    # as if killed after the step-2 checkpoint: no DONE, no final model, no later checkpoint
    (tune_dir / "DONE").unlink()
    shutil.rmtree(tune_dir / "model")
    shutil.rmtree(tune_dir / "checkpoints" / "checkpoint-4")
    log = tune_dir / "train_log.jsonl"
    before = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    log.write_text("".join(json.dumps({**row, "before_stop": True}) + "\n" for row in before))
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    assert r.exit_code == 0 and not r.state["stages"]["tune"]["cached"]
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    # a resumed tune keeps the log up to its checkpoint (step 2) and trains steps 3-4; a fresh one would rewrite all
    assert [(r["step"], r.get("before_stop", False)) for r in rows] == [(1, True), (2, True), (3, False), (4, False)]
    assert (tune_dir / "model" / "adapter_config.json").is_file() and (tune_dir / "DONE").is_file()


def test_quickstart_yaml_is_valid_and_shipped_once():
    from tunelens.cli import quickstart_config_path

    shipped = quickstart_config_path()
    repo = ROOT / "examples" / "quickstart.yaml"
    assert shipped.is_file() and repo.read_text() == shipped.read_text()
    cfg = load_run_config(shipped)
    assert cfg.stages == list(STAGES) and cfg.model == "default" and cfg.repair.candidates


@pytest.mark.integration
@pytest.mark.skipif(bool(os.environ.get("TUNELENS_QUICKSTART_CHECKED")),
                    reason=".ci/run has just run the full quickstart from a runtime-only install and checked that "
                           "every stage, suite and candidate succeeded (.ci/check_run.py)")
def test_quickstart_pipeline_on_default_model_tiny_limits(tmp_path):
    """The quickstart config with everything cut to a few items and steps, on the real default model."""
    from tunelens.cli import quickstart_config_path

    raw = yaml.safe_load(quickstart_config_path().read_text())
    raw["tune"].update(max_steps=2, max_examples=16)
    raw["audit"]["limit"] = 4
    raw["graft"].update(steps=1, examples=4, eval_limit=8, select_limit=4)
    raw["repair"]["limit"] = 4
    raw["repair"]["candidates"] = raw["repair"]["candidates"][:1]
    raw["stages"] = [s for s in STAGES if s not in ("repair", "report")] + \
        [s for s, m in (("repair", "tunelens.repair.sweep"), ("report", "tunelens.report")) if _importable(m)]
    r = run_pipeline(parse_config(raw), tmp_path / "run", display=False)
    assert r.exit_code in (0, 3), {s: v["error"] for s, v in r.state["stages"].items()}
    assert all(v["status"] == "done" for s, v in r.state["stages"].items() if s in raw["stages"])


# ------------------------------------------------------------------------------------- a failure is no cache hit


def test_incomplete_stage_is_retried_with_its_folder_kept(cfg_raw, tmp_path, monkeypatch):
    """A stage returning `incomplete` (a suite or candidate failed) is not a cache hit: exit 1, no DONE, and the
    next run calls it again with ctx.retry set and the earlier attempt's files in place."""
    Spy(monkeypatch)
    seen = []

    def audit(ctx):
        seen.append((ctx.retry, sorted(p.name for p in ctx.out.iterdir())))
        (ctx.out / "kept.txt").write_text("from the first attempt")
        return {"incomplete": "suite(s) failed: safety"} if len(seen) == 1 else {"note": "retried safety"}

    monkeypatch.setitem(S.FUNCS, "audit", audit)
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    st = r.state["stages"]["audit"]
    assert r.exit_code == 1 and st["status"] == "incomplete" and st["error"] == "suite(s) failed: safety"
    assert "run the same command again" in st["note"]
    assert not (run_dir / st["dir"] / "DONE").exists() and (run_dir / st["dir"] / "INCOMPLETE").is_file()
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert r.exit_code == 0 and statuses(run_dir)["audit"] == "done"
    assert seen == [(False, [".tunelens-out.json", "stage.log"]),
                    (True, [".tunelens-out.json", "INCOMPLETE", "kept.txt", "stage.log"])]
    assert (run_dir / st["dir"] / "DONE").is_file() and not (run_dir / st["dir"] / "INCOMPLETE").exists()
    run_pipeline(parse_config(cfg_raw), run_dir, display=False)
    assert len(seen) == 2  # now it is cached
    # --from starts an incomplete stage afresh
    r = run_pipeline(parse_config(cfg_raw), run_dir, display=False, from_stage="audit")
    assert seen[-1] == (False, [".tunelens-out.json", "stage.log"])


def test_failed_suite_rerun_after_the_cause_is_fixed(tiny_model_dir, tmp_path, monkeypatch):
    """The issue-14 story on the tiny model: scipy missing breaks the safety suite (the audit and the repair's
    re-audits); the run says incomplete (exit 1). With the cause removed, the rerun runs only the suites and the
    candidate that failed, and every suite ends ok."""
    import tunelens.audit.safety as safety
    from tunelens.audit.core import SUITES

    raw = raw_config(tiny_model_dir, write_task(tmp_path / "data"))
    raw.update(stages=["audit", "repair", "report"], tuned=str(tiny_model_dir))
    raw["audit"].update(tasks=raw.pop("tune")["data"], suites=["task", "safety"])

    def no_scipy(b, c):
        raise ModuleNotFoundError("No module named 'scipy'")

    ran = []
    for name in ("task", "safety"):
        original = SUITES[name].run
        monkeypatch.setattr(SUITES[name], "run", lambda self, ctx, _o=original, _n=name: ran.append(_n) or _o(self, ctx))
    monkeypatch.setattr(safety, "mcnemar", no_scipy)
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    st = r.state["stages"]
    assert r.exit_code == 1
    assert st["audit"]["status"] == "incomplete" and "safety" in st["audit"]["error"]
    assert st["repair"]["status"] == "incomplete" and "candidate(s) failed: interpolate-alpha0.5" in st["repair"]["error"]
    sweep = json.loads((run_dir / st["repair"]["dir"] / "sweep.json").read_text())
    assert sweep["rows"][0]["error"] == "audit suite(s) failed: safety" and sweep["reference_failed_suites"] == ["safety"]
    html = (run_dir / "report.html").read_text()
    assert "incomplete" in html and "running since" not in html

    monkeypatch.undo()  # scipy is back
    ran.clear()
    for name in ("task", "safety"):
        original = SUITES[name].run
        monkeypatch.setattr(SUITES[name], "run", lambda self, ctx, _o=original, _n=name: ran.append(_n) or _o(self, ctx))
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    st = r.state["stages"]
    assert r.exit_code == 0, {s: v["error"] for s, v in st.items()}
    assert all(st[s]["status"] == "done" for s in raw["stages"])
    assert "retried safety; reused task from the earlier attempt" in st["audit"]["note"]
    assert set(ran) == {"safety"}  # the audit, the tuned model's re-audit, the candidate's re-audit: safety only (a
    # sequential suite runs once per look)
    for ledger in [run_dir / st["audit"]["dir"] / "ledger.json",
                   *(run_dir / st["repair"]["dir"]).glob("**/audit/ledger.json")]:
        suites = json.loads(ledger.read_text())["suites"]
        assert {s: b["status"] for s, b in suites.items()} == {"task": "ok", "safety": "ok"}, ledger
    assert json.loads((run_dir / st["repair"]["dir"] / "sweep.json").read_text())["rows"][0]["status"] == "ok"
    html = (run_dir / "report.html").read_text()
    assert "running since" not in html and "safety suite failed" not in html


def test_every_stage_reports_its_steps_on_the_one_progress_channel(tiny_model_dir, tmp_path, monkeypatch):
    """The display no longer polls files a stage wrote: each stage's own calls to tunelens.progress.step reach
    it — training steps, audit suites, diff bytes, graft sparsities, repair candidates (issue 18)."""
    from tunelens.run import pipeline as PL

    seen: dict[str, list] = {}
    current = {}
    monkeypatch.setattr(PL.Display, "start", lambda self, stage: current.update(stage=stage))
    monkeypatch.setattr(PL.Display, "step", lambda self, done, total: seen.setdefault(current["stage"], [])
                        .append((done, total)))
    raw = raw_config(tiny_model_dir, write_task(tmp_path / "data"))
    raw["graft"]["steps"] = 0  # with no mask steps, graft reports each sparsity
    raw["graft"]["sparsities"] = [0.1, 0.2]
    raw["repair"]["candidates"].append({"method": "interpolate", "alpha": 0.25})
    raw["stages"] = ["tune", "audit", "diff", "graft", "repair"]
    r = run_pipeline(parse_config(raw), tmp_path / "run", display=False)
    assert r.exit_code == 0, {s: v["error"] for s, v in r.state["stages"].items()}
    assert seen["tune"][-1] == (2, 2) and [d for d, _ in seen["tune"]] == [1, 2]
    assert seen["audit"] == [(0, 1), (1, 1)]
    done, total = seen["diff"][-1]
    assert done == total > 0 and all(a[0] <= b[0] for a, b in zip(seen["diff"], seen["diff"][1:]))
    assert seen["graft"] == [(1, 2), (2, 2)]
    assert seen["repair"] == [(1, 3), (2, 3), (3, 3)]  # the tuned reference row, then each candidate


def test_progress_reaches_whoever_listens_and_nobody_else():
    from tunelens import progress as P

    got, inner = [], []
    P.step(1, 2)  # nobody listens: nothing happens
    with P.reporting(lambda d, t: got.append((d, t))):
        P.step(1, 3)
        with P.reporting(lambda d, t: inner.append((d, t))):
            P.step(5, 5)
        with P.reporting(None):
            P.step(9, 9)
        P.step(2, 3)
    assert got == [(1, 3), (2, 3)] and inner == [(5, 5)]


# ---------------------------------------------------------------------------------------------------- named tune stages


def named_raw(model, task) -> dict:
    """The SafeCOMM shape: an aligned tune (merged), the benign tune on it, a safety adapter on it; the audit and
    the repair examine the benign tune against the aligned model."""
    tune = {"data": [str(task)], "max_steps": 2, "batch_size": 4, "save_steps": 50, "seed": 0}
    return {
        "model": "aligned",
        "tuned": "telecom",
        "stages": ["tune", "audit", "repair", "report"],
        "tunes": {"aligned": {"model": str(model), "merge": True, **tune},
                  "telecom": {"model": "aligned", **tune},
                  "safety-adapter": {"model": "aligned", **tune, "seed": 1}},
        "audit": {"suites": ["task"], "limit": 4, "tasks": [str(task)]},
        "repair": {"candidates": [{"method": "interpolate", "alpha": 0.5},
                                  {"name": "sm", "method": "safemerge", "safety_adapter": "safety-adapter",
                                   "aligned": "aligned", "unaligned": str(model)}], "limit": 4},
    }


NAMED = ["tune:aligned", "tune:telecom", "tune:safety-adapter", "audit", "diff", "graft", "repair", "report"]


def test_named_tunes_order_hashes_and_run_json(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    raw = named_raw(tmp_path / "m", cfg_raw["tune"]["data"][0])
    raw["tunes"] = {"telecom": raw["tunes"]["telecom"], **raw["tunes"]}  # written before the stage it tunes on
    cfg = parse_config(raw)
    assert cfg.stage_order() == NAMED and cfg.tuned_key() == "tune:telecom" and cfg.base_key() == "tune:aligned"
    run_dir = tmp_path / "run"
    r = run_pipeline(cfg, run_dir, display=False)
    assert r.exit_code == 0 and spy.calls == ["tune:aligned", "tune:telecom", "tune:safety-adapter", "audit",
                                              "repair", "report"]
    state = json.loads((run_dir / "run.json").read_text())
    assert state["order"] == NAMED and state["tuned_stage"] == "tune:telecom" and list(state["stages"]) == NAMED
    for key in NAMED[:3]:
        st = state["stages"][key]
        assert st["status"] == "done" and st["dir"] == f"tune/{key[5:]}/{st['hash']}"
        assert (run_dir / st["dir"] / "DONE").is_file()
    assert state["stages"]["diff"]["status"] == "skipped"
    # the stages' inputs: the tune stages they read, resolved to their output folders
    seen = {}
    monkeypatch.setitem(S.FUNCS, "repair", lambda ctx: seen.update(base=ctx.base, tuned=ctx.tuned,
                                                                   candidates=S._candidates(ctx)))
    run_pipeline(cfg, run_dir, only="repair", display=False)
    folder = {k: run_dir / state["stages"][k]["dir"] for k in NAMED[:3]}
    assert seen["base"] == str(folder["tune:aligned"] / "model")  # the Spy wrote no merged/ folder
    assert seen["tuned"] == str(folder["tune:telecom"] / "model")
    assert seen["candidates"][1]["options"] == {"safety_adapter": str(folder["tune:safety-adapter"] / "model"),
                                                "aligned": str(folder["tune:aligned"] / "model"),
                                                "unaligned": str(tmp_path / "m")}


def test_named_tunes_cache_reruns_what_reads_the_change(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    raw = named_raw(tmp_path / "m", cfg_raw["tune"]["data"][0])
    run_dir = tmp_path / "run"
    first = run_pipeline(parse_config(raw), run_dir, display=False)
    spy.calls.clear()
    assert run_pipeline(parse_config(raw), run_dir, display=False).exit_code == 0 and spy.calls == []

    def changed(name, **kw):
        return {**raw, "tunes": {**raw["tunes"], name: {**raw["tunes"][name], **kw}}}

    r = run_pipeline(parse_config(changed("telecom", max_steps=3)), run_dir, display=False)
    assert spy.calls == ["tune:telecom", "audit", "repair", "report"]
    assert r.state["stages"]["tune:aligned"]["hash"] == first.state["stages"]["tune:aligned"]["hash"]
    spy.calls.clear()
    run_pipeline(parse_config(changed("safety-adapter", seed=2)), run_dir, display=False)
    assert spy.calls == ["tune:safety-adapter", "repair", "report"]  # the audit does not read the safety adapter
    spy.calls.clear()
    run_pipeline(parse_config(changed("aligned", max_steps=3)), run_dir, display=False)
    assert spy.calls == ["tune:aligned", "tune:telecom", "tune:safety-adapter", "audit", "repair", "report"]
    spy.calls.clear()
    run_pipeline(parse_config(raw), run_dir, display=False)  # back to the first settings: all reused
    assert spy.calls == []
    # --from / --only take a stage's key or its name
    run_pipeline(parse_config(raw), run_dir, from_stage="safety-adapter", display=False)
    assert spy.calls == ["tune:safety-adapter", "audit", "repair", "report"]
    spy.calls.clear()
    run_pipeline(parse_config(raw), run_dir, only="tune:telecom", display=False)
    assert spy.calls == ["tune:telecom"]
    spy.calls.clear()
    run_pipeline(parse_config(raw), run_dir, from_stage="tune", display=False)
    assert spy.calls[:3] == ["tune:aligned", "tune:telecom", "tune:safety-adapter"]
    with pytest.raises(TunelensError, match=r"--only tune: the tune stages are tune:aligned, tune:telecom"):
        run_pipeline(parse_config(raw), run_dir, only="tune", display=False)
    with pytest.raises(TunelensError, match=r"--from telcom: not a stage; .*did you mean 'tune:telecom'"):
        run_pipeline(parse_config(raw), run_dir, from_stage="telcom", display=False)
    with pytest.raises(TunelensError, match="--only tune:telecom needs the tune:aligned stage"):
        run_pipeline(parse_config(raw), tmp_path / "fresh", only="telecom", display=False)


def test_named_tune_failure_skips_what_reads_it(cfg_raw, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    raw = named_raw(tmp_path / "m", cfg_raw["tune"]["data"][0])

    def tune(ctx):
        spy.calls.append(ctx.stage)
        if ctx.stage == "tune:safety-adapter":
            raise RuntimeError("broke")

    monkeypatch.setitem(S.FUNCS, "tune", tune)
    r = run_pipeline(parse_config(raw), tmp_path / "run", display=False)
    st = r.state["stages"]
    assert r.exit_code == 1 and st["tune:safety-adapter"]["status"] == "failed"
    assert st["audit"]["status"] == "done"  # it reads the aligned and telecom stages only
    assert st["repair"]["status"] == "skipped" and "tune:safety-adapter" in st["repair"]["note"]
    assert st["report"]["status"] == "done"


@pytest.mark.parametrize("patch, message, on_line", [
    (lambda r: r["tunes"]["telecom"].update(model="alinged"),
     "'tunes.telecom.model: alinged' names no tune stage; did you mean 'aligned'?", "model: alinged"),
    (lambda r: r.update(model="algned"), "'model: algned' names no tune stage; did you mean 'aligned'?",
     "model: algned"),
    (lambda r: r["tunes"]["aligned"].update(model="safety-adapter"),
     "'tunes.aligned.model': the tune stages form a cycle: aligned -> safety-adapter -> aligned", "model: safety-"),
    (lambda r: r["tunes"]["aligned"].pop("model"),
     "'tunes.aligned.model': the tune stages form a cycle: aligned -> aligned (tunes.aligned gives no model:, so it "
     "tunes the top-level model; give it one)", "aligned:"),
    (lambda r: r["repair"]["candidates"][1].update(safety_adapter="safety-adaptr"),
     "'repair.candidates[1].safety_adapter: safety-adaptr' names no tune stage; did you mean 'safety-adapter'?",
     "safety_adapter: safety-adaptr"),
    (lambda r: r.update(tuned="telcom"), "'tuned: telcom' names no tune stage; did you mean 'telecom'?",
     "tuned: telcom"),
    (lambda r: r["tunes"].update(audit={"data": ["x"]}), "'tunes.audit': a tune stage's name is", "audit:"),
    (lambda r: r["tunes"]["telecom"].update(merge="yes"),
     "section 'tunes.telecom': merge must be true or false, got 'yes'", "merge: 'yes'"),
    (lambda r: r["tunes"]["telecom"].update(learning_rat=1),
     "unknown key 'tunes.telecom.learning_rat'; did you mean 'tunes.telecom.learning_rate'?", None),
])
def test_named_tune_config_errors_name_key_and_line(cfg_raw, tmp_path, patch, message, on_line):
    """An unknown stage name or a cycle is one line naming the key and its line, exit 2, before anything runs."""
    raw = named_raw(tmp_path / "m", cfg_raw["tune"]["data"][0])
    patch(raw)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False, width=200))
    with pytest.raises(TunelensError) as e:
        load_run_config(p)
    msg = str(e.value)
    assert message in msg and e.value.exit_code == 2 and "\n" not in msg, msg
    if on_line is not None:  # the line named holds the key (or its stage, when the key is not written)
        m = re.match(rf"{re.escape(str(p))}:(\d+): ", msg)
        assert m and on_line in p.read_text().splitlines()[int(m.group(1)) - 1], msg
    r = CliRunner().invoke(app, ["run", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "tunelens: error:" in r.output and str(p) in r.output.replace("\n", "")


def test_named_tunes_on_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    """Two named tunes, the second on the first's merged model; the audit and the repair (a SafeLoRA candidate
    naming the aligned stage) read them; a rerun reuses everything."""
    task = write_task(tmp_path / "data")
    tune = {"data": [str(task)], "max_steps": 2, "batch_size": 4, "save_steps": 50, "seed": 0, "lora_r": 4}
    raw = {"model": "aligned", "stages": ["tune", "audit", "repair"]
           + (["report"] if _importable("tunelens.report") else []),
           "tunes": {"aligned": {"model": str(tiny_model_dir), "merge": True, **tune},
                     "benign": {"model": "aligned", **tune, "seed": 1}},
           "audit": {"suites": ["task"], "limit": 4},
           "repair": {"candidates": [{"name": "safelora", "method": "safelora", "aligned": "aligned",
                                      "unaligned": str(tiny_model_dir), "mode": "topk", "k": 2}], "limit": 4}}
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    st = r.state["stages"]
    assert r.exit_code == 0, {s: v["error"] for s, v in st.items()}
    aligned, benign = run_dir / st["tune:aligned"]["dir"], run_dir / st["tune:benign"]["dir"]
    merged = aligned / "merged"
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    assert "adapter merged into merged/" in st["tune:aligned"]["note"]
    assert json.loads((benign / "model" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(merged.resolve())
    ledger = json.loads((run_dir / st["audit"]["dir"] / "ledger.json").read_text())
    assert ledger["suites"]["task"]["status"] == "ok"
    sweep = json.loads((run_dir / st["repair"]["dir"] / "sweep.json").read_text())
    assert [row["status"] for row in sweep["rows"]] == ["ok"]
    if "report" in raw["stages"]:
        assert (run_dir / "report.html").is_file() and "tune:benign" in (run_dir / "report.html").read_text()
    again = run_pipeline(parse_config(raw), run_dir, display=False)
    assert all(v["cached"] for s, v in again.state["stages"].items() if s.partition(":")[0] in raw["stages"])


def test_stopped_named_tune_resumes_and_merges(tiny_model_dir, tmp_path):
    """Killed after the first stage's tune but before its merge, and in the second stage after its step-2
    checkpoint: the rerun merges the first (no retraining) and resumes the second from its checkpoint."""
    task = write_task(tmp_path / "data")
    tune = {"data": [str(task)], "max_steps": 4, "batch_size": 4, "save_steps": 2, "seed": 0, "lora_r": 4}
    raw = {"model": str(tiny_model_dir), "stages": ["tune"],
           "tunes": {"a": {"merge": True, **tune}, "b": {"model": "a", **tune}}}
    run_dir = tmp_path / "run"
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    a, b = (run_dir / r.state["stages"][k]["dir"] for k in ("tune:a", "tune:b"))
    a_log = (a / "train_log.jsonl").read_text()
    (a / "DONE").unlink()
    shutil.rmtree(a / "merged")
    (b / "DONE").unlink()
    shutil.rmtree(b / "model")
    shutil.rmtree(b / "checkpoints" / "checkpoint-4")
    log = b / "train_log.jsonl"
    log.write_text("".join(json.dumps({**json.loads(l), "before_stop": True}) + "\n"
                           for l in log.read_text().splitlines() if l.strip()))
    r = run_pipeline(parse_config(raw), run_dir, display=False)
    st = r.state["stages"]
    assert r.exit_code == 0 and not st["tune:a"]["cached"] and not st["tune:b"]["cached"]
    assert "the tune had finished" in st["tune:a"]["note"] and (a / "merged" / "config.json").is_file()
    assert (a / "train_log.jsonl").read_text() == a_log  # not retrained
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    assert [(x["step"], x.get("before_stop", False)) for x in rows] == [(1, True), (2, True), (3, False), (4, False)]
    assert (b / "model" / "adapter_config.json").is_file() and (b / "DONE").is_file()


def test_safecomm_config_and_its_sweep_file_agree():
    """examples/safecomm.yaml is the demonstration as one run; examples/safecomm_demo.yaml the same sweep for
    `tunelens repair --sweep` on models tuned by hand: the same candidates (the run's stage names for the sweep
    file's folders), suites, tasks, limit and select."""
    from tunelens.repair.sweep import load_sweep_file
    from tunelens.run.config import SweepFile

    cfg = load_run_config(ROOT / "examples" / "safecomm.yaml")
    assert cfg.stage_order()[:3] == ["tune:aligned", "tune:telecom", "tune:safety-adapter"]
    assert (cfg.tuned_key(), cfg.base_key()) == ("tune:telecom", "tune:aligned")
    assert cfg.tunes["aligned"]["merge"] and cfg.tunes["telecom"]["model"] == cfg.tunes["safety-adapter"]["model"] \
        == "aligned"
    sweep = SweepFile(**load_sweep_file(ROOT / "examples" / "safecomm_demo.yaml"))
    folders = {sweep.base: "aligned", "out/safecomm/safety-adapter/model": "safety-adapter"}
    assert folders[sweep.base] == cfg.model and sweep.tuned == "out/safecomm/telecom/model"
    named = [{"name": c["name"], "method": c["method"], **{k: folders.get(v, v) if isinstance(v, str) else v
                                                           for k, v in c["options"].items()}}
             for c in cfg.repair.candidates]
    assert named == [{"name": c["name"], "method": c["method"], **{k: folders.get(v, v) if isinstance(v, str) else v
                                                                  for k, v in c.items() if k not in ("name", "method")}}
                     for c in sweep.candidates]
    assert (sweep.suites, sweep.tasks, sweep.limit, sweep.select) == \
        (cfg.audit.suites, cfg.audit.tasks, cfg.audit.limit, cfg.repair.select)
