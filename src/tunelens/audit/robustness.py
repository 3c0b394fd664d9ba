"""robustness: the task under several instruction paraphrases — mean, spread and worst case per model."""

from __future__ import annotations

import numpy as np

from ..data import load_task
from ..evaluate import CHOICE_TYPES
from .common import cached_eval, eval_both
from .core import AuditContext, Suite, SuiteResult, paired_entry, register, value_entry

MIN_TEMPLATES = 5
DEFAULT_LIMIT = 40  # items per paraphrase: templates x items x 2 models adds up on CPU


@register("robustness")
class RobustnessSuite(Suite):
    description = "Accuracy under instruction paraphrases (the spec's, or the demo task's built-in ones)."

    def run(self, ctx: AuditContext) -> SuiteResult:
        specs = [s for s in ctx.tasks if s.type in CHOICE_TYPES and s.paraphrases] or [load_task("telecom-intent")]
        entries, records, notes = [], [], []
        limit = min(ctx.limit or DEFAULT_LIMIT, DEFAULT_LIMIT)  # --limit caps; it never adds items
        for spec in specs:
            templates = [spec.template] + list(spec.paraphrases)
            if len(templates) < MIN_TEMPLATES:
                notes.append(f"{spec.name}: only {len(templates)} instruction variants (want {MIN_TEMPLATES}+)")
            acc = {"base": [], "tuned": []}  # [template][item] correctness
            own = cached_eval(ctx, spec)  # the task suite has scored template 0 on the whole split
            for k, tpl in enumerate(templates):
                if k == 0 and own is not None and len(own["base"].records) >= limit:
                    recs = {role: own[role].records[:limit] for role in acc}
                else:
                    res = eval_both(ctx, spec, template=tpl, limit=limit, key=f"{spec.name}/paraphrase-{k}")
                    recs = {role: res[role].records for role in acc}
                for role in acc:
                    acc[role].append([float(r["correct"]) for r in recs[role]])
            a = {role: np.array(v) for role, v in acc.items()}  # [templates, items]
            prefix = f"{spec.name}." if len(specs) > 1 else ""
            kw = dict(task=spec.name)
            entries.append(paired_entry(prefix + "mean_accuracy", a["base"].mean(0), a["tuned"].mean(0),
                                        n_boot=ctx.n_boot, seed=ctx.seed, templates=len(templates), **kw))
            per_tpl = {role: a[role].mean(1) for role in a}
            entries.append(value_entry(prefix + "std_accuracy", float(per_tpl["base"].std()),
                                       float(per_tpl["tuned"].std()), n=len(templates), higher_is_better=False, **kw))
            entries.append(value_entry(prefix + "worst_accuracy", float(per_tpl["base"].min()),
                                       float(per_tpl["tuned"].min()), n=len(templates), **kw))
            for k, tpl in enumerate(templates):
                records.append({"task": spec.name, "template": tpl, "base": {"accuracy": float(per_tpl["base"][k])},
                                "tuned": {"accuracy": float(per_tpl["tuned"][k])}})
        return SuiteResult(records, entries, notes)
