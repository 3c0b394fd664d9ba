"""Files of a diff: diff.json, diff_tensors.csv, heatmap.csv and heatmap.svg (all written atomically),
and the short text summary the CLI prints."""

from __future__ import annotations

import csv
from pathlib import Path

from ..io import atomic_open, write_json

TENSOR_COLUMNS = [
    "name", "layer", "module", "shape", "dtype", "numel",
    "changed", "changed_abs", "changed_rel", "changed_bf16",
    "frac_changed", "frac_changed_abs", "frac_changed_rel", "frac_changed_bf16",
    "delta_fro", "base_fro", "rel_fro", "cosine", "rank", "rank_frac", "energy90", "energy99",
]
OVERLAP_COLUMNS = ["other_changed_abs", "other_delta_fro", "overlap", "o1", "o2", "chance_o1", "chance_o2"]


def write_outputs(result: dict, out: Path) -> dict:
    """Write every file of ``result`` into ``out``; returns {kind: path}."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "diff.json", "tensors_csv": out / "diff_tensors.csv", "heatmap_csv": out / "heatmap.csv"}
    _write_tensors_csv(result, files["tensors_csv"])
    heat = result["aggregates"]["heatmap"]
    _write_heatmap_csv(heat, files["heatmap_csv"])
    if heat["layers"] and heat["modules"]:
        files["heatmap_svg"] = out / "heatmap.svg"
        _write_heatmap_svg(heat, files["heatmap_svg"], title=f"{Path(result['tuned']['spec']).name} vs "
                                                               f"{Path(result['base']['spec']).name}")
    files = {k: str(v) for k, v in files.items()}
    write_json(files["json"], {**result, "files": files})  # last: its presence means the set is complete
    return files


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return str(v)


def _write_tensors_csv(result: dict, path: Path) -> None:
    cols = TENSOR_COLUMNS + (OVERLAP_COLUMNS if result.get("other") else [])
    with atomic_open(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in result["tensors"]:
            w.writerow([_cell(r.get(c)) for c in cols])


def _write_heatmap_csv(heat: dict, path: Path) -> None:
    with atomic_open(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["layer"] + heat["modules"])
        for layer, line in zip(heat["layers"], heat["values"]):
            w.writerow([layer] + [_cell(v) for v in line])


def _write_heatmap_svg(heat: dict, path: Path, title: str) -> None:
    from ..report.svg import heatmap_svg  # no plotting library: see report/svg.py

    with atomic_open(path) as f:
        f.write(heatmap_svg(heat, title=f"‖ΔW‖_F / ‖W‖_F per layer and module — {title}"))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _num(v, spec=".4g") -> str:
    return "–" if v is None else format(v, spec)


def summary_lines(result: dict, top: int = 5) -> list[str]:
    s = result["summary"]
    lines = [
        f"{s['n_tensors']} tensors, {s['numel']:,} parameters compared in {s['seconds']:.1f}s "
        f"({_num(s['gbps'], '.2f')} GB/s)",
        f"changed: exactly {_pct(s['frac_changed'])}, |Δ|>{result['options']['tol_abs']:g} "
        f"{_pct(s['frac_changed_abs'])}, |Δ|>{result['options']['tol_rel']:g}·|W| {_pct(s['frac_changed_rel'])}, "
        f"after bf16 rounding {_pct(s['frac_changed_bf16'])}",
        f"‖Δ‖_F={_num(s['delta_fro'])}  ‖Δ‖_F/‖W‖_F={_num(s['rel_fro'])}  cosine(W_tuned, W_base)="
        f"{_num(s['cosine'], '.6f')}" + (f"  mean rank/min(m,n)={s['mean_rank_frac']:.3f}"
                                         if "mean_rank_frac" in s else ""),
    ]
    if result.get("overlap"):
        o = result["overlap"]["overall"]
        lines.append(f"overlap with other: o1={_num(o['o1'], '.4f')} (chance {_num(o['chance_o1'], '.4f')}), "
                     f"o2={_num(o['o2'], '.4f')} (chance {_num(o['chance_o2'], '.4f')})")
    ranked = sorted((r for r in result["tensors"] if r["rel_fro"]), key=lambda r: -r["rel_fro"])[:top]
    if ranked:
        lines.append("largest relative updates:")
        for r in ranked:
            rk = f"  rank {r['rank']}/{min(r['shape'])}" if r.get("rank") is not None and len(r["shape"]) == 2 else ""
            lines.append(f"  {r['name']:48s} ‖Δ‖/‖W‖={r['rel_fro']:.4g}  changed {_pct(r['frac_changed_abs'])}{rk}")
    for n in result["notes"][:5]:
        lines.append(f"note: {n}")
    if len(result["notes"]) > 5:
        lines.append(f"note: ... and {len(result['notes']) - 5} more (see diff.json)")
    return lines
