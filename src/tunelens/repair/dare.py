"""DARE (Yu et al., 2024; mergekit's dare_linear / dare_ties): drop each entry of every update δᵢ at random with
probability p = 1 − density, rescale what is left, then sum the updates as task arithmetic (dare_linear) or with
TIES sign election (dare_ties): θ = θ_base + λ·Σwᵢ·(mᵢ⊙δᵢ)·rᵢ [/ D].

The masks are seeded per (seed, tensor, model), so a tensor's mask does not depend on the order tensors are
read in. Rescale rᵢ: "inverse" 1/density (the paper; unbiased), "l1" ‖δᵢ‖₁/‖mᵢ⊙δᵢ‖₁ (mergekit), or "none".
"""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TunelensError
from .core import Repair, RepairResult, register
from .stream_merge import check_finite, check_fraction, check_weights, models_list, open_inputs, run_merge
from .task_arithmetic import mix

if TYPE_CHECKING:
    import torch

RESCALES = ("inverse", "l1", "none")


def keep_mask(seed: int, name: str, index: int, shape, density: float) -> torch.Tensor:
    """Bernoulli(density) keep mask of one model's update of one tensor, from a generator seeded by all three."""
    import torch

    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.rand(tuple(shape), generator=gen) < density


def drop(delta: torch.Tensor, mask: torch.Tensor, density: float, rescale: str) -> torch.Tensor:
    kept = delta * mask
    if rescale == "inverse":
        return kept / density
    if rescale == "l1":  # mergekit's rescaled_masked_tensor: match the L1 norm, unless either is ~0
        before, after = delta.abs().sum(), kept.abs().sum()
        return kept if before < 1e-7 or after < 1e-7 else kept * (before / after)
    return kept


class _Dare(Repair):
    elect_sign = False

    @dataclass
    class Options:
        density: float = 0.5  # keep probability, 1 − drop rate p
        weights: list[float] | None = None  # one per model: the tuned model, then `models`
        models: list[str] | None = None  # further fine-tunes of the same base
        scale: float = 1.0  # λ
        normalize: bool = False  # divide by the summed weights (of the agreeing updates, for dare_ties)
        rescale: str = "inverse"  # inverse | l1 | none
        seed: int = 0

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        models = models_list(opts.models)
        weights = check_weights(opts.weights, 1 + len(models))
        density = check_fraction(opts.density, "density")
        scale = check_finite(opts.scale, "scale")
        if opts.rescale not in RESCALES:
            raise TunelensError(f"option rescale must be one of {', '.join(RESCALES)}, got {opts.rescale!r}")
        try:
            seed = int(opts.seed)
        except (TypeError, ValueError):
            raise TunelensError(f"option seed must be an integer, got {opts.seed!r}") from None
        inputs = open_inputs(base, tuned, models)

        def combine(name, b, deltas, r0):
            dropped, kept = [], 0
            for i, d in enumerate(deltas):
                if d is None or density >= 1:
                    dropped.append(d)
                    kept += b.numel() if d is not None else 0
                    continue
                mask = keep_mask(seed, name, i, b.shape, density)
                kept += int(mask.sum())
                dropped.append(drop(d, mask, density, opts.rescale))
            merged = mix(b, dropped, weights, elect_sign=self.elect_sign, normalize=opts.normalize, scale=scale)
            return merged, {"kept": kept, "considered": b.numel() * sum(d is not None for d in deltas)}

        return run_merge(self, inputs, out, opts, combine, whole_tensor=True, progress=progress)


@register("dare_linear")
class DareLinear(_Dare):
    description = "drop random update entries, rescale the rest, add the weighted updates to the base"


@register("dare_ties")
class DareTies(_Dare):
    description = "DARE's random drop and rescale, then TIES sign election"
    elect_sign = True
