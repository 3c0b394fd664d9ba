"""The report's charts (matplotlib, Agg, no pyplot): PNG data URIs, readable in print; the heatmap is SVG
(report/svg.py, shared with `tunelens diff`).

Colours are the Okabe–Ito palette (distinguishable with every common colour-vision deficiency), the heatmap
uses cividis; every chart is also told apart by marker or hatch, not colour alone.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BLUE, ORANGE, SKY, GREEN, VERMILLION, PURPLE, GREY = ("#0072B2", "#E69F00", "#56B4E9", "#009E73", "#D55E00",
                                                      "#CC79A7", "#7f7f7f")
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "svg.hashsalt": "tunelens"}
DPI = 110


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})  # no version stamp: same data, same bytes
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def forest(entries: list[dict], title: str, directions: list[str]) -> str:
    """Dot-and-whisker plot of each metric's delta (tuned − base) with its fixed-n 95% interval. `directions` colour
    only headline decisions ('gain' / 'cost'); every other entry is grey."""
    with rc_context(STYLE):
        n = len(entries)
        fig = _figure(6.0, 1.2 + 0.32 * n)
        ax = fig.add_subplot()
        colours = {"gain": BLUE, "cost": VERMILLION, "": GREY}
        markers = {"gain": "^", "cost": "v", "": "o"}
        for i, (e, d) in enumerate(zip(entries, directions)):
            y = n - 1 - i
            ci = e.get("ci95") or e.get("ci")
            if ci and ci[0] is not None:
                ax.plot([ci[0], ci[1]], [y, y], color=colours[d], lw=2)
            if e.get("delta") is not None:
                ax.plot([e["delta"]], [y], marker=markers[d], color=colours[d], ms=7, ls="none")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(n), [e["metric"] + ("" if e.get("higher_is_better", True) else " (↓ better)")
                                 for e in reversed(entries)])
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_xlabel("Δ = tuned − base (metric units), fixed-n 95% CI")
        ax.set_title(title)
        for d, label in (("gain", "gain (headline decision)"), ("cost", "cost (headline decision)"),
                         ("", "not decided a gain or cost")):
            ax.plot([], [], marker=markers[d], color=colours[d], ls="-", label=label)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return _uri(fig)


def safety_bars(rows: list[dict]) -> str:
    """Refusal rate per harm category, base vs tuned. A category flagged `insufficient` (too few items for a
    rate comparison) gets no bars, only its counts written at its place."""
    with rc_context(STYLE):
        cats = [f"{r['category']}\n(n={r.get('n', '?')})" for r in rows]
        x = np.arange(len(cats))
        fig = _figure(max(5.0, 1.0 + 0.8 * len(cats)), 3.8)
        ax = fig.add_subplot()
        w = 0.38
        ok = [i for i, r in enumerate(rows) if not r.get("insufficient")]
        base = [100 * (rows[i]["base"] or 0.0) for i in ok]
        tuned = [100 * (rows[i]["tuned"] or 0.0) for i in ok]
        ax.bar(x[ok] - w / 2, base, w, color=SKY, edgecolor="black", label="base")
        ax.bar(x[ok] + w / 2, tuned, w, color=VERMILLION, edgecolor="black", hatch="//", label="tuned")
        for i, r in enumerate(rows):
            if r.get("insufficient"):
                kb, kt = r.get("base_count"), r.get("tuned_count")
                counts = f"{kb}/{r.get('n')} → {kt}/{r.get('n')}\n" if kb is not None and kt is not None else ""
                ax.text(x[i], 50, counts + "insufficient\nsample", ha="center", va="center", color=GREY,
                        fontsize=8)
        ax.set_xticks(x, cats, rotation=30 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center")
        ax.set_ylabel("refusal rate (%)")
        ax.set_xlabel("harm category")
        ax.set_ylim(0, 105)
        ax.set_title("Harmful requests refused, by category (higher is safer)")
        if ok:
            ax.legend(frameon=False, loc="upper right")
        return _uri(fig)


def heatmap(heat: dict) -> str:
    """Layer × module grid of the update's relative size ‖ΔW‖_F / ‖W‖_F: the SVG of diff's heatmap.svg (one
    renderer for both, report/svg.py), as a data URI."""
    from .svg import heatmap_svg

    return "data:image/svg+xml;base64," + base64.b64encode(heatmap_svg(heat).encode("utf-8")).decode("ascii")


def graft_curve(rows: list[dict], metric: str) -> str:
    """Gain recovered (task metric, and task loss when recorded) by the grafted sparse update vs the fraction of
    entries kept (log x); when the tune gained nothing (gain recovered undefined) the graft's own score against
    base and tuned instead."""
    rows = sorted((r for r in rows if r.get("sparsity", 0) > 0), key=lambda r: r["sparsity"])
    gains = [r for r in rows if r.get("gain_recovered") is not None]
    with rc_context(STYLE):
        fig = _figure(6.0, 3.8)
        ax = fig.add_subplot()
        if gains:
            ax.plot([r["sparsity"] for r in gains], [100 * r["gain_recovered"] for r in gains], marker="o",
                    color=BLUE, lw=2, label=f"graft: {metric}")
            losses = [r for r in gains if r.get("loss_recovered") is not None]
            if losses:  # the task loss moves before a few-way accuracy does
                ax.plot([r["sparsity"] for r in losses], [100 * r["loss_recovered"] for r in losses], marker="s",
                        color=ORANGE, lw=1.5, ls="--", label="graft: task loss")
            ax.axhline(100, color=GREEN, ls="--", lw=1, label="tuned (100%)")
            ax.axhline(0, color=GREY, ls=":", lw=1, label="base (0%)")
            ax.set_ylabel(f"gain recovered (% of tuned − base {metric})")
            ax.set_title("How few updated weights carry the gain")
        else:
            ax.plot([r["sparsity"] for r in rows], [r["score"]["graft"] for r in rows], marker="o", color=BLUE, lw=2,
                    label="graft")
            if rows:
                ax.axhline(rows[0]["score"]["tuned"], color=GREEN, ls="--", lw=1, label="tuned")
                ax.axhline(rows[0]["score"]["base"], color=GREY, ls=":", lw=1, label="base")
            ax.set_ylabel(metric)
            ax.set_title("Grafted score (the tune gained nothing to recover)")
        ax.set_xscale("log")
        ax.set_xlabel("sparsity: fraction of fine-tuned entries grafted (log scale)")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _uri(fig)


def tradeoff(sweep: dict, x_axis: str, y_axis: str) -> str:
    """Repair candidates: task score vs refusal rate with CIs, Pareto front, base/tuned, the selected one."""
    with rc_context(STYLE):
        fig = _figure(6.8, 4.6)
        ax = fig.add_subplot()
        ok = [r for r in sweep.get("rows") or [] if r.get("status", "ok") == "ok" and _xy(r.get("scores"), x_axis, y_axis)]
        for r in ok:
            _point(ax, r["scores"], x_axis, y_axis, color=GREY if not r.get("pareto") else BLUE,
                   marker="o", ms=6, zorder=2)
            x, y = _xy(r["scores"], x_axis, y_axis)
            ax.annotate(r.get("name", ""), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        front = sorted((_xy(r["scores"], x_axis, y_axis) for r in ok if r.get("pareto")), key=lambda p: p[0])
        if front:
            ax.plot(*zip(*front), color=BLUE, lw=1.5, ls="-", zorder=1, label="Pareto front")
        ax.plot([], [], marker="o", color=GREY, ls="none", label="candidate")
        for ref, colour, marker in (("base", SKY, "s"), ("tuned", ORANGE, "D")):
            if _xy(sweep.get(ref), x_axis, y_axis):
                _point(ax, sweep[ref], x_axis, y_axis, color=colour, marker=marker, ms=9, zorder=3,
                       mec="black", label=ref)
        sel = next((r for r in ok if r.get("selected") or r.get("name") == sweep.get("selected")), None)
        if sel:
            x, y = _xy(sel["scores"], x_axis, y_axis)
            ax.plot([x], [y], marker="*", ms=18, color=VERMILLION, mec="black", ls="none", zorder=4,
                    label=f"selected: {sel.get('name')}")
        ax.set_xlabel(f"{x_axis} (higher is better)")
        ax.set_ylabel(f"{y_axis} (higher is safer)")
        ax.set_title("Repair trade-off: task score vs refusal rate\n(bars: 95% paired interval of the change from the base)")
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _uri(fig)


def _xy(scores, x_axis, y_axis):
    try:
        x, y = scores[x_axis]["value"], scores[y_axis]["value"]
    except (KeyError, TypeError):
        return None
    return (x, y) if x is not None and y is not None else None


def _err(score: dict):
    v, ci = score.get("value"), score.get("ci")
    if not ci or ci[0] is None or not (ci[0] <= v <= ci[1]):
        return None
    return [[v - ci[0]], [ci[1] - v]]


def _point(ax, scores, x_axis, y_axis, *, color, marker, ms, zorder, mec=None, label=None):
    x, y = _xy(scores, x_axis, y_axis)
    ax.errorbar([x], [y], xerr=_err(scores[x_axis]), yerr=_err(scores[y_axis]), marker=marker, ms=ms, color=color,
                mec=mec or color, ecolor=color, elinewidth=1, capsize=3, ls="none", zorder=zorder, label=label)


def train_loss(log: list[dict]) -> str:
    with rc_context(STYLE):
        fig = _figure(6.0, 3.6)
        ax = fig.add_subplot()
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], color=BLUE, marker="." if len(log) < 60 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (nats / token)")
        ax.set_title("Training loss")
        return _uri(fig)


def learning_curve(points: list[tuple[float, float]], metric: str, fit_xy=None) -> str:
    """Score vs training examples (log x), with the fitted law when there is one."""
    with rc_context(STYLE):
        fig = _figure(6.0, 3.6)
        ax = fig.add_subplot()
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", ls="none", color=BLUE, ms=7, label="measured")
        if fit_xy:
            ax.plot(*fit_xy, color=ORANGE, ls="--", label="fitted law")
        ax.set_xscale("log")
        ax.set_xlabel("training examples (log scale)")
        ax.set_ylabel(metric)
        ax.set_title("Learning curve")
        ax.legend(frameon=False, loc="best")
        return _uri(fig)
