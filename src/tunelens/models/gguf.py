"""GGUF files (the embedded default model among them), dequantized once into a cached fp32 safetensors folder.

Dequantizing is slow (~40 s for the default model) and every reader of weights (loading, diff, the repairs)
wants a plain safetensors folder, so the conversion is done once per file content, under
``tunelens_home()/models/``, atomically and under a lock so a killed or concurrent conversion never leaves a
folder that looks complete.
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
import tempfile
import time
from pathlib import Path

import torch

from ..errors import ModelError, TunelensError
from ..io import write_json
from ..progress import log
from .common import _one_line, _quiet, tunelens_home
from .portable import READABLE_BY, make_portable, warn_unportable

CONVERSION_MARKER = "tunelens_conversion.json"  # written last: a cached folder without it is not complete


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
    lock = out.parent / f".{out.name}.lock"
    if _conversion_complete(out):
        if "portable" not in _read_marker(out):  # converted before tunelens wrote 4.x keys
            try:
                with _file_lock(lock):
                    _make_cache_portable(out)
            except OSError as e:  # a read-only cache still loads in 5.x
                log.warning(f"tunelens: cannot add the transformers 4.x keys to {out} ({_one_line(e)}): "
                            f"it is readable by transformers >= 5 only")
        return out
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"cannot create the model cache folder {parent}: {_one_line(e)} (set TUNELENS_HOME)"
        ) from None
    with _file_lock(lock):
        if _conversion_complete(out):  # another process finished it while we waited
            _make_cache_portable(out)
            return out
        for stale in parent.glob(f".{out.name}.tmp-*"):  # leftovers of killed conversions (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists():  # incomplete folder not made by us
            shutil.rmtree(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            t0 = time.perf_counter()
            if loader is None:
                log.info(f"tunelens: converting {src.name} to a cached fp32 model folder (once; may take a minute) ...")
                from .. import models  # looked up on the package: replacing tunelens.models._load_gguf takes effect

                model, tokenizer = models._load_gguf(src)
            else:
                model, tokenizer = loader(src)
            note = _save_dequantized(model, tokenizer, tmp)
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
                    "portable": note or READABLE_BY,
                },
            )
            _chmod_like_mkdir(tmp)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _make_cache_portable(folder: Path) -> None:
    """Give a cached conversion from before portable folders the transformers 4.x keys (caller holds the lock).

    Patched in place rather than re-converted under a new cache key: each file is replaced atomically and 5.x reads
    the old and the new config.json the same, so a process loading the folder meanwhile gets the same model, while
    a new key would cost every machine a re-conversion (~40 s) and leave the old folder behind. The marker's
    ``portable`` entry, written last, says it was done and which versions read the folder.
    """
    marker = _read_marker(folder)
    if "portable" in marker:
        return
    note = make_portable(folder)
    warn_unportable(note)
    write_json(folder / CONVERSION_MARKER, {**marker, "portable": note or READABLE_BY})


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


def _save_dequantized(model, tokenizer, out_dir) -> str | None:
    """Save a (GGUF-loaded, dequantized) model and its tokenizer as a plain fp32 safetensors HF folder that
    transformers 4.x reads too; returns :func:`~tunelens.models.portable.make_portable`'s note (None: it does).

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
    note = make_portable(out_dir)
    warn_unportable(note)
    return note
