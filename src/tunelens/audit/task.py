"""task: the user's own task files, base vs tuned on the same items — metric deltas and flips."""

from __future__ import annotations

from .common import eval_both, pool_size, side_by_side, task_entries, task_headline
from .core import AuditContext, Suite, SuiteResult, mcnemar, paired_entry, register


@register("task")
class TaskSuite(Suite):
    rank = 10
    description = "The user's tasks: accuracy (choice) or token F1 (generation) decided, every other metric and flips."
    flip_rank = 2
    sweep_metrics = ("accuracy", "rouge_l", "token_f1", "exact_match")

    def sweep_axis(self, names: set[str]) -> str | None:
        """With several tasks the metrics carry the task name ("task.pets.accuracy"): the first task's then."""
        return super().sweep_axis(names) or next(
            (n for m in self.sweep_metrics for n in sorted(names) if n.startswith("task.") and n.endswith("." + m)),
            None)

    def headline_count(self, ctx: AuditContext) -> int:
        return len(ctx.eval_tasks)

    def run(self, ctx: AuditContext) -> SuiteResult:
        tasks = ctx.eval_tasks
        if not tasks:
            return SuiteResult([], [], ["no --task given; nothing to compare" if not ctx.tasks else
                                        "only preference tasks given: the preference suite audits them"])
        records, entries, headline = [], [], []
        for spec in tasks:
            res = eval_both(ctx, spec)
            prefix = f"{spec.name}." if len(tasks) > 1 else ""
            entries += task_entries(ctx, spec, res, prefix)
            headline.append(task_headline(spec, res, pool_size(ctx, spec), prefix))
            rows = side_by_side(spec, res)
            if "choices" in (rows[0] if rows else {}):
                b = [float(r["base"]["correct"]) for r in rows]
                t = [float(r["tuned"]["correct"]) for r in rows]
                neg = [float(x == 1 and y == 0) for x, y in zip(b, t)]
                pos = [float(x == 0 and y == 1) for x, y in zip(b, t)]
                zero = [0.0] * len(rows)
                kw = dict(n_boot=ctx.boot, seed=ctx.seed, task=spec.name)
                p = mcnemar(int(sum(neg)), int(sum(pos)))
                entries.append(paired_entry(prefix + "negative_flip_rate", zero, neg, higher_is_better=False,
                                            count=int(sum(neg)), mcnemar_p=p, **kw))
                entries.append(paired_entry(prefix + "positive_flip_rate", zero, pos, count=int(sum(pos)),
                                            mcnemar_p=p, **kw))
            records += rows
        return SuiteResult(records, entries, headline=headline)
