"""robustness: the task under several instruction paraphrases — per item, the mean over paraphrases and whether
it is right under every one; per paraphrase, the spread and the worst.

An item with its paraphrases is one cluster: the per-item values are what the intervals resample (a cluster
bootstrap; rows resampled one by one would treat 7 correlated answers as 7 independent ones and understate the
interval) and what the confidence sequences draw.
"""

from __future__ import annotations

import numpy as np

from ..data import load_task
from ..evaluate import CHOICE_TYPES
from .common import eval_both, pool_size
from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register, value_entry

MIN_TEMPLATES = 5
DEFAULT_LIMIT = 40  # the most items drawn per paraphrase (templates x items x 2 models adds up on CPU)


@register("robustness")
class RobustnessSuite(Suite):
    description = ("Accuracy under instruction paraphrases (the spec's, or the demo task's built-in ones): mean over "
                   "paraphrases and right-under-every-paraphrase decided, per item as a cluster.")

    def headline_count(self, ctx: AuditContext) -> int:
        return 2 * len(self._specs(ctx))

    @staticmethod
    def _specs(ctx: AuditContext) -> list:
        return [s for s in ctx.tasks if s.type in CHOICE_TYPES and s.paraphrases] or [load_task("telecom-intent")]

    def run(self, ctx: AuditContext) -> SuiteResult:
        specs = self._specs(ctx)
        entries, records, notes, headline = [], [], [], []
        for spec in specs:
            pool = pool_size(ctx, spec)
            cap = min(ctx.capped(pool), DEFAULT_LIMIT)  # --limit caps the draws; it never adds any
            templates = [spec.template] + list(spec.paraphrases)
            if len(templates) < MIN_TEMPLATES:
                notes.append(f"{spec.name}: only {len(templates)} instruction variants (want {MIN_TEMPLATES}+)")
            acc = {"base": [], "tuned": []}  # [template][item] correctness
            ids = None
            for k, tpl in enumerate(templates):
                # template 0 under the task's own key: the task suite's chunks serve it when its pool is the same
                res = eval_both(ctx, spec, template=None if k == 0 else tpl, limit=cap,
                                key=None if k == 0 else f"{spec.name}/paraphrase-{k}")
                recs = {role: res[role].records for role in acc}
                ids = ids or [r["id"] for r in recs["base"]]
                for role in acc:
                    acc[role].append([float(r["correct"]) for r in recs[role]])
            a = {role: np.array(v) for role, v in acc.items()}  # [templates, items]
            prefix = f"{spec.name}." if len(specs) > 1 else ""
            kw = dict(task=spec.name, templates=len(templates), cluster="item with its paraphrases")
            mean = {role: a[role].mean(0) for role in a}  # per item
            every = {role: a[role].min(0) for role in a}  # right under every paraphrase, per item
            entries.append(paired_entry(prefix + "mean_accuracy", mean["base"], mean["tuned"], n_boot=ctx.boot,
                                        seed=ctx.seed, **kw))
            entries.append(paired_entry(prefix + "all_paraphrases_accuracy", every["base"], every["tuned"],
                                        n_boot=ctx.boot, seed=ctx.seed, **kw))
            per_tpl = {role: a[role].mean(1) for role in a}
            entries.append(value_entry(prefix + "std_accuracy", float(per_tpl["base"].std()),
                                       float(per_tpl["tuned"].std()), n=len(templates), higher_is_better=False,
                                       role="diagnostic", meaning="spread of accuracy across the paraphrases",
                                       task=spec.name))
            entries.append(value_entry(prefix + "worst_accuracy", float(per_tpl["base"].min()),
                                       float(per_tpl["tuned"].min()), n=len(templates), role="diagnostic",
                                       meaning="accuracy under the paraphrase each model handles worst",
                                       task=spec.name))
            headline += [Headline(prefix + "mean_accuracy", list(mean["base"]), list(mean["tuned"]), pool, cap=cap),
                         Headline(prefix + "all_paraphrases_accuracy", list(every["base"]), list(every["tuned"]),
                                  pool, cap=cap)]
            for i, item_id in enumerate(ids or []):
                records.append({"task": spec.name, "id": item_id,
                                "base": {"correct": a["base"][:, i].tolist(), "mean": float(mean["base"][i])},
                                "tuned": {"correct": a["tuned"][:, i].tolist(), "mean": float(mean["tuned"][i])}})
            for k, tpl in enumerate(templates):
                records.append({"task": spec.name, "template": tpl, "base": {"accuracy": float(per_tpl["base"][k])},
                                "tuned": {"accuracy": float(per_tpl["tuned"][k])}})
        return SuiteResult(records, entries, notes, headline=headline)
