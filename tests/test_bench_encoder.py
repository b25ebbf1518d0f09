"""``bench encoder`` at tiny sizes: φ_H seconds / peak MB / FLOPs per size, the scaling ratio and a
4-task Predictor call at the demo bundle's scale (``--mode slide``), and the patch encoder's tiles/s
(``--mode patch``, stand-in encoder). No timing targets here: the issue-9 sizes run by hand."""

from __future__ import annotations

import json

import pytest
import torch

import msrl_model.encoders
from msrl_model.bench.__main__ import main
from msrl_model.bench.encoder import full_attention_flops, time_ratio, tokenwise_flops
from msrl_model.encoders import PatchEncoder
from msrl_model.nn.config import MSRLConfig


def test_slide_mode_json_record(capsys):
    assert main(["encoder", "--sizes", "300", "150", "--repeats", "1", "--predictor-patches", "200", "--threads", "1",
                 "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    assert r["mode"] == "slide" and r["device"] == "cpu" and r["threads"] == 1 and "resident set" in r["memory"]
    assert r["slide_encoder"] == {"d": 128, "slide_layers": 2, "slide_heads": 4, "patch_dim": 264, "mlp_ratio": 4.0}
    assert [s["patches"] for s in r["sizes"]] == [150, 300]
    for s in r["sizes"]:
        assert s["seconds"] > 0 and s["cpu_seconds"] > 0 and s["peak_mb"] is not None and s["peak_mb"] >= 0
        assert s["gflop_counted"] >= s["gflop_tokenwise"] > 0 and s["gflop_full_attention"] > 0
    assert r["time_ratio"]["of"] == 300 and r["time_ratio"]["over"] == 150 and r["time_ratio"]["linear"] == 2
    p = r["predictor"]
    assert p["tasks"] == 4 and p["patches"] == 200 and p["buffer_cases"] == 300 and p["d"] == 128
    assert p["seconds"] > 0 and p["first_call_s"] > 0 and p["peak_mb"] is not None


def test_flop_formulas():
    cfg = MSRLConfig.demo()
    n, d, t = 1000, 128, 1001
    assert tokenwise_flops(n, cfg) == 2 * n * 264 * d + 2 * t * 24 * d * d
    assert full_attention_flops(n, cfg) == 4 * 2 * t * t * d
    assert full_attention_flops(2 * n, cfg) > 3.9 * full_attention_flops(n, cfg)  # quadratic


def test_time_ratio_prefers_10k_as_base():
    rec = [{"patches": n, "seconds": n / 1e4, "cpu_seconds": n / 1e4} for n in (5_000, 10_000, 60_000)]
    assert time_ratio(rec) == {"of": 60_000, "over": 10_000, "ratio": 6.0, "cpu_ratio": 6.0, "linear": 6.0,
                               "quadratic": 36.0}
    assert time_ratio(rec[:1]) is None


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_patch_mode_reports_tiles_per_second(monkeypatch, capsys):
    monkeypatch.setattr(msrl_model.encoders, "build_encoder", lambda spec, device="cpu": PatchEncoder(
        name="test-mean", version="1", dim=3, model=_Mean(), transform=lambda b: b.permute(0, 3, 1, 2).float(),
        precision=torch.float32, input_size=256))
    assert main(["encoder", "--mode", "patch", "--batch", "4", "--seconds", "0.2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip())
    assert r["mode"] == "patch" and r["encoder"] == "test-mean" and r["tiles"] >= 4 and r["tiles_per_s"] > 0


def test_patch_mode_times_builtin_he_fused_kernel_and_torch_path_side_by_side(capsys):
    assert main(["encoder", "--mode", "patch", "--batch", "4", "--seconds", "0.1", "--threads", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip())
    assert r["encoder"] == "builtin-he" and r["tiles_per_s"] > 0 and r["torch_path_tiles_per_s"] > 0
    assert r["fused_over_torch_path"] == round(r["tiles_per_s"] / r["torch_path_tiles_per_s"], 2)
    assert r["tiles"] >= 4


def test_bad_sizes_are_one_line_errors(capsys):
    assert main(["encoder", "--sizes", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --sizes")


def test_help_documents_both_modes(capsys):
    with pytest.raises(SystemExit):
        main(["encoder", "--help"])
    text = capsys.readouterr().out
    assert "--mode" in text and "FlopCounterMode" in text and "resident set" in text
