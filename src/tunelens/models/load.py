"""Loading what a spec resolved to: a local model folder (safetensors, or pickles only when allowed), its tokenizer
or one named separately, and a PEFT adapter applied to an already loaded base.

Every load ends the same way (eval mode, on the asked device, weights checked finite, pad token set), whichever
form the model came in, so that is written once here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError, TunelensError
from .common import _one_line, _quiet
from .gguf import convert_gguf
from .hub import _hub_snapshot
from .spec import _classify

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# pickles that sit beside the weights in Trainer checkpoints but are not weights
_NON_WEIGHT_PICKLE = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
)


@dataclass
class _Opts:
    allow_pickle: bool
    trust_remote_code: bool
    dtype: torch.dtype
    device: str
    padding_side: str


# adapter types whose update folds into the base weights (merge_and_unload); prompt tuning's does not
MERGEABLE_PEFT_TYPES = frozenset({"LORA", "IA3", "LOHA", "LOKR", "ADALORA"})


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "").strip().lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(name, name)
    d = getattr(torch, name, None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise ModelError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    return d


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in TOKENIZER_FILES)


def _check_weights(folder: Path, allow_pickle: bool, *, stem: str | None = None) -> bool:
    """True: load safetensors. False: pickle weights, allowed. Raises when refused or when there are none.
    ``stem`` restricts the files considered (e.g. 'adapter_model')."""
    names = sorted(f.name for f in folder.iterdir() if f.is_file())
    if stem is not None:
        names = [n for n in names if n.startswith(stem)]
    if any(n.endswith(".safetensors") for n in names):
        return True
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES) and not _NON_WEIGHT_PICKLE.match(n)]
    if pickles:
        if not allow_pickle:
            shown = ", ".join(pickles[:3]) + (", …" if len(pickles) > 3 else "")
            raise ModelError(
                f"{folder} holds pickle checkpoint(s) ({shown}); these can run arbitrary code when loaded. "
                f"Convert to safetensors or pass --allow-pickle if you trust the source."
            )
        return False
    expected = f"{stem}.safetensors" if stem else "model.safetensors"
    raise ModelError(f"{folder} holds no weights (expected {expected})")


def _ready(model, opts: _Opts, folder: Path):
    """How every load ends: on the asked device, in eval mode, its weights checked finite."""
    model.to(opts.device)
    model.eval()
    _check_finite(model, str(folder))
    return model


def _check_finite(model, where: str) -> None:
    with torch.no_grad():
        for name, t in _named_tensors(model):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelError(
                    f"{where}: weight tensor '{name}' contains NaN or Inf values "
                    f"(corrupt checkpoint or diverged training)"
                )


def _named_tensors(model):
    yield from model.named_parameters()
    yield from model.named_buffers()


def _finish_tokenizer(tok, padding_side: str):
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _load_folder(folder: Path, opts: _Opts, *, tokenizer, want_tok: bool):
    """Model + tokenizer from a local HF folder (tokenizer from ``tokenizer`` spec when given)."""
    from transformers import AutoModelForCausalLM

    use_safetensors = _check_weights(folder, opts.allow_pickle)
    tok = None
    if want_tok:
        if tokenizer:
            tok = _load_tokenizer_spec(tokenizer, opts)
        else:
            tok = _load_tokenizer_folder(folder, opts, model_folder=True)
    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=opts.dtype,
                use_safetensors=use_safetensors,
                trust_remote_code=opts.trust_remote_code,
                local_files_only=True,
            )
    except TunelensError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load model from {folder}: {_one_line(e)}") from None
    return _ready(model, opts, folder), tok


def _load_tokenizer_folder(folder: Path, opts: _Opts, *, model_folder: bool = False):
    from transformers import AutoTokenizer

    if not _has_tokenizer(folder):
        what = "model folder" if model_folder else "folder"
        raise ModelError(
            f"{what} {folder} has no tokenizer files (tokenizer.json / tokenizer_config.json): save the tokenizer "
            f"with the model (tokenizer.save_pretrained(folder)), or copy those files from its base model's folder"
        )
    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=opts.trust_remote_code, local_files_only=True
            )
    except TunelensError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer in {folder}: {_one_line(e)}") from None
    if isinstance(tok, bool) or not hasattr(tok, "pad_token"):  # pragma: no cover - defensive
        raise ModelError(f"cannot load the tokenizer in {folder}")
    return _finish_tokenizer(tok, opts.padding_side)


def _load_tokenizer_spec(spec: str, opts: _Opts):
    """Tokenizer named like a model: 'default', .gguf, model/adapter folder, a tokenizer-only folder, or hub id."""
    spec = str(spec).strip()
    p = Path(spec).expanduser()
    if p.is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        return _load_tokenizer_folder(p.resolve(), opts)  # a folder with only tokenizer files
    kind, path = _classify(spec)
    if kind in ("embedded", "gguf"):
        path = convert_gguf(path)
    elif kind == "hub":
        path = _hub_snapshot(spec, tokenizer_only=True)
    return _load_tokenizer_folder(path, opts)


def _apply_adapter(base_model, folder: Path, cfg: dict, base_spec: str, opts: _Opts, *, merge: bool | str):
    """A loaded base with the PEFT adapter in ``folder`` applied (merged when ``merge`` says so)."""
    from peft import PeftModel

    try:
        with _quiet():
            model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=False)
            if merge is True or (merge == "auto" and str(cfg.get("peft_type", "")).upper() in MERGEABLE_PEFT_TYPES):
                model = model.merge_and_unload()
    except TunelensError:
        raise
    except Exception as e:
        raise ModelError(f"cannot apply adapter {folder} to base model '{base_spec}': {_one_line(e)}") from None
    return _ready(model, opts, folder)
