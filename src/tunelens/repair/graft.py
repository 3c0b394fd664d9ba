"""Graft as repair: keep only the grafted subset of the fine-tune's update, θ = θ_base + γ⊙Δ.

γ comes from a mask file written by ``tunelens graft`` (``mask``), or is the top-s mask γ_base taken directly:
the globally largest round(s·N) entries of |Δ| over the eligible tensors (per-layer blocks; embeddings with
``include_embeddings``), as ``tunelens.diff.graft.top_mask`` defines it. Tensors outside the mask stay at the base.

The top-s threshold is found without holding Δ: |Δ| as float32 bits orders like the numbers, so two streamed
histogram passes (high 16 bits, then low 16 bits within the chosen bin) give the exact k-th largest value;
entries equal to it are kept in stream order until k are kept.
"""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TunelensError
from .core import Repair, RepairResult, register
from .stream_merge import MergeInputs, open_inputs, run_merge

if TYPE_CHECKING:
    import torch

MASK_FORMAT = "tunelens.graft.mask/1"


class MaskFile:
    """A mask saved by ``tunelens graft`` (kept flat indices per tensor), read one tensor at a time."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                names = list(f.keys())
        except (SafetensorError, OSError) as e:
            raise TunelensError(f"mask file {self.path}: not readable ({e}); pass a mask-s*.safetensors "
                                f"written by tunelens graft") from None
        if meta.get("format") != MASK_FORMAT or "shapes" not in meta:
            raise TunelensError(f"mask file {self.path} is not a tunelens graft mask (format "
                                f"{meta.get('format')!r}, expected {MASK_FORMAT!r})")
        self.shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
        self.names = names

    def mask(self, name: str) -> torch.Tensor:
        import torch
        from safetensors import safe_open

        m = torch.zeros(math.prod(self.shapes[name]), dtype=torch.bool)
        with safe_open(str(self.path), framework="pt") as f:
            idx = f.get_tensor(name)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= m.numel()):
            raise TunelensError(f"mask file {self.path}: indices of '{name}' fall outside its shape")
        m[idx] = True
        return m.view(self.shapes[name])


def _abs_bits(inputs: MergeInputs, names: list[str]):
    """|Δ| of the tuned model as int32 float bits, slab by slab in merge order."""
    import torch

    for name in names:
        info = inputs.base.tensors[name]
        fac = [inputs.sides[0].factor(name)]
        for r0, r1 in info.slabs() if info.shape else [(None, None)]:
            _, (d,) = inputs.deltas(name, r0, r1, fac)
            if d is None:
                yield torch.zeros(0, dtype=torch.int32), _numel(info, r0, r1)
                continue
            a = d.abs().float().reshape(-1)
            if not bool(torch.isfinite(a).all()):
                raise TunelensError(f"the update of '{name}' has NaN or Inf values: the tuned model is corrupt")
            yield a.view(torch.int32), 0


def _numel(info, r0, r1) -> int:
    if r0 is None:
        return info.numel
    return (r1 - r0) * (info.numel // info.shape[0])


def top_threshold(inputs: MergeInputs, names: list[str], k: int) -> tuple[int, int]:
    """(bits t of the k-th largest |Δ|, how many entries equal to t are kept), for 0 < k ≤ N."""
    import torch

    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for bits, zeros in _abs_bits(inputs, names):
        hist += torch.bincount(bits >> 16, minlength=1 << 16)
        hist[0] += zeros  # unchanged tensors: all-zero updates
    hi, above = _kth(hist, k)
    hist = torch.zeros(1 << 16, dtype=torch.int64)
    for bits, zeros in _abs_bits(inputs, names):
        hist += torch.bincount(bits[(bits >> 16) == hi] & 0xFFFF, minlength=1 << 16)
        if hi == 0:
            hist[0] += zeros
    lo, above_lo = _kth(hist, k - above)
    return (hi << 16) | lo, k - above - above_lo


def _kth(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """(bin holding the k-th largest entry, entries in higher bins)."""
    import torch

    cum = hist.flip(0).cumsum(0)
    i = int(torch.searchsorted(cum, k))
    return len(hist) - 1 - i, int(cum[i - 1]) if i else 0


@register("graft")
class Graft(Repair):
    description = "keep only the grafted (masked) entries of the fine-tune's update"

    @dataclass
    class Options:
        mask: str | None = None  # mask file from `tunelens graft` (mask-s*.safetensors)
        sparsity: float | None = None  # without a mask file: keep the top-s fraction of |Δ|
        include_embeddings: bool = False  # top-s mask: embeddings eligible too

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        import torch

        from ..diff.graft import eligible

        if (opts.mask is None) == (opts.sparsity is None):
            raise TunelensError("graft: give exactly one of option mask (a mask file from tunelens graft) or "
                                "option sparsity (keep the top-s fraction of the update)")
        if opts.sparsity is not None:
            try:
                s = float(opts.sparsity)
            except (TypeError, ValueError):
                s = float("nan")
            if not 0.0 < s <= 1.0:
                raise TunelensError(f"option sparsity must be in (0, 1], got {opts.sparsity!r}")
        inputs = open_inputs(base, tuned)
        if opts.mask is not None:
            masks = MaskFile(opts.mask)
            _check_mask(masks, inputs)
            selected = set(masks.names)
            cache: dict = {}

            def mask_rows(name, r0, rows, d):
                if name not in cache:  # one tensor's mask at a time, reused across its slabs
                    cache.clear()
                    cache[name] = masks.mask(name)
                m = cache[name]
                return m if m.ndim == 0 else m[r0:r0 + rows]
        else:
            names = [n for n, info in inputs.base.tensors.items()
                     if info.torch_dtype is not None and eligible(n, opts.include_embeddings)]
            if not names:
                raise TunelensError("graft: no eligible (per-layer) weight tensors found: unknown architecture "
                                    "naming; pass a mask file")
            selected = set(names)
            n_total = sum(inputs.base.tensors[n].numel for n in names)
            k = int(round(s * n_total))
            t, ties_left = top_threshold(inputs, names, k) if k else (0, 0)
            state = {"ties_left": ties_left}

            def mask_rows(name, r0, rows, d):
                if not k:
                    return torch.zeros_like(d, dtype=torch.bool)
                bits = d.abs().float().view(torch.int32)
                m = bits > t
                eq = torch.nonzero((bits == t).reshape(-1)).reshape(-1)[: state["ties_left"]]
                m.view(-1)[eq] = True
                state["ties_left"] -= eq.numel()
                return m

        def combine(name, b, deltas, r0):
            d = deltas[0]
            if name not in selected:
                return b, {}
            m = mask_rows(name, r0, b.shape[0] if b.ndim else 1, d)
            return torch.where(m, b + d, b), {"kept": int(m.sum()), "considered": m.numel()}

        # tensors no model changes skip combine: their updates are zero, so keeping them or not changes nothing
        return run_merge(self, inputs, out, opts, combine, progress=progress,
                         **({"mask_file": str(opts.mask)} if opts.mask else {"sparsity": s}))


def _check_mask(masks: MaskFile, inputs: MergeInputs) -> None:
    for name in masks.names:
        if name not in inputs.base.tensors:
            raise TunelensError(f"mask file {masks.path} masks '{name}', which the base model has no tensor for "
                                f"(a mask of another model?)")
        want = inputs.base.tensors[name].shape
        if tuple(masks.shapes[name]) != tuple(want):
            raise TunelensError(f"mask file {masks.path}: '{name}' is {masks.shapes[name]} in the mask, "
                                f"{want} in the base (a mask of another model?)")
