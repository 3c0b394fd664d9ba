"""What the merge-style repairs share: read the base and one or more fine-tunes tensor by tensor through
:mod:`tunelens.weights` (full safetensors checkpoints a row slab at a time, LoRA adapters as their update
Δ = scale·B·A per module), hand each
tensor's updates δᵢ = θᵢ − θ_base to a method's combine function, and write the result as a sharded safetensors
folder that ``from_pretrained`` loads (config and tokenizer files copied from the base).

Memory stays flat: only the current tensor (or row slab) of each input and of the output is held. Output shards
are written as a stream: their headers are known up front (the output has the base's tensors, shapes and dtypes),
so each tensor's bytes go to disk as soon as they are computed. Everything is written into a temporary folder
beside ``out`` and renamed into place at the end.
"""

from __future__ import annotations

# importing the registry must stay cheap: cli lists it in --help, so torch and the weights load where used

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import TunelensError

if TYPE_CHECKING:
    import torch

    from ..weights import Checkpoint, TensorInfo, Weights

SHARD_BYTES = 2 << 30  # output shard size
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")
_WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")

# combine(name, base rows fp32, [δᵢ rows fp32 or None when model i leaves the tensor unchanged], r0)
#   -> (merged rows fp32, {count: number}) — counts are summed over a tensor's slabs
Combine = Callable[[str, "torch.Tensor", list, int], "tuple[torch.Tensor, dict]"]


@dataclass
class MergeInputs:
    """The base checkpoint and the fine-tunes to merge (the tuned model first), checked to fit together."""

    base: Checkpoint
    base_path: Path
    sides: list[Weights]
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.base.tensors)

    def deltas(self, name: str, r0: int | None = None, r1: int | None = None, facs: list | None = None):
        """(base rows fp32, [δᵢ rows fp32 | None]) for rows [r0, r1) (the whole tensor without bounds)."""
        info = self.base.tensors[name]
        base = self.base.read(name, r0, r1).to(_work_dtype(info))
        if r0 is None:
            r0, r1 = (0, info.shape[0]) if info.shape else (0, 1)
        facs = facs if facs is not None else [s.factor(name) for s in self.sides]
        out = []
        for side, fac in zip(self.sides, facs):
            kind, rows = side.rows(name, r0, r1, fac)
            if kind is None:
                out.append(None)
            elif kind == "d":
                out.append(rows.to(base.dtype).reshape(base.shape))
            else:
                out.append(rows.to(base.dtype).reshape(base.shape) - base)
        return base, out


def _work_dtype(info: TensorInfo) -> torch.dtype:
    import torch

    return torch.float64 if info.torch_dtype == torch.float64 else torch.float32


def open_inputs(base: str | None, tuned: str, models: list[str] | tuple = ()) -> MergeInputs:
    """Open the base and the fine-tunes; a LoRA adapter's base is taken from its config when ``base`` is None."""
    from ..weights import check_fits, open_base, open_weights, same_model

    sides = [open_weights(spec, "tuned" if i == 0 else f"model {i} ({spec})")
             for i, spec in enumerate([tuned, *models])]
    notes: list[str] = []
    if base is None:
        found = [s.base_spec for s in sides if s.base_spec]
        if not found:
            raise TunelensError("pass the base model: it cannot be read from a full tuned checkpoint")
        base = found[0]
    base_w = open_base(base)
    for side in sides:
        if same_model(str(side.path), str(base_w.path)) and side.role != "tuned":
            notes.append(f"{side.role} is the base model itself")
        b = side.base_spec
        if b and not same_model(b, str(base_w.path)) and not same_model(b, str(base)):
            notes.append(f"{side.role} adapter was trained on '{b}'; merged onto base '{base}' as asked")
    _check_model_type(base_w, sides)
    for side in sides:
        check_fits(base_w.ckpt, side, notes)
    return MergeInputs(base_w.ckpt, base_w.path, sides, notes)


def _check_model_type(base: Weights, sides: list[Weights]) -> None:
    want = base.config.get("model_type")
    for side in sides:
        if side.ckpt is None:
            continue
        got = side.config.get("model_type")
        if want and got and want != got:
            raise TunelensError(f"base and {side.role} have different architectures: config model_type "
                                f"'{want}' in {base.path}, '{got}' in {side.path}")


def merge_to_folder(inputs: MergeInputs, out: Path, combine: Combine, *, whole_tensor: bool = False,
                    progress: bool = True, shard_bytes: int | None = None) -> list[dict]:
    """Write combine's result for every floating tensor of the base (other tensors are copied) to ``out``.
    ``whole_tensor``: hand combine whole tensors (methods whose choice depends on the whole tensor: top-k,
    per-tensor random masks), else row slabs. Returns one entry per tensor: name, shape, changed, counts."""
    import torch
    from tqdm.auto import tqdm

    out = Path(out)
    _check_out(out, inputs)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    modules = []
    try:
        _copy_side_files(inputs.base_path, tmp)
        writer = ShardWriter(tmp, {n: inputs.base.tensors[n] for n in inputs.names}, shard_bytes or SHARD_BYTES)
        for name in tqdm(inputs.names, desc="merge", unit="tensor", disable=not progress):
            info = inputs.base.tensors[name]
            if info.torch_dtype is None:
                writer.write(name, inputs.base.read(name))
                modules.append({"tensor": name, "shape": list(info.shape), "changed": False, "copied": True})
                continue
            facs = [s.factor(name) for s in inputs.sides]
            counts: dict = {}
            changed = False
            for r0, r1 in ([(None, None)] if whole_tensor or not info.shape else info.slabs()):
                base, deltas = inputs.deltas(name, r0, r1, facs)
                if all(d is None for d in deltas):
                    merged, c = base, {}
                else:
                    merged, c = combine(name, base, deltas, r0 or 0)
                    changed = changed or not torch.equal(merged, base)
                if not bool(torch.isfinite(merged).all()):
                    raise TunelensError(f"merged tensor '{name}' has NaN or Inf values: check the inputs' weights "
                                        f"and the method options")
                writer.write(name, merged.to(info.torch_dtype))
                for k, v in c.items():
                    counts[k] = counts.get(k, 0) + v
            modules.append({"tensor": name, "shape": list(info.shape), "changed": changed, **counts})
        writer.close()
        from ..models.portable import make_portable, warn_unportable

        warn_unportable(make_portable(tmp))  # the base's config/tokenizer files, maybe as 5.x wrote them
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return modules


def _check_out(out: Path, inputs: MergeInputs) -> None:
    for p in [inputs.base_path, *(s.path for s in inputs.sides)]:
        if out.exists() and out.resolve() == Path(p).resolve():
            raise TunelensError(f"output folder {out} is one of the input models: choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise TunelensError(f"{out} exists and is not a model folder: choose a new or empty output folder "
                            f"(an existing model folder is replaced)")
    out.parent.mkdir(parents=True, exist_ok=True)


def _copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config, tokenizer and chat template files of the base: every top-level file that is
    not a weight file."""
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.startswith("adapter_"):
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(_WEIGHT_INDEXES):
            continue
        shutil.copy2(p, dst / p.name)


def _replace(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes owner-only folders
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ShardWriter:
    """Sharded safetensors written tensor by tensor, in the order of ``plan`` (name -> base TensorInfo).

    The headers (names, dtypes, shapes, offsets) are fixed up front, so bytes are appended as they come and no
    shard is ever held in memory; ``close`` checks every tensor was written completely and writes the index."""

    def __init__(self, folder: Path, plan: dict[str, TensorInfo], shard_bytes: int):
        self.folder = folder
        shards: list[list[str]] = [[]]
        size = 0
        for name, info in plan.items():
            if shards[-1] and size + info.nbytes > shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += info.nbytes
        n = len(shards)
        self.files = ["model.safetensors"] if n == 1 else \
            [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.plan = plan
        self.total = sum(info.nbytes for info in plan.values())
        self.shard_of = {name: i for i, names in enumerate(shards) for name in names}
        self.remaining = {name: info.nbytes for name, info in plan.items()}
        self.current = -1
        self.fh = None

    def _open_shard(self, i: int) -> None:
        self._close_shard()
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in self.shards[i]:
            info = self.plan[name]
            header[name] = {"dtype": info.dtype, "shape": list(info.shape),
                            "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data buffer to 8 bytes
        self.fh = open(self.folder / self.files[i], "wb")
        self.fh.write(len(raw).to_bytes(8, "little"))
        self.fh.write(raw)
        self.current = i

    def _close_shard(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            self.fh = None

    def write(self, name: str, part: torch.Tensor) -> None:
        """Append the next rows of ``name`` (tensors must come in plan order, each complete before the next)."""
        import torch

        i = self.shard_of[name]
        if i != self.current:
            unfinished = self.current >= 0 and any(self.remaining[n] for n in self.shards[self.current])
            if i != self.current + 1 or unfinished:
                raise RuntimeError(f"shard writer: '{name}' written out of order")
            self._open_shard(i)
        data = part.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        if len(data) > self.remaining[name]:
            raise RuntimeError(f"shard writer: more bytes than '{name}' holds")
        self.fh.write(data)
        self.remaining[name] -= len(data)

    def close(self) -> None:
        self._close_shard()
        short = [n for n, r in self.remaining.items() if r]
        if short:
            raise RuntimeError(f"shard writer: tensors not written completely: {', '.join(short[:3])}")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total},
                     "weight_map": {n: self.files[i] for n, i in self.shard_of.items()}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n",
                                                                       encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- options


def check_weights(weights: list[float] | None, n: int, positive_sum: bool = True) -> list[float]:
    """One finite weight per model (default 1.0 each), summing to a positive number unless told otherwise."""
    if weights is None:
        return [1.0] * n
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise TunelensError(f"option weights must be a list of numbers, got {weights!r}") from None
    if len(w) != n:
        raise TunelensError(f"option weights has {len(w)} value(s) for {n} model(s) (the tuned model first, then "
                            f"each of option models): give one weight per model")
    if not all(math.isfinite(x) for x in w) or (positive_sum and sum(w) <= 0):
        raise TunelensError(f"option weights {w} must be finite and sum to a positive number")
    return w


def _number(value, option: str, want: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TunelensError(f"option {option} must be {want}, got {value!r}") from None


def check_fraction(value: float, option: str) -> float:
    v = _number(value, option, "a number in (0, 1]")
    if not 0.0 < v <= 1.0:
        raise TunelensError(f"option {option} must be in (0, 1], got {v:g}")
    return v


def check_finite(value: float, option: str) -> float:
    v = _number(value, option, "a number")
    if not math.isfinite(v):
        raise TunelensError(f"option {option} must be finite, got {v}")
    return v


def models_list(models) -> list[str]:
    if models is None:
        return []
    if isinstance(models, (str, os.PathLike)):
        return [str(models)]
    return [str(m) for m in models]


def summarize(modules: list[dict], notes: list[str], **extra) -> dict:
    """Totals over the per-tensor entries: tensors, changed, parameters and (when counted) kept entries."""
    summary = {"tensors": len(modules), "changed": sum(1 for m in modules if m.get("changed")),
               "parameters": sum(math.prod(m["shape"]) for m in modules)}
    if any("kept" in m for m in modules):
        kept = sum(m.get("kept", 0) for m in modules)
        total = sum(m.get("considered", 0) for m in modules)
        summary.update({"kept": kept, "considered": total, "kept_fraction": kept / total if total else None})
    for m in modules:
        if m.get("considered"):
            m["kept_fraction"] = m.get("kept", 0) / m["considered"]
    summary.update(extra)
    if notes:
        summary["notes"] = list(notes)
    return summary



def run_merge(repair, inputs: MergeInputs, out: Path, opts, combine: Combine, *, whole_tensor: bool = False,
              progress: bool = True, **summary_extra):
    """Merge to ``out`` and describe it as the method's RepairResult."""
    import dataclasses

    from .core import RepairResult

    modules = merge_to_folder(inputs, out, combine, whole_tensor=whole_tensor, progress=progress)
    summary = summarize(modules, inputs.notes, base=str(inputs.base_path),
                        models=[str(s.path) for s in inputs.sides], **summary_extra)
    return RepairResult(method=repair.name, out=Path(out), kind="model", options=dataclasses.asdict(opts),
                        modules=modules, summary=summary)
