"""Where a fine-tune changed the weights: ``diff_models(base, tuned)`` streams two checkpoints (or a base and a
LoRA adapter) tensor by tensor and measures the update Δ = W_tuned − W_base of every tensor.

Full checkpoints are read a row slab at a time from their safetensors shards, so memory stays bounded by a few
slabs (plus one dense Δ per 2-D tensor while its singular values are computed, when ``rank``). See docs/diff.md
for what each statistic means.
"""

from __future__ import annotations

import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from .. import progress as P
from ..errors import ModelError, TunelensError
from ..weights import Checkpoint, Weights, check_fits, open_base, open_weights, same_model
from .stats import ENERGY_LEVELS, TOL_ABS, TOL_REL, DeltaAccumulator, Workspace, aggregate, dense_spectrum, \
    finish_row, spectrum_stats
from .stream import prefetch

__all__ = ["diff_models", "SCHEMA"]

SCHEMA = "tunelens.diff/1"


def diff_models(base: str | None = None, tuned: str | None = None, other: str | None = None, out=None,
                rank: bool = True, *, rank_max_dim: int | None = None, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Compare ``tuned`` (and optionally ``other``, a second fine-tune of the same base) with ``base``.

    Models are named as everywhere in tunelens (folder, PEFT adapter, .gguf, hub id, 'default'); ``base`` may be
    omitted when ``tuned`` is an adapter that names its base. ``rank``: singular values of every 2-D Δ (the slow
    part); ``rank_max_dim`` skips them for matrices whose smaller side is larger. ``out``: folder for diff.json,
    diff_tensors.csv, heatmap.svg/csv (atomic writes). ``workers``: threads for the elementwise statistics
    (default: torch's thread count). ``progress(done_bytes, total_bytes)`` is called per slab (default: the
    progress channel, tunelens.progress).
    Returns the diff.json content (with the per-tensor rows under ``tensors``).
    """
    if tuned is None:
        raise TunelensError("pass the tuned model (--tuned)")
    t0 = time.perf_counter()
    workers = max(1, workers or torch.get_num_threads())
    notes: list[str] = []
    sides = [open_weights(tuned, "tuned")] + ([open_weights(other, "other")] if other is not None else [])
    base_w = open_base(_base_spec(base, sides, notes))
    base_ckpt = base_w.ckpt
    names = _plan(base_ckpt, sides, notes)

    rows, bytes_read = _stream(base_ckpt, names, sides, rank, rank_max_dim, P.listener_or(progress), notes, workers)
    seconds = time.perf_counter() - t0
    agg = aggregate(rows)
    total = agg.pop("total")
    summary = {**total, "seconds": round(seconds, 3), "bytes_read": bytes_read,
               "gbps": round(bytes_read / seconds / 1e9, 3) if seconds > 0 else None}
    overlap = None
    if len(sides) > 1:
        keys = ("o1", "o2", "chance_o1", "chance_o2")
        overlap = {
            "threshold": TOL_ABS,
            "overall": {k: total[k] for k in ("changed_abs", "other_changed_abs", "overlap") + keys},
            "by_tensor": [{"name": r["name"], **{k: r[k] for k in keys}} for r in rows],
        }
    for r in rows:
        r.pop("_sums", None)
    result = {
        "schema": SCHEMA,
        "tunelens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": base_w.describe(),
        "tuned": sides[0].describe(),
        "other": sides[1].describe() if len(sides) > 1 else None,
        "options": {"rank": rank, "rank_max_dim": rank_max_dim, "tol_abs": TOL_ABS, "tol_rel": TOL_REL,
                    "energy_levels": list(ENERGY_LEVELS)},
        "summary": summary,
        "aggregates": agg,
        "overlap": overlap,
        "notes": notes,
        "tensors": rows,
    }
    if out is not None:
        from .report import write_outputs

        result["files"] = write_outputs(result, Path(out))
    return result


# ---------------------------------------------------------------------------------------------------- setup


def _base_spec(base, sides: list[Weights], notes: list[str]) -> str:
    named = [(s, s.base_spec) for s in sides if s.lora is not None]
    if base is None:
        found = [b for _, b in named if b]
        if not found:
            raise TunelensError("pass the base model (--base): it cannot be read from the tuned model"
                                if not named else
                                f"adapter {named[0][0].path} does not name its base model; pass it (--base)")
        base = found[0]
    for side, b in named:
        if b and not same_model(b, str(base)):
            notes.append(f"{side.role} adapter was trained on '{b}'; compared with base '{base}' as asked")
    return str(base)


def _plan(base: Checkpoint, sides: list[Weights], notes: list[str]) -> list[str]:
    """The base tensors to compare, after checking every side fits the base architecture."""
    names = [n for n, info in base.tensors.items() if info.torch_dtype is not None]
    skipped = len(base.tensors) - len(names)
    if skipped:
        notes.append(f"{skipped} non-floating tensor(s) of the base skipped")
    for side in sides:
        check_fits(base, side, notes)
        if side.ckpt is not None:
            names = [n for n in names if n in side.ckpt]
    return names


# ---------------------------------------------------------------------------------------------------- stream


def _reads(base: Checkpoint, names: list[str], sides: list[Weights]):
    """Runs in the reader thread: every slab of every compared tensor, base and each side together."""
    for name in names:
        facs = [s.factor(name) for s in sides]
        for r0, r1 in base.tensors[name].slabs():
            w = base.read(name, r0, r1, touch=True)
            yield name, w, [s.rows(name, r0, r1, f) for s, f in zip(sides, facs)], facs


def _stream(base: Checkpoint, names, sides, rank, rank_max_dim, progress, notes,
            workers: int) -> tuple[list[dict], int]:
    ws = Workspace(workers)
    total_bytes = sum(base.tensors[n].nbytes * (1 + sum(s.reads(n) for s in sides)) for n in names)
    rows: list[dict] = []
    done = 0
    cur: dict | None = None
    n_rank_skipped = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the chunks run in our own worker threads: torch's threads on top oversubscribe
    try:
        with closing(prefetch(_reads(base, names, sides))) as slabs:  # closing: stop the reader on an error
            for name, w, parts, facs in slabs:
                if cur is None or cur["name"] != name:
                    if cur is not None:
                        rows.append(_finish(cur, threads))
                    cur = _start(base, name, sides, parts, facs, ws, rank, rank_max_dim)
                    n_rank_skipped += cur["rank_skipped"]
                (k1, x1) = parts[0]
                (k2, x2) = parts[1] if len(parts) > 1 else (None, None)
                cur["acc"].update(w, t_src=x1 if k1 == "t" else None, d_src=x1 if k1 == "d" else None,
                                  t2_src=x2 if k2 == "t" else None, d2_src=x2 if k2 == "d" else None)
                if not cur["acc"].finite():
                    _raise_nonfinite(name, w, parts, sides, base)
                done += w.nbytes + sum(x.nbytes for k, x in parts if k == "t")
                progress(done, total_bytes)
        if cur is not None:
            rows.append(_finish(cur, threads))
    finally:
        torch.set_num_threads(threads)
        ws.close()
    if n_rank_skipped:
        notes.append(f"rank skipped for {n_rank_skipped} matri(ces) larger than rank_max_dim={rank_max_dim}")
    return rows, done


def _start(base, name, sides, parts, facs, ws, rank, rank_max_dim) -> dict:
    info = base.tensors[name]
    kinds = [k for k, _ in parts]
    two_d = len(info.shape) == 2
    wanted = rank and two_d and (rank_max_dim is None or min(info.shape) <= rank_max_dim)
    both_bf16 = info.dtype == "BF16" and kinds[0] == "t" and sides[0].stored_dtype(name) == "BF16"
    acc = DeltaAccumulator(ws, keep=info.numel if wanted and kinds[0] == "t" else None, bf16_exact=both_bf16,
                           other=len(sides) > 1)
    fac = facs[0] if sides[0].exact_factors(name) else None  # else: dense statistics of the tuned rows
    return {"name": name, "info": info, "acc": acc, "fac": fac, "kind": kinds[0],
            "rank": wanted, "rank_skipped": int(rank and two_d and not wanted)}


def _finish(cur: dict, threads: int) -> dict:
    info, fac, delta = cur["info"], cur["fac"], cur["acc"].keep
    acc = cur["acc"].result()
    spectrum, dd = None, None
    if fac is not None:
        dd = fac.fro2()
        if cur["rank"]:
            spectrum = spectrum_stats(fac.svals(), info.shape)
    elif cur["rank"]:
        if delta is None:  # no slab changed
            spectrum = spectrum_stats(torch.zeros(1), info.shape)
        else:
            torch.set_num_threads(threads)  # the SVD is the one place torch's own threads pay off
            try:
                spectrum = dense_spectrum(delta.view(info.shape))
            finally:
                torch.set_num_threads(1)
    cur["acc"].keep = None
    return finish_row(cur["name"], info.shape, info.dtype, acc, spectrum, dd_override=dd)


def _raise_nonfinite(name, w, parts, sides, base):
    if not bool(torch.isfinite(w).all()):
        raise ModelError(f"{base.folder}: weight tensor '{name}' contains NaN or Inf values "
                         f"(corrupt checkpoint or diverged training)")
    for side, (kind, x) in zip(sides, parts):
        if x is not None and not bool(torch.isfinite(x).all()):
            raise ModelError(f"{side.path}: weight tensor '{name}' contains NaN or Inf values "
                             f"(corrupt checkpoint or diverged training)")
    raise ModelError(f"tensor '{name}': values too large for float32 statistics (norm overflows)")
