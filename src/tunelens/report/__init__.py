"""The run report: report.html (self-contained, plots embedded) and report.md (for pull requests)."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_open
from .html import SECTION_IDS, render_html
from .load import RunData, load_run
from .markdown import render_markdown

__all__ = ["build_report", "load_run", "render_html", "render_markdown", "RunData", "SECTION_IDS"]


def build_report(run_dir, out_dir=None) -> dict:
    """Write report.html and report.md for a run folder (run.json) or a lone audit folder (ledger.json);
    returns {"html": path, "md": path}. Missing or failed stages are rendered as such, never raised."""
    data = load_run(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    paths = {"html": out / "report.html", "md": out / "report.md"}
    with atomic_open(paths["html"]) as f:
        f.write(render_html(data))
    with atomic_open(paths["md"]) as f:
        f.write(render_markdown(data))
    return paths
