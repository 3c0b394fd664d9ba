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
    orig16 = fastlora._LoraLinearBf16.apply
    fastlora._LoraLinearBf16.apply = lambda *a: calls.append(1) or orig16(*a)
    try:
        with torch.autocast("cpu", dtype=torch.float16):  # only bf16 autocast has a fused path
            fast(input_ids=ids).logits.float().sum().backward()
        with fast.disable_adapter():
            fast(input_ids=ids)
    finally:
        fastlora._LoraLinear.apply = orig
        fastlora._LoraLinearBf16.apply = orig16
    assert calls == []
    assert any(p.grad is not None for n, p in fast.named_parameters() if "lora_" in n)


def _lora_layer(scale_b: float):
    model = _tiny(0.0)
    speed_up_lora(model)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.mul_(scale_b)
    return model.train(), layer


def test_bf16_autocast_fused_path_keeps_a_small_update_that_peft_rounds_away():
    """Under bf16 autocast PEFT adds the LoRA term to the frozen product in bf16: an update below bf16's 2^-8
    relative step is rounded away (the tune bench's loss after 8 steps: 2.36 under PEFT's autocast path, 2.04
    with this one, 2.02 in fp32). The fused path adds it in fp32 to the bf16 product, exactly."""
    torch.manual_seed(1)
    _, layer = _lora_layer(1e-4)
    x = torch.randn(2, 5, 32)
    w, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = float(layer.scaling["default"])
    with torch.no_grad():
        frozen = (x.bfloat16() @ w.bfloat16().t()).float()
        update = s * (x @ a.t()) @ b.t()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, peft = layer(x), layer._peft_forward(x)
    assert fast.dtype == torch.float32
    ulp32 = 2 * torch.finfo(torch.float32).eps * float(frozen.abs().max())  # fp32 rounding of frozen + update
    assert float(update.abs().max()) > 100 * ulp32
    torch.testing.assert_close(fast - frozen, update, rtol=0, atol=ulp32)
    err_peft = float((peft.float() - frozen - update).abs().max())
    assert err_peft > 0.5 * float(update.abs().max())  # PEFT's bf16 sum lost most of the update


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_bf16_autocast_fused_gradients_are_autograds_of_the_same_mixed_precision_expression(dropout, monkeypatch):
    torch.manual_seed(2)
    model, layer = _lora_layer(1.0)
    layer.lora_dropout["default"].p = dropout
    w, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = float(layer.scaling["default"])
    x = torch.randn(3, 4, 32, requires_grad=True)
    g = torch.randn(3, 4, 48)
    masks = []
    real = fastlora.keep_mask
    monkeypatch.setattr(fastlora, "keep_mask", lambda *a_, **k: masks.append(real(*a_, **k)) or masks[-1])
    calls = []
    orig = fastlora._LoraLinearBf16.apply
    monkeypatch.setattr(fastlora._LoraLinearBf16, "apply", lambda *a_: calls.append(1) or orig(*a_))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.backward(g)
    assert calls == [1] and len(masks) == (1 if dropout else 0)
    got = [x.grad.clone(), a.grad.clone(), b.grad.clone()]
    x.grad = a.grad = b.grad = None
    xd = x if not dropout else torch.where(masks[0], x / (1 - dropout), 0.0)
    ref = (x.bfloat16() @ w.bfloat16().t()).float() + s * (xd @ a.t()) @ b.t()  # plain autograd, no autocast
    ref.backward(g)
    for name, mine, theirs in zip(("x", "A", "B"), got, (x.grad, a.grad, b.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)


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
