"""``bench infer`` runs end to end at tiny sizes and reports what it promises."""

from __future__ import annotations

import json

import pytest

from msrl_model.bench import infer as bench


def test_bench_json_dense_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--json", "--sizes", "40", "--queries", "2"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    for key in ("buffer", "dense_ms", "exact_ms", "max_abs_diff", "speedup", "peak_mem_mb", "precompute_s"):
        assert key in rec
    assert rec["buffer"] == 40 and rec["queries"] == 2
    assert rec["max_abs_diff"] <= 1e-4
    assert rec["dense_ms"] > 0 and rec["speedup"] > 0


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
