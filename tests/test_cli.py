"""The CLI: happy path on a tiny model, and bad input -> one line on stderr, exit code 2, no traceback."""

import json

import pytest
from typer.testing import CliRunner

from tunelens.cli import app


@pytest.fixture
def mc_file(tmp_path):
    rows = [
        {"question": "Sky colour?", "choices": ["blue", "green"], "answer": 0},
        {"question": "Grass colour?", "choices": ["blue", "green"], "answer": 1},
        {"question": "Snow colour?", "choices": ["white", "black", "red"], "answer": "white"},
    ]
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_eval_writes_results_and_items(tiny_model_dir, mc_file, tmp_path):
    out = tmp_path / "out"
    r = run("eval", "--model", str(tiny_model_dir), "--task", str(mc_file), "--out", str(out), "--split", "test")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "tunelens.results/1"
    assert res["task"]["n_items"] == 3
    acc = res["metrics"]["accuracy"]
    assert 0.0 <= acc["ci95"][0] <= acc["value"] <= acc["ci95"][1] <= 1.0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted(len(i["p_choices"]) for i in items) == [2, 2, 3]  # items come in the stratified order
    assert all(abs(sum(i["p_choices"]) - 1) < 1e-6 for i in items)
    assert sum(i["correct"] for i in items) / 3 == pytest.approx(acc["value"])


def _assert_user_error(r, *needles):
    assert r.exit_code == 2, r.output
    err = r.stderr if hasattr(r, "stderr") else r.output
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "content, needles",
    [
        ('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{not json}\n', [":2", "invalid JSON"]),
        ('{"question": "q", "choices": ["a", "b"]}\n', [":1", "answer"]),
        ('{"question": "q", "choices": ["a", "b"], "answer": "c"}\n', [":1", "answer"]),
        ("", ["no items"]),
    ],
    ids=["malformed-line", "missing-field", "answer-not-a-choice", "empty-file"],
)
def test_bad_data_is_one_line_exit_2(tiny_model_dir, tmp_path, content, needles):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    spec = tmp_path / "task.yaml"  # a spec, so the type is known even when a column is missing
    spec.write_text("name: bad\ntype: multiple_choice\ndata: bad.jsonl\nchat_template: false\n")
    r = run("eval", "--model", str(tiny_model_dir), "--task", str(spec), "--out", str(tmp_path / "o"))
    _assert_user_error(r, "bad.jsonl", *needles)


def test_unknown_model_path(mc_file, tmp_path):
    r = run("eval", "--model", str(tmp_path / "nope"), "--task", str(mc_file))
    _assert_user_error(r, "no such model path")


def test_pickle_checkpoint_refused(tiny_model_dir, mc_file, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    r = run("eval", "--model", str(folder), "--task", str(mc_file))
    _assert_user_error(r, "pickle", "--allow-pickle")


def test_debug_shows_traceback(mc_file, tmp_path):
    r = run("--debug", "eval", "--model", str(tmp_path / "nope"), "--task", str(mc_file))
    assert r.exit_code != 0 and r.exception is not None


def test_tasks_lists_builtins():
    r = run("tasks")
    assert r.exit_code == 0 and "telecom-intent" in r.output


def test_missing_optional_extra_names_it_before_loading_models(monkeypatch, tmp_path):
    """`--lm-eval` without the `lmeval` extra: one line naming the extra, exit 2, before any model loads (the
    model paths here do not exist, so reaching them would be a different error)."""
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    r = run("audit", "--base", str(tmp_path / "nope"), "--tuned", str(tmp_path / "nope2"), "--lm-eval", "arc_easy",
            "--out", str(tmp_path / "a"))
    assert r.exit_code == 2, r.output
    assert "optional extra 'lmeval'" in r.output and "pip install 'tunelens[lmeval]'" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_audit_budget_default_is_the_run_configs():
    """`tunelens audit` and a run config's audit section bound a sequential audit by the same default budget."""
    import inspect

    from tunelens.cli import audit_cmd
    from tunelens.run.config import AuditSection

    assert inspect.signature(audit_cmd).parameters["budget"].default.default == AuditSection.budget == 300.0


def test_help_lists_exactly_the_registered_tuning_and_repair_methods():
    """The method lists in --help come from (or are held to) the registries, so a new method cannot be missing."""
    import re

    from tunelens.repair import REPAIRS
    from tunelens.tune.methods import TUNING_METHODS

    from tunelens.cli import repair_cmd, tune_cmd
    import inspect

    tune_help = inspect.signature(tune_cmd.__wrapped__ if hasattr(tune_cmd, "__wrapped__") else tune_cmd) \
        .parameters["method"].default.help
    assert [m.replace(" (default)", "") for m in re.findall(r"[\w-]+(?: \(default\))?", tune_help.split(" (tune")[0])] \
        == list(TUNING_METHODS)
    repair_help = inspect.signature(repair_cmd.__wrapped__ if hasattr(repair_cmd, "__wrapped__") else repair_cmd) \
        .parameters["method"].default.help
    listed = re.findall(r"[a-z_]+", repair_help.split(":", 1)[1])
    assert sorted(listed) == sorted(REPAIRS)


def test_a_tuning_method_name_taken_twice_is_refused():
    from tunelens.errors import TunelensError
    from tunelens.tune.methods import TuningMethod, register

    class Another(TuningMethod):
        pass

    with pytest.raises(TunelensError, match="'lora' is already registered"):
        register("lora")(Another)


def _options(cmd):
    import inspect

    fn = cmd.__wrapped__ if hasattr(cmd, "__wrapped__") else cmd
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()}


def test_tune_help_states_the_settings_defaults():
    """Every "(default X)" in `tune --help` is TuneConfig's own default for that setting (issue 18: one source)."""
    import dataclasses
    import re

    from tunelens.cli import tune_cmd
    from tunelens.tune.config import TuneConfig

    fields = {f.name: f for f in dataclasses.fields(TuneConfig)}
    checked = 0
    for name, opt in _options(tune_cmd).items():
        m = re.search(r"\(default ([^;)]+)", opt.help or "")
        if not m or name not in fields:
            continue
        f = fields[name]
        want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert m.group(1) == (f"{want:g}" if isinstance(want, float) else str(want)), name
        checked += 1
    assert checked >= 8


def test_audit_cli_defaults_are_the_run_configs_and_the_contexts():
    """`tunelens audit`'s defaults equal AuditSection's (the run config) and AuditContext's (the Python API)."""
    from tunelens.audit import AuditContext
    from tunelens.cli import audit_cmd
    from tunelens.run.config import AuditSection

    opts = _options(audit_cmd)
    section = AuditSection()
    for name in ("budget", "chunk", "judge", "seed", "full"):
        assert opts[name].default == getattr(section, name), name
    import dataclasses

    ctx_defaults = {f.name: f.default for f in dataclasses.fields(AuditContext)}
    for name in ("chunk", "judge", "seed"):
        assert opts[name].default == ctx_defaults[name], name
