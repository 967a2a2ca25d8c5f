"""Phase clock and time-left estimates (synthetic clocks: the estimate's arithmetic, not a timing)."""
from __future__ import annotations

from napari_flag.profiling import PhaseClock, StageEta


def test_time_left_follows_each_stage_own_rate():
    now = [100.0]
    eta = StageEta(clock=lambda: now[0])
    assert eta.update("features", 0, 3000) == "features 0/3,000 spots"  # no rate yet
    now[0] += 10.0
    assert eta.update("features", 1000, 3000) == "features 1,000/3,000 spots, 0:20 left"
    now[0] += 5.0
    assert eta.update("features", 3000, 3000) == "features 3,000/3,000 spots"
    assert eta.update("sampling", 0, 10) == "sampling 0/10 sampler calls"  # a new stage starts afresh
    now[0] += 4000.0
    assert eta.update("sampling", 1, 10).endswith("10:00:00 left")


def test_phase_clock_accumulates_named_phases():
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("graph") as row:
            sum(range(10000))
    with clock.phase("sampling"):
        pass
    d = clock.as_dict()
    assert list(d) == ["graph", "sampling"]
    assert d["graph"]["wall_s"] >= 0 and set(d["graph"]) == {"wall_s", "cpu_s", "minflt"}
    assert row is clock.phases["graph"]
