"""context: does the model still follow the context it is given? Counterfactual-context QA.

Every passage contradicts common knowledge; the right answer follows the passage. Run with and
without the chat template (instruction tuning often weakens context use under the template).
Faithfulness: K-precision (share of answer tokens found in the passage) and recall of the reference.
"""

from __future__ import annotations

import dataclasses

from ..data import load_task
from ..metrics import normalize_answer
from .common import eval_both, pool_size
from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register


def follows_context(output: str, reference: str) -> float:
    return float(normalize_answer(reference) in normalize_answer(output)) if normalize_answer(reference) else 0.0


def k_precision(output: str, context: str) -> float:
    out = normalize_answer(output).split()
    ctx = set(normalize_answer(context).split())
    return sum(w in ctx for w in out) / len(out) if out else 0.0


def recall(output: str, reference: str) -> float:
    ref = normalize_answer(reference).split()
    out = set(normalize_answer(output).split())
    return sum(w in out for w in ref) / len(ref) if ref else 0.0


@register("context")
class ContextSuite(Suite):
    description = ("Counterfactual-context QA with and without the chat template: accuracy decided, K-precision, "
                   "recall.")

    def headline_count(self, ctx: AuditContext) -> int:
        return 2

    def run(self, ctx: AuditContext) -> SuiteResult:
        chat = load_task("counterfactual-context")
        # without a chat template the model needs an answer cue, else its first token is the newline stop
        plain = dataclasses.replace(chat, chat_template=False, template=chat.template.rstrip() + "\nAnswer:")
        items = {it.id: it for it in ctx.pool(chat)}
        entries, records, headline = [], [], []
        for mode, spec in (("chat", chat), ("plain", plain)):
            res = eval_both(ctx, spec, key=f"counterfactual-context/{mode}")
            ctx.cache["generated_tokens"] = ctx.cache.get("generated_tokens", 0) + sum(
                r["n_tokens"] for role in ("base", "tuned") for r in res[role].records)
            vals = {"base": {}, "tuned": {}}
            for role in ("base", "tuned"):
                recs = res[role].records
                ref = lambda r: r["references"][0]
                vals[role] = {
                    "accuracy": [follows_context(r["output"], ref(r)) for r in recs],
                    "k_precision": [k_precision(r["output"], items[r["id"]].context or "") for r in recs],
                    "recall": [recall(r["output"], ref(r)) for r in recs],
                }
            headline.append(Headline(f"{mode}.accuracy", vals["base"]["accuracy"], vals["tuned"]["accuracy"],
                                     pool_size(ctx, spec)))
            for m in ("accuracy", "k_precision", "recall"):
                entries.append(paired_entry(f"{mode}.{m}", vals["base"][m], vals["tuned"][m], n_boot=ctx.boot,
                                            seed=ctx.seed, mode=mode))
            for i, (rb, rt) in enumerate(zip(res["base"].records, res["tuned"].records)):
                records.append({"id": rb["id"], "mode": mode, "question": items[rb["id"]].fields.get("prompt"),
                                "answer": rb["references"][0],
                                "base": {"output": rb["output"], "follows": vals["base"]["accuracy"][i]},
                                "tuned": {"output": rt["output"], "follows": vals["tuned"]["accuracy"][i]}})
        return SuiteResult(records, entries, headline=headline)
