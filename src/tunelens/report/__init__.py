"""The run report: report.html (self-contained, plots embedded) and report.md (for pull requests)."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_open

__all__ = ["build_report", "load_run", "render_html", "render_markdown", "RunData", "SECTION_IDS"]
_LAZY = {"SECTION_IDS": ".html", "render_html": ".html", "RunData": ".load", "load_run": ".load",
         "render_markdown": ".markdown"}


def __getattr__(name):
    # the renderers import the audit package and more: a module that needs one plot (diff's heatmap) imports
    # report.plots without paying for them
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_report(run_dir, out_dir=None) -> dict:
    """Write report.html and report.md for a run folder (run.json) or a lone audit folder (ledger.json);
    returns {"html": path, "md": path}. Missing or failed stages are rendered as such, never raised."""
    from .html import render_html
    from .load import load_run
    from .markdown import render_markdown

    data = load_run(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    paths = {"html": out / "report.html", "md": out / "report.md"}
    with atomic_open(paths["html"]) as f:
        f.write(render_html(data))
    with atomic_open(paths["md"]) as f:
        f.write(render_markdown(data))
    return paths
