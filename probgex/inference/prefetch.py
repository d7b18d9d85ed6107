"""Read ahead in a background thread, bounded: the items of an iterator produced by one thread while the
caller works on the previous ones (the next window of streamed counts read from disk while the device
scans the current one). At most `depth` finished items wait in the queue and one more is being made, so
memory stays bounded; the items come in their order; an error raised while making one is raised to the
caller at that item; leaving the loop early stops the thread after the item it is making. No JAX here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of `items`, made in a background thread at most `depth` (>= 1) ahead of the caller."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as e:  # handed to the caller, raised there
            offer((_END, e))

    worker = threading.Thread(target=produce, name="probgex-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()
