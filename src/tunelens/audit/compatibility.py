"""compatibility: MUSCLE's update-compatibility measures between base and tuned (Echterhoff et al. 2024).

Choice tasks: negative flips (base right, tuned wrong), positive flips, inconsistency flips (tuned
wrong and a different prediction than base). Generation: D = S(tuned) - S(base) per item for a
metric S (token F1); flip rates by the sign of D, with the average gain and average regression.
"""

from __future__ import annotations

import numpy as np

from ..data import load_task
from ..evaluate import CHOICE_TYPES
from .common import eval_both
from .core import AuditContext, Suite, SuiteResult, register, value_entry

GEN_METRIC = "token_f1"


def choice_flips(base_records, tuned_records) -> dict:
    n = len(base_records)
    b = np.array([r["correct"] for r in base_records], bool)
    t = np.array([r["correct"] for r in tuned_records], bool)
    pb = np.array([r["pred"] for r in base_records])
    pt = np.array([r["pred"] for r in tuned_records])
    return {"negative_flip_rate": float((b & ~t).mean()), "positive_flip_rate": float((~b & t).mean()),
            "inconsistency_flip_rate": float((~t & (pb != pt)).mean()), "n": n}


def generation_flips(base_scores, tuned_scores) -> dict:
    d = np.asarray(tuned_scores, float) - np.asarray(base_scores, float)
    n = len(d)
    pfr, nfr = float((d > 0).mean()), float((d < 0).mean())
    gain = float(d[d > 0].sum() / (n * pfr)) if pfr else 0.0
    regression = float(np.abs(d[d < 0]).sum() / (n * nfr)) if nfr else 0.0
    return {"positive_flip_rate": pfr, "negative_flip_rate": nfr, "average_gain": gain,
            "average_regression": regression, "n": n}


@register("compatibility")
class CompatibilitySuite(Suite):
    rank = 70
    description = "Negative/positive/inconsistency flips between base and tuned (MUSCLE), on the items the task suite used."
    sequential = False

    def summary_flips(self, records: list[dict]) -> list[dict]:
        """The negative flips: right before, wrong after."""
        return [r for r in records if r.get("flip") == "negative"]

    def run(self, ctx: AuditContext) -> SuiteResult:
        specs = ctx.eval_tasks or [load_task("general-knowledge")]
        entries, records = [], []
        for spec in specs:
            res = eval_both(ctx, spec)
            b, t = res["base"].records, res["tuned"].records
            if spec.type in CHOICE_TYPES:
                flips = choice_flips(b, t)
                for r0, r1 in zip(b, t):
                    if r0["correct"] != r1["correct"]:
                        records.append({"task": spec.name, "id": r0["id"], "prompt": r0["prompt"],
                                        "flip": "negative" if r0["correct"] else "positive",
                                        "answer": r0["choices"][r0["answer"]],
                                        "base": r0["choices"][r0["pred"]], "tuned": r1["choices"][r1["pred"]]})
            else:
                flips = generation_flips([r[GEN_METRIC] for r in b], [r[GEN_METRIC] for r in t])
                for r0, r1 in zip(b, t):
                    if r0[GEN_METRIC] != r1[GEN_METRIC]:
                        records.append({"task": spec.name, "id": r0["id"], "prompt": r0["prompt"],
                                        "flip": "negative" if r1[GEN_METRIC] < r0[GEN_METRIC] else "positive",
                                        "delta": r1[GEN_METRIC] - r0[GEN_METRIC],
                                        "base": r0["output"], "tuned": r1["output"]})
            n = flips.pop("n")
            prefix = f"{spec.name}." if len(specs) > 1 or not ctx.eval_tasks else ""
            for name, v in flips.items():
                # a flip rate of base against itself is 0 by definition: the delta is the rate itself
                entries.append(value_entry(prefix + name, 0.0, v, n=n, task=spec.name,
                                           higher_is_better=name in ("positive_flip_rate", "average_gain")))
        return SuiteResult(records, entries)
