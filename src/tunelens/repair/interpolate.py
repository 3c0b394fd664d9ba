"""Weight interpolation (WiSE-FT, Wortsman et al., 2022): θ = θ_base + α·(θ_tuned − θ_base)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .core import Repair, RepairResult, register
from .stream_merge import check_finite, open_inputs, run_merge


@register("interpolate")
class Interpolate(Repair):
    description = "θ_base + alpha·Δ: alpha 0 is the base, 1 the tuned model"

    @dataclass
    class Options:
        alpha: float = 0.5

    def run(self, base: str, tuned: str, out: Path, opts, *, progress: bool = True) -> RepairResult:
        alpha = check_finite(opts.alpha, "alpha")
        inputs = open_inputs(base, tuned)

        def combine(name, b, deltas, r0):
            return b + alpha * deltas[0], {}

        return run_merge(self, inputs, out, opts, combine, progress=progress)
