"""Where a run's time goes (wall and CPU seconds and page faults per phase), and how much is left."""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["PhaseClock", "StageEta", "STAGE_UNITS", "peak_rss_mb"]


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


#: what a stage's progress counts, for messages
STAGE_UNITS = {"features": "spots", "sampling": "sampler calls"}


class StageEta:
    """Time left in the current stage of a run, from its own rate so far.

    ``update(stage, done, total)`` returns e.g. ``"features 1,200/2,960 spots, 0:42 left"``;
    the estimate starts once a stage has some progress and restarts with each stage.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._stage: str | None = None
        self._t0 = 0.0
        self._done0 = 0

    def update(self, stage: str, done: int, total: int) -> str:
        now = self._clock()
        if stage != self._stage or done < self._done0:
            self._stage, self._t0, self._done0 = stage, now, int(done)
        unit = STAGE_UNITS.get(stage)
        text = f"{stage} {int(done):,}/{int(total):,}" + (f" {unit}" if unit else "")
        left = self.seconds_left(done, total, now)
        return text if left is None else f"{text}, {_clock_text(left)} left"

    def seconds_left(self, done: int, total: int, now: float | None = None) -> float | None:
        now = self._clock() if now is None else now
        made, spent = int(done) - self._done0, now - self._t0
        if made <= 0 or spent <= 0 or done >= total:
            return None
        return (int(total) - int(done)) * spent / made


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
