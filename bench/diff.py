"""Weight-diff throughput and memory on two synthetic >1B-parameter checkpoints.

Writes a base and a tuned checkpoint (fp16 safetensors, several shards with an index, tensor by tensor so this
script itself stays small in memory) under /tmp; the tuned one is the base plus a sparse change (1% of the
entries) in every third tensor. Then, in this order: raw read of both checkpoints (`cat files > /dev/null`),
and `diff_models(..., rank=False, out=...)` in a subprocess whose own ru_maxrss is its peak RSS. Seconds are
the whole diff call, writing its files included (not the interpreter start and torch import); gbps = bytes of
both checkpoints / seconds; read_ratio = gbps / raw_gbps.

Both measurements are made twice. Cold (the headline): the two checkpoints' own files are evicted from the page
cache (posix_fadvise DONTNEED; nothing else is touched) before each, so both read from storage — the case the
streaming diff exists for, a model far bigger than memory, which is never in the page cache. Warm: right after,
with the files cached, so `cat` measures memory-copy speed and the ratio shows the statistics' own compute
ceiling. The temp folder is deleted at the end. The CPU's vector flags and torch's thread count go to stderr
first (the warm ratio depends on them).

    .venv/bin/python bench/diff.py [--tensors 24] [--warm-only]

Second-to-last line (not with --warm-only): diff-warm: the same figures with the page cache warm
Last line: diff: params=N peak_rss_mb=M seconds=S gbps=G raw_gbps=R read_ratio=Q (cold; warm with --warm-only)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from audit import cpu_flags  # noqa: E402  (every bench prints the same CPU line)

SHAPES = {"gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}
CHILD = """
import json, resource, sys, time
from tunelens.diff import diff_models

t0 = time.perf_counter()
r = diff_models(sys.argv[1], sys.argv[2], out=sys.argv[3], rank=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "stream_seconds": r["summary"]["seconds"],
                  "changed": r["summary"]["changed"], "bytes_read": r["summary"]["bytes_read"],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class ShardWriter:
    """A safetensors file written one tensor at a time (the header is known up front)."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...]]]):
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in specs:
            n = 2 * shape[0] * shape[1]
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)

    def add(self, t: torch.Tensor) -> None:
        self.f.write(t.contiguous().view(torch.uint8).numpy().data)

    def close(self) -> None:
        self.f.close()


def write_pair(root: Path, n_tensors: int, n_shards: int, every: int, density: float) -> tuple[int, list[Path]]:
    """Base and tuned checkpoints; returns (parameters per checkpoint, all files)."""
    mods = list(SHAPES)
    specs = [(f"model.layers.{i // 3}.mlp.{mods[i % 3]}.weight", SHAPES[mods[i % 3]]) for i in range(n_tensors)]
    per = -(-n_tensors // n_shards)
    groups = [specs[i:i + per] for i in range(0, n_tensors, per)]
    files = []
    for model in ("base", "tuned"):
        (root / model).mkdir(parents=True)
        (root / model / "config.json").write_text(json.dumps({"architectures": ["BenchModel"]}))
    weight_map = {}
    for s, group in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        wb, wt = ShardWriter(root / "base" / fname, group), ShardWriter(root / "tuned" / fname, group)
        for name, shape in group:
            i = len(weight_map)
            g = torch.Generator().manual_seed(i)
            w = torch.randn(shape, generator=g).mul_(0.02).half()
            wb.add(w)
            if i % every == 0:
                k = int(density * w.numel())
                idx = torch.randint(0, w.numel(), (k,), generator=g)
                w.view(-1)[idx] += (torch.randn(k, generator=g) * 1e-3).half()
            wt.add(w)
            del w
            weight_map[name] = fname
        wb.close()
        wt.close()
        files += [root / "base" / fname, root / "tuned" / fname]
    for model in ("base", "tuned"):
        index = {"metadata": {}, "weight_map": weight_map}
        (root / model / "model.safetensors.index.json").write_text(json.dumps(index))
    params = sum(shape[0] * shape[1] for _, shape in specs)
    return params, files


def evict(files) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, default=24, help="4096x11008 fp16 tensors per checkpoint (24 = 1.08B)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--every", type=int, default=3, help="change every k-th tensor")
    ap.add_argument("--density", type=float, default=0.01, help="fraction of entries changed in those tensors")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold measurement; the headline is warm")
    args = ap.parse_args()
    print(f"cpu: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="tunelens-diff-bench-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        params, files = write_pair(tmp, args.tensors, args.shards, args.every, args.density)
        os.sync()  # let write-back finish before anything is timed
        nbytes = sum(p.stat().st_size for p in files)
        print(f"wrote 2 x {params:,} params ({nbytes / 1e9:.2f} GB, {len(files)} shards) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)

        runs = {}
        for cache in (("warm",) if args.warm_only else ("cold", "warm")):
            runs[cache] = measure(tmp, files, cold=cache == "cold")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for cache, (raw_s, child) in runs.items():
        print(f"[{cache}] raw read {raw_s:.2f}s; diff {child['seconds']:.2f}s ({child['stream_seconds']:.2f}s before "
              f"writing the outputs), {child['changed']:,} entries changed, {child['bytes_read'] / 1e9:.2f} GB read, "
              f"read_ratio={nbytes / child['seconds'] / (nbytes / raw_s):.2f}", file=sys.stderr)
    print(f"headline: {'warm' if args.warm_only else 'cold'} cache; children max RSS {resource_children_mb():.0f} MB",
          file=sys.stderr)
    peak_mb = max(c["maxrss_kb"] for _, c in runs.values()) / 1024  # over both runs, on both lines
    for cache in sorted(runs, key=lambda c: c == "cold"):  # warm first, the headline last
        raw_s, child = runs[cache]
        gbps, raw_gbps = nbytes / child["seconds"] / 1e9, nbytes / raw_s / 1e9
        tag = "diff-warm" if cache == "warm" and not args.warm_only else "diff"
        print(f"{tag}: params={params} peak_rss_mb={peak_mb:.0f} seconds={child['seconds']:.2f} gbps={gbps:.2f} "
              f"raw_gbps={raw_gbps:.2f} read_ratio={gbps / raw_gbps:.2f}")


def measure(tmp: Path, files, *, cold: bool) -> tuple[float, dict]:
    """(seconds of `cat` over the files, the diff child's report), evicting the files first when cold."""
    if cold:
        evict(files)
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    raw_s = time.perf_counter() - t0
    if cold:
        evict(files)
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "base"), str(tmp / "tuned"), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"diff failed:\n{proc.stderr[-3000:]}")
    return raw_s, json.loads(proc.stdout.strip().splitlines()[-1])


def resource_children_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


if __name__ == "__main__":
    main()
