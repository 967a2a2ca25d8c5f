"""Where a run's time goes: wall and CPU seconds and page faults per phase."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["PhaseClock", "peak_rss_mb"]


def _faults() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def peak_rss_mb() -> float:
    """This process's own peak resident memory (``VmHWM``), in MB; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PhaseClock:
    """Accumulates ``{phase: {"wall_s", "cpu_s", "minflt"}}`` over ``with clock.phase(name):`` blocks.

    CPU seconds are the whole process's (every thread), so a phase that keeps
    two cores busy shows about twice its wall time.
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, float]]:
        row = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "minflt": 0})
        w0, c0, f0 = time.perf_counter(), time.process_time(), _faults()
        try:
            yield row
        finally:
            row["wall_s"] += time.perf_counter() - w0
            row["cpu_s"] += time.process_time() - c0
            row["minflt"] += _faults() - f0

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: {m: (round(v, 4) if isinstance(v, float) else int(v)) for m, v in row.items()}
                for k, row in self.phases.items()}
