"""Linear merge (model soup; mergekit's linear): θ = (w_base·θ_base + Σwᵢθᵢ) / (w_base + Σwᵢ)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TunelensError
from .core import Repair, RepairResult, register
from .stream_merge import check_finite, check_weights, models_list, open_inputs, run_merge


@register("linear")
class Linear(Repair):
    description = "weighted average of the base and the fine-tunes' weights"

    @dataclass
    class Options:
        base_weight: float = 1.0  # weight of the base model (0: average the fine-tunes only)
        weights: list[float] | None = None  # one per model: the tuned model, then `models`
        models: list[str] | None = None  # further fine-tunes of the same base
        normalize: bool = True  # divide by the sum of the weights

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        models = models_list(opts.models)
        weights = check_weights(opts.weights, 1 + len(models), positive_sum=False)
        wb = check_finite(opts.base_weight, "base_weight")
        total = wb + sum(weights)
        if total <= 0:
            raise TunelensError(f"linear: base_weight {wb:g} plus weights {weights} sum to {total:g}; "
                                f"the weights must sum to a positive number")
        inputs = open_inputs(base, tuned, models)

        def combine(name, b, deltas, r0):
            acc = b * wb
            for w, d in zip(weights, deltas):
                acc.add_(b if d is None else b + d, alpha=w)
            return (acc / total if opts.normalize else acc), {}

        return run_merge(self, inputs, out, opts, combine, progress=progress, weights={"base": wb, "models": weights})
