"""``python -m msrl_model.bench``: registry, and ``read --json`` output (no timing assertions)."""

from __future__ import annotations

import json

from msrl_model.bench.__main__ import benchmark_modules, main


def test_registry_finds_benchmarks_by_module():
    assert {"read", "extract"} <= set(benchmark_modules())


def test_read_json_has_required_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSRL_BENCH_CACHE", str(tmp_path))
    code = main(["read", "--json", "--width", "1024", "--height", "768", "--repeats", "1", "--workers", "2"])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in ("naive_tiles_per_s", "parallel_tiles_per_s", "speedup", "workers"):
        assert key in record, key
    assert record["workers"] == 2 and record["tiles"] == 12 and record["pixels_equal_sample"] == 12
    assert record["naive_tiles_per_s"] > 0 and record["parallel_tiles_per_s"] > 0
    assert list(tmp_path.glob("synth_1024x768_seed0.svs"))  # the generated slide is cached
