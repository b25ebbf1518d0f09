"""``bench infer`` runs end to end at tiny sizes and reports what it promises."""

from __future__ import annotations

import json

import pytest

from msrl_model.bench import infer as bench


def test_bench_json_dense_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--json", "--sizes", "40", "--queries", "2"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    for key in ("buffer", "dense_ms", "exact_ms", "max_abs_diff", "speedup", "peak_mem_mb", "precompute_s",
                "precompute_peak_mb", "threads", "loadavg_1min", "failed"):
        assert key in rec
    assert rec["buffer"] == 40 and rec["queries"] == 2
    assert rec["max_abs_diff"] <= 1e-4 and rec["failed"] == []
    assert rec["dense_ms"] > 0 and rec["speedup"] > 0
    assert rec["exact_ms_p95"] <= rec["exact_ms_max"] and 0 < rec["screen_ms"]
    assert rec["precompute_peak_mb"] <= rec["peak_mem_mb"]


def test_bench_clustered_path_checks_against_component(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "DENSE_LIMIT", 0)  # force the 10^6-style clustered buffer at 3,000 rows
    assert bench.main(["--json", "--sizes", "3000", "--queries", "2"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["dense_ms"] is None and rec["speedup"] is None
    assert rec["max_abs_diff"] <= 1e-4
    assert "component" in rec["reference"]


def test_clustered_buffer_rows_match_clusters() -> None:
    src = bench.ClusteredBuffer(1000, bench.BenchConfig())
    c = 3
    lo, hi = src.bounds[c], src.bounds[c + 1]
    assert (src.rows(lo - 2, hi + 2)[2:-2] == src.dense_cluster(c)).all()
    assert (src.rows(lo, hi)[:, : c * src.width] == 0).all()


def test_failed_targets_name_the_figure_and_why() -> None:
    rec = {"buffer": 1_000_000, "max_abs_diff": 0.0, "exact_ms": 300.0, "screen_ms": 140.0, "screen": "int8",
           "threads": 2, "loadavg_1min": 3.5, "precompute_peak_mb": 5000.0, "speedup": None,
           "reference": "dense"}
    speed, memory = bench.targets_failed(rec)
    assert speed.startswith("speed: 300.0 ms mean") and "screen 140.0 ms" in speed and "load average 3.5" in speed
    assert memory.startswith("memory: precompute peak RSS 5000 MB > 4096 MB")
    rec.update(exact_ms=200.0, precompute_peak_mb=3000.0, max_abs_diff=float("inf"))
    assert bench.targets_failed(rec) == ["exactness: max |Δ| inf > 1e-06 against the dense (different linked rows "
                                         "or top lists)"]


def test_percentile_is_nearest_rank() -> None:
    assert bench._percentile([5.0, 1.0, 3.0, 2.0, 4.0], 95) == 5.0
    assert bench._percentile(list(range(1, 21)), 95) == 19
    assert bench._percentile([7.0], 50) == 7.0
