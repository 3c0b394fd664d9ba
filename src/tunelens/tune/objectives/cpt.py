"""Continued pretraining (Gururangan et al. 2020, "Don't stop pretraining"): plain language-model loss on raw
domain documents — a `text` task such as the built-in telecom-corpus — before or instead of task tuning.

Documents are cut into rows of at most max_length tokens, never two documents in one row unless --packing runs
on an attention kernel that keeps them apart (tune/examples.build_documents says why). --replay and --safety-mix
blend chats in with their reply-only loss: SafeCOMM's first defence for a domain model made this way.
"""

from __future__ import annotations

from . import register
from .sft import SFT


@register("cpt")
class CPT(SFT):
    rank = 20
    description = "continued pretraining: language-model loss on every token of raw documents (a text task)"
    unit = "text"

    def check(self, cfg) -> None:
        from ...checks import BadSetting

        if cfg.compat_weight:
            raise BadSetting("compat_weight", "--compat-weight is for --objective sft (it distils the base's "
                                              "answers on labelled examples)")

    def examples(self, cfg, tokenizer):
        from ..examples import build_documents

        return build_documents(cfg, tokenizer)

