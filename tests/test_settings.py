"""One source of truth (issue 18): every command's options are generated from its settings dataclass, the
Python API's defaults are read from the same fields, and a YAML value of the wrong type names its section, key
and expected type."""

import dataclasses
import inspect

import pytest
from typer.testing import CliRunner

from tunelens import cli
from tunelens.cli import app
from tunelens.run.config import AuditSection, DiffSection, EvalSettings, GraftSection, SweepFile
from tunelens.settings import default_of, split
from tunelens.tune.config import CurveSettings, TuneConfig

# (command, settings class, whether its options start unset because a --config YAML merges under them)
COMMANDS = [
    (cli.eval_cmd, EvalSettings, False),
    (cli.tune_cmd, TuneConfig, True),
    (cli.curve_cmd, CurveSettings, False),
    (cli.audit_cmd, AuditSection, False),
    (cli.diff_cmd, DiffSection, False),
    (cli.graft_cmd, GraftSection, False),
]


def _options(cmd) -> dict:
    """The typer options of a command as typer sees them (the signature the settings decorator generated)."""
    return {name: p.default for name, p in inspect.signature(cmd).parameters.items()}


@pytest.mark.parametrize("cmd, cls, unset", COMMANDS, ids=[c[1].__name__ for c in COMMANDS])
def test_every_cli_default_is_the_settings_default(cmd, cls, unset):
    opts = _options(cmd)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    assert fields
    for f in fields:
        assert f.name in opts, f"{cls.__name__}.{f.name} has no option"
        opt, want = opts[f.name], default_of(f)
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert any(d.split("/")[0] == flag for d in opt.param_decls), (f.name, opt.param_decls)
        if unset:  # None = not given; the help states the class's default instead
            assert opt.default is None, f.name
            if want not in (None, [], {}) and not f.metadata.get("says_default") and not isinstance(want, bool):
                assert f"(default {want:g})" in opt.help if isinstance(want, float) else f"(default {want})" in opt.help
        elif f.metadata.get("each") == "comma" and isinstance(want, list):
            assert [type(want[0])(x) for x in split(opt.default)] == want, f.name
        elif isinstance(want, dict):
            assert opt.default is None and want == {}, f.name
        elif isinstance(want, list):
            assert opt.default is None and want == [], f.name
        else:
            assert opt.default is f.default, f.name  # the same object: the two cannot drift


def test_a_field_kept_off_the_command_line_is_not_an_option():
    assert "target_modules" not in _options(cli.tune_cmd)  # a list or a string: settable with --set and in YAML
    assert "--set" in _options(cli.tune_cmd)["set_"].param_decls


def test_python_api_defaults_are_the_settings_defaults():
    from tunelens.audit import AuditContext
    from tunelens.diff.graft import graft
    from tunelens.evaluate import evaluate
    from tunelens.repair.sweep import run_sweep
    from tunelens.tune.curve import learning_curve

    g = inspect.signature(graft).parameters
    for name in ("steps", "lr", "examples", "batch_size", "select_limit", "eval_limit", "include_embeddings", "seed"):
        assert g[name].default is getattr(GraftSection, name), name
    e = inspect.signature(evaluate).parameters
    assert e["token_budget"].default is EvalSettings.token_budget and e["batch_size"].default is EvalSettings.batch_size
    c = inspect.signature(learning_curve).parameters
    for name in ("eval_task", "metric", "target", "split"):
        assert c[name].default is getattr(CurveSettings, name), name
    ctx = {f.name: f.default for f in dataclasses.fields(AuditContext)}
    for name in ("seed", "chunk", "judge"):
        assert ctx[name] is getattr(AuditSection, name), name
    assert inspect.signature(run_sweep).parameters["judge"].default is AuditSection.judge


def test_graft_has_one_set_of_defaults():
    """Once three disagreeing sets (CLI, graft(), run config); now the run config's section is the CLI's."""
    from tunelens.run.config import parse_config

    cfg = parse_config({"tuned": "t", "stages": ["graft"]})
    assert cfg.graft == GraftSection()
    assert cfg.graft.sparsities == [1e-4, 1e-3, 1e-2] and cfg.graft.steps == 20 and cfg.graft.examples == 256


def test_unset_audit_suites_mean_every_default_suite_in_the_cli_and_the_run_config():
    from tunelens.audit.core import default_suites
    from tunelens.run.config import parse_config

    assert _options(cli.audit_cmd)["suites"].default is None
    cfg = parse_config({"tuned": "t", "stages": ["audit"]})
    assert cfg.audit.suites is None and cfg.audit.suite_names() == list(default_suites())
    assert "task" in default_suites()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_yaml_value_of_the_wrong_type_names_section_key_type_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: default\ntune:\n  data: [telecom-intent]\n  lora_r: \"sixteen\"\n")
    r = run("run", path, "--out", tmp_path / "out", "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == (f"tunelens: error: {path}:4: section 'tune': lora_r must be an integer >= 1, "
                                "got 'sixteen' (a string)")
    assert not (tmp_path / "out").exists()


def test_tune_config_yaml_and_set_are_the_same_settings(tmp_path, monkeypatch):
    """`tune --config`, a flag and `--set` all land in one TuneConfig; a flag wins over the file."""
    import tunelens.tune as T

    seen = {}
    monkeypatch.setattr(T, "tune", lambda cfg: seen.setdefault("cfg", cfg) and tmp_path)
    path = tmp_path / "tune.yaml"
    path.write_text("data: [telecom-intent]\nlora_r: 4\nbatch_size: 2\n")
    r = run("tune", "--config", path, "--lora-r", 8, "--set", "target_modules=[q_proj, v_proj]", "--set",
            "warmup_ratio=0.1")
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.lora_r, cfg.batch_size, cfg.target_modules, cfg.warmup_ratio) == (8, 2, ["q_proj", "v_proj"], 0.1)
    assert cfg.lora_alpha is TuneConfig.lora_alpha


@pytest.mark.parametrize("args, message", [
    (["--set", "lora_rr=4"], "--set: unknown setting 'lora_rr'; did you mean 'lora_r'?"),
    (["--set", "lora_r"], "--set 'lora_r': write KEY=VALUE"),
    (["--set", "lora_r=sixteen"], "lora_r must be an integer >= 1, got 'sixteen' (a string)"),
])
def test_tune_set_errors_are_one_line(args, message, tmp_path):
    r = run("tune", "--data", "telecom-intent", "--out", tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["audit", "--tuned", "t", "--chunk", 0], "--chunk must be an integer >= 1, got 0"),
    (["audit", "--tuned", "t", "--budget", -1], "--budget must be a number > 0, got -1"),
    (["graft", "--tuned", "t", "--task", "x", "--steps", -1], "--steps must be an integer >= 0, got -1"),
    (["graft", "--tuned", "t", "--task", "x", "--sparsity", "0.1,two"], "--sparsity '0.1,two': give comma"),
    (["curve", "--data", "x", "--fractions", "0.5,2"], "--fractions must be a number in (0, 1], got 2.0"),
])
def test_a_bad_option_is_named_by_its_flag(args, message):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output


def test_sweep_file_loads_into_its_settings_class(tmp_path):
    from tunelens.repair.sweep import load_sweep_file

    path = tmp_path / "sweep.yaml"
    path.write_text("candidates:\n  - {method: interpolate, alpha: 0.5}\nlimit: 2\n")
    sweep = SweepFile(**load_sweep_file(path))
    assert sweep.suites == ["task", "safety", "over_refusal"] and sweep.limit == 2 and sweep.base is None
    path.write_text("candidates:\n  - {method: interpolate, alpha: 0.5}\nlimit: 2\ntunde: t\n")
    with pytest.raises(Exception, match=r"sweep.yaml:4: unknown key 'tunde'; did you mean 'tuned'\?"):
        load_sweep_file(path)


def test_an_unknown_metric_is_its_own_error_type():
    """Callers tell an unknown metric from other bad gates by type, not by reading the message."""
    from tunelens.audit import gate as G
    from tunelens.errors import UnknownMetric
    from tunelens.repair.sweep import check_select

    with pytest.raises(UnknownMetric) as e:
        G.check("safety.refusl_rate.delta >= 0", {"safety.refusal_rate.delta": 0.1, "task.accuracy": 0.5})
    assert e.value.name == "safety.refusl_rate.delta" and e.value.valid == ["safety.refusal_rate.delta",
                                                                            "task.accuracy"]
    with pytest.raises(UnknownMetric) as e:
        check_select("task.acc >= 0.5", {"task.accuracy": 0.8}, {"base": {}, "tuned": {}})
    assert e.value.name == "task.acc" and e.value.exit_code == 2
