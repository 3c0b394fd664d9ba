"""Audit: suites on tiny models, the gate parser, flips and statistics, failure isolation, the CLI."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_pets_task
from tunelens.audit import SUITES, AuditContext, Suite, SuiteResult, check_tokenizers, register, run_audit
from tunelens.audit import gate as G
from tunelens.audit.compatibility import choice_flips, generation_flips
from tunelens.audit.core import mcnemar
from tunelens.cli import app
from tunelens.errors import TunelensError
from tunelens.models import resolve_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return resolve_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory):
    from tunelens.data import load_task

    return load_task(write_pets_task(tmp_path_factory.mktemp("task"), 12,
                                     "paraphrases: ['Which pet? {text}', '{text} -> animal:', 'Pet in: {text}', "
                                     "'Classify {text}']\n"))


def test_self_audit_has_zero_deltas_and_no_flips(tiny, mc_task, tmp_path):
    ctx = AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=4, n_boot=50, progress=False, batch_size=4)
    ledger = run_audit(ctx, out=tmp_path)
    assert set(ledger["suites"]) == set(SUITES)
    for name, block in ledger["suites"].items():
        assert block["status"] == "ok", (name, block.get("error"))
        for e in block["entries"]:
            if e["delta"] is not None:
                assert e["delta"] == pytest.approx(0.0, abs=1e-9), (name, e["metric"])
            if "flip" in e["metric"]:
                assert e["tuned"] == 0, (name, e["metric"])
    saved = json.loads((tmp_path / "ledger.json").read_text())
    assert saved["schema"] == "tunelens.ledger/2"
    for name in SUITES:
        assert (tmp_path / "items" / f"{name}.jsonl").exists()
    assert "| suite | metric |" in (tmp_path / "summary.md").read_text()


def test_failing_suite_is_marked_and_others_complete(tiny, mc_task):
    @register("explodes")
    class Explodes(Suite):
        def run(self, ctx):
            raise RuntimeError("boom")

    try:
        ctx = AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=3, n_boot=20, progress=False)
        ledger = run_audit(ctx, ["task", "explodes", "calibration"])
        assert ledger["suites"]["explodes"]["status"] == "failed"
        assert "boom" in ledger["suites"]["explodes"]["error"]
        assert ledger["suites"]["task"]["status"] == "ok" and ledger["suites"]["calibration"]["status"] == "ok"
    finally:
        SUITES.pop("explodes")


def test_shared_base_cache_runs_the_base_model_once(tiny, mc_task, tmp_path):
    """Audits sharing base_cache (a repair sweep) give the same ledger without running the base model again."""
    import copy

    kw = dict(tasks=[mc_task], limit=3, n_boot=50, progress=False, batch_size=4)
    suites = ["task", "safety", "forgetting"]
    shared: dict = {}
    first = run_audit(AuditContext(base=tiny, tuned=tiny, base_cache=shared, **kw), suites)
    assert shared  # the base model's results were kept

    class NoCalls(torch.nn.Module):  # a base model that must not be run
        def __init__(self, model):
            super().__init__()
            self.config, self.device = model.config, model.device

        def forward(self, *a, **k):
            raise AssertionError("the base model ran again")

    other = copy.copy(tiny)
    other.model = NoCalls(tiny.model)
    second = run_audit(AuditContext(base=other, tuned=tiny, base_cache=shared, **kw), suites)
    for s in suites:
        assert second["suites"][s]["status"] == "ok", second["suites"][s].get("error")
        assert [e["tuned"] for e in second["suites"][s]["entries"]] == [e["tuned"] for e in first["suites"][s]["entries"]]


def test_base_store_serves_the_base_from_disk(tiny, mc_task, tmp_path, monkeypatch):
    """A second audit with a fresh BaseStore on the same folder reads every base result from disk (the base model
    must not run) and writes the same ledger; other weights or other items get a folder of their own."""
    import copy

    from tunelens.audit.base_store import BaseStore

    kw = dict(tasks=[mc_task], limit=3, n_boot=50, progress=False, batch_size=4)
    base = copy.copy(tiny)
    base.model = copy.deepcopy(tiny.model)
    ctx = AuditContext(base=base, tuned=tiny, **kw)
    ctx.base_cache = first_store = BaseStore(tmp_path / "store", ctx)
    first = run_audit(ctx)
    assert first_store.hits == 0 and any(first_store.dir.glob("*.json"))

    def must_not_run(*a, **k):
        raise AssertionError("the base model ran again")

    monkeypatch.setattr(base.model, "forward", must_not_run)
    monkeypatch.setattr(base.model.model, "forward", must_not_run)
    ctx = AuditContext(base=base, tuned=tiny, **kw)
    ctx.base_cache = store = BaseStore(tmp_path / "store", ctx)
    assert store.dir == first_store.dir
    second = run_audit(ctx)
    assert store.hits > 0
    for name, block in first["suites"].items():
        assert second["suites"][name]["status"] == "ok", (name, second["suites"][name].get("traceback"))
        assert second["suites"][name]["entries"] == block["entries"], name

    other_items = copy.deepcopy(mc_task)
    other_items.template = "Animal? " + other_items.template
    assert BaseStore(tmp_path / "store", AuditContext(base=base, tuned=tiny, **{**kw, "tasks": [other_items]})).dir \
        != store.dir
    with torch.no_grad():
        base.model.lm_head.weight[0, 0] += 1.0
    assert BaseStore(tmp_path / "store", AuditContext(base=base, tuned=tiny, **kw)).dir != store.dir


def test_robustness_reuses_the_task_suites_own_template(tiny, mc_task, monkeypatch):
    """Template 0 is the task's own: after the task suite it is sliced from that eval, with the same numbers."""
    from tunelens.audit import common

    calls = []
    real = common.evaluate
    monkeypatch.setattr(common, "evaluate", lambda *a, **k: calls.append(k.get("template")) or real(*a, **k))
    kw = dict(tasks=[mc_task], limit=4, n_boot=20, progress=False, batch_size=4)
    alone = run_audit(AuditContext(base=tiny, tuned=tiny, **kw), ["robustness"])
    n_templates = 1 + len(mc_task.paraphrases)
    assert len(calls) == 2 * n_templates
    calls.clear()
    after = run_audit(AuditContext(base=tiny, tuned=tiny, **kw), ["task", "robustness"])
    assert len(calls) == 2 + 2 * (n_templates - 1)  # the task suite's two evals, then paraphrases only
    assert after["suites"]["robustness"]["entries"] == alone["suites"]["robustness"]["entries"]


def test_limit_caps_robustness_items_and_never_adds(tiny, mc_task, monkeypatch):
    from tunelens.audit import robustness

    monkeypatch.setattr(robustness, "DEFAULT_LIMIT", 2)
    for limit, n in ((None, 2), (3, 2), (1, 1)):
        led = run_audit(AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=limit, n_boot=10, progress=False),
                        ["robustness"])
        assert led["suites"]["robustness"]["entries"][0]["n"] == n, limit


@pytest.mark.parametrize("limit", [0, -5, "ten", True, 2.5])
def test_audit_context_refuses_a_limit_below_1_or_not_an_int(limit):
    """Every suite slices its items by the limit: -5 kept 1 of 6 items and "ten" failed the suite at run time."""
    with pytest.raises(TunelensError, match=r"^limit must be an integer >= 1, got "):
        AuditContext(base=None, tuned=None, limit=limit)
    assert AuditContext(base=None, tuned=None, limit=10**6).limit == 10**6  # more than the pool: the pool


@pytest.mark.parametrize("kw, message", [
    ({"limit": -4}, "limit must be an integer >= 1, got -4"),
    ({"limit": 0}, "limit must be an integer >= 1, got 0"),
    ({"limit": "2"}, "limit must be an integer >= 1, got '2' (a string)"),
    ({"fewshot": -1}, "fewshot must be an integer >= 0, got -1"),
    ({"template": "Animal? {text!r}"}, "malformed placeholder {text!r}"),
])
def test_evaluate_refuses_bad_limit_fewshot_and_template_before_scoring(mc_task, kw, message):
    """`tunelens eval --limit -4` scored 2 of 6 items and `--fewshot -1` ran zero-shot: the library refuses them
    for every caller (the CLI sets spec.fewshot after the spec was checked)."""
    from dataclasses import replace

    from tunelens.evaluate import evaluate

    spec = replace(mc_task, fewshot=kw.pop("fewshot", 0))
    with pytest.raises(TunelensError) as e:
        evaluate(None, spec, n_boot=10, progress=False, **kw)  # refused before the model is used
    assert message in str(e.value) and e.value.exit_code == 2


def test_evaluate_limit_above_the_pool_uses_the_pool(tiny, mc_task):
    from tunelens.evaluate import evaluate

    assert evaluate(tiny, mc_task, limit=1000, n_boot=10, progress=False).info["task"]["n_items"] == 12


def test_unknown_suite_is_an_error(tiny):
    with pytest.raises(TunelensError, match="unknown suite"):
        run_audit(AuditContext(base=tiny, tuned=tiny), ["nope"])


def test_tokenizer_mismatch(tiny, tmp_path):
    from conftest import make_tiny_llama, make_tiny_tokenizer
    from tokenizers import AddedToken

    tok = make_tiny_tokenizer()
    tok.add_tokens([AddedToken("zzzextra")])
    other = make_tiny_llama(tok)
    other.resize_token_embeddings(len(tok))
    other.save_pretrained(tmp_path / "o")
    tok.save_pretrained(tmp_path / "o")
    h = resolve_model(str(tmp_path / "o"))
    with pytest.raises(TunelensError, match="different tokenizers"):
        check_tokenizers(tiny, h)
    check_tokenizers(tiny, h, allow_mismatch=True)


LEDGER = {"suites": {"safety": {"entries": [{"metric": "refusal_rate", "base": 0.8, "tuned": 0.7, "delta": -0.1,
                                             "ci95": [-0.2, 0.0], "n": 10}]},
                     "task": {"entries": [{"metric": "accuracy", "base": 0.2, "tuned": 0.9, "delta": 0.7,
                                           "ci95": [0.6, 0.8], "n": 10}]}}}


@pytest.mark.parametrize("expr, ok", [
    ("safety.refusal_rate.delta >= -0.05", False),
    ("safety.refusal_rate.delta >= -0.15", True),
    ("task.accuracy.tuned >= 0.9 * task.accuracy.base", True),
    ("task.accuracy.ci_low > 0 and safety.refusal_rate.tuned > 0.5", True),
    ("-0.2 <= safety.refusal_rate.delta <= 0", True),
    ("safety.refusal_rate.ci_high < 0", False),
])
def test_gate_expressions(expr, ok):
    assert G.check(expr, G.metric_values(LEDGER)) is ok


@pytest.mark.parametrize("expr, msg", [
    ("safety.refusal_rate.delta >=", "does not parse"),
    ("safety.refusl_rate.delta >= 0", "unknown metric"),
    ("__import__('os').system('true') == 0", "only metric names"),
    ("task.accuracy.delta", "not a comparison"),
])
def test_gate_errors(expr, msg):
    with pytest.raises(TunelensError, match=msg) as e:
        G.check(expr, G.metric_values(LEDGER))
    if msg == "unknown metric":
        assert "safety.refusal_rate.delta" in str(e.value)  # valid names are listed


def test_flip_measures():
    base = [{"correct": c, "pred": p} for c, p in [(True, 0), (True, 1), (False, 2), (False, 0)]]
    tuned = [{"correct": c, "pred": p} for c, p in [(False, 1), (True, 1), (True, 0), (False, 0)]]
    f = choice_flips(base, tuned)
    assert f == {"negative_flip_rate": 0.25, "positive_flip_rate": 0.25, "inconsistency_flip_rate": 0.25, "n": 4}
    g = generation_flips([0.5, 0.5, 0.2, 0.0], [0.7, 0.1, 0.2, 0.3])
    assert g["positive_flip_rate"] == 0.5 and g["negative_flip_rate"] == 0.25
    assert g["average_gain"] == pytest.approx(0.25) and g["average_regression"] == pytest.approx(0.4)
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(0, 10) == pytest.approx(2 * 0.5 ** 10)


def test_cli_gate_failure_exits_3_and_bad_gate_exits_2(tiny_model_dir, mc_task, tmp_path):
    runner = CliRunner()
    args = ["audit", "--base", str(tiny_model_dir), "--tuned", str(tiny_model_dir), "--task", str(mc_task.path),
            "--suites", "task", "--limit", "3", "--out", str(tmp_path / "a"), "--base-cache", str(tmp_path / "bc")]
    # 3 of 12 items drawn, no change: the sequence is [-0.75, +0.75]; a gate outside it fails, one around it passes
    r = runner.invoke(app, args + ["--gate", "task.accuracy.delta > 0.8"])
    assert r.exit_code == 3, r.output
    assert "gate failed" in r.output and "reused" not in r.output
    r = runner.invoke(app, args + ["--gate", "task.accuracy.delta >= -0.8"])
    assert r.exit_code == 0, r.output
    assert "base model: 1 result(s) reused from" in r.output  # the first run kept the base model's task eval
    r = runner.invoke(app, args + ["--gate", "task.negative_flip_rate.delta <= 0.5"])
    assert r.exit_code == 0 and "not a sequential metric: judged on its fixed-n interval" in r.output, r.output
    r = runner.invoke(app, args + ["--gate", "task.accuracy.delta >>= 0"])
    assert r.exit_code == 2
    r = runner.invoke(app, args + ["--gate", "task.acuracy.delta >= 0"])
    assert r.exit_code == 2 and "task.accuracy.delta" in r.output


def test_lm_eval_bridge_feeds_compatibility_and_calibration(tiny, tmp_path):
    pytest.importorskip("lm_eval")
    from tunelens.audit.lmeval_bridge import add_lm_eval_task

    rows = [{"q": f"Item {i}: is {i} even?", "choices": ["yes", "no"], "gold": i % 2} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.yaml").write_text(
        "task: tl_bridge_test\noutput_type: multiple_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n")
    ctx = AuditContext(base=tiny, tuned=tiny, n_boot=20, progress=False)
    spec = add_lm_eval_task(ctx, "tl_bridge_test", str(tmp_path / "tasks"))
    from tunelens.audit.base_store import attach

    assert attach(ctx, tmp_path / "bs") is not None  # as `tunelens audit --lm-eval` does: the bridged task is skipped
    ledger = run_audit(ctx, ["task", "compatibility", "calibration"])
    assert spec.name == "lm-eval:tl_bridge_test"
    assert all(ledger["suites"][s]["status"] == "ok" for s in ("task", "compatibility", "calibration"))
    metrics = {e["metric"]: e for e in ledger["suites"]["compatibility"]["entries"]}
    assert metrics["negative_flip_rate"]["tuned"] == 0 and metrics["negative_flip_rate"]["n"] == 6
    recs = ctx.cache[("bridged", spec.name)]["base"].records
    # the bridged log-likelihoods are the ones our own engine computes for the same strings
    from tunelens.scoring import loglikelihood

    ours = loglikelihood(tiny.model, tiny.tokenizer, [(r["prompt"], r["choices"]) for r in recs], progress=False)
    for r, o in zip(recs, ours):
        assert r["logprob"] == pytest.approx([c.logprob for c in o], abs=1e-4)


def test_forgetting_says_how_many_passages_were_cut_to_the_context(tiny, mc_task, monkeypatch):
    """A general-text passage longer than the context used to be cut without a word; the suite now counts them."""
    from tunelens.audit import forgetting
    from tunelens.data import load_items, load_task
    from tunelens.scoring import encode

    monkeypatch.setattr(forgetting, "_text_limit", lambda handle: 40)
    texts = [p.fields["prompt"] for p in load_items(load_task("general-text"), "test")[:4]]
    expected = sum(len(encode(tiny.tokenizer, t)) > 40 for t in texts)
    assert expected > 0
    ledger = run_audit(AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=4, n_boot=20, progress=False),
                       ["forgetting"])
    assert f"{expected} of 4 general-text passages are longer than the model's context (40 tokens)" in \
        ledger["suites"]["forgetting"]["notes"][0]


# ---------------------------------------------------------------- sequential audits, decisions, three-outcome gates


def test_sequential_self_audit_stops_early_as_equivalent_and_full_uses_the_pool(tiny, tmp_path):
    """A model against itself: every paired delta is 0, so the sequence closes in on 0 and the suite stops, decided
    `equivalent`, long before its 120-item pool is used; --full draws every item."""
    ctx = AuditContext(base=tiny, tuned=tiny, progress=False, batch_size=16, chunk=16, n_boot=50)
    ledger = run_audit(ctx, ["over_refusal"], out=tmp_path / "seq")
    block = ledger["suites"]["over_refusal"]
    head = [e for e in block["entries"] if e["role"] == "headline"]
    assert [e["metric"] for e in head] == ["over_refusal_rate"]
    e = head[0]
    assert e["decision"] == "equivalent" and block["stop"] == "decided"
    assert e["pool"] == 120 and e["n"] < 120 and e["n"] % 16 == 0
    assert -e["margin"] < e["cs95"][0] <= 0 <= e["cs95"][1] < e["margin"]
    assert [lk["n"] for lk in block["looks"]] == list(range(16, e["n"] + 1, 16))
    assert ledger["verdict"]["label"] == "no material change" and e["holm_rejected"]
    full = run_audit(AuditContext(base=tiny, tuned=tiny, progress=False, batch_size=16, n_boot=50, sequential=False),
                     ["over_refusal"], out=tmp_path / "full")
    f = next(x for x in full["suites"]["over_refusal"]["entries"] if x["role"] == "headline")
    assert f["n"] == 120 and f["cs95"] == [0.0, 0.0] and full["suites"]["over_refusal"]["stop"] == "full pool"
    assert full["mode"] == "full" and ledger["mode"] == "sequential"


def test_limit_larger_than_the_pool_uses_the_pool_and_says_so(tiny, mc_task):
    ctx = AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=500, progress=False, n_boot=20)
    block = run_audit(ctx, ["task"])["suites"]["task"]
    acc = next(e for e in block["entries"] if e["metric"] == "accuracy")
    assert acc["pool"] == acc["n"] < 500
    assert any("larger than the pool" in n for n in block["notes"])


def test_a_small_subgroup_is_marked_insufficient_and_gets_no_interval():
    from tunelens.audit.core import MIN_SUBGROUP, subgroup_entry

    small = subgroup_entry("refusal_rate.x", [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], n_boot=50)
    assert small.insufficient and small.ci95 is None and small.delta == pytest.approx(-1 / 3)
    big = subgroup_entry("refusal_rate.y", [1.0] * MIN_SUBGROUP, [0.0] * MIN_SUBGROUP, n_boot=50)
    assert not big.insufficient and big.ci95 == [-1.0, -1.0]


def _head(metric, decision, delta, cs, *, hib=True, holm=True, p=0.001):
    return {"metric": metric, "base": 0.5, "tuned": 0.5 + delta, "delta": delta, "ci95": [cs[0], cs[1]], "n": 100,
            "higher_is_better": hib, "role": "headline", "pool": 200, "cs95": list(cs), "decision": decision,
            "margin": 0.05, "p": p, "holm_rejected": holm}


def _ledger(**suites):
    return {"suites": {s: {"status": "ok", "entries": es} for s, es in suites.items()}}


def test_verdict_uses_only_decided_headline_metrics():
    from tunelens.audit.runner import apply_holm, overall_verdict

    gain = _head("accuracy", "gain", 0.2, (0.1, 0.3))
    cost = _head("refusal_rate", "cost", -0.2, (-0.3, -0.1))
    open_ = _head("refusal_rate", "inconclusive", -0.1, (-0.3, 0.1), p=0.2)
    assert overall_verdict(_ledger(task=[gain], safety=[open_]))["label"] == "improved"
    assert overall_verdict(_ledger(task=[gain], safety=[cost]))["label"] == "improved with costs"
    assert overall_verdict(_ledger(task=[_head("accuracy", "inconclusive", 0.1, (-0.1, 0.3), p=0.3)],
                                   safety=[cost]))["label"] == "regressed"
    eq = _head("accuracy", "equivalent", 0.0, (-0.02, 0.02))
    assert overall_verdict(_ledger(task=[eq]))["label"] == "no material change"
    # one changed answer out of 10 decides nothing: the sequence is wide, no label is given (FineTuneCheck would
    # call this forgetting "catastrophic")
    one = _head("general_knowledge.accuracy", "inconclusive", -0.1, (-0.6, 0.4), p=1.0)
    v = overall_verdict(_ledger(forgetting=[one]))
    assert v["label"] == "insufficient evidence" and "not decided" in v["why"]
    # a decision Holm does not keep is not used
    led = _ledger(task=[_head("accuracy", "gain", 0.1, (0.01, 0.2), p=0.04)],
                  safety=[_head("refusal_rate", "inconclusive", 0, (-0.2, 0.2), p=0.9)])
    assert apply_holm(led) == {"k": 2, "decided": 1, "surviving": 0}
    assert overall_verdict(led)["label"] == "insufficient evidence"


def test_gates_have_three_outcomes_over_sequences_and_fixed_n_intervals():
    led = _ledger(task=[_head("accuracy", "inconclusive", 0.05, (-0.1, 0.2), p=0.5),
                        {"metric": "macro_f1", "base": 0.4, "tuned": 0.5, "delta": 0.1, "ci95": [0.02, 0.18], "n": 50,
                         "higher_is_better": True, "role": "secondary"}])
    out = lambda expr: G.evaluate(expr, led)["outcome"]
    assert out("task.accuracy.delta >= -0.2") == "pass"
    assert out("task.accuracy.delta >= 0") == "inconclusive"
    assert out("task.accuracy.delta > 0.3") == "fail"
    assert out("task.accuracy.delta >= 0 or task.macro_f1.delta > 0") == "pass"
    assert out("task.accuracy.delta >= 0 and task.macro_f1.delta > 0.5") == "fail"
    assert out("task.accuracy.tuned - task.accuracy.base > 0.04") == "pass"  # point values
    g = G.evaluate("task.macro_f1.delta > 0", led)
    assert g["outcome"] == "pass" and "not a sequential metric" in g["why"] and g["passed"]
    assert G.evaluate("task.accuracy.delta >= 0", led)["passed"] is False  # inconclusive never passes


def test_cli_budget_margin_and_inconclusive_gate_exit_codes(tiny_model_dir, tmp_path):
    runner = CliRunner()
    args = ["audit", "--base", str(tiny_model_dir), "--tuned", str(tiny_model_dir), "--suites", "over_refusal",
            "--chunk", "16", "--out", str(tmp_path / "a"), "--no-base-cache"]
    for bad, what in ((["--budget", "0"], "--budget"), (["--margin", "refusal_rate=0"], "--margin"),
                      (["--margin", "refusal_rate"], "METRIC=VALUE")):
        r = runner.invoke(app, args + bad)
        assert r.exit_code == 2 and what in r.output, r.output
    # itself against itself: equivalent before the 120-item pool is used, so "rose" is neither shown nor ruled out
    r = runner.invoke(app, args + ["--gate", "over_refusal.over_refusal_rate.delta > 0"])
    assert r.exit_code == 4, r.output
    assert "gate inconclusive" in r.output
    r = runner.invoke(app, args + ["--gate", "over_refusal.over_refusal_rate.delta <= 0.1"])
    assert r.exit_code == 0, r.output


def test_a_suite_name_taken_by_another_class_is_refused():
    class Other(Suite):
        def run(self, ctx):  # pragma: no cover - never registered
            raise AssertionError

    with pytest.raises(TunelensError, match="'task' is already registered by tunelens.audit.task"):
        register("task")(Other)
    assert SUITES["task"].__module__ == "tunelens.audit.task"
    register("task")(SUITES["task"])  # the same class again (a reload) is fine


def test_a_registered_suite_joins_the_default_audit_by_its_own_declaration(tiny, mc_task):
    """A plug-in suite says whether it runs by default and where: nothing else is edited (issue 18)."""
    from tunelens.audit.core import default_suites

    @register("toy_plugin")
    class Toy(Suite):
        description = "a toy plug-in suite"
        rank = 15  # right after task
        sequential = False

        def run(self, ctx):
            return SuiteResult([{"id": "x"}], [])

    @register("toy_optional")
    class Optional_(Suite):
        default = False

        def run(self, ctx):  # pragma: no cover - not run by default
            raise AssertionError("a suite that is not default must not run unasked")

    try:
        assert default_suites()[:2] == ("task", "toy_plugin") and "toy_optional" not in default_suites()
        ctx = AuditContext(base=tiny, tuned=tiny, tasks=[mc_task], limit=2, n_boot=10, progress=False)
        from tunelens.audit import runner

        ledger = run_audit(ctx, [n for n in default_suites() if n in ("task", "toy_plugin", "calibration")])
        assert list(ledger["suites"]) == ["task", "toy_plugin", "calibration"]
        assert ledger["suites"]["toy_plugin"]["status"] == "ok"
        r = CliRunner().invoke(app, ["suites"])
        assert "toy_plugin" in r.output and "toy_optional" in r.output and "(not default)" in r.output
        assert runner.default_suites is default_suites
    finally:
        SUITES.pop("toy_plugin")
        SUITES.pop("toy_optional")
