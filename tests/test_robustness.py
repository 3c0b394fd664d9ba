"""Robustness for any choice task: generated instruction variants for a task without paraphrases (audit/rewrites.py),
its own paraphrases otherwise, the built-in demo task only without --task; every entry names its task in the
ledger, the CLI table and the report."""

import json
import re

import pytest

from conftest import write_pets_task
from tunelens.audit import AuditContext, run_audit
from tunelens.audit import gate as G
from tunelens.audit import rewrites as R
from tunelens.audit.robustness import RobustnessSuite, entry_label
from tunelens.data import load_items, load_task
from tunelens.data.render import instruction
from tunelens.data.tasks import check_template
from tunelens.models import resolve_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIELD = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")
TEMPLATES = [  # (type, template, label set or None): shapes a user's task spec takes
    ("classification", "Animal? {text}", ["cat", "dog"]),
    ("classification", "{text}", None),
    ("classification", "{text}\n\nClassify the text above as one of: {choices}.\nLabel:", ["cat", "dog"]),
    ("classification", "Bank transaction: {text}\nMerchant: {merchant}\n\nCategories: {choices}.\n"
                       "Answer with the category only.", ["fees {x}", "groceries", "rent"]),
    ("multiple_choice", "Question: {question}\nChoices: {choices}\nAnswer:", None),
    ("multiple_choice", "{context}\n{question}\n{choices_lettered}\nAnswer:", None),
    ("multiple_choice", "{question}\n\nOptions: {choices}.\nAnswer with the correct option only.", None),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return resolve_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def plain_task(tmp_path_factory):
    """A user's classification task with no paraphrases."""
    return load_task(write_pets_task(tmp_path_factory.mktemp("plain"), 8))


@pytest.fixture(scope="module")
def para_task(tmp_path_factory):
    return load_task(write_pets_task(tmp_path_factory.mktemp("para"), 8,
                                     "paraphrases: ['Which pet? {text}', '{text} -> animal:']\n"))


def _fields(template: str) -> set[str]:
    return {n for n in FIELD.findall(template) if n not in ("choices", "choices_lettered")}


# ------------------------------------------------------------------ the rewrites


@pytest.mark.parametrize("task_type,template,labels", TEMPLATES)
def test_rewrites_give_five_or_more_distinct_variants_that_keep_every_field(task_type, template, labels):
    variants = R.generate(template, task_type, labels)
    assert len(variants) >= 5, [v.name for v in variants]
    assert all(v.name.startswith("generated:") and v.name[len("generated:"):] in R.REWRITES for v in variants)
    assert len({v.name for v in variants}) == len(variants)
    kinds = {v.name.split(":")[1].split("-")[0] for v in variants}  # choices-lettered and -bullets: one kind
    assert len(kinds) >= 5, kinds
    texts = [v.template for v in variants]
    assert len(set(texts)) == len(texts) and template not in texts
    for v in variants:
        assert _fields(template) <= _fields(v.template), (v.name, v.template)
        check_template(v.template, "test")  # only plain {field} placeholders
        if "{choices" in template:  # the choice list is still shown: as a placeholder or written out
            assert "{choices" in v.template or all(lab.replace("{", "{{").replace("}", "}}") in v.template
                                                   for lab in labels), (v.name, v.template)
    assert R.generate(template, task_type, labels) == variants  # deterministic


def test_each_documented_rewrite_kind_appears():
    t = "{text}\n\nClassify the text above as one of: {choices}.\nLabel:"
    by_name = {v.name: v.template for v in R.generate(t, "classification", ["cat", "dog"])}
    assert by_name["generated:reworded"].startswith(R.LEAD_IN["classification"])
    assert "Answer with the label only." in by_name["generated:format-line"]
    assert "{choices_lettered}" in by_name["generated:choices-lettered"]
    assert "- cat\n- dog" in by_name["generated:choices-bullets"]
    assert by_name["generated:order-swapped"].index("{choices}") < by_name["generated:order-swapped"].index("{text}")
    assert "please" in by_name["generated:polite"] and by_name["generated:polite"].endswith("Label:")
    assert "\n" not in by_name["generated:single-line"]
    labelled = {v.name: v.template for v in R.generate("Message: {text}\nTopic:", "classification")}
    assert labelled["generated:input-labelled"] == "Input: {text}\nTopic:"
    assert "generated:order-swapped" not in labelled  # "Message:" labels the input; it is no instruction to move
    # a format line that already asks for the label only is replaced by the list to choose from
    fmt = {v.name: v.template for v in R.generate("{text}\nAnswer with the label only.", "classification")}
    assert fmt["generated:format-line"].endswith("Reply with one of: {choices}.")
    with pytest.raises(ValueError):
        R.generate("{prompt}", "generation")


def test_variants_render_for_real_items(plain_task, tmp_path):
    items = load_items(plain_task, "test")
    labels = items[0].choices
    for v in R.generate(plain_task.template, plain_task.type, labels):
        for item in items[:3]:
            shown = instruction(plain_task, item, v.template)
            assert item.fields["text"] in shown and "{" not in shown, (v.name, shown)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "Sky colour?", "choices": ["blue", "green"], "answer": 0}) + "\n")
    spec = load_task(mc)
    item = load_items(spec, "test")[0]
    for v in R.generate(spec.template, spec.type):
        shown = instruction(spec, item, v.template)
        assert "Sky colour?" in shown and "blue" in shown and "green" in shown, (v.name, shown)


# ------------------------------------------------------------------ the suite


def _audit(tiny, tasks, monkeypatch, out=None):
    from tunelens.audit import common

    seen = []
    real = common.evaluate
    monkeypatch.setattr(common, "evaluate",
                        lambda h, spec, **k: seen.append((spec.name, k.get("template"))) or real(h, spec, **k))
    ctx = AuditContext(base=tiny, tuned=tiny, tasks=tasks, limit=3, n_boot=10, progress=False, batch_size=4)
    return run_audit(ctx, ["robustness"], out=out), seen


def test_a_task_without_paraphrases_gets_generated_variants_and_never_the_demo_task(tiny, plain_task, monkeypatch):
    ledger, seen = _audit(tiny, [plain_task], monkeypatch)
    block = ledger["suites"]["robustness"]
    assert block["status"] == "ok", block.get("error")
    assert {name for name, _ in seen} == {"pets"}  # the telecom task was never evaluated
    generated = R.generate(plain_task.template, plain_task.type, ["cat", "dog"])
    assert len(generated) >= 5
    assert {t for _, t in seen} == {None} | {v.template for v in generated}
    metrics = [e["metric"] for e in block["entries"]]
    assert metrics == ["mean_accuracy", "all_paraphrases_accuracy", "std_accuracy", "worst_accuracy"]
    for e in block["entries"]:
        assert e["task"] == "pets" and e["paraphrases"] == "generated" and not e.get("builtin")
        assert e["rewrites"] == [v.name for v in generated]
    assert block["entries"][0]["templates"] == 1 + len(generated)
    assert any(R.NOTE in n and "pets" in n for n in block["notes"])
    assert not any("built-in" in n for n in block["notes"])
    # the gate names of a single-task audit are unchanged
    assert G.evaluate("robustness.mean_accuracy.delta >= -1", ledger)["outcome"] != "fail"
    assert "robustness.all_paraphrases_accuracy.delta" in G.metric_values(ledger)


def test_a_task_with_paraphrases_uses_its_own(tiny, para_task, monkeypatch):
    ledger, seen = _audit(tiny, [para_task], monkeypatch)
    block = ledger["suites"]["robustness"]
    assert {t for _, t in seen} == {None, *para_task.paraphrases}
    for e in block["entries"]:
        assert e["task"] == "pets" and e["paraphrases"] == "spec" and "rewrites" not in e and not e.get("builtin")
    assert block["entries"][0]["templates"] == 3
    assert not any(R.NOTE in n for n in block["notes"])


def test_without_any_task_the_builtin_demo_task_is_labelled(tiny, monkeypatch):
    from tunelens.audit import robustness

    monkeypatch.setattr(robustness, "DEFAULT_LIMIT", 1)
    ledger, seen = _audit(tiny, [], monkeypatch)
    block = ledger["suites"]["robustness"]
    assert block["status"] == "ok", block.get("error")
    assert {name for name, _ in seen} == {"telecom-intent"}
    for e in block["entries"]:
        assert e["task"] == "telecom-intent" and e["builtin"] is True and e["paraphrases"] == "spec"
        assert entry_label("robustness", e).startswith("telecom-intent (built-in demo): ")
    assert any("built-in telecom-intent demo task" in n for n in block["notes"])


def test_a_generation_task_alone_does_not_fall_back_to_the_demo_task(tmp_path):
    (tmp_path / "g.jsonl").write_text(json.dumps({"prompt": "hi", "references": ["hello"]}) + "\n")
    ctx = AuditContext(base=None, tuned=None, tasks=[load_task(tmp_path / "g.jsonl")], progress=False)
    assert RobustnessSuite().headline_count(ctx) == 0
    specs, notes = RobustnessSuite._specs(ctx)
    assert specs == [] and any("choice tasks only" in n for n in notes)


def test_entries_name_their_task_in_the_cli_table_and_the_report(tiny, plain_task, para_task, monkeypatch,
                                                                  tmp_path, capsys):
    from tunelens.cli import _print_ledger
    from tunelens.report import build_report

    other = load_task(write_pets_task(tmp_path, 6))
    other.name = "pets2"
    ledger, _ = _audit(tiny, [para_task, other], monkeypatch, out=tmp_path / "audit")
    entries = ledger["suites"]["robustness"]["entries"]
    assert {e["metric"] for e in entries if e["role"] == "headline"} == {
        "pets.mean_accuracy", "pets.all_paraphrases_accuracy", "pets2.mean_accuracy", "pets2.all_paraphrases_accuracy"}
    labels = {entry_label("robustness", e) for e in entries}
    assert "pets: mean_accuracy" in labels and "pets2 (generated variants): worst_accuracy" in labels
    assert entry_label("task", {"metric": "accuracy", "task": "pets"}) == "accuracy"  # other suites unchanged

    monkeypatch.setenv("COLUMNS", "300")
    _print_ledger(ledger)
    table = capsys.readouterr().out
    assert "pets: mean_accuracy" in table and "pets2 (generated variants): all_paraphrases_accuracy" in table

    summary = (tmp_path / "audit" / "summary.md").read_text()
    assert "| robustness | pets2 (generated variants): mean_accuracy |" in summary  # headline table
    assert "| robustness | pets: std_accuracy |" in summary  # secondary table

    paths = build_report(tmp_path / "audit")
    html, md = paths["html"].read_text(), paths["md"].read_text()
    for text in (html, md):
        assert "pets2 (generated variants): mean_accuracy" in text
        assert "pets: std_accuracy" in text


def test_single_task_labels_show_the_task_too(tiny, plain_task, monkeypatch, tmp_path, capsys):
    from tunelens.cli import _print_ledger

    ledger, _ = _audit(tiny, [plain_task], monkeypatch)
    monkeypatch.setenv("COLUMNS", "300")
    _print_ledger(ledger)
    assert "pets (generated variants): mean_accuracy" in capsys.readouterr().out
