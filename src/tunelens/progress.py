"""One progress channel: long work reports `step(done, total)` and says things through `logging`; whoever runs
it decides how that is shown.

Why: progress used to travel four ways — tqdm flags, `(done, total)` callbacks passed down by hand, the run
pipeline polling files a stage had written, and prints — so each new stage had to pick one and the pipeline's
display could only guess (counting `items/*.jsonl`). Now the work calls `step()`; the CLI turns that into a
tqdm bar (`Bar`), the pipeline into its rich display (`reporting(display.step)`), and a library caller into
whatever it passes to `reporting` — or nothing, when no one listens. Messages go to the "tunelens" logger, which
writes to the *current* sys.stderr (so the pipeline's per-stage log and pytest's capture see them) unless the
caller configures logging itself.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol

log = logging.getLogger("tunelens")


class Step(Protocol):
    """What listens to progress: called with the units done so far and the total (None: not known yet)."""

    def __call__(self, done: int, total: Optional[int]) -> None: ...


_listener: contextvars.ContextVar[Optional[Step]] = contextvars.ContextVar("tunelens_progress", default=None)


def step(done: int, total: Optional[int]) -> None:
    """Report progress of the work running now (a no-op when nobody listens)."""
    listener = _listener.get()
    if listener is not None:
        listener(done, total)


@contextmanager
def reporting(listener: Optional[Step]) -> Iterator[None]:
    """Send every `step()` made inside this block to `listener` (None: to nobody)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class Bar:
    """A tqdm bar fed by `step()` (use as `b = Bar(...)`, `with reporting(b): ...`, `b.close()`); `scale` divides
    the units (bytes shown as GB with scale=1e9). It opens on the first step, so a run that reports nothing
    shows no bar."""

    def __init__(self, desc: str, unit: str = "step", scale: float = 1.0, enabled: bool = True):
        self.desc, self.unit, self.scale, self.enabled = desc, unit, scale, enabled
        self._bar = None

    def __call__(self, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=None if total is None else total / self.scale, desc=self.desc, unit=self.unit,
                             file=sys.stderr, bar_format=None if self.scale == 1 else
                             "{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} {unit} [{elapsed}<{remaining}]")
        if total is not None:
            self._bar.total = total / self.scale
        self._bar.n = done / self.scale
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _CurrentStderr(logging.Handler):
    """Writes each record to sys.stderr as it is at that moment (not as it was when logging was set up)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the work
            self.handleError(record)


def _setup() -> None:
    if not log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


_setup()


def listener_or(callback: Optional[Callable[[int, int], None]]) -> Callable[[int, Optional[int]], None]:
    """A function's own `progress=` callback when one is given, else the channel's `step`."""
    return callback if callback is not None else step
