"""Task arithmetic (Ilharco et al., 2023): θ = θ_base + λ·Σwᵢδᵢ, δᵢ = θᵢ − θ_base (mergekit's task_arithmetic).
Also home of the weighted, optionally sign-elected sum of updates that TIES and DARE share."""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core import Repair, RepairResult, register
from .stream_merge import check_finite, check_weights, models_list, open_inputs, run_merge

if TYPE_CHECKING:
    import torch


def mix(base: torch.Tensor, deltas: list, weights: list[float], *, elect_sign: bool, normalize: bool,
        scale: float) -> torch.Tensor:
    """θ_base + λ·Σwᵢδᵢ / D, as mergekit's generalized task arithmetic computes it.

    elect_sign (TIES): per entry the sign of Σwᵢδᵢ wins (ties go to +) and only updates of that sign are summed;
    normalize: D = Σwᵢ over the summed updates (the disjoint mean), else D = 1. ``None`` updates are zero."""
    import torch

    w = torch.tensor(weights, dtype=base.dtype).reshape(-1, *([1] * base.ndim))
    d = torch.stack([torch.zeros_like(base) if x is None else x for x in deltas]) * w
    if elect_sign:
        majority = torch.where(d.sum(0) >= 0, 1.0, -1.0).to(base.dtype)
        agree = (d.sign() == majority).to(base.dtype)
        mixed, divisor = (d * agree).sum(0), (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = d.sum(0), w.sum(0).expand_as(base).clone()
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return base + mixed * scale


@register("task_arithmetic")
class TaskArithmetic(Repair):
    description = "θ_base + scale·Σwᵢ(θᵢ − θ_base): scale < 1 shrinks the fine-tune's update"

    @dataclass
    class Options:
        scale: float = 1.0  # λ
        weights: list[float] | None = None  # one per model: the tuned model, then `models`
        models: list[str] | None = None  # further fine-tunes of the same base
        normalize: bool = False  # divide the sum by Σwᵢ

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        models = models_list(opts.models)
        weights = check_weights(opts.weights, 1 + len(models))
        scale = check_finite(opts.scale, "scale")
        inputs = open_inputs(base, tuned, models)

        def combine(name, b, deltas, r0):
            return mix(b, deltas, weights, elect_sign=False, normalize=opts.normalize, scale=scale), {}

        return run_merge(self, inputs, out, opts, combine, progress=progress)
