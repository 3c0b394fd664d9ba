"""``resolve_model``: the one entry point that turns any model spec into a loaded ``ModelHandle``.

An adapter's base is itself a spec (possibly another adapter), so resolution is recursive; this module holds
that recursion and the option checks, and leaves classification (``spec``), conversion (``gguf``, ``hub``) and
the loads themselves (``load``) to their modules.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from .gguf import convert_gguf
from .handle import ModelHandle
from .hub import _hub_snapshot
from .load import _apply_adapter, _as_dtype, _check_weights, _has_tokenizer, _load_folder, _load_tokenizer_folder, _Opts
from .spec import _classify, adapter_config, named_base

_MAX_ADAPTER_DEPTH = 3


def resolve_model(
    spec,
    *,
    base: str | None = None,
    tokenizer: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype=torch.float32,
    device="cpu",
    merge_adapter: bool | str = False,
    padding_side: str = "right",
) -> ModelHandle:
    """Load the model a user named (see the module doc for the accepted forms) and its tokenizer.

    base: for PEFT adapters, the base model spec (default: the adapter's base_model_name_or_path), itself resolved
    with these rules. tokenizer: load the tokenizer from this spec instead of the model's folder. merge_adapter:
    merge LoRA weights into the base (returns a plain model); "auto" merges the adapter types whose update folds
    into the weights (LoRA, IA3, ...) and keeps the others (prompt tuning) as PEFT models — for inference, where a
    merged model gives the same outputs faster. ``base`` for a spec that is not an adapter is an error.
    """
    if merge_adapter not in (True, False, "auto"):
        raise ModelError(f"merge_adapter must be True, False or 'auto', not {merge_adapter!r}")
    if padding_side not in ("left", "right"):
        raise ModelError(f"padding_side must be 'left' or 'right', not '{padding_side}'")
    opts = _Opts(bool(allow_pickle), bool(trust_remote_code), _as_dtype(dtype), str(device), padding_side)
    return _resolve(
        str(spec).strip(), opts, base=base, tokenizer=tokenizer, merge=merge_adapter, depth=0, want_tok=True
    )


def _resolve(spec: str, opts: _Opts, *, base, tokenizer, merge: bool, depth: int, want_tok: bool) -> ModelHandle:
    kind, path = _classify(spec)
    if kind == "hub":
        path = _hub_snapshot(spec, allow_pickle=opts.allow_pickle)
        if (path / "adapter_config.json").is_file():
            kind = "peft_adapter"
        elif not (path / "config.json").is_file():
            raise ModelError(f"Hugging Face Hub model '{spec}' has no config.json: it is not a transformers model")
    if base is not None and kind != "peft_adapter":
        raise ModelError(f"a base model ({base}) was given, but '{spec}' is not a PEFT adapter folder")
    if kind == "peft_adapter":
        return _load_adapter(
            spec, path, opts, base=base, tokenizer=tokenizer, merge=merge, depth=depth, want_tok=want_tok
        )
    if kind in ("embedded", "gguf"):
        path = convert_gguf(path)
    model, tok = _load_folder(path, opts, tokenizer=tokenizer, want_tok=want_tok)
    return ModelHandle(model=model, tokenizer=tok, name=spec, path=path, kind=kind, base=None)


def _load_adapter(spec, folder: Path, opts: _Opts, *, base, tokenizer, merge: bool, depth: int, want_tok: bool):
    if depth >= _MAX_ADAPTER_DEPTH:
        raise ModelError(f"adapter {folder}: its chain of base models is too deep (an adapter naming itself?)")
    cfg = adapter_config(folder)
    base_spec = str(base).strip() if base is not None else named_base(folder, cfg)
    if base_spec is None or (base is not None and not base):
        raise ModelError(
            f"adapter {folder} does not name its base model (base_model_name_or_path); pass the base model (--base)"
        )
    _check_weights(folder, opts.allow_pickle, stem="adapter_model")

    own_tok = want_tok and not tokenizer and _has_tokenizer(folder)
    try:
        base_handle = _resolve(
            base_spec,
            opts,
            base=None,
            tokenizer=tokenizer,
            merge=True,
            depth=depth + 1,
            want_tok=want_tok and not own_tok,
        )
    except ModelError as e:
        if base is not None:
            raise
        raise ModelError(f"the base model '{base_spec}' named in {folder / 'adapter_config.json'} "
                         f"(base_model_name_or_path) cannot be loaded: {e}; pass the base model with --base") from None
    tok = _load_tokenizer_folder(folder, opts) if own_tok else base_handle.tokenizer

    model = _apply_adapter(base_handle.model, folder, cfg, base_spec, opts, merge=merge)
    return ModelHandle(model=model, tokenizer=tok, name=spec, path=folder, kind="peft_adapter", base=base_spec)
