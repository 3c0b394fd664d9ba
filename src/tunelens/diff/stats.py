"""Statistics of a weight update Δ = W_tuned − W_base, accumulated one slab at a time.

All arithmetic is fp32 (sums carried in fp64 between chunks). Two implementations of one computation:
- `_fastdiff` (diff/_fastdiff.c, a C extension built at install): every statistic of a base/tuned pair in one
  pass over the checkpoint's own buffers, threads releasing the GIL. It runs whenever it applies (both sides
  given as weights of one dtype, fp32, fp16 or bf16, and no second fine-tune), which is every plain diff.
- the torch path, the reference the C kernel is pinned to (tests/test_diff.py) and what runs everywhere else
  (a Δ given directly, the overlap with a second fine-tune, an install where the extension did not build): the
  elementwise work on 256K-element chunks held in preallocated buffers, so they stay in cache and nothing is
  allocated per chunk (several times faster than whole-tensor operations); counts from 0/1 float masks summed
  in one call.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import torch

try:  # the one-pass C kernel; None where it did not build (the torch path then does the same work)
    from . import _fastdiff as FAST
except ImportError:  # pragma: no cover - depends on the install
    FAST = None

_FAST_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

TOL_ABS = 1e-5  # "changed": |Δ| > 1e-5 (the update-sparsity papers' threshold)
TOL_REL = 1e-3  # "changed relative to the weight": |Δ| > 1e-3·|W| elementwise
ENERGY_LEVELS = (0.9, 0.99)
CHUNK = 1 << 18  # 256K elements: per-call overhead amortised, buffers still cache-resident

_EPS32 = torch.finfo(torch.float32).eps


class Scratch:
    """Reusable fp32/bf16 chunk buffers for one worker thread, and views of them sized per chunk (cached for
    the full chunk size: creating a view costs about as much as a small kernel)."""

    def __init__(self, n: int | None = None):
        self.n = n = n or CHUNK
        self.wd = torch.empty(2, n)  # row 0: W, row 1: Δ — one mat-vec gives W·Δ and ‖Δ‖²
        self.t = torch.empty(n)
        self.a = torch.empty(n)
        self.y = torch.empty(n)
        self.masks = torch.empty(4, n)  # Δ≠0, |Δ|>tol, |Δ|>rel·|W|, bf16(W)≠bf16(T)
        self.d2 = torch.empty(n)
        self.m2 = torch.empty(n)
        self.bw = torch.empty(n, dtype=torch.bfloat16)
        self.bt = torch.empty(n, dtype=torch.bfloat16)
        self._full = self._make(n)

    def views(self, k: int) -> "_Views":
        return self._full if k == self.n else self._make(k)

    def _make(self, k: int) -> "_Views":
        v = _Views()
        v.wd = self.wd[:, :k]
        v.w, v.d = v.wd[0], v.wd[1]
        v.t, v.a, v.y, v.d2, v.m2, v.bw, v.bt = (b[:k] for b in (self.t, self.a, self.y, self.d2, self.m2, self.bw,
                                                                 self.bt))
        v.masks = self.masks[:, :k]
        v.m = list(v.masks)
        v.flat = self.wd.view(-1)  # 2n elements, for the ‖W‖²-only pass
        return v


class _Views:
    pass


class Workspace:
    """Chunk buffers for ``workers`` threads; each slab is split between them (torch releases the GIL)."""

    def __init__(self, workers: int = 1):
        self.scratches = [Scratch() for _ in range(max(1, workers))]
        self.pool = ThreadPoolExecutor(len(self.scratches) - 1) if len(self.scratches) > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one dtype, compared as 8/4/2-byte words (memcmp speed)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ua, ub = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    for dt, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if ua.numel() % size == 0:
            try:
                return torch.equal(ua.view(dt), ub.view(dt))
            except RuntimeError:  # storage not aligned for this word size
                continue
    return torch.equal(ua, ub)


class DeltaAccumulator:
    """Running sums for one tensor. Feed it slabs with ``update``; read ``result()`` at the end.

    ``keep``: collect the dense Δ (flat fp32, for the SVD) in ``self.keep``; it is allocated at the first
    changed slab, so an unchanged tensor costs nothing.
    ``bf16_exact``: both weights are bf16 already, so the bf16-rounded comparison is the exact one.
    ``other``: also accumulate the overlap with a second fine-tune.
    """

    def __init__(self, ws: Workspace, *, keep: int | None = None, bf16_exact: bool = False, other: bool = False):
        self.ws = ws
        self.keep_numel = keep
        self.keep: torch.Tensor | None = None
        self.bf16_exact = bf16_exact
        self.other = other
        self.numel = 0
        self.sums = torch.zeros(3, dtype=torch.float64)  # ‖W‖², W·Δ, ‖Δ‖²
        self.counts = torch.zeros(4, dtype=torch.float64)
        self.other_sums = torch.zeros(3, dtype=torch.float64)  # |I2|, |I1∩I2|, ‖Δ2‖²

    def update(self, w_src: torch.Tensor, t_src: torch.Tensor | None = None, d_src: torch.Tensor | None = None,
               t2_src: torch.Tensor | None = None, d2_src: torch.Tensor | None = None) -> None:
        """One slab: the base weights plus the tuned weights (``t_src``) or the update itself (``d_src``);
        neither means the tensor is unchanged. ``t2_src``/``d2_src``: the same for the other fine-tune."""
        n = w_src.numel()
        src = [None if x is None else x.reshape(-1) for x in (w_src, t_src, d_src, t2_src, d2_src)]
        fast = self._fast_applies(src)
        # bit-identical slabs (frozen layers, untouched rows) need only ‖W‖²: a memcmp-speed check first (the C
        # kernel makes it per span, in the worker threads, with ‖W‖² from the same read, unless Δ is kept)
        lazy = fast and t_src is not None and not self.keep_numel
        same1 = d_src is None and (t_src is None or (not lazy and same_bits(src[0], src[1])))
        same2 = d2_src is None and (t2_src is None or same_bits(src[0], src[3]))
        if self.keep_numel and self.keep is None and not same1:
            self.keep = torch.zeros(self.keep_numel)  # slabs before this one were unchanged: their Δ stays 0
        scratches = self.ws.scratches
        size = scratches[0].n
        per = -(-n // (len(scratches) * size)) * size  # split the slab between the workers at chunk bounds
        spans = [(i, min(n, i + per)) for i in range(0, n, per)] if n else []
        span = self._span_fast if fast else self._span
        jobs = [self.ws.pool.submit(span, scratches[q], src, a, b, same1, same2)
                for q, (a, b) in enumerate(spans[1:], 1)]
        parts = [span(scratches[0], src, *spans[0], same1, same2)] if spans else []
        parts += [j.result() for j in jobs]
        for part in parts:
            if isinstance(part, torch.Tensor):  # the C kernel's [ww, wd, dd, four counts]
                self.sums += part[:3]
                self.counts += part[3:]
                continue
            ww, mv, counts, other = part
            self.sums[0] += torch.stack(ww).double().sum()
            if mv:
                self.sums[1:] += torch.stack(mv).double().sum(0)
                self.counts += torch.stack(counts).double().sum(0)
            if other:
                self.other_sums += torch.stack(other).double().sum(0)
        self.numel += n

    def _fast_applies(self, src) -> bool:
        w, t, d = src[0], src[1], src[2]
        return (FAST is not None and not self.other and d is None and w.dtype in _FAST_DTYPES and w.is_contiguous()
                and w.device.type == "cpu" and (t is None or (t.dtype == w.dtype and t.is_contiguous()
                                                               and t.device.type == "cpu")))

    def _span_fast(self, s: Scratch, src, start: int, stop: int, same1: bool, same2: bool) -> torch.Tensor:
        """Elements [start, stop) of the slab in one call of the C kernel (GIL released)."""
        w, t = src[0], src[1]
        code, size = _FAST_DTYPES[w.dtype], w.element_size()
        out = torch.zeros(7, dtype=torch.float64)
        n = stop - start
        if same1:  # Δ = 0: only ‖W‖² (and keep stays 0)
            out[0] = FAST.sumsq(code, w.data_ptr() + start * size, n)
            return out
        if self.keep is None:  # not checked yet (update's lazy case): identical spans need only ‖W‖²
            ww = FAST.same_sumsq(code, w.data_ptr() + start * size, t.data_ptr() + start * size, n)
            if ww is not None:
                out[0] = ww
                return out
        keep = 0 if self.keep is None else self.keep.data_ptr() + (self.numel + start) * 4
        FAST.stats(code, w.data_ptr() + start * size, t.data_ptr() + start * size, n, keep, self.bf16_exact,
                   TOL_ABS, TOL_REL, out.data_ptr())
        return out

    def _span(self, s: Scratch, src, start: int, stop: int, same1: bool, same2: bool):
        """Elements [start, stop) of the slab, chunk by chunk, in one worker's buffers."""
        w_src, t_src, d_src, t2_src, d2_src = src
        ww, mv, counts, other = [], [], [], []
        if same1 and (not self.other or same2):  # only ‖W‖² (Δ = 0 stays 0 in keep): bigger chunks
            buf, step = s.views(s.n).flat, 2 * s.n
            for i in range(start, stop, step):
                j = min(stop, i + step)
                w = buf[: j - i] if j - i < step else buf
                w.copy_(w_src[i:j])
                ww.append(torch.dot(w, w))
            return ww, mv, counts, other
        for i in range(start, stop, s.n):
            j = min(stop, i + s.n)
            v = s.views(j - i)
            w, d = v.w, v.d
            w.copy_(w_src[i:j])
            ww.append(torch.dot(w, w))
            if same1:
                d.zero_()
            else:
                if d_src is not None:
                    d.copy_(d_src[i:j])
                    torch.add(w, d, out=v.t)
                else:
                    v.t.copy_(t_src[i:j])
                    torch.sub(v.t, w, out=d)
                mv.append(torch.mv(v.wd, d))  # [W·Δ, ‖Δ‖²]
                counts.append(self._changed(v))
            if self.keep is not None and not same1:
                self.keep[self.numel + i: self.numel + j].copy_(d)
            if self.other and not same2:
                other.append(self._other(v, same1, None if t2_src is None else t2_src[i:j],
                                         None if d2_src is None else d2_src[i:j]))
        return ww, mv, counts, other

    def _changed(self, v: _Views) -> torch.Tensor:
        a, y, m = v.a, v.y, v.m
        torch.abs(v.d, out=a)
        torch.ne(v.d, 0.0, out=m[0])
        torch.gt(a, TOL_ABS, out=m[1])
        torch.abs(v.w, out=y).mul_(TOL_REL)
        torch.gt(a, y, out=m[2])  # W = 0 and Δ ≠ 0 counts as changed; W = Δ = 0 does not
        if self.bf16_exact:
            m[3].copy_(m[0])
        else:  # round both to bf16, compare there (as floats: -0 equals +0, as everywhere else here)
            torch.ne(v.bw.copy_(v.w), v.bt.copy_(v.t), out=m[3])
        return v.masks.sum(dim=1)

    def _other(self, v: _Views, same1: bool, t2, d2_in) -> torch.Tensor:
        """[|I2|, |I1∩I2|, ‖Δ2‖²] for one chunk; a NaN in the other model shows up in ‖Δ2‖²."""
        d2, m2 = v.d2, v.m2
        if d2_in is not None:
            d2.copy_(d2_in)
        else:
            torch.sub(d2.copy_(t2), v.w, out=d2)
        torch.gt(torch.abs(d2, out=m2), TOL_ABS, out=m2)
        inter = m2.new_zeros(()) if same1 else torch.dot(v.m[1], m2)
        return torch.stack([m2.sum(), inter, torch.dot(d2, d2)])

    def finite(self) -> bool:
        return bool(torch.isfinite(self.sums).all()) and bool(torch.isfinite(self.other_sums).all())

    def result(self) -> dict:
        ww, wd, dd = (float(x) for x in self.sums)
        tt = max(ww + 2 * wd + dd, 0.0)
        c = [int(round(float(x))) for x in self.counts]
        out = {
            "numel": self.numel,
            "changed": c[0],
            "changed_abs": c[1],
            "changed_rel": c[2],
            "changed_bf16": c[3],
            "ww": ww,
            "wd": wd,
            "dd": dd,
            "tt": tt,
        }
        if self.other:
            i2, inter, dd2 = (float(x) for x in self.other_sums)
            out.update(other_changed_abs=int(round(i2)), overlap=int(round(inter)), other_dd=dd2)
        return out


def spectrum_stats(svals: torch.Tensor, shape: tuple[int, int]) -> dict:
    """Rank (``torch.linalg.matrix_rank``'s default tolerance for an fp32 matrix: σ > σ_max·max(m,n)·eps) and
    the number of singular values holding 90% / 99% of Σσ², from Δ's singular values."""
    m, n = shape
    sv = svals.detach().double().flatten().sort(descending=True).values
    smax = float(sv[0]) if sv.numel() else 0.0
    rank = int((sv > smax * max(m, n) * _EPS32).sum()) if smax > 0 else 0
    out = {"rank": rank, "rank_frac": rank / min(m, n) if min(m, n) else None}
    energy = sv.square()
    total = float(energy.sum())
    cum = energy.cumsum(0) / total if total > 0 else None
    for q in ENERGY_LEVELS:
        key = f"energy{round(q * 100)}"
        out[key] = 0 if cum is None else min(int((cum < q - 1e-12).sum()) + 1, sv.numel())
    return out


def dense_spectrum(delta: torch.Tensor) -> dict:
    """Spectrum statistics of a dense 2-D Δ, one ``svdvals`` call for both the rank and the energy ranks."""
    return spectrum_stats(torch.linalg.svdvals(delta.float()), tuple(delta.shape))


# ---------------------------------------------------------------------------------------------------- names

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")


def parse_name(name: str) -> tuple[int | None, str]:
    """'model.layers.3.self_attn.q_proj.weight' → (3, 'q_proj'); biases keep their suffix ('q_proj.bias');
    names outside the layer stack → (None, 'embed_tokens'), (None, 'lm_head'), ..."""
    m = _LAYER.search(name)
    layer, rest = (int(m.group(1)), m.group(2)) if m else (None, name)
    parts = rest.split(".")
    if len(parts) >= 2 and parts[-1] == "weight":
        return layer, parts[-2]
    if len(parts) >= 2:
        return layer, f"{parts[-2]}.{parts[-1]}"
    return layer, parts[-1]


# ---------------------------------------------------------------------------------------------------- rows


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def finish_row(name: str, shape: tuple[int, ...], dtype: str, acc: dict, spectrum: dict | None,
               dd_override: float | None = None) -> dict:
    """One per-tensor record from the accumulated sums (``dd_override``: ‖Δ‖² computed from LoRA factors)."""
    layer, module = parse_name(name)
    numel = acc["numel"]
    dd = dd_override if dd_override is not None else acc["dd"]
    ww, tt = acc["ww"], acc["tt"]
    row = {
        "name": name,
        "layer": layer,
        "module": module,
        "shape": list(shape),
        "dtype": dtype,
        "numel": numel,
        "changed": acc["changed"],
        "changed_abs": acc["changed_abs"],
        "changed_rel": acc["changed_rel"],
        "changed_bf16": acc["changed_bf16"],
        "frac_changed": _ratio(acc["changed"], numel),
        "frac_changed_abs": _ratio(acc["changed_abs"], numel),
        "frac_changed_rel": _ratio(acc["changed_rel"], numel),
        "frac_changed_bf16": _ratio(acc["changed_bf16"], numel),
        "delta_fro": math.sqrt(dd),
        "base_fro": math.sqrt(ww),
        "rel_fro": _ratio(math.sqrt(dd), math.sqrt(ww)),
        "cosine": _ratio(ww + acc["wd"], math.sqrt(ww * tt)),
        "rank": None,
        "rank_frac": None,
        "energy90": None,
        "energy99": None,
    }
    if row["cosine"] is not None:
        row["cosine"] = max(-1.0, min(1.0, row["cosine"]))
    if spectrum:
        row.update(spectrum)
    if "overlap" in acc:
        i1, i2, inter = acc["changed_abs"], acc["other_changed_abs"], acc["overlap"]
        row.update(
            other_changed_abs=i2,
            other_delta_fro=math.sqrt(acc["other_dd"]),
            overlap=inter,
            o1=_ratio(inter, i1),
            o2=_ratio(inter, i2),
            chance_o1=_ratio(i2, numel),
            chance_o2=_ratio(i1, numel),
        )
    row["_sums"] = {"ww": ww, "wd": acc["wd"], "dd": dd, "tt": tt}
    return row


# ---------------------------------------------------------------------------------------------------- aggregates


def _group(rows: list[dict]) -> dict:
    numel = sum(r["numel"] for r in rows)
    ww = sum(r["_sums"]["ww"] for r in rows)
    dd = sum(r["_sums"]["dd"] for r in rows)
    wd = sum(r["_sums"]["wd"] for r in rows)
    tt = sum(r["_sums"]["tt"] for r in rows)
    g = {"n_tensors": len(rows), "numel": numel}
    for key in ("changed", "changed_abs", "changed_rel", "changed_bf16"):
        g[key] = sum(r[key] for r in rows)
        g["frac_" + key] = _ratio(g[key], numel)
    g.update(delta_fro=math.sqrt(dd), base_fro=math.sqrt(ww), rel_fro=_ratio(math.sqrt(dd), math.sqrt(ww)),
             cosine=_ratio(ww + wd, math.sqrt(ww * tt)))
    ranked = [r["rank_frac"] for r in rows if r.get("rank_frac") is not None]
    if ranked:
        g["mean_rank_frac"] = sum(ranked) / len(ranked)
    if rows and "overlap" in rows[0]:
        i1, i2 = g["changed_abs"], sum(r["other_changed_abs"] for r in rows)
        inter = sum(r["overlap"] for r in rows)
        g.update(other_changed_abs=i2, overlap=inter, o1=_ratio(inter, i1), o2=_ratio(inter, i2),
                 chance_o1=_ratio(i2, numel), chance_o2=_ratio(i1, numel))
    return g


_MODULE_ORDER = ["input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj", "post_attention_layernorm",
                 "gate_proj", "up_proj", "down_proj"]


def aggregate(rows: list[dict]) -> dict:
    """Totals, per-layer and per-module-type groups, and the layer × module grid of ‖Δ‖_F/‖W‖_F."""
    by_layer: dict = {}
    by_module: dict = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
        by_module.setdefault(r["module"], []).append(r)
    layers = sorted(k for k in by_layer if k is not None)
    seen = list(dict.fromkeys(r["module"] for r in rows if r["layer"] is not None))
    modules = sorted(seen, key=lambda m: (_MODULE_ORDER.index(m) if m in _MODULE_ORDER else len(_MODULE_ORDER),
                                          seen.index(m)))
    grid = []
    for layer in layers:
        line = []
        for mod in modules:
            group = [r for r in by_layer[layer] if r["module"] == mod]
            line.append(_group(group)["rel_fro"] if group else None)
        grid.append(line)
    return {
        "total": _group(rows),
        "by_layer": [{"layer": k, **_group(by_layer[k])} for k in layers]
        + ([{"layer": None, **_group(by_layer[None])}] if None in by_layer else []),
        "by_module": [{"module": k, **_group(v)} for k, v in by_module.items()],
        "heatmap": {"metric": "rel_fro", "layers": layers, "modules": modules, "values": grid},
    }
