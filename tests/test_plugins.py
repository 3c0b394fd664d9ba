"""Plug-ins are one file (issue 18): a temporary module registers a toy suite, a toy repair and a toy tuning method,
each a single class, and each is found in --help, in a run config, in the ledger and in the report with no other
edit.

The checks run in a fresh interpreter (this file run as a script, with TUNELENS_PLUGINS set before tunelens is
imported), as a user's `tunelens` would: the registries load their plug-ins when first imported, which in this
test session happened long ago, and the toy names must not leak into the other tests' registries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
"""A toy plug-in: one audit suite, one repair method and one tuning method, each a class registered on import."""

from tunelens.audit.core import Suite, SuiteResult, paired_entry, register as register_suite
from tunelens.repair.core import register as register_repair
from tunelens.repair.interpolate import Interpolate
from tunelens.tune.methods import register as register_method
from tunelens.tune.methods.lora import LoRA

SENTENCES = ["the cat sat on the mat", "two plus two is four", "hello there", "Paris is in France",
             "a quick brown fox", "dogs bark at night"]


@register_suite("toy")
class ToySuite(Suite):
    description = "Toy suite: tokens per sentence under each model's tokenizer."
    default = False
    sequential = False
    report_columns = (("unit", "unit"),)

    def run(self, ctx):
        n = {role: [float(len(h.tokenizer(s)["input_ids"])) for s in SENTENCES] for role, h in ctx.models()}
        records = [{"id": f"s{i}", "base": {"tokens": b}, "tuned": {"tokens": t}}
                   for i, (b, t) in enumerate(zip(n["base"], n["tuned"]))]
        entry = paired_entry("toy_tokens", n["base"], n["tuned"], n_boot=ctx.boot, seed=ctx.seed, unit="tokens")
        return SuiteResult(records, [entry], ["toy note: counted, not judged"])


@register_repair("toy")
class ToyRepair(Interpolate):
    description = "toy: the interpolation under another name"


@register_method("toy")
class ToyMethod(LoRA):
    description = "toy: LoRA under another name"
'''

ENTRY_POINT_PLUGIN = '''
from tunelens.repair.core import register
from tunelens.repair.interpolate import Interpolate


@register("toy_ep")
class ToyEntryPointRepair(Interpolate):
    description = "toy: found through an entry point"
'''


def _env(folder: Path, plugins: str) -> dict:
    import tunelens

    src = str(Path(tunelens.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), src]), "TUNELENS_PLUGINS": plugins,
            "TUNELENS_HOME": str(folder / "home"), "COLUMNS": "250", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """toy_plugins.py (named by TUNELENS_PLUGINS), and toy_ep.py behind an entry point of an installed-looking
    distribution (a dist-info folder on the path), both in one folder."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "toy_plugins.py").write_text(PLUGIN)
    (folder / "toy_ep.py").write_text(ENTRY_POINT_PLUGIN)
    (folder / "toy_broken.py").write_text("import tunelens.audit\nraise RuntimeError('toy plug-in\\nbroken on purpose')\n")
    dist = folder / "toy_ep-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tunelens.repairs]\ntoy_ep = toy_ep\n")
    return folder


@pytest.fixture(scope="module")
def found(plugin_dir, tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    """What the worker (this file as a script) saw with the toy plug-in loaded."""
    from conftest import write_pets_task

    work = tmp_path_factory.mktemp("work")
    task = write_pets_task(work, 12)
    args = {"base": str(tiny_model_dir), "tuned": str(tiny_adapter_dir), "task": str(task), "out": str(work / "audit")}
    r = subprocess.run([sys.executable, __file__, json.dumps(args)], env=_env(plugin_dir, "toy_plugins"),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_each_toy_is_listed_in_help(found):
    assert found["suites"]["exit"] == 0
    toy = [line for line in found["suites"]["output"].splitlines() if line.startswith("toy ")]
    assert toy == ["toy            Toy suite: tokens per sentence under each model's tokenizer. (not default)"]
    assert "| ia3 | toy (tune/methods/)" in _flat(found["tune_help"])
    listed = _flat(found["repair_help"]).split("Repair method: ", 1)[1].split(".", 1)[0].split(", ")
    assert listed[-2:] == ["toy_ep", "toy"] and "interpolate" in listed  # the entry point's, then the module's


def test_each_toy_is_accepted_by_the_run_config(found):
    c = found["config"]
    assert c["suites"] == ["toy"] and c["tune_method"] == "toy"
    assert c["candidates"] == [{"name": "toy-alpha0.25", "method": "toy", "options": {"alpha": 0.25}}]
    assert "unknown tuning method 'toyy'; did you mean 'toy'?" in c["typo"]


def test_the_toy_suite_is_in_the_ledger(found):
    assert found["audit_exit"] == 0, found["audit_output"]
    block = found["ledger_toy"]
    assert block["status"] == "ok" and block["description"].startswith("Toy suite")
    (e,) = block["entries"]
    assert e["metric"] == "toy_tokens" and e["unit"] == "tokens" and e["n"] == 6
    assert e["base"] == e["tuned"] > 1  # one tokenizer for both: the same counts
    assert block["notes"] == ["toy note: counted, not judged"]
    assert found["summary_has_toy"]


def test_the_toy_suite_is_in_the_report(found):
    html, md = found["html"], found["md"]
    assert "<h3>toy</h3>" in html and "Toy suite: tokens per sentence" in html
    assert '<th class="l">metric</th><th class="l">unit</th><th class="l">role</th>' in html  # its own column
    assert '<td class="l">toy_tokens</td><td class="l">tokens</td><td class="l">secondary</td>' in html
    row = next(line for line in md.splitlines() if line.startswith("| toy | toy_tokens |"))
    assert "unit: tokens; measured on the items drawn, not a decision" in row


def test_a_broken_plugin_is_one_line_and_other_commands_run(plugin_dir):
    r = subprocess.run([sys.executable, "-m", "tunelens", "tasks"], env=_env(plugin_dir, "toy_broken"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "telecom-intent" in r.stdout
    assert r.stderr.strip().splitlines() == [
        "tunelens: error: plug-in 'toy_broken' (TUNELENS_PLUGINS) failed to import (RuntimeError: toy plug-in "
        "broken on purpose); it is left out"]


# ------------------------------------------------------------------------------------------------------ worker


def _worker(args: dict) -> dict:
    """Run in a fresh interpreter with TUNELENS_PLUGINS set: what --help, the run config, an audit and the
    report make of the toy plug-in. Prints one JSON line."""
    from typer.testing import CliRunner

    from tunelens.cli import app
    from tunelens.errors import TunelensError
    from tunelens.run.config import parse_config
    from tunelens.run.pipeline import _preflight

    cli = CliRunner()
    out = {}
    r = cli.invoke(app, ["suites"])
    out["suites"] = {"exit": r.exit_code, "output": r.output}
    out["tune_help"] = cli.invoke(app, ["tune", "--help"]).output
    out["repair_help"] = cli.invoke(app, ["repair", "--help"]).output

    raw = {"model": args["base"], "tune": {"method": "toy", "data": [args["task"]]},
           "audit": {"suites": ["toy"], "tasks": [args["task"]]},
           "repair": {"candidates": [{"method": "toy", "alpha": 0.25}]}}
    cfg = parse_config(raw)
    _preflight(cfg)  # the pipeline's own check of the suite names, before it tunes
    out["config"] = {"suites": cfg.audit.suites, "tune_method": cfg.tune["method"],
                     "candidates": cfg.repair.candidates}
    try:
        parse_config({**raw, "tune": {"method": "toyy", "data": [args["task"]]}})
        out["config"]["typo"] = "accepted"
    except TunelensError as e:
        out["config"]["typo"] = str(e)

    audit = Path(args["out"])
    r = cli.invoke(app, ["audit", "--base", args["base"], "--tuned", args["tuned"], "--suites", "toy",
                         "--out", str(audit), "--no-base-cache", "--judge", "rules"])
    out["audit_exit"], out["audit_output"] = r.exit_code, r.output[-2000:]
    out["ledger_toy"] = json.loads((audit / "ledger.json").read_text())["suites"].get("toy")
    out["summary_has_toy"] = "| toy | toy_tokens | secondary |" in (audit / "summary.md").read_text()
    r = cli.invoke(app, ["report", str(audit)])
    out["html"] = (audit / "report.html").read_text() if r.exit_code == 0 else r.output
    out["md"] = (audit / "report.md").read_text() if r.exit_code == 0 else r.output
    return out


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
