"""``bench extract --json``: per-stage record (stand-in encoder; no timing assertions)."""

from __future__ import annotations

import json

import torch

import msrl_model.encoders
from msrl_model.bench.__main__ import main
from msrl_model.encoders import PatchEncoder


class _Mean(torch.nn.Module):
    """(B, 3, S, S) float -> (B, 3) channel means."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_extract_json_reports_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSRL_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(msrl_model.encoders, "build_encoder", lambda spec, device="cpu": PatchEncoder(
        name="test-mean", version="1", dim=3, model=_Mean(), transform=lambda b: b.permute(0, 3, 1, 2).float(),
        precision=torch.float32, input_size=256))
    code = main(["extract", "--json", "--width", "1536", "--height", "1024", "--device", "cpu", "--workers", "2",
                 "--no-compare-threads"])
    assert code == 0  # a stand-in encoder has no encode target, and no thread comparison ran
    record = json.loads(capsys.readouterr().out.strip())
    assert record["device"] == "cpu" and record["tiles"] > 0
    for key in ("tiles_per_s", "read_tiles_per_s", "transfer_tiles_per_s", "encode_tiles_per_s", "read_wait_s"):
        assert record[key] >= 0, key
    assert record["gflop_per_tile"] == 0  # channel means: no matmul / convolution
    assert record["encode_gflop_per_s"] == 0
    assert "thread_policy" not in record and record["targets_failed"] == []


def test_extract_json_compares_thread_counts_quiet_and_loaded(tmp_path, monkeypatch, capsys):
    from msrl_model.device import available_cpus

    monkeypatch.setenv("MSRL_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(msrl_model.encoders, "build_encoder", lambda spec, device="cpu": PatchEncoder(
        name="test-mean", version="1", dim=3, model=_Mean(), transform=lambda b: b.permute(0, 3, 1, 2).float(),
        precision=torch.float32, input_size=256))
    code = main(["extract", "--json", "--width", "1536", "--height", "1024", "--device", "cpu", "--repeats", "1"])
    out = capsys.readouterr()
    record = json.loads(out.out.strip())
    conditions = record["thread_policy"]
    assert [c["condition"].split()[0] for c in conditions] == ["quiet", "loaded"]
    counts = {str(t) for t in range(1, available_cpus()[0] + 2)}
    for c in conditions:
        assert counts <= set(c["tiles_per_s"]) and set(c["tiles_per_s"]) == set(c["encode_tiles_per_s"])
        rates = c["tiles_per_s"]
        assert c["best_threads"] == max(map(int, rates), key=lambda t: rates[str(t)])
        assert c["default_over_best"] == round(rates[str(c["default_threads"])] / rates[str(c["best_threads"])], 3)
    assert record["targets_failed"] == [line for line in record["targets_failed"] if "default" in line]
    assert code == (1 if record["targets_failed"] else 0)
    assert out.err.count("target failed") == len(record["targets_failed"])


def test_tile_gflop_counts_the_forward_exactly():
    """A linear encoder on the flattened 32x32 RGB tile: 2 · (32·32·3) · 16 FLOPs per tile."""
    from msrl_model.bench.extract import tile_gflop

    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 16, bias=False))
    encoder = PatchEncoder(name="test-linear", version="1", dim=16, model=linear.eval(),
                           transform=lambda b: b.permute(0, 3, 1, 2).float() / 255.0, precision=torch.float32,
                           input_size=32)
    assert tile_gflop(encoder, 32) == 2 * 32 * 32 * 3 * 16 / 1e9
