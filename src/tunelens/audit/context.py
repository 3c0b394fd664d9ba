"""context: does the model still follow the context it is given? Counterfactual-context QA.

Every passage contradicts common knowledge; the right answer follows the passage. Run with and
without the chat template (instruction tuning often weakens context use under the template).
Faithfulness: K-precision (share of answer tokens found in the passage) and recall of the reference;
prior fallback: the share of outputs that give the item's common (real-world) answer and not the passage's.

Every comparison normalises both sides with normalize_numbers then normalize_answer, so "12" matches
"twelve" and "7 km" matches "seven kilometres"; answers are matched as whole words, allowing a plural or possessive s ("ten" is not in "often").
K-precision is computed only over items whose passage does not contain the common answer (else copying the
passage and answering from prior knowledge look the same); the built-in set has no such item.
"""

from __future__ import annotations

import dataclasses
import re

from ..data import load_task
from ..metrics import normalize_answer, normalize_numbers
from .common import eval_both, pool_size
from .core import AuditContext, Headline, Suite, SuiteResult, paired_entry, register


def _norm(text: str) -> str:
    return normalize_answer(normalize_numbers(text))


def contains_answer(output: str, answer: str) -> bool:
    """Whether the normalised answer occurs in the normalised output as a run of whole words; its last word may
    take a plural or possessive s ("cheetahs", "Brazil's" contain "the cheetah", "Brazil"), nothing else
    ("often" does not contain "ten", "1000" does not contain "100")."""
    a = _norm(answer)
    return bool(a) and re.search(r"(?<!\S)" + re.escape(a) + r"(?:s|es)?(?!\S)", _norm(output)) is not None


def follows_context(output: str, reference: str) -> float:
    return float(contains_answer(output, reference))


def prior_fallback(output: str, reference: str, common: str) -> float:
    """1 when the output gives the common answer and not the passage's answer."""
    return float(contains_answer(output, common) and not contains_answer(output, reference))


def k_precision(output: str, context: str) -> float:
    out = _norm(output).split()
    ctx = set(_norm(context).split())
    return sum(w in ctx for w in out) / len(out) if out else 0.0


def recall(output: str, reference: str) -> float:
    ref = _norm(reference).split()
    out = set(_norm(output).split())
    return sum(w in out for w in ref) / len(ref) if ref else 0.0


def k_precision_separates(item) -> bool:
    """K-precision can tell passage use from prior knowledge only when the passage lacks the common answer: neither
    the phrase (contains_answer) nor every one of its words that the passage's answer does not share ("Pacific" of
    "Pacific Ocean" when the answer is "Atlantic Ocean")."""
    common = item.fields.get("common_answer")
    if not common:
        return True
    own = set(_norm(common).split()) - set(_norm(item.references[0] if item.references else "").split())
    ctx = set(_norm(item.context or "").split())
    return not contains_answer(item.context or "", common) and not (own and own <= ctx)


MEANINGS = {
    "k_precision": "share of answer tokens found in the passage, over items whose passage lacks the common answer",
    "prior_fallback_rate": "share of outputs giving the common (real-world) answer and not the passage's",
}


@register("context")
class ContextSuite(Suite):
    rank = 50
    description = ("Counterfactual-context QA with and without the chat template: accuracy decided, K-precision, "
                   "recall, prior-fallback rate.")
    flip_rank = 4

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
            separates = [k_precision_separates(items[r["id"]]) for r in res["base"].records]
            for role in ("base", "tuned"):
                recs = res[role].records
                ref = lambda r: r["references"][0]
                vals[role] = {
                    "accuracy": [follows_context(r["output"], ref(r)) for r in recs],
                    "k_precision": [k_precision(r["output"], items[r["id"]].context or "")
                                    for r, keep in zip(recs, separates) if keep],
                    "recall": [recall(r["output"], ref(r)) for r in recs],
                    "prior_fallback_rate": [prior_fallback(r["output"], ref(r),
                                                           items[r["id"]].fields.get("common_answer") or "")
                                            for r in recs],
                }
            headline.append(Headline(f"{mode}.accuracy", vals["base"]["accuracy"], vals["tuned"]["accuracy"],
                                     pool_size(ctx, spec)))
            for m in ("accuracy", "k_precision", "recall", "prior_fallback_rate"):
                entries.append(paired_entry(f"{mode}.{m}", vals["base"][m], vals["tuned"][m], n_boot=ctx.boot,
                                            seed=ctx.seed, mode=mode, higher_is_better=m != "prior_fallback_rate",
                                            meaning=MEANINGS.get(m)))
            for i, (rb, rt) in enumerate(zip(res["base"].records, res["tuned"].records)):
                records.append({"id": rb["id"], "mode": mode, "question": items[rb["id"]].fields.get("prompt"),
                                "answer": rb["references"][0],
                                "common_answer": items[rb["id"]].fields.get("common_answer"),
                                "base": {"output": rb["output"], "follows": vals["base"]["accuracy"][i],
                                         "prior_fallback": vals["base"]["prior_fallback_rate"][i]},
                                "tuned": {"output": rt["output"], "follows": vals["tuned"]["accuracy"][i],
                                          "prior_fallback": vals["tuned"]["prior_fallback_rate"][i]}})
        return SuiteResult(records, entries, headline=headline)
