"""bench threads' comparison of the default thread plan with every count (fake rates, no timing)."""

from __future__ import annotations

import pytest

from msrl_model import device
from msrl_model.bench import threads

RATES = {1: 100.0, 2: 180.0, 3: 150.0}  # tiles/s per thread count


def _measure_at(counts: list[int]):
    def measure_at(t: int) -> dict[str, float]:
        counts.append(t)
        return {"tiles_per_s": RATES[t], "encode_tiles_per_s": 2 * RATES[t]}
    return measure_at


@pytest.mark.parametrize("default, ratio, ok", [(2, 1.0, True), (1, 0.556, False), (3, 0.833, False)])
def test_default_plan_against_the_best_count(monkeypatch, default, ratio, ok):
    monkeypatch.setattr(device, "plan_threads", lambda threads=None: device.ThreadPlan(default, default, "test"))
    calls: list[int] = []
    rec = threads.compare_threads("quiet", _measure_at(calls), "tiles_per_s", max_threads=3, repeats=2)
    assert calls == [1, 2, 3, 1, 2, 3]  # every count, interleaved, once per repeat
    assert rec["tiles_per_s"] == {"1": 100.0, "2": 180.0, "3": 150.0}
    assert rec["encode_tiles_per_s"] == {"1": 200.0, "2": 360.0, "3": 300.0}
    assert rec["best_threads"] == 2 and rec["default_threads"] == default
    assert rec["default_over_best"] == ratio and rec["ok"] is ok
    assert rec["plan"] == "threads: torch %d, readers %d (from test)" % (default, default)
    assert bool(threads.failed_conditions([rec])) is not ok


def test_the_default_count_is_measured_even_beyond_max_threads(monkeypatch):
    monkeypatch.setattr(device, "plan_threads", lambda threads=None: device.ThreadPlan(3, 3, "test"))
    calls: list[int] = []
    rec = threads.compare_threads("quiet", _measure_at(calls), "tiles_per_s", max_threads=1)
    assert calls == [1, 3] and rec["best_threads"] == 3


def test_busy_processes_run_during_the_block_only():
    with threads.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
