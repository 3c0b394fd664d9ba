"""The context suite's scoring: numbers in words or digits, whole-word answers, the prior-fallback rate, and
K-precision only where it separates passage use from prior knowledge."""

import pytest

from tunelens.audit import SUITES, AuditContext
from tunelens.audit import context as C
from tunelens.data import load_items, load_task
from tunelens.models import resolve_model


def test_follows_context_normalises_numbers_and_matches_whole_words():
    assert C.follows_context("12", "twelve") == 1.0
    assert C.follows_context("There are twelve.", "12") == 1.0
    assert C.follows_context("About 7 km.", "seven kilometres") == 1.0
    assert C.follows_context("1,500 people", "1500") == 1.0
    assert C.follows_context("It happens often", "ten") == 0.0  # "ten" is not in "often"
    assert C.follows_context("11 planets", "one") == 0.0  # nor "1" in "11"
    assert C.follows_context("Cheetahs", "The cheetah") == 1.0  # plural / possessive s
    assert C.follows_context("anything", "") == 0.0


def test_recall_and_k_precision_normalise_both_sides():
    assert C.recall("It is 3 cm long", "3 centimetres") == 1.0
    assert C.k_precision("seven kilometres", "The walk is 7 km long.") == 1.0
    assert C.k_precision("", "passage") == 0.0


def test_prior_fallback():
    assert C.prior_fallback("Carbon dioxide.", "argon", "carbon dioxide") == 1.0
    assert C.prior_fallback("Argon", "argon", "carbon dioxide") == 0.0
    assert C.prior_fallback("argon, not carbon dioxide", "argon", "carbon dioxide") == 0.0  # gives the passage's
    assert C.prior_fallback("I don't know", "argon", "carbon dioxide") == 0.0
    assert C.prior_fallback("It's 8.", "eleven", "eight") == 1.0


def test_every_passage_holds_its_answer_and_not_the_common_one():
    """So K-precision separates on every item: answering from prior knowledge takes words the passage lacks."""
    items = load_items(load_task("counterfactual-context"), "test")
    assert len(items) == 170
    assert [it.id for it in items if not C.k_precision_separates(it)] == []
    assert [it.id for it in items if not C.contains_answer(it.context, it.references[0])] == []


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return resolve_model(str(tiny_model_dir))


def test_suite_reports_prior_fallback_rate_as_a_secondary_entry(tiny, monkeypatch):
    """A fake evaluation: the base model answers every question from prior knowledge, the tuned one from the passage
    (writing numbers in digits): accuracy 0 -> 1, prior_fallback_rate 1 -> 0; accuracy stays the headline."""
    from tunelens.metrics import normalize_numbers

    def fake_eval_both(ctx, spec, key=None, **kw):
        items = ctx.pool(spec)[:6]
        out = {}
        for role in ("base", "tuned"):
            recs = [{"id": it.id, "references": it.references, "n_tokens": 3,
                     "output": it.fields["common_answer"] if role == "base" else normalize_numbers(it.references[0])}
                    for it in items]
            out[role] = type("R", (), {"records": recs})()
        return out

    monkeypatch.setattr(C, "eval_both", fake_eval_both)
    monkeypatch.setattr(C, "pool_size", lambda ctx, spec: 170)
    ctx = AuditContext(base=tiny, tuned=tiny, limit=6, n_boot=20, progress=False)
    res = SUITES["context"]().run(ctx)
    e = {x.metric: x for x in res.entries}
    for mode in ("chat", "plain"):
        assert (e[f"{mode}.accuracy"].base, e[f"{mode}.accuracy"].tuned) == (0.0, 1.0)
        fb = e[f"{mode}.prior_fallback_rate"]
        assert (fb.base, fb.tuned, fb.n) == (1.0, 0.0, 6) and fb.role == "secondary" and not fb.higher_is_better
        assert e[f"{mode}.k_precision"].n == 6  # every built-in passage separates
    assert [h.metric for h in res.headline] == ["chat.accuracy", "plain.accuracy"]
    assert all(r["base"]["prior_fallback"] == 1.0 and r["tuned"]["prior_fallback"] == 0.0 for r in res.records)
