"""Overlap reading with computing: ``prefetch`` runs the slab reads of a diff (and the page faults that bring
the bytes in) in a background thread, a couple of slabs ahead of the statistics.

The reader itself is :mod:`tunelens.weights.checkpoint`; its names stay importable from here.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

from ..weights.checkpoint import Checkpoint, TensorInfo, weight_files

__all__ = ["prefetch", "Checkpoint", "TensorInfo", "weight_files"]

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` with a background thread producing up to ``depth`` items ahead.
    An exception in the producer is re-raised here; closing the iterator stops the producer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for it in items:
                if not put(it):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Failure(e))

    thread = threading.Thread(target=work, name="tunelens-diff-reader", daemon=True)
    thread.start()
    try:
        while True:
            it = q.get()
            if it is _END:
                return
            if isinstance(it, _Failure):
                raise it.exc
            yield it
    finally:
        stop.set()
        thread.join()
