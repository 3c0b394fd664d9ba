"""TIES merging (Yadav et al., 2023; mergekit's ties): per tensor and model keep the top-k = ⌊density·numel⌋
entries of |δᵢ| (at least one), elect each entry's sign as sign(Σwᵢδᵢ), and take the weighted mean of the kept
updates that agree with it: θ = θ_base + λ·Σwᵢmᵢδᵢ / Σwᵢmᵢ."""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .core import Repair, RepairResult, register
from .stream_merge import check_finite, check_fraction, check_weights, models_list, open_inputs, run_merge
from .task_arithmetic import mix

if TYPE_CHECKING:
    import torch


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """δ with all but its top-k entries by magnitude zeroed, k = max(1, ⌊density·numel⌋)."""
    import torch

    if density >= 1 or delta.numel() == 0:
        return delta
    k = max(1, int(density * delta.numel()))
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    keep[torch.topk(delta.reshape(-1).abs(), k, sorted=False).indices] = True
    return delta * keep.view(delta.shape)


@register("ties")
class Ties(Repair):
    description = "trim each update to its largest entries, elect signs, average the agreeing updates"

    @dataclass
    class Options:
        density: float = 0.5  # fraction of each update's entries kept
        weights: list[float] | None = None  # one per model: the tuned model, then `models`
        models: list[str] | None = None  # further fine-tunes of the same base
        scale: float = 1.0  # λ
        normalize: bool = True  # disjoint mean (divide by the weights of the agreeing updates)

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        import torch

        models = models_list(opts.models)
        weights = check_weights(opts.weights, 1 + len(models))
        density = check_fraction(opts.density, "density")
        scale = check_finite(opts.scale, "scale")
        inputs = open_inputs(base, tuned, models)

        def combine(name, b, deltas, r0):
            trimmed = [None if d is None else trim(d, density) for d in deltas]
            kept = sum(int(torch.count_nonzero(t)) for t in trimmed if t is not None)
            merged = mix(b, trimmed, weights, elect_sign=True, normalize=opts.normalize, scale=scale)
            return merged, {"kept": kept, "considered": b.numel() * len(deltas)}

        return run_merge(self, inputs, out, opts, combine, whole_tensor=True, progress=progress)
