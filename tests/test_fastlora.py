"""tune/fastlora.py against PEFT's own LoRA forward: the same outputs and gradients, the dropout's distribution,
its seeding, and the fallbacks to PEFT where the fused path does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import binomtest
from transformers import LlamaConfig, LlamaForCausalLM

from tunelens.tune import fastlora
from tunelens.tune.fastlora import FastDropout, keep_mask, speed_up_lora


def _base(bias: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_bias=bias, mlp_bias=bias)
    return LlamaForCausalLM(cfg)


def _tiny(dropout: float, bias: bool = False, seed: int = 0):
    model = _base(bias, seed)
    peft_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                          task_type="CAUSAL_LM", init_lora_weights=False)  # B != 0, so the update matters
    return get_peft_model(model, peft_cfg)


def _grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_without_dropout_matches_peft_outputs_and_every_gradient(bias):
    ref = _tiny(0.0, bias=bias)
    fast = copy.deepcopy(ref)
    assert speed_up_lora(fast) == 14  # 2 layers x 7 linears
    ref.train(), fast.train()
    ids = torch.randint(0, 97, (3, 11))
    logits_r, grads_r = _grads(ref, ids)
    calls = []
    orig = fastlora._LoraLinear.apply
    fastlora._LoraLinear.apply = lambda *a: calls.append(1) or orig(*a)
    try:
        logits_f, grads_f = _grads(fast, ids)
    finally:
        fastlora._LoraLinear.apply = orig
    assert len(calls) == 14  # the fused path ran, not PEFT's fallback
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-5, atol=1e-5)
    assert grads_f.keys() == grads_r.keys() and len(grads_r) == 28
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_with_dropout_matches_peft_given_the_same_masks(monkeypatch):
    """PEFT's dropout fed the masks the fused path draws: outputs and gradients agree, so the fused backward
    applies the mask where autograd would."""
    ref = _tiny(0.3)
    fast = copy.deepcopy(ref)
    speed_up_lora(fast)
    ref.train(), fast.train()
    ids = torch.randint(0, 97, (2, 9))
    masks = []
    real = fastlora.keep_mask
    monkeypatch.setattr(fastlora, "keep_mask", lambda *a, **k: masks.append(real(*a, **k)) or masks[-1])
    logits_f, grads_f = _grads(fast, ids)
    assert len(masks) == 14
    replay = iter(masks)
    for module in ref.modules():  # PEFT's order of calls is the model's: replay the masks into nn.Dropout
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, d in drops.items():
                drops[name] = _Replay(d.p, replay)
    logits_r, grads_r = _grads(ref, ids)
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-5, atol=1e-5)
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=name)


class _Replay(torch.nn.Module):
    def __init__(self, p, masks):
        super().__init__()
        self.p, self.masks = p, masks

    def forward(self, x):
        return x * next(self.masks) / (1 - self.p)


def test_eval_disabled_adapter_and_autocast_fall_back_to_peft():
    ref = _tiny(0.1)
    fast = copy.deepcopy(ref)
    speed_up_lora(fast)
    ids = torch.randint(0, 97, (2, 7))
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        with fast.disable_adapter(), ref.disable_adapter():
            torch.testing.assert_close(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
    fast.train()
    calls = []
    orig = fastlora._LoraLinear.apply
    fastlora._LoraLinear.apply = lambda *a: calls.append(1) or orig(*a)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(input_ids=ids).logits.float().sum().backward()
        with fast.disable_adapter():
            fast(input_ids=ids)
    finally:
        fastlora._LoraLinear.apply = orig
    assert calls == []
    assert any(p.grad is not None for n, p in fast.named_parameters() if "lora_" in n)


def test_keep_mask_drops_at_rate_p_and_is_fixed_by_torchs_seed():
    torch.manual_seed(3)
    m = keep_mask((400, 500), 0.05)
    assert m.dtype == torch.bool and m.shape == (400, 500)
    dropped = int((~m).sum())
    assert binomtest(dropped, m.numel(), 0.05).pvalue > 1e-4
    rows = (~m).float().mean(1)  # no structure: every row drops about p
    assert float(rows.std()) < 3 * (0.05 * 0.95 / 500) ** 0.5
    torch.manual_seed(3)
    assert torch.equal(keep_mask((400, 500), 0.05), m)  # torch's seed fixes it (so a resumed run redraws it)
    assert not torch.equal(keep_mask((400, 500), 0.05), m)  # and each call draws anew
    assert bool(keep_mask((10_000,), 1e-12).all())


def test_fast_dropout_scales_kept_values_and_masks_the_gradient():
    d = FastDropout(0.25)
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        FastDropout(1.0)


def test_a_sped_up_adapter_saves_and_loads_as_plain_peft(tmp_path):
    from peft import PeftModel

    fast = _tiny(0.1)
    speed_up_lora(fast)
    fast.save_pretrained(tmp_path)
    base = _base()
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    fast.eval()
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, fast(input_ids=ids).logits)
