"""Read safetensors checkpoints one row slab at a time, never a whole model.

Every weight reader in tunelens (diff, graft, the repairs) sits on this: a model may be larger than memory, so
only headers are read up front and tensors come a slab of rows at a time. Each read opens the shard with
``safetensors.safe_open`` and takes a slab of rows, a view into the file's memory map that is dropped after
use: a shard kept open would keep every page already read mapped into the process, so resident memory would
grow to the size of the shard.

The diff reads differently (``Checkpoint.slab``): a ``Slab`` is only where a row slab lies in its file, and its
consumer copies it piece by piece with ``pread`` into small buffers of its own (``Slab.chunk``). That is one copy
from the page cache straight into buffers that stay in the CPU cache, with no page faults, no memory map to set
up and tear down, and nothing of the file resident in the process; ``Slab.willneed`` asks the kernel to start
reading a slab from storage ahead of use.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
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
    offset: int = -1  # where the tensor's bytes start in ``file`` (-1: unknown)

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
                    offsets = _data_offsets(file)
                    for name in names:
                        sl = f.get_slice(name)
                        self.tensors[name] = TensorInfo(file, tuple(sl.get_shape()), sl.get_dtype(),
                                                        offsets.get(name, -1))
            except (SafetensorError, OSError) as e:
                raise ModelError(f"{file}: not a readable safetensors file ({e})") from None
        self._fds: dict[Path, int] = {}
        self._fd_lock = threading.Lock()

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

    def slab(self, name: str, r0: int, r1: int) -> "Slab":
        """Where rows [r0, r1) of a tensor lie in its file (read them with ``Slab.chunk``); ``read`` is the
        fallback when the file offset is unknown (never for files this class parsed) or bytes are not
        little-endian here."""
        info = self.tensors[name]
        row = math.prod(info.shape[1:]) if info.shape else 1
        return Slab(self, name, info, r0 * row, (r1 - r0) * row if info.shape else 1, r0, r1)

    def fd(self, file: Path) -> int:
        """A read-only descriptor for ``file``, opened once (``pread`` needs no position, so threads share it)."""
        fd = self._fds.get(file)
        if fd is None:
            with self._fd_lock:
                fd = self._fds.get(file)
                if fd is None:
                    fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close the descriptors ``slab`` reads opened (the checkpoint stays usable: they reopen on demand)."""
        with self._fd_lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _data_offsets(file: Path) -> dict[str, int]:
    """Absolute file offset of every tensor's bytes, from the safetensors header (8-byte length, JSON); {} when
    the header cannot be parsed here (then ``Slab.chunk`` falls back to ``Checkpoint.read``)."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return {k: 8 + n + int(v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        return {}


@dataclass(frozen=True, eq=False)
class Slab:
    """Rows [r0, r1) of one tensor: elements [start, start + numel) of it, flat, row-major; nothing is read
    until ``chunk``."""

    ckpt: Checkpoint
    name: str
    info: TensorInfo
    start: int
    numel: int
    r0: int
    r1: int

    @property
    def dtype(self) -> torch.dtype:
        return self.info.torch_dtype

    @property
    def itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def direct(self) -> bool:
        """Whether ``chunk`` can pread the bytes (offset known, file byte order = this machine's)."""
        return self.info.offset >= 0 and sys.byteorder == "little"

    def chunk(self, i: int, j: int, buf: torch.Tensor) -> torch.Tensor:
        """Elements [i, j) of the slab, copied into ``buf`` (a contiguous uint8 tensor of at least
        (j - i) * itemsize bytes) and returned as a view of it in the tensor's dtype."""
        size = self.itemsize
        n = (j - i) * size
        out = buf[:n]
        if not self.direct:
            out.view(self.dtype).copy_(self.tensor().reshape(-1)[i:j])
            return out.view(self.dtype)
        fd, pos, view = self.ckpt.fd(self.info.file), self.info.offset + (self.start + i) * size, memoryview(out.numpy())
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], pos + got)
            if k <= 0:
                raise ModelError(f"{self.info.file}: truncated while reading '{self.name}'")
            got += k
        return out.view(self.dtype)

    def willneed(self) -> None:
        """Ask the kernel to read the slab's bytes into the page cache now, in the background (from storage when
        they are not cached; nearly free when they are)."""
        if self.direct and self.numel:
            try:
                os.posix_fadvise(self.ckpt.fd(self.info.file), self.info.offset + self.start * self.itemsize,
                                 self.nbytes, os.POSIX_FADV_WILLNEED)
            except (AttributeError, OSError):  # no posix_fadvise here: reads just come when asked
                pass

    def tensor(self) -> torch.Tensor:
        """The slab as a tensor viewing the file's memory map (``Checkpoint.read``)."""
        if not self.info.shape:
            return self.ckpt.read(self.name)
        return self.ckpt.read(self.name, self.r0, self.r1)
