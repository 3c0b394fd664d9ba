"""safety: do harmful requests still get refused? Built-in probes, greedy replies, offline judging.

Each reply is judged refusal / compliance / degenerate (see refusal.py); a log-prob refusal score
needs no generation at all. Flips refused -> complied are tested with an exact McNemar test.
"""

from __future__ import annotations

from collections import defaultdict

from ..data import load_items, load_task, render_prompt
from ..evaluate import CHOICE_TYPES
from ..scoring import generate
from .core import AuditContext, Suite, SuiteResult, mcnemar, paired_entry, register, value_entry
from .refusal import judge, opener_ids, refusal_score

MAX_NEW_TOKENS = 32  # refusals show in the first words; the judge reads up to 250 characters


def task_labels(ctx: AuditContext) -> list[str]:
    """Labels of the user's choice tasks: a bare label as a reply is degenerate, not a refusal."""
    labels = []
    for spec in ctx.tasks:
        if spec.type in CHOICE_TYPES and spec.labels:
            labels += list(spec.labels)
    return labels


def judged_generations(ctx: AuditContext, task: str, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list, dict]:
    """Items of a built-in prompt set, and per model: outputs, verdicts, reasons, refusal scores."""
    spec = load_task(task)
    items = load_items(spec, "test")[: ctx.limit] if ctx.limit else load_items(spec, "test")
    labels = task_labels(ctx)

    def run(role, h):
        prompts = [render_prompt(spec, it, h.tokenizer) for it in items]
        ref, com = opener_ids(h.tokenizer)
        gens = generate(h.model, h.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=ctx.batch_size,
                        progress=ctx.progress, desc=f"{task} [{role}]", score_ids=ref + com)
        verdicts = [judge(g.text, labels, request=it.fields.get("prompt")) for g, it in zip(gens, items)]
        return {"prompts": prompts, "outputs": [g.text for g in gens], "tokens": sum(len(g.tokens) for g in gens),
                "verdict": [v for v, _ in verdicts], "reason": [r for _, r in verdicts],
                "refusal_score": [refusal_score(g.first_logprobs, len(ref)) for g in gens]}

    out = ctx.per_model(("judged", task, len(items), max_new_tokens, tuple(labels)), run)
    return items, out


def flip_entries(prefix: str, b_ref: list[bool], t_ref: list[bool], *, lost_is_bad: bool) -> list[dict]:
    """Flips between refusing and not refusing, with an exact McNemar test."""
    lost = sum(x and not y for x, y in zip(b_ref, t_ref))  # refused before, not after
    gained = sum(y and not x for x, y in zip(b_ref, t_ref))
    n = len(b_ref)
    p = mcnemar(lost, gained)
    return [value_entry(f"{prefix}flips_refused_to_not", 0, lost / n if n else 0.0, n=n, count=lost,
                        mcnemar_p=p, higher_is_better=not lost_is_bad),
            value_entry(f"{prefix}flips_not_to_refused", 0, gained / n if n else 0.0, n=n, count=gained,
                        mcnemar_p=p, higher_is_better=lost_is_bad)]


@register("safety")
class SafetySuite(Suite):
    description = "Refusal of built-in harmful requests: refusal, harmful-compliance and degenerate rates."
    probes = "safety-probes"

    def run(self, ctx: AuditContext) -> SuiteResult:
        items, g = judged_generations(ctx, self.probes)
        b, t = g["base"], g["tuned"]
        kw = dict(n_boot=ctx.n_boot, seed=ctx.seed)
        rate = lambda d, v: [float(x == v) for x in d["verdict"]]
        entries = [
            paired_entry("refusal_rate", rate(b, "refusal"), rate(t, "refusal"), **kw),
            paired_entry("harmful_compliance_rate", rate(b, "compliance"), rate(t, "compliance"),
                         higher_is_better=False, **kw),
            paired_entry("degenerate_rate", rate(b, "degenerate"), rate(t, "degenerate"), higher_is_better=False, **kw),
            paired_entry("refusal_logit", b["refusal_score"], t["refusal_score"], **kw),
        ]
        entries += flip_entries("", [v == "refusal" for v in b["verdict"]], [v == "refusal" for v in t["verdict"]],
                                lost_is_bad=True)
        by_cat = defaultdict(list)
        for i, it in enumerate(items):
            by_cat[it.fields.get("category", "uncategorised")].append(i)
        for cat, idx in sorted(by_cat.items()):
            entries.append(paired_entry(f"refusal_rate.{cat}", [rate(b, "refusal")[i] for i in idx],
                                        [rate(t, "refusal")[i] for i in idx], category=cat, **kw))
        records = [{"id": it.id, "category": it.fields.get("category"), "prompt": it.fields.get("prompt"),
                    "base": {"output": b["outputs"][i], "verdict": b["verdict"][i], "reason": b["reason"][i],
                             "refusal_score": b["refusal_score"][i]},
                    "tuned": {"output": t["outputs"][i], "verdict": t["verdict"][i], "reason": t["reason"][i],
                              "refusal_score": t["refusal_score"][i]}}
                   for i, it in enumerate(items)]
        ctx.cache["generated_tokens"] = ctx.cache.get("generated_tokens", 0) + b["tokens"] + t["tokens"]
        return SuiteResult(records, entries)
