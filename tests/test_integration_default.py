"""End to end on the real embedded default model (SmolLM2-135M-Instruct): resolve, render, score, metrics."""

import json

import pytest

pytestmark = pytest.mark.integration


def test_default_model_on_telecom_routing(default_handle, tmp_path):
    from tunelens.data import continuations, load_items, load_task, render_prompt
    from tunelens.evaluate import evaluate
    from tunelens.scoring import loglikelihood_reference

    spec = load_task("telecom-intent")
    result = evaluate(default_handle, spec, limit=21, progress=False)
    result.save(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"]["n_items"] == 21 and saved["model"]["kind"] == "embedded"
    rec = result.records[0]
    assert rec["prompt"].endswith("<|im_start|>assistant\n")  # the chat template was applied
    assert len(rec["logprob"]) == 7 and all(lp < 0 for lp in rec["logprob"])
    # the batched engine agrees with one-at-a-time scoring on the real model
    by_id = {it.id: it for it in load_items(spec, "test")}
    items = [by_id[r["id"]] for r in result.records[:3]]  # the eval's stratified order, not the file's
    reqs = [(render_prompt(spec, it, default_handle.tokenizer), continuations(spec, it)) for it in items]
    ref = loglikelihood_reference(default_handle.model, default_handle.tokenizer, reqs)
    for r, rec in zip(ref, result.records[:3]):
        assert rec["logprob"] == pytest.approx([c.logprob for c in r], abs=1e-4)


def test_default_model_generates_a_reply(default_handle):
    from tunelens.data import load_items, load_task, render_prompt
    from tunelens.scoring import generate

    spec = load_task("telecom-reply")
    item = load_items(spec, "test")[0]
    gen = generate(default_handle.model, default_handle.tokenizer,
                   [render_prompt(spec, item, default_handle.tokenizer)], max_new_tokens=24, progress=False)[0]
    assert len(gen.text.split()) >= 3 and gen.logprob < 0
