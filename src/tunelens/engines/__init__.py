"""Engines that score and generate for an audit: ``hf`` (transformers in this process, the default) and ``vllm``
(a vLLM server, see ``engines.vllm``).

``audit_models(base, tuned, settings)`` is the one place an audit gets its two handles: a context manager that
yields (base, tuned) ``ModelHandle``s of one engine — never a mix — and, for a managed vLLM server, stops it on
the way out. With ``vllm`` the handles' ``model`` is a ``VLLMModel`` and their tokenizer is loaded locally from
the same folder the server loads, so both engines score the same tokens.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import TunelensError

ENGINES = ("hf", "vllm")


def engine_of(handle) -> str:
    return getattr(handle.model, "engine", None) or "hf"


def engine_info(handle) -> dict:
    """What a ledger records about the engine that ran a handle."""
    m = handle.model
    return m.info() if engine_of(handle) != "hf" else {"engine": "hf"}


def check_engines(base, tuned) -> None:
    """Base and tuned through the same engine: the comparison is of models, never of engines."""
    if engine_of(base) != engine_of(tuned):
        raise TunelensError(f"base '{base.name}' runs on the {engine_of(base)} engine and tuned '{tuned.name}' on "
                            f"{engine_of(tuned)}: an audit compares both models through one engine")


@contextlib.contextmanager
def audit_models(base: str, tuned: str, settings, *, allow_pickle: bool = False):
    """(base, tuned) handles for an audit on ``settings.engine`` (an ``AuditSection``'s engine / vllm_* fields)."""
    engine = getattr(settings, "engine", "hf") or "hf"
    if engine == "hf":
        from ..models import resolve_model

        yield (resolve_model(base, allow_pickle=allow_pickle),
               resolve_model(tuned, allow_pickle=allow_pickle, merge_adapter="auto"))  # merged: same outputs, faster
        return
    if engine != "vllm":
        raise TunelensError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    from .vllm_handles import vllm_models

    with vllm_models(base, tuned, url=settings.vllm_url, tuned_url=settings.vllm_tuned_url,
                     python=settings.vllm_python) as pair:
        yield pair


def scoring_precision(settings, handles: list, reload) -> tuple[list, dict]:
    """(handles, the ledger's precision record) for an audit's engine: the HF engine picks fp32 or bf16 by
    hardware and a probe-set agreement check (tunelens.precision.audit_precision; `reload` gives fresh fp32
    handles); a vLLM server scores at the dtype it was started with, which tunelens does not change."""
    if (getattr(settings, "engine", "hf") or "hf") == "hf":
        from ..precision import audit_precision

        return audit_precision(settings.dtype, handles, reload=reload)
    if settings.dtype == "bf16":
        raise TunelensError("--dtype bf16 is for --engine hf: a vLLM server scores at the --dtype it was started "
                            "with (a server tunelens starts runs float32)")
    return handles, {"requested": settings.dtype, "chosen": "server",
                     "why": "--engine vllm: the server's own --dtype (float32 when tunelens starts it)"}
