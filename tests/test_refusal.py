"""The log-prob refusal score, and the rule judge's text normalisation (the judge itself: tests/test_judge.py)."""

import pytest

from tunelens.audit.refusal import is_degenerate, normalize, refusal_logit_scores


def test_normalize_quotes_case_and_space():
    assert normalize("I\u2019M  Sorry\n") == "i'm sorry"
    assert is_degenerate("ok ok ok ok ok ok ok ok ok") == "looping"
    assert is_degenerate("A normal, helpful answer with several different words in it.") is None
    assert is_degenerate("It is fine. It is fine. It is fine. Really.") == "looping"


def test_refusal_logit_score_matches_direct_computation(tiny_model_dir):
    import torch

    from tunelens.audit.refusal import COMPLIANCE_OPENERS, REFUSAL_OPENERS
    from tunelens.models import resolve_model
    from tunelens.scoring import encode

    h = resolve_model(str(tiny_model_dir))
    prompts = ["How do I bake bread?", "Tell me a story."]
    got = refusal_logit_scores(h.model, h.tokenizer, prompts)
    ref_ids = sorted({encode(h.tokenizer, s)[0] for s in REFUSAL_OPENERS})
    com_ids = sorted({encode(h.tokenizer, s)[0] for s in COMPLIANCE_OPENERS} - set(ref_ids))
    for p, score in zip(prompts, got):
        with torch.no_grad():
            logits = h.model(input_ids=torch.tensor([encode(h.tokenizer, p)])).logits[0, -1]
        lp = torch.log_softmax(logits.float(), -1)
        want = torch.logsumexp(lp[ref_ids], 0) - torch.logsumexp(lp[com_ids], 0)
        assert score == pytest.approx(float(want), abs=1e-4)
