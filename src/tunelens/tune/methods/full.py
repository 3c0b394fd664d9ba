"""Full fine-tuning: every weight trains, so the step is two orders of magnitude smaller than an adapter's."""

from __future__ import annotations

from . import TuningMethod, register


@register("full")
class Full(TuningMethod):
    default_lr = 2e-5
    rank = 20
    description = "every weight (saves a full model folder)"
