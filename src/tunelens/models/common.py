"""What every part of model loading shares: where tunelens keeps its caches, the silencing of third-party logging
and progress bars during a load, and one-line texts of the exceptions those libraries raise.

Loads go through transformers, peft and huggingface_hub, each with its own chatter; the user should see
tunelens' one-line errors and nothing else, whichever part of the loader they came from.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path


def tunelens_home() -> Path:
    """$TUNELENS_HOME, else ~/.cache/tunelens."""
    return Path(os.environ.get("TUNELENS_HOME") or "~/.cache/tunelens").expanduser()


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _quiet():
    """Silence transformers/peft/hub logging, progress bars and warnings for the duration of a load."""
    from transformers.utils import logging as tlog

    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover
        are_progress_bars_disabled = None
    old_verbosity, old_bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled() if are_progress_bars_disabled else True
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    if not hub_bars_off:
        disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(old_verbosity)
        if old_bar:
            tlog.enable_progress_bar()
        if not hub_bars_off:
            enable_progress_bars()
