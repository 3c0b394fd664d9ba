"""The base model's audit results on disk, so the next audit against the same base skips the base model.

A team audits every new fine-tune against the same base (in CI, in `tunelens run`, in repair sweeps), and the
base half of an audit is half its cost. `BaseStore` is a mapping that `AuditContext.base_cache` accepts: each
result is one JSON file (no pickle) under a folder named by a fingerprint of everything that could change it —
the base model's weights and tokenizer, the audit settings, the user's task items, tunelens' own code and
built-in data, and the versions of torch and transformers. Change any of these and the audit starts afresh
in a new folder; a stale result is never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from ..errors import TunelensError
from ..io import write_json

STORE_VERSION = 2  # 2: results are stored chunk by chunk along the stratified order


def default_dir() -> Path:
    from ..models import tunelens_home

    return tunelens_home() / "audit-base"


def store_dir(setting) -> Path | None:
    """A config's ``base_cache``: true -> the default folder, a path -> that folder, false/null -> none."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return default_dir()
    if isinstance(setting, (str, Path)) and str(setting):
        return Path(setting).expanduser()
    raise TunelensError(f"base_cache must be true, false or a folder path, not {setting!r}")


def attach(ctx, setting) -> "BaseStore | None":
    """Give ``ctx`` a BaseStore for a ``base_cache`` setting (see store_dir) and return it; None keeps none."""
    folder = store_dir(setting)
    if folder is None:
        return None
    ctx.base_cache = store = BaseStore(folder, ctx)
    return store


def _digest(*parts) -> "hashlib.blake2b":
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h


def weights_fingerprint(model) -> str:
    """Hash of every parameter and buffer, by name, dtype, shape and bytes (~1 s for a 135M model). A served
    model (tunelens.engines) has no weights here: its own fingerprint hashes its files, served name and engine
    version, and starts with the engine's name, so no engine reuses another's results."""
    if getattr(model, "engine", None) not in (None, "hf"):
        return f"{model.engine}:{model.fingerprint()}"
    h = _digest()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy of the weights
    return h.hexdigest()


def _precision_part(ctx) -> tuple:
    """The scoring precision, when it is not fp32 (fp32 stores keep the fingerprints they had before precision
    was a setting). The weights' dtype is hashed too, but bf16 could also come from autocast."""
    record = getattr(ctx, "precision", None) or {}
    chosen = record.get("chosen", "fp32")
    if chosen == "fp32":
        return ()
    mode = record.get("mode", "weights")  # bf16 with cast weights keeps the fingerprint it had before autocast
    return (f"precision={chosen}",) if mode == "weights" else (f"precision={chosen}-{mode}",)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return _digest(vocab, getattr(tokenizer, "chat_template", None), tokenizer.special_tokens_map).hexdigest()


def code_and_data_fingerprint() -> str:
    """tunelens' own source and built-in data: a changed scorer or probe set must not reuse old results."""
    root = Path(__file__).resolve().parents[1]
    h = _digest()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".jsonl", ".yaml", ".json")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def tasks_fingerprint(ctx) -> str:
    """The user's task specs and the items they evaluate (a file edited in place changes the items). A task
    whose results the context already holds (an lm-eval bridged task) never reaches the store: skipped."""
    from ..data import load_items

    h = _digest()
    for spec in ctx.tasks:
        if ("bridged", spec.name) in ctx.cache:
            continue
        h.update(repr(spec).encode())
        for split in sorted({spec.eval_split} | ({"train"} if spec.fewshot else set())):
            items = load_items(spec, split)
            h.update(json.dumps([dataclasses.asdict(it) for it in items], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _encode(value):
    from ..evaluate import EvalResult

    if isinstance(value, EvalResult):
        return {"__eval_result__": {"records": value.records, "metrics": value.metrics, "info": value.info}}
    return value


def _decode(obj):
    from ..evaluate import EvalResult

    if isinstance(obj, dict) and set(obj) == {"__eval_result__"}:
        return EvalResult(**obj["__eval_result__"])
    return obj


class BaseStore:
    """A folder of the base model's results for one fingerprint; pass it as ``AuditContext(base_cache=...)``.

    Holds only what an audit asks of ``base_cache``: ``key in store``, ``store[key]``, ``store[key] = value``.
    """

    def __init__(self, root: str | Path, ctx) -> None:
        import transformers

        from .. import __version__

        self.fingerprint = _digest(
            STORE_VERSION, __version__, torch.__version__, transformers.__version__,
            weights_fingerprint(ctx.base.model), tokenizer_fingerprint(ctx.base.tokenizer),
            ctx.seed, ctx.batch_size,  # keys carry the chunk bounds; the limit only says how far to draw
            tasks_fingerprint(ctx), code_and_data_fingerprint(),
            *_precision_part(ctx),
        ).hexdigest()
        self.dir = Path(root).expanduser() / self.fingerprint
        self.hits = 0  # results served from disk (written by an earlier audit)
        self._loaded: dict = {}
        self._from_disk: set[str] = set()

    def reuse_note(self) -> str | None:
        return f"base model: {self.hits} result(s) reused from {self.dir}" if self.hits else None

    def _path(self, key) -> Path:
        return self.dir / f"{_digest(key).hexdigest()}.json"

    def __contains__(self, key) -> bool:
        if repr(key) in self._loaded:
            return True
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"), object_hook=_decode)
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if data.get("key") != repr(key):  # a hash collision, however unlikely, must not serve a wrong result
            return False
        self._loaded[repr(key)] = data["value"]
        self._from_disk.add(repr(key))
        return True

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        self.hits += repr(key) in self._from_disk
        return self._loaded[repr(key)]

    def __setitem__(self, key, value) -> None:
        write_json(self._path(key), {"key": repr(key), "value": _encode(value)}, indent=None)
        self._loaded[repr(key)] = value
