"""robustness: the task under several instruction variants — per item, the mean over the variants and whether
it is right under every one; per variant, the spread and the worst.

Which variants: a choice task's own ``paraphrases:`` when its spec has them (``paraphrases="spec"`` in the
entries); else variants built from its template by the generic rewrites of rewrites.py, named
``generated:<rewrite>`` (``paraphrases="generated"``, with the list of ``rewrites``: they were not written for the
task). Only when no ``--task`` is given at all does the suite run the built-in telecom-intent demo task, with its
own paraphrases, and then its entries say ``builtin: true`` and a note says so. Every entry names its ``task``;
`RobustnessSuite.label` is how the CLI, summary.md and the report show it.

An item with its variants is one cluster: the per-item values are what the intervals resample (a cluster
bootstrap; rows resampled one by one would treat 7 correlated answers as 7 independent ones and understate the
interval) and what the confidence sequences draw.
"""

from __future__ import annotations

import numpy as np

from ..data import load_task
from ..evaluate import CHOICE_TYPES
from . import rewrites as R
from .common import eval_both, pool_size
from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register, value_entry
from .core import entry_label  # noqa: F401 - the CLI table's label, imported from here

MIN_TEMPLATES = 5
DEFAULT_LIMIT = 40  # the most items drawn per variant (templates x items x 2 models adds up on CPU)
BUILTIN_TASK = "telecom-intent"


@register("robustness")
class RobustnessSuite(Suite):
    rank = 60
    description = ("Accuracy under instruction variants — each choice task's own paraphrases, or variants generated "
                   "from generic rewrites when it has none (the built-in demo task only without --task): mean over "
                   "variants and right-under-every-variant decided, per item as a cluster.")

    def headline_count(self, ctx: AuditContext) -> int:
        return 2 * len(self._specs(ctx)[0])

    def label(self, entry: dict) -> str:
        """The entry's metric led by its task ("pets: mean_accuracy", "pets (generated variants): …",
        "telecom-intent (built-in demo): …")."""
        metric = str(entry.get("metric", ""))
        task = entry.get("task")
        if not task:
            return metric
        if metric.startswith(f"{task}."):
            metric = metric[len(task) + 1:]
        how = " (built-in demo)" if entry.get("builtin") else " (generated variants)" \
            if entry.get("paraphrases") == "generated" else ""
        return f"{task}{how}: {metric}"

    @staticmethod
    def _specs(ctx: AuditContext) -> tuple[list[tuple], list[str]]:
        """[(spec, source)] with source "spec" (its own paraphrases), "generated" (none: generic rewrites) or
        "builtin" (no --task: the demo task), and the notes on the tasks left out."""
        if not ctx.eval_tasks:
            return [(load_task(BUILTIN_TASK), "builtin")], [
                f"no --task given: this suite ran on the built-in {BUILTIN_TASK} demo task and its own paraphrases, "
                "not on a task of the tuned model"]
        specs, notes = [], []
        for s in ctx.eval_tasks:
            if s.type not in CHOICE_TYPES:
                notes.append(f"{s.name}: a {s.type} task; robustness covers choice tasks only")
            elif s.template is None or ("bridged", s.name) in ctx.cache:
                notes.append(f"{s.name}: scored with its own prompts (lm-eval); no instruction variants")
            else:
                specs.append((s, "spec" if s.paraphrases else "generated"))
        if not specs:
            notes.append("no choice task with a template among the --task tasks: nothing to run")
        return specs, notes

    @staticmethod
    def _templates(ctx: AuditContext, spec, source: str) -> list[tuple[str, str]]:
        """[(name, template)]: the task's own template first, then its variants."""
        if source != "generated":
            return [("template", spec.template)] + [(f"paraphrase-{k}", p) for k, p in enumerate(spec.paraphrases, 1)]
        labels = list(spec.labels) if spec.labels else None
        if labels is None and spec.type == "classification":  # the same label set for every item
            choices = {tuple(it.choices) for it in ctx.pool(spec, spec.eval_split)}
            labels = list(next(iter(choices))) if len(choices) == 1 else None
        return [("template", spec.template)] + [(v.name, v.template)
                                                for v in R.generate(spec.template, spec.type, labels)]

    def run(self, ctx: AuditContext) -> SuiteResult:
        plan, notes = self._specs(ctx)
        entries, records, headline = [], [], []
        for spec, source in plan:
            pool = pool_size(ctx, spec)
            cap = min(ctx.capped(pool), DEFAULT_LIMIT)  # --limit caps the draws; it never adds any
            named = self._templates(ctx, spec, source)
            generated = [name for name, _ in named if name.startswith(R.PREFIX)]
            if generated:
                notes.append(f"{spec.name}: no paraphrases in its spec; {R.NOTE}: {', '.join(generated)}")
            if len(named) < MIN_TEMPLATES:
                notes.append(f"{spec.name}: only {len(named)} instruction variants (want {MIN_TEMPLATES}+)")
            acc = {"base": [], "tuned": []}  # [template][item] correctness
            ids = None
            for k, (name, tpl) in enumerate(named):
                # template 0 under the task's own key: the task suite's chunks serve it when its pool is the same
                res = eval_both(ctx, spec, template=None if k == 0 else tpl, limit=cap,
                                key=None if k == 0 else f"{spec.name}/{name}")
                recs = {role: res[role].records for role in acc}
                ids = ids or [r["id"] for r in recs["base"]]
                for role in acc:
                    acc[role].append([float(r["correct"]) for r in recs[role]])
            a = {role: np.array(v) for role, v in acc.items()}  # [templates, items]
            prefix = f"{spec.name}." if len(plan) > 1 else ""
            about = dict(task=spec.name, paraphrases="generated" if generated else "spec")
            if generated:
                about["rewrites"] = generated
            if source == "builtin":
                about["builtin"] = True
            kw = dict(templates=len(named), cluster="item with its instruction variants", **about)
            mean = {role: a[role].mean(0) for role in a}  # per item
            every = {role: a[role].min(0) for role in a}  # right under every variant, per item
            entries.append(paired_entry(prefix + "mean_accuracy", mean["base"], mean["tuned"], n_boot=ctx.boot,
                                        seed=ctx.seed, **kw))
            entries.append(paired_entry(prefix + "all_paraphrases_accuracy", every["base"], every["tuned"],
                                        n_boot=ctx.boot, seed=ctx.seed, **kw))
            per_tpl = {role: a[role].mean(1) for role in a}
            entries.append(value_entry(prefix + "std_accuracy", float(per_tpl["base"].std()),
                                       float(per_tpl["tuned"].std()), n=len(named), higher_is_better=False,
                                       role="diagnostic", meaning="spread of accuracy across the instruction variants",
                                       **about))
            entries.append(value_entry(prefix + "worst_accuracy", float(per_tpl["base"].min()),
                                       float(per_tpl["tuned"].min()), n=len(named), role="diagnostic",
                                       meaning="accuracy under the instruction variant each model handles worst",
                                       **about))
            headline += [Headline(prefix + "mean_accuracy", list(mean["base"]), list(mean["tuned"]), pool, cap=cap),
                         Headline(prefix + "all_paraphrases_accuracy", list(every["base"]), list(every["tuned"]),
                                  pool, cap=cap)]
            for i, item_id in enumerate(ids or []):
                records.append({"task": spec.name, "id": item_id,
                                "base": {"correct": a["base"][:, i].tolist(), "mean": float(mean["base"][i])},
                                "tuned": {"correct": a["tuned"][:, i].tolist(), "mean": float(mean["tuned"][i])}})
            for k, (name, tpl) in enumerate(named):
                records.append({"task": spec.name, "template_name": name, "template": tpl,
                                "generated": name.startswith(R.PREFIX),
                                "base": {"accuracy": float(per_tpl["base"][k])},
                                "tuned": {"accuracy": float(per_tpl["tuned"][k])}})
        return SuiteResult(records, entries, notes, headline=headline)
