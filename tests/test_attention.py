"""tune/attention.py: under CPU bf16 autocast, short queries attend in fp32 and long ones in bf16; the model's
setting is put back; nothing changes off autocast or for other precisions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tunelens.tune import attention
from tunelens.tune.attention import bf16_cpu_attention


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def _capture(monkeypatch):
    """Record the dtype each SDPA call computes in: bf16 when autocast is on (it converts the operands inside the
    call), else the query's."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, *a, **k):
        seen.append(torch.bfloat16 if torch.is_autocast_enabled("cpu") else q.dtype)
        return real(q, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_short_queries_attend_in_fp32_long_ones_in_bf16_under_bf16_autocast(monkeypatch):
    model = _model().train()
    seen = _capture(monkeypatch)
    monkeypatch.setattr(attention, "FP32_MAX_QUERY", 8)
    with bf16_cpu_attention(model, "bf16") as on:
        assert on and model.config._attn_implementation == attention.NAME
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=torch.randint(0, 61, (2, 8))).logits.float().sum().backward()
            assert seen == [torch.float32] * 2
            seen.clear()
            model(input_ids=torch.randint(0, 61, (2, 9)))
            assert seen == [torch.bfloat16] * 2  # longer than FP32_MAX_QUERY: as autocast sends it
        seen.clear()
        model(input_ids=torch.randint(0, 61, (2, 8)))  # no autocast: fp32 as always
        assert seen == [torch.float32] * 2
    assert model.config._attn_implementation == "sdpa"


def test_fp32_attention_under_autocast_is_sdpa_on_the_fp32_operands():
    model = _model().eval()
    ids = torch.randint(0, 61, (2, 7))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=ids).logits.float()
        with bf16_cpu_attention(model, "bf16"):
            ours = model(input_ids=ids).logits.float()
    with torch.no_grad():
        exact = model(input_ids=ids).logits
    # the same model with a more exact attention: closer to fp32 than autocast's bf16 attention is
    assert (ours - exact).abs().mean() < (plain - exact).abs().mean()


def test_padding_is_masked_as_with_sdpa():
    """transformers builds a mask only for attention names its mask registry knows: without one, a left-padded
    batch attends to its padding (the tune bench's loss went from 2.04 to 2.61 before the mask was registered)."""
    model = _model().eval()
    ids = torch.randint(0, 61, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0 left-padded
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        with bf16_cpu_attention(model, "bf16"):
            got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want)


def test_other_precisions_and_implementations_are_left_alone():
    model = _model()
    with bf16_cpu_attention(model, "fp32") as on:
        assert not on and model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    with bf16_cpu_attention(model, "bf16") as on:
        assert not on and model.config._attn_implementation == "eager"
