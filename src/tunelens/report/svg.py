"""The layer × module heatmap as SVG, written by hand: no plotting library, so `tunelens diff` writes its picture
in a millisecond instead of paying matplotlib's ~0.35 s import after streaming gigabytes at read speed, and the
report embeds the same picture (one renderer for both).

Why SVG: the grid is a few hundred rectangles and some labels, which SVG says directly; it is crisp at any zoom,
opens in every browser, and each cell carries its exact value as a tooltip (``<title>``). The output is a pure
function of the grid (no timestamps or ids), so the same diff gives the same bytes.

Colours: cividis (perceptually uniform, readable with every common colour-vision deficiency, and in greyscale
print), linear between the grid's smallest and largest value, as the colour bar beside it says. Blank cells
are tensors absent from the model or without a value.
"""

from __future__ import annotations

import math
from html import escape

# cividis at 17 evenly spaced points (matplotlib's table, sampled once); colours between them are interpolated
CIVIDIS = ("#00224e", "#002e6a", "#1a386f", "#32436d", "#434e6c", "#535a6d", "#61656f", "#6f7073", "#7d7c78",
           "#8c8878", "#9b9476", "#aba072", "#bcae6c", "#cdbb63", "#dec958", "#f0d846", "#fee838")
_RGB = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in CIVIDIS]

CELL_W, CELL_H_MAX, CELL_H_MIN, PLOT_H = 58, 22, 6, 420
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
TITLE = "Relative size of the update per layer and module (blank: unchanged / absent)"


def colour(t: float) -> str:
    """cividis at t in [0, 1] (clamped), linearly interpolated between the 17 table points."""
    t = 0.0 if not t > 0 else min(t, 1.0)  # NaN → 0
    x = t * (len(_RGB) - 1)
    i = min(int(x), len(_RGB) - 2)
    f = x - i
    a, b = _RGB[i], _RGB[i + 1]
    return "#%02x%02x%02x" % tuple(round(a[k] + (b[k] - a[k]) * f) for k in range(3))


def _num(v: float) -> str:
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values between lo and hi for the colour bar (lo and hi themselves when the range is empty)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi * (1 + 1e-9) + 1e-300:
        out.append(round(v, 12))
        v += step
    return out


def heatmap_svg(heat: dict, title: str = TITLE, label: str = "‖ΔW‖_F / ‖W‖_F") -> str:
    """The grid ``heat`` ({"layers", "modules", "values"}: one row of values per layer, None for blank cells) as
    a standalone SVG document."""
    layers, modules, values = heat["layers"], heat["modules"], heat["values"]
    finite = [v for line in values for v in line if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = hi - lo
    ch = max(CELL_H_MIN, min(CELL_H_MAX, PLOT_H // max(1, len(layers))))
    # module labels run down-left at 45°: ~4.5 px of height and of leftward reach per character
    reach = [4.5 * len(str(m)) for m in modules] or [20.0]
    left, top = int(max(64, reach[0] - CELL_W / 2 + 12)), 44
    grid_w, grid_h = CELL_W * len(modules), ch * len(layers)
    bar_x, bar_h = left + grid_w + 24, max(grid_h, 120)
    width = int(max(bar_x + 110, 7.2 * len(title) + 20))
    height = int(top + max(grid_h + max(reach) + 22, bar_h) + 30)
    step = max(1, math.ceil(len(layers) / 32))  # at most ~32 layer labels

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="13">{escape(title)}</text>']
    for i, (layer, line) in enumerate(zip(layers, values)):
        y = top + i * ch
        for j, (module, v) in enumerate(zip(modules, line)):
            if v is None or not math.isfinite(v):
                continue
            fill = colour((v - lo) / span if span > 0 else 0.5)
            out.append(f'<rect x="{left + j * CELL_W}" y="{y}" width="{CELL_W}" height="{ch}" fill="{fill}">'
                       f'<title>layer {escape(str(layer))} · {escape(str(module))}: {v:.6g}</title></rect>')
        if i % step == 0:
            out.append(f'<text x="{left - 6}" y="{y + ch / 2 + 4:.1f}" text-anchor="end">{escape(str(layer))}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{grid_w}" height="{grid_h}" fill="none" stroke="#555555" '
               f'stroke-width="0.8"/>')
    base = top + grid_h
    for j, module in enumerate(modules):
        x = left + j * CELL_W + CELL_W / 2
        out.append(f'<text transform="translate({x:.1f},{base + 12}) rotate(-45)" text-anchor="end">'
                   f'{escape(str(module))}</text>')
    out.append(f'<text x="{left + grid_w / 2:.1f}" y="{height - 8}" text-anchor="middle">module</text>')
    out.append(f'<text transform="translate(16,{top + grid_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'layer</text>')
    # colour bar: top = largest value
    out.append('<defs><linearGradient id="cividis" x1="0" y1="1" x2="0" y2="0">'
               + "".join(f'<stop offset="{k / (len(CIVIDIS) - 1):.4f}" stop-color="{c}"/>'
                         for k, c in enumerate(CIVIDIS)) + "</linearGradient></defs>")
    out.append(f'<rect x="{bar_x}" y="{top}" width="14" height="{bar_h}" fill="url(#cividis)" stroke="#555555" '
               f'stroke-width="0.8"/>')
    for v in _ticks(lo, hi):
        y = top + bar_h * (1 - ((v - lo) / span if span > 0 else 0.5))
        out.append(f'<line x1="{bar_x + 14}" y1="{y:.1f}" x2="{bar_x + 18}" y2="{y:.1f}" stroke="#555555"/>'
                   f'<text x="{bar_x + 21}" y="{y + 4:.1f}">{_num(v)}</text>')
    out.append(f'<text transform="translate({bar_x + 84},{top + bar_h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{escape(label)}</text>')
    if not finite:
        out.append(f'<text x="{left + grid_w / 2:.1f}" y="{top + grid_h / 2:.1f}" text-anchor="middle">'
                   'no values</text>')
    out.append("</svg>\n")
    return "\n".join(out)
