"""``msrl extract``: one-line errors for bad slides, directory runs with a summary and exit 3."""

from __future__ import annotations

import json
import re

import pytest
import torch

import msrl_model.encoders
from msrl_model.cli import main
from msrl_model.encoders import PatchEncoder
from msrl_model.synth.slides import make_slide


class _Mean(torch.nn.Module):
    """(B, 3, S, S) float -> (B, 3) channel means (a fast stand-in encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.fixture
def fast_encoder(monkeypatch):
    """Make every encoder spec build a tiny encoder, so CLI tests do not pay for a real one."""

    def build(spec="builtin-he", device="cpu"):
        return PatchEncoder(name=f"test-{spec}", version="1", dim=3, model=_Mean(),
                            transform=lambda b: b.permute(0, 3, 1, 2).float(),  # (B,H,W,3)->(B,3,H,W)
                            precision=torch.float32, input_size=256)

    monkeypatch.setattr(msrl_model.encoders, "build_encoder", build)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    good = make_slide(root / "good.svs", 1536, 1024, seed=2)
    (root / "text.svs").write_text("hello, I am a text file\n" * 100)
    data = good.read_bytes()
    (root / "truncated.svs").write_bytes(data[: len(data) // 2])
    make_slide(root / "blank.svs", 1024, 768, seed=0, kind="blank")
    return root


@pytest.mark.parametrize("name", ["text.svs", "truncated.svs", "blank.svs"])
def test_bad_slide_gives_one_error_line_and_nonzero_exit(name, slides, tmp_path, capsys, fast_encoder):
    code = main(["extract", str(slides / name), "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0
    # stderr is not a terminal here: plain progress lines ("[hh:mm:ss] stage …") may precede the error
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"\[\d\d:\d\d:\d\d\] ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_directory_run_finishes_good_slides_and_exits_3(slides, tmp_path, capsys, fast_encoder):
    out = tmp_path / "features"
    code = main(["extract", str(slides), "--out", str(out), "--device", "cpu", "--workers", "2",
                 "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 3
    assert (out / "good.h5").exists()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and all(any(n in e for e in errors) for n in ("text", "truncated", "blank"))
    assert "Traceback" not in captured.err
    assert "4 slides: 1 extracted, 0 cached, 3 failed" in captured.out
    report = json.loads((out / "extract_report.json").read_text())
    assert report["counts"] == {"ok": 1, "cached": 0, "error": 3}


def test_good_slide_prints_its_feature_file_and_sharding_splits(slides, tmp_path, capsys, fast_encoder):
    assert main(["extract", str(slides / "good.svs"), "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "good.h5")
    shard_out = tmp_path / "sharded"
    codes = [main(["extract", str(slides), "--out", str(shard_out), "--shard", f"{i}/2", "--device", "cpu"])
             for i in range(2)]
    capsys.readouterr()
    reports = [json.loads((shard_out / f"extract_report.shard{i}of2.json").read_text()) for i in range(2)]
    names = [s["slide_id"] for r in reports for s in r["slides"]]
    assert sorted(names) == ["blank", "good", "text", "truncated"]
    assert all(code in (0, 3) for code in codes)


def test_bad_arguments_are_one_line_errors(slides, tmp_path, capsys):
    assert main(["extract", str(slides), "--out", str(tmp_path), "--shard", "5/2"]) == 2
    assert main(["extract", str(tmp_path / "missing.svs"), str(slides), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "Traceback" not in err
