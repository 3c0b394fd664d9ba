import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelens import scoring
from tunelens.scoring import encode_pair, generate, loglikelihood, loglikelihood_reference

WORDS = "the a cat dog sat on mat and ran fast slow red blue green house tree river".split()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok


def _requests(n, seed=0):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30)))
        k = rng.randint(1, 6)
        conts = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(k)]
        reqs.append((ctx, conts))
    return reqs


def _flat(scores):
    return [c.logprob for s in scores for c in s]


@pytest.mark.parametrize("budget", [16, 64, 4096])
def test_loglikelihood_matches_one_at_a_time_reference(tiny, budget):
    model, tok = tiny
    reqs = _requests(25)
    ref = loglikelihood_reference(model, tok, reqs)
    got = loglikelihood(model, tok, reqs, token_budget=budget, progress=False)
    assert [len(s) for s in got] == [len(c) for _, c in reqs]
    for g, r in zip(got, ref):
        for a, b in zip(g, r):
            assert a.tokens == b.tokens
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
            assert a.is_greedy == b.is_greedy


def test_loglikelihood_independent_of_order(tiny):
    model, tok = tiny
    reqs = _requests(20, seed=1)
    perm = list(range(len(reqs)))
    random.Random(3).shuffle(perm)
    a = loglikelihood(model, tok, reqs, progress=False)
    b = loglikelihood(model, tok, [reqs[i] for i in perm], token_budget=50, max_batch=3, progress=False)
    unperm = [None] * len(reqs)
    for pos, i in enumerate(perm):
        unperm[i] = b[pos]
    assert _flat(a) == pytest.approx(_flat(unperm), abs=1e-4)


def test_full_logits_fallback_matches_split_head(tiny, monkeypatch):
    model, tok = tiny
    reqs = _requests(8, seed=2)
    a = loglikelihood(model, tok, reqs, progress=False)
    monkeypatch.setattr(scoring, "_split_head", lambda m: None)
    b = loglikelihood(model, tok, reqs, progress=False)
    assert _flat(a) == pytest.approx(_flat(b), abs=1e-5)


def test_peft_adapter_scored_through_its_lora_layers(tiny, tiny_adapter_dir):
    from peft import PeftModel

    model, tok = tiny
    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    peft_model = PeftModel.from_pretrained(base, tiny_adapter_dir).eval()
    reqs = _requests(6, seed=4)
    got = loglikelihood(peft_model, tok, reqs, progress=False)
    ref = loglikelihood_reference(peft_model, tok, reqs)
    plain = loglikelihood(model, tok, reqs, progress=False)
    assert _flat(got) == pytest.approx(_flat(ref), abs=1e-4)
    assert max(abs(x - y) for x, y in zip(_flat(got), _flat(plain))) > 1e-3  # the adapter changes scores


def test_encode_pair_moves_trailing_space_to_continuation(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "the cat ", "sat")
    ctx2, cont2 = encode_pair(tok, "the cat", " sat")
    assert (ctx, cont) == (ctx2, cont2)
    empty_ctx, _ = encode_pair(tok, "", " sat")
    assert len(empty_ctx) == 1


def test_generate_is_batch_independent_and_cuts_at_stop(tiny):
    model, tok = tiny
    prompts = [" ".join(WORDS[i : i + 3 + i % 5]) for i in range(7)]
    one = generate(model, tok, prompts, max_new_tokens=8, batch_size=1, progress=False)
    many = generate(model, tok, prompts, max_new_tokens=8, batch_size=4, progress=False)
    assert [g.text for g in one] == [g.text for g in many]
    assert [g.logprob for g in one] == pytest.approx([g.logprob for g in many], abs=1e-3)
    # choose a stop string that the first output really contains, and check the cut
    text = one[0].text
    assert text, "tiny model produced no text"
    stop = text[len(text) // 2 :][:2] or text
    cut = generate(model, tok, prompts[:1], max_new_tokens=8, stop=[stop], progress=False)[0]
    assert stop not in cut.text
    assert text.startswith(cut.text)


def test_shared_prefix_is_computed_once_and_changes_nothing(tiny, monkeypatch):
    model, tok = tiny
    system = "the cat sat on the mat and the dog ran fast over the green house by the river " * 2
    reqs = [(system + ctx, conts) for ctx, conts in _requests(12, seed=5)]
    calls = []
    real = scoring._shared_prefix
    monkeypatch.setattr(scoring, "_shared_prefix", lambda *a: calls.append(r := real(*a)) or r)
    got = loglikelihood(model, tok, reqs, token_budget=64, progress=False)
    assert calls and calls[0] is not None and calls[0][0] >= 20  # the common prefix was cut out and cached
    ref = loglikelihood_reference(model, tok, reqs)
    assert _flat(got) == pytest.approx(_flat(ref), abs=1e-4)
    plain = loglikelihood(model, tok, reqs, share_prefix=False, progress=False)
    assert _flat(got) == pytest.approx(_flat(plain), abs=1e-4)


def test_generate_with_a_shared_prefix_matches_one_prompt_at_a_time(tiny, monkeypatch):
    model, tok = tiny
    system = "the cat sat on the mat and the dog ran fast over the green house by the river "
    prompts = [system + " ".join(WORDS[i : i + 1 + (3 * i) % 7]) for i in range(9)]
    calls = []
    real = scoring._generation_prefix
    monkeypatch.setattr(scoring, "_generation_prefix", lambda *a: calls.append(r := real(*a)) or r)
    kw = dict(max_new_tokens=6, progress=False, score_ids=[5, 7])
    shared = generate(model, tok, prompts, batch_size=4, **kw)
    assert calls[0] is not None and calls[0][0] >= 15  # the system text was run once and its cache reused
    alone = generate(model, tok, prompts, batch_size=1, share_prefix=False, **kw)
    assert [g.tokens for g in shared] == [g.tokens for g in alone]
    assert [g.logprob for g in shared] == pytest.approx([g.logprob for g in alone], abs=1e-4)
    assert [x for g in shared for x in g.first_logprobs] == pytest.approx(
        [x for g in alone for x in g.first_logprobs], abs=1e-4)


# ---------------------------------------------------------------- prompts longer than the context (issue 15)


def _long_text(n_words=120):
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def test_long_context_is_cut_from_the_left_counted_and_warned(tiny, monkeypatch, caplog):
    import logging

    model, tok = tiny
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    reqs = [(_long_text(), [" cat", " dog sat"]), ("the cat", [" sat", " ran"])]
    ctx_ids, _ = encode_pair(tok, reqs[0][0], " cat")
    assert len(ctx_ids) > 64
    kept = 64 - max(len(encode_pair(tok, reqs[0][0], c)[1]) for c in reqs[0][1]) + 1
    with caplog.at_level(logging.WARNING, logger="tunelens.scoring"):
        got = loglikelihood(model, tok, reqs, progress=False)
    assert [c.truncated for c in got[0]] == [len(ctx_ids) - kept] * 2  # every choice scored on the same cut
    assert [c.truncated for c in got[1]] == [0, 0]
    assert scoring.n_truncated(got) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"tunelens: scoring: 1 of 2 prompts do not fit the model's 64-token context with their continuations "
        f"(kept whole); cut from the left to their last {kept} tokens"]
    # the end of the prompt is what was kept: the same scores as the ground truth on the cut context
    ref = loglikelihood_reference(model, tok, reqs)
    assert _flat(got) == pytest.approx(_flat(ref), abs=1e-4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tunelens.scoring"):
        assert scoring.n_truncated(loglikelihood(model, tok, reqs[1:], progress=False)) == 0
    assert not caplog.records  # nothing cut, nothing said


def test_long_generation_prompt_keeps_room_for_new_tokens_counted_and_warned(tiny, monkeypatch, caplog):
    import logging

    from tunelens.errors import TunelensError

    model, tok = tiny
    monkeypatch.setattr(model.config, "max_position_embeddings", 64)
    prompts = [_long_text(), "the cat sat on"]
    ids = scoring.encode(tok, prompts[0])
    assert len(ids) > 56
    with caplog.at_level(logging.WARNING, logger="tunelens.scoring"):
        got = generate(model, tok, prompts, max_new_tokens=8, progress=False)
    assert [g.truncated for g in got] == [len(ids) - 56, 0]
    assert scoring.n_truncated(got) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "tunelens: generating: 1 of 2 prompts do not fit the model's 64-token context with max_new_tokens=8; "
        "cut from the left to their last 56 tokens"]
    # generated from the last 56 prompt tokens, exactly as if the prompt had been that short
    cut_text = tok.decode(ids[-56:])
    assert scoring.encode(tok, cut_text) == ids[-56:]
    alone = generate(model, tok, [cut_text], max_new_tokens=8, progress=False)[0]
    assert (alone.tokens, alone.truncated) == (got[0].tokens, 0)
    with pytest.raises(TunelensError, match="max_new_tokens=64 leaves no room for a prompt in the model's 64-token"):
        generate(model, tok, prompts, max_new_tokens=64, progress=False)
