"""Read safetensors checkpoints one row slab at a time, never a whole model.

Every weight reader in tunelens (diff, graft, the repairs) sits on this: a model may be larger than memory, so
only headers are read up front and tensors come a slab of rows at a time. Each read opens the shard with
``safetensors.safe_open`` and takes a slab of rows, a view into the file's memory map that is dropped after
use: a shard kept open would keep every page already read mapped into the process, so resident memory would
grow to the size of the shard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
import torch

from ..errors import ModelError

SLAB_ELEMS = 1 << 22  # elements per read (8 MB of fp16): bounds memory whatever the model size
_PAGE = 4096

_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_PICKLES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name: F32, BF16, ...

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype for floating tensors, None for integer/bool tensors."""
        return _TORCH_DTYPES.get(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * (torch.finfo(self.torch_dtype).bits // 8 if self.torch_dtype else 1)

    def slabs(self, max_elems: int | None = None) -> list[tuple[int, int]]:
        """Row ranges [r0, r1) covering the tensor (elements for 1-D, one range for 0-D)."""
        if not self.shape:
            return [(0, 1)]
        rows, row_len = self.shape[0], math.prod(self.shape[1:])
        step = max(1, (max_elems or SLAB_ELEMS) // max(1, row_len))
        return [(r, min(rows, r + step)) for r in range(0, rows, step)] or [(0, 0)]


def weight_files(folder: Path, stem: str | None = None) -> list[Path]:
    """The safetensors files of a model folder (following ``*.safetensors.index.json`` when present), or of an
    adapter (``stem='adapter_model'``)."""
    indexes = sorted(folder.glob(f"{stem or '*'}.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{indexes[0]}: unreadable shard index ({e})") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelError(f"{indexes[0]} lists shards that are missing: {', '.join(missing[:3])}")
        return files
    files = sorted(p for p in folder.glob(f"{stem or '*'}.safetensors") if p.is_file())
    if stem is None:
        files = [p for p in files if not p.name.startswith("adapter_model")]
    if files:
        return files
    pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLES]
    if pickles:
        raise ModelError(
            f"{folder} holds pickle weights only ({pickles[0]}, ...); diff reads safetensors: convert the checkpoint "
            f"(e.g. load it and save_pretrained(..., safe_serialization=True))"
        )
    raise ModelError(f"{folder} holds no safetensors weights")


class Checkpoint:
    """Names, shapes and dtypes of every tensor of a safetensors checkpoint (headers only), and row reads."""

    def __init__(self, folder: Path, stem: str | None = None):
        from safetensors import SafetensorError, safe_open

        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}  # in file, then offset order: reads go forward through a shard
        for file in weight_files(self.folder, stem):
            try:
                with safe_open(file, "pt") as f:
                    names = f.offset_keys() if hasattr(f, "offset_keys") else sorted(f.keys())
                    for name in names:
                        sl = f.get_slice(name)
                        self.tensors[name] = TensorInfo(file, tuple(sl.get_shape()), sl.get_dtype())
            except (SafetensorError, OSError) as e:
                raise ModelError(f"{file}: not a readable safetensors file ({e})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str, r0: int | None = None, r1: int | None = None, touch: bool = False) -> torch.Tensor:
        """Rows [r0, r1) of a tensor (the whole tensor without bounds).

        The result views the file's memory map, which lives exactly as long as the tensor: once the caller
        drops it the pages leave the process (no copy is made). ``touch`` faults every page in now (the reader
        thread does this, so the disk reads and page mapping happen ahead of the statistics)."""
        from safetensors import safe_open

        info = self.tensors[name]
        with safe_open(info.file, "pt") as f:
            if not info.shape:
                return f.get_tensor(name)
            part = f.get_slice(name)[r0:r1] if r0 is not None else f.get_slice(name)[:]
        if touch and part.numel():
            part.reshape(-1).view(torch.uint8)[::_PAGE].max()
        return part
