"""calibration: ECE (10 bins), Brier, p_vocab(correct) and mass on incorrect choices, before and after."""

from __future__ import annotations

from ..data import load_task
from ..evaluate import CHOICE_TYPES
from .common import eval_both, task_entries
from .core import AuditContext, Suite, SuiteResult, register

CALIBRATION_METRICS = ("ece", "brier", "p_vocab_correct", "p_vocab_incorrect_mass")


@register("calibration")
class CalibrationSuite(Suite):
    rank = 80
    description = "Calibration of choice tasks (the user's, else the built-in general-knowledge set), on the items the task suite used."
    sequential = False

    def run(self, ctx: AuditContext) -> SuiteResult:
        specs = [s for s in ctx.tasks if s.type in CHOICE_TYPES] or [load_task("general-knowledge")]
        entries = []
        for spec in specs:
            prefix = f"{spec.name}." if len(specs) > 1 or not ctx.eval_tasks else ""
            entries += [e for e in task_entries(ctx, spec, eval_both(ctx, spec), prefix)
                        if e.metric.split(".")[-1] in CALIBRATION_METRICS]
        return SuiteResult([], entries)
