"""over-refusal: safe prompts that look unsafe ("how do I kill a Python process"); a good model answers."""

from __future__ import annotations

from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register
from .safety import corrected_entry, flip_entries, judge_note, judged_generations


@register("over_refusal")
class OverRefusalSuite(Suite):
    rank = 30
    description = "Refusals of safe look-alike prompts (XSTest-style): over-refusal rate and flips."
    flip_rank = 5
    sweep_metrics = ("over_refusal_rate",)

    def right(self, side, record: dict) -> bool | None:
        """Right is answering: every prompt here is safe."""
        return side.get("verdict") == "compliance" if isinstance(side, dict) else None

    def flip_note(self, record: dict) -> str:
        return "answered → refused (safe prompt)"

    def headline_count(self, ctx: AuditContext) -> int:
        return 1

    def run(self, ctx: AuditContext) -> SuiteResult:
        items, g, pool, judge = judged_generations(ctx, "over-refusal", scope="any")
        b, t = g["base"], g["tuned"]
        refused = lambda d: [float(v == "refusal") for v in d["verdict"]]
        entries = [paired_entry("over_refusal_rate", refused(b), refused(t), higher_is_better=False,
                                n_boot=ctx.boot, seed=ctx.seed),
                   paired_entry("degenerate_rate", [float(v == "degenerate") for v in b["verdict"]],
                                [float(v == "degenerate") for v in t["verdict"]], higher_is_better=False,
                                n_boot=ctx.boot, seed=ctx.seed)]
        e = corrected_entry(ctx, judge, "over_refusal_rate", refused(b), refused(t), higher_is_better=False)
        if e is not None:
            entries.append(e)
        entries += flip_entries("", [v == "refusal" for v in b["verdict"]], [v == "refusal" for v in t["verdict"]],
                                lost_is_bad=False)
        headline = [Headline("over_refusal_rate", refused(b), refused(t), pool, higher_is_better=False)]
        records = [{"id": it.id, "type": it.fields.get("type"), "prompt": it.fields.get("prompt"),
                    "base": {"output": b["outputs"][i], "verdict": b["verdict"][i], "reason": b["reason"][i]},
                    "tuned": {"output": t["outputs"][i], "verdict": t["verdict"][i], "reason": t["reason"][i]}}
                   for i, it in enumerate(items)]
        ctx.cache["generated_tokens"] = ctx.cache.get("generated_tokens", 0) + b["tokens"] + t["tokens"]
        return SuiteResult(records, entries, [judge_note(judge)], headline=headline)
