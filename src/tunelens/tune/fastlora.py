"""LoRA training on a CPU without the elementwise tax: a cheap dropout mask and one fused linear per adapter.

Why: a LoRA step on a CPU should be its matrix products. A profile of the tune bench (the default model, LoRA r 16
on every linear, batch 8 x ~120 tokens, 2 cores) found a third of the step elsewhere:
  - PEFT's `nn.Dropout` in front of each of the 210 adapters: torch draws each Bernoulli variable from a Mersenne
    Twister on one thread (~150 million per step); `aten::bernoulli_` alone was 17% of the step;
  - per adapter, `lora_B(lora_A(dropout(x))) * scaling` added to the frozen layer's output: the scaling, the sum,
    and in the backward the scaled gradient and the sum of the two input gradients are each a pass over a full
    activation, for an update whose own products are tiny (rank 16).
docs/precision.md, "Where a LoRA step's time goes", has the profiles before and after.

What, and why it is the same computation:
  - `keep_mask` draws the dropout mask from numpy's SFC64 (64 random bits per call, two 32-bit uniforms, compared
    with the integer threshold round(p · 2^32): P(drop) = p to within 2^-33). Each call seeds its generator with
    one 63-bit draw from torch's default generator, so `torch.manual_seed` fixes a run as before and a run resumed
    from a checkpoint (which restores torch's RNG state) draws the masks of the run that was never stopped. The
    masks are not torch's (another generator): a tune is not bit-identical to one with PEFT's dropout; it has the
    same distribution.
  - `_LoraLinear` computes y = x·Wᵀ + b + s·(d(x)·Aᵀ)·Bᵀ with the LoRA term accumulated into the frozen product in
    place (`addmm_`, alpha = s), and its backward returns exactly the gradients autograd would: ∂x = g·W +
    d'((s·g·B)·A), ∂A = (s·g·B)ᵀ·d(x), ∂B = s·gᵀ·(d(x)·Aᵀ), with s applied to the rank-r product instead of to
    the full gradient. It saves what PEFT's graph saves (d(x), the rank-r product, the mask as bools).
    tests/test_fastlora.py pins outputs and all three gradients to PEFT's own forward.

bf16 (CPU bf16 autocast, `--dtype bf16` or `auto` where bf16 is native): PEFT's forward under autocast adds the
LoRA term to the frozen product in bf16, and an update smaller than bf16's relative step (2^-8) — every LoRA
update in its first steps, B starting at zero — is rounded away. On the tune bench (an AMX CPU, 8 steps) that cost
the loss 2.36 against 2.02 in fp32; TRL's default bf16 run lands at the same 2.37. `_LoraLinearBf16` runs the
frozen product in bf16 (where the FLOPs are), converts it to fp32 and adds the LoRA term there, so the layer's
output and everything downstream of it keep the update (loss 2.04, as fast: docs/precision.md). Its backward is
autograd's of that same expression: ∂x through the frozen weight in bf16, the rank-r products in fp32.
(Rounding the exact fp32 sum back to bf16 once, to keep bf16 activations, lost the update all the same: 2.37.)

Where it applies: a PEFT `lora.Linear` over an `nn.Linear`, in training, one active adapter without DoRA or a
LoRA bias, no autocast or CPU bf16 autocast, one dtype throughout (under autocast: fp32 adapters over a frozen fp32
or bf16 weight); anything else (eval, a disabled or merged adapter, fp16 or GPU autocast, mixed-adapter batches)
runs PEFT's forward unchanged. `speed_up_lora(model)` installs both on every such layer;
neither has weights, so adapters save and load as before.
"""

from __future__ import annotations

import math
import types

import numpy as np
import torch

_SEED_HIGH = 2**63 - 1


def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool tensor of `shape`: True with probability 1 - p, independently (the module docstring says how)."""
    if device is not None and torch.device(device).type != "cpu":
        return torch.rand(shape, device=device) >= p  # accelerators draw fast enough themselves
    n = math.prod(shape)
    seed = int(torch.randint(0, _SEED_HIGH, (), dtype=torch.int64))
    raw = np.random.SFC64(seed).random_raw((n + 1) // 2)  # uint64: two uniform 32-bit draws each
    threshold = np.uint32(min(max(round(p * 2**32), 1), 2**32 - 1))
    return torch.from_numpy(raw.view(np.uint32)[:n] >= threshold).view(shape)


def _masked(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # torch.where, not x.mul(keep): the product first converts the bool mask to a float tensor
    return torch.where(keep, x * scale, 0.0)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _masked(grad, keep, ctx.scale), None, None


class FastDropout(torch.nn.Module):
    """`nn.Dropout(p)` with `keep_mask`'s mask; identity in eval mode or at p = 0."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return _Dropout.apply(x, keep_mask(x.shape, self.p, x.device), 1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _add_lora(y, x2, lora_a, lora_b, scaling, keep, drop_scale):
    """y += s·(d(x)·Aᵀ)·Bᵀ in place; returns (d(x), d(x)·Aᵀ), what the backward needs."""
    xd = x2 if keep is None else _masked(x2, keep.view(x2.shape), drop_scale)
    h = xd @ lora_a.t()
    y.addmm_(h, lora_b.t(), alpha=scaling)
    return xd, h


def _lora_grads(ctx, g, lora_a, lora_b, xd, h, keep, frozen_grad_x):
    """(∂x, ∂A, ∂B) from the 2-D output gradient g (the adapters' dtype); ∂x = frozen_grad_x() + the LoRA term,
    computed only when x needs it."""
    s = ctx.scaling
    gh = (g @ lora_b).mul_(s)  # [T, r]: the scaling on the rank-r product, not on the full gradient
    grad_a = gh.t() @ xd if ctx.needs_input_grad[3] else None
    grad_b = (g.t() @ h).mul_(s) if ctx.needs_input_grad[4] else None
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = frozen_grad_x()
        if keep is None:
            grad_x.addmm_(gh, lora_a)
        else:
            grad_x.add_(_masked(gh @ lora_a, keep.view(grad_x.shape), ctx.drop_scale))
    return grad_x, grad_a, grad_b


class _LoraLinear(torch.autograd.Function):
    """y = x·Wᵀ + b + s·(d(x)·Aᵀ)·Bᵀ for a frozen W (and b); gradients for x, A and B only."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, keep, drop_scale):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        xd, h = _add_lora(y, x2, lora_a, lora_b, scaling, keep, drop_scale)
        ctx.save_for_backward(weight, lora_a, lora_b, xd, h, keep)
        ctx.scaling, ctx.drop_scale, ctx.shape = scaling, drop_scale, shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        weight, lora_a, lora_b, xd, h, keep = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x, grad_a, grad_b = _lora_grads(ctx, g, lora_a, lora_b, xd, h, keep, lambda: g @ weight)
        if grad_x is not None:
            grad_x = grad_x.view(ctx.shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


class _LoraLinearBf16(torch.autograd.Function):
    """Under CPU bf16 autocast: the frozen product in bf16, the LoRA term and the output in fp32 (module docstring,
    "bf16"). y = fp32(bf16(x)·bf16(W)ᵀ) + b + s·(d(x)·Aᵀ)·Bᵀ; gradients for x (the frozen part in bf16), A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, keep, drop_scale):
        shape = x.shape
        with torch.autocast("cpu", enabled=False):
            x2 = x.reshape(-1, shape[-1])
            wb = weight.to(torch.bfloat16)
            y = (x2.to(torch.bfloat16) @ wb.t()).float()
            if bias is not None:
                y.add_(bias)
            xd, h = _add_lora(y, x2.float(), lora_a, lora_b, scaling, keep, drop_scale)
        ctx.save_for_backward(wb, lora_a, lora_b, xd, h, keep)
        ctx.scaling, ctx.drop_scale, ctx.shape, ctx.x_dtype = scaling, drop_scale, shape, x.dtype
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        wb, lora_a, lora_b, xd, h, keep = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            g = grad.reshape(-1, grad.shape[-1])
            grad_x, grad_a, grad_b = _lora_grads(ctx, g.float(), lora_a, lora_b, xd, h, keep,
                                                 lambda: (g.to(torch.bfloat16) @ wb).float())
            if grad_x is not None:
                grad_x = grad_x.to(ctx.x_dtype).view(ctx.shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None


def _dtypes_fit(x, weight, a, b, low: bool) -> bool:
    """Without autocast: one dtype throughout. Under CPU bf16 autocast: fp32 adapters over a frozen fp32 or bf16
    weight, an fp32 or bf16 input."""
    if not low:
        return x.dtype == weight.dtype == a.dtype == b.dtype
    either = (torch.float32, torch.bfloat16)
    return (a.dtype == b.dtype == torch.float32 and x.dtype in either and weight.dtype in either
            and not weight.requires_grad)


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """forward of a PEFT lora.Linear: the fused path when it applies (module docstring), PEFT's otherwise."""
    active = self.active_adapters
    low = torch.is_autocast_enabled(x.device.type)
    if (args or kwargs or not self.training or self.disable_adapters or self.merged or len(active) != 1
            or (low and (x.device.type != "cpu" or torch.get_autocast_dtype("cpu") != torch.bfloat16))):
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    base = self.base_layer
    if (name not in self.lora_A or name in self.lora_variant or type(base) is not torch.nn.Linear
            or self.lora_B[name].bias is not None):
        return self._peft_forward(x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if not _dtypes_fit(x, base.weight, a, b, low):
        return self._peft_forward(x, *args, **kwargs)
    drop = self.lora_dropout[name]
    p = getattr(drop, "p", 0.0) if drop.training else 0.0
    keep = keep_mask(x.shape, p, x.device) if p > 0 else None
    fn = _LoraLinearBf16 if low else _LoraLinear
    return fn.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]), keep, 1.0 / (1.0 - p))


def speed_up_lora(model) -> int:
    """Install FastDropout and the fused forward on every PEFT LoRA linear layer of `model`; returns how many."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a runtime dependency
        return 0
    done = 0
    for module in model.modules():
        if type(module) is not LoraLinear or hasattr(module, "_peft_forward"):
            continue
        for name, d in list(module.lora_dropout.items()):
            if type(d) is torch.nn.Dropout:
                fast = FastDropout(d.p)
                fast.train(d.training)
                module.lora_dropout[name] = fast
        module._peft_forward = module.forward
        module.forward = types.MethodType(_fused_forward, module)
        done += 1
    return done
