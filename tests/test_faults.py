"""The fault corpus of issue 15 as tests: nothing that existed before a command is lost, an output folder has
one writer, no stale result is shown as current, and bad values, OS errors and malformed files are one line
with exit code 2 — each found before the work it would spoil. Every case here failed on the code before."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelens.cli import app
from tunelens.errors import TunelensError
from tunelens.outdir import LOCK, MARKER, Lock, claim, kind_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(r, *words):
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("tunelens: error:"), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def fake_tune_folder(folder: Path, data: str) -> Path:
    """A finished tuning run as `tunelens tune` leaves it (provenance, model, log)."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "adapter_config.json").write_text("{}")
    (folder / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (folder / "run.json").write_text(json.dumps({"config": {"data": [data], "lora_r": 16}, "data_files": {},
                                                 "status": "finished"}))
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name not in (LOCK, MARKER)}


@pytest.fixture
def task_file(tmp_path):
    rows = [{"question": f"Colour {i}?", "choices": ["blue", "green"], "answer": i % 2} for i in range(6)]
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


# ------------------------------------------------------------------------------------------------ data loss


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(tmp_path, task_file):
    """`tune --overwrite` with a setting that fails (here: a model that does not exist) used to delete the
    finished run first; now the old run is moved aside and put back, byte for byte."""
    old = fake_tune_folder(tmp_path / "t", str(task_file))
    before = snapshot(old)
    r = run("tune", "--data", task_file, "--model", tmp_path / "no-such-model", "--max-steps", 1, "--out", old,
            "--overwrite")
    assert r.exit_code == 2, r.output
    assert snapshot(old) == before
    assert not [p for p in tmp_path.iterdir() if ".replaced-" in p.name]  # nothing left aside


@pytest.mark.parametrize("what", ["run folder", "audit folder", "unrelated file"])
def test_overwrite_refuses_folders_that_are_not_tuning_runs(tmp_path, task_file, what):
    out = tmp_path / "x"
    out.mkdir()
    if what == "run folder":
        (out / "run.json").write_text(json.dumps({"schema": "tunelens.run/1", "stages": {}}))
        words = ["`tunelens run` folder"]
    elif what == "audit folder":
        (out / "ledger.json").write_text("{}")
        words = ["`tunelens audit` folder"]
    else:
        (out / "thesis.tex").write_text("years of work")
        words = ["not empty and was not made by `tunelens tune`", "thesis.tex"]
    before = snapshot(out)
    r = run("tune", "--data", task_file, "--model", tmp_path / "no-such-model", "--out", out, "--overwrite")
    line = one_error_line(r, *words)
    assert "different tuning run" not in line
    assert snapshot(out) == before


def test_run_into_a_tune_folder_is_refused_and_keeps_its_provenance(tmp_path, task_file):
    tune_dir = fake_tune_folder(tmp_path / "t", str(task_file))
    before = snapshot(tune_dir)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tmp_path / 'm'}\nstages: [audit]\ntuned: {tmp_path / 'm'}\n"
                   f"audit: {{tasks: ['{task_file}'], suites: [task]}}\n")
    one_error_line(run("run", cfg, "--out", tune_dir, "--no-progress"), "`tunelens tune` folder")
    assert snapshot(tune_dir) == before


def test_kind_of_recognises_folders_from_before_the_marker(tmp_path, task_file):
    assert kind_of(fake_tune_folder(tmp_path / "t", str(task_file))) == "tune"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ledger.json").write_text("{}")
    assert kind_of(tmp_path / "a") == "audit"
    (tmp_path / "e").mkdir()
    assert kind_of(tmp_path / "e") is None


# ------------------------------------------------------------------------------------------------ one writer


def test_second_writer_is_refused_naming_the_holder(tmp_path, task_file):
    out = tmp_path / "busy"
    with claim(out, "eval"):
        r = run("eval", "--model", tmp_path / "no-such-model", "--task", task_file, "--out", out)
        one_error_line(r, "is in use by pid", str(os.getpid()), "`tunelens eval`")
    # released: the same command now gets past the lock (to the missing model)
    r = run("eval", "--model", tmp_path / "no-such-model", "--task", task_file, "--out", out)
    assert r.exit_code == 2 and "in use" not in r.output


def test_lock_held_by_another_process(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    code = ("import sys, time; sys.path.insert(0, %r); from tunelens.outdir import Lock; "
            "l = Lock(%r, 'tune'); l.acquire(); print('held', flush=True); time.sleep(30)") % (
        str(Path(__file__).resolve().parents[1] / "src"), str(out))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(TunelensError, match=f"in use by pid {p.pid} on .*`tunelens tune`"):
            Lock(out, "eval").acquire()
    finally:
        p.kill()
        p.wait()
    lock = Lock(out, "eval")  # the holder died: its lock is free again
    lock.acquire()
    lock.release()


def test_stale_lock_from_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": "here", "command": "tune"}))
    with claim(out, "tune"):
        pass
    assert f"took over the lock on {out} left by pid {dead.pid}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ stale results


def test_audit_into_an_earlier_audit_folder_starts_from_empty_items(tiny_model_dir, task_file, tmp_path):
    out = tmp_path / "a"
    (out / "items").mkdir(parents=True)
    (out / "items" / "compatibility.jsonl").write_text('{"id": "from another model", "flip": "negative"}\n')
    (out / "ledger.json").write_text(json.dumps({"suites": {"compatibility": {"status": "ok", "entries": []}}}))
    r = run("audit", "--base", tiny_model_dir, "--tuned", tiny_model_dir, "--task", task_file, "--suites", "task",
            "--limit", 3, "--out", out, "--no-base-cache")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "items").iterdir()) == ["task.jsonl"]
    assert not [p for p in out.iterdir() if p.name.startswith(".previous-audit-")]


def test_report_reads_only_the_items_its_ledger_lists(tmp_path):
    from tunelens.report.load import load_run

    out = tmp_path / "a"
    (out / "items").mkdir(parents=True)
    (out / "ledger.json").write_text(json.dumps({"base": {"name": "b"}, "tuned": {"name": "t"},
                                                 "suites": {"task": {"status": "ok", "entries": []}}}))
    (out / "items" / "task.jsonl").write_text('{"id": "q1"}\n')
    (out / "items" / "compatibility.jsonl").write_text('{"id": "stale", "flip": "negative"}\n')
    assert set(load_run(out).records) == {"task"}


# ------------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("content, where", [('{"schema": "tunelens.run/1", "stages": {', "line 1, column"),
                                            ("[1, 2]", "expected a JSON object")])
def test_malformed_run_json_is_named_with_its_position(tmp_path, content, where):
    (tmp_path / "run.json").write_text(content)
    one_error_line(run("report", tmp_path), "run.json", where)


def test_malformed_ledger_is_named_with_its_position(tmp_path):
    (tmp_path / "ledger.json").write_text('{"suites": {"task": ')
    one_error_line(run("report", tmp_path), "ledger.json", "line 1, column")


def test_an_audit_whose_only_suite_failed_is_not_a_success(tiny_model_dir, task_file, tmp_path, monkeypatch):
    from tunelens.audit.core import SUITES

    def broken(self, ctx):
        raise RuntimeError("suite broke")

    monkeypatch.setattr(SUITES["task"], "run", broken)
    r = run("audit", "--base", tiny_model_dir, "--tuned", tiny_model_dir, "--task", task_file, "--suites", "task",
            "--out", tmp_path / "a", "--no-base-cache")
    assert r.exit_code == 1 and "suite(s) failed: task" in r.output, r.output


# ------------------------------------------------------------------------------------------------ OS errors


def test_out_that_is_a_file_is_one_line_before_any_work(tmp_path, task_file):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    # the model does not exist: reaching it would be a different error, so the check came first
    one_error_line(run("eval", "--model", tmp_path / "no-such-model", "--task", task_file, "--out", f),
                   str(f), "is a file")
    assert f.read_text() == "keep me"


def test_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch, task_file):
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "e"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    one_error_line(run("eval", "--model", tmp_path / "no-such-model", "--task", task_file, "--out", tmp_path / "e"),
                   "disk is full", str(tmp_path / "e"))


def test_oserror_anywhere_in_a_command_is_one_line(tmp_path, monkeypatch):
    """An OSError that escapes a command (not caught by a check) is still one line with exit 2."""
    import tunelens.report as report

    def readonly(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "report.html"))

    monkeypatch.setattr(report, "build_report", readonly)
    one_error_line(run("report", tmp_path), "read-only", "report.html")


# ------------------------------------------------------------------------------------------------ early checks


@pytest.mark.parametrize("gate, words", [("safety.refusal_rate", ["is not a comparison"]),
                                         ("task.accuracy >= 0", ["'task.accuracy' is not a metric name"]),
                                         ("task.accuracy.delta >>= 0", ["does not parse"])])
def test_gate_is_checked_before_models_load(tmp_path, task_file, gate, words):
    r = run("audit", "--base", tmp_path / "no-such-model", "--tuned", tmp_path / "no-such-model", "--task",
            task_file, "--gate", gate, "--out", tmp_path / "a")
    one_error_line(r, *words)


def test_missing_adapter_base_says_where_the_name_comes_from(tiny_adapter_dir, tmp_path, task_file):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    one_error_line(run("eval", "--model", adapter, "--task", task_file, "--out", tmp_path / "e"),
                   str(adapter / "adapter_config.json"), "base_model_name_or_path", "--base")


def test_model_without_tokenizer_suggests_no_flag_that_does_not_exist(tiny_model_dir, tmp_path):
    import shutil

    from tunelens.models import resolve_model

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, bare / f)
    with pytest.raises(TunelensError, match="no tokenizer files") as e:
        resolve_model(str(bare))
    assert "--tokenizer" not in str(e.value) and "copy those files from its base model" in str(e.value)


@pytest.mark.parametrize("flag, value, words", [("--batch-size", 0, ["--batch-size must be an integer >= 1"]),
                                                ("--token-budget", 0, ["--token-budget must be an integer >= 64"]),
                                                ("--limit", -4, ["--limit must be an integer >= 1, got -4"]),
                                                ("--fewshot", -1, ["--fewshot must be an integer >= 0"])])
def test_eval_flags_are_checked_before_the_model_loads(tmp_path, task_file, flag, value, words):
    one_error_line(run("eval", "--model", tmp_path / "no-such-model", "--task", task_file, flag, value,
                       "--out", tmp_path / "e"), *words)
