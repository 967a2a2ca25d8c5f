"""Run a producer ahead of its consumer in a helper thread, through a bounded queue."""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int = 2, name: str = "napari-flag reader") -> Iterator[T]:
    """Yield what ``items`` yields, produced up to ``depth`` items ahead in a helper thread.

    Image reading (tile decoding, resampling) releases the GIL, so it overlaps
    the encoder's compute.  At most ``depth`` items wait in memory.  An
    exception in the producer is re-raised here; closing this generator (a
    cancel) stops the producer at its next item and joins its thread, so no
    thread outlives the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item,)):
                    return
        except BaseException as exc:  # re-raised in the consumer's thread
            put(exc)
            return
        put(_END)

    t = threading.Thread(target=produce, name=name, daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:
        stop.set()
        t.join()
