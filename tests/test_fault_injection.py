"""Fault injection (issue 15): every bad input and fault ends in one ``error: ...`` line, a non-zero
exit, no traceback and nothing partial left; an interrupted run resumes to identical features.

Default tier: monkeypatched writers (disk full, read-only: CI runs as root, which ignores file
modes), hostile and float32 TIFFs, patch caps, cache validation, orphaned temporaries, lost warnings,
SIGINT and one kill -9 in a subprocess. Heavy tier (``MSRL_HEAVY=1``): kill -9 at several points,
two concurrent extractions on one output, a real ``chmod 0555`` folder (skipped as root).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch

import msrl_model.encoders
import msrl_model.files
from msrl_model.cli import main
from msrl_model.encoders import PatchEncoder
from msrl_model.errors import OutputError, SlideError
from msrl_model.features.h5io import FeatureFileError, read_features, write_features
from msrl_model.synth.slides import make_slide

REPO = Path(__file__).resolve().parents[1]


class _Mean(torch.nn.Module):
    """(B, 3, S, S) float -> (B, 3) channel means (a fast stand-in encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _fast(spec="builtin-he", device="cpu"):
    return PatchEncoder(name="test-fast", version="1", dim=3, model=_Mean(),
                        transform=lambda b: b.permute(0, 3, 1, 2).float(), precision=torch.float32, input_size=256)


@pytest.fixture
def fast_encoder(monkeypatch):
    monkeypatch.setattr(msrl_model.encoders, "build_encoder", _fast)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault-slides")
    make_slide(root / "a.svs", 1024, 768, seed=1)
    make_slide(root / "b.svs", 1024, 768, seed=2)
    return root


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ---- disk full and read-only, monkeypatched (root ignores file modes) ------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("batch", [False, True])
def test_extract_disk_full_is_one_line_and_leaves_nothing(batch, slides, tmp_path, capsys, monkeypatch, fast_encoder):
    out = tmp_path / "features"
    monkeypatch.setattr(msrl_model.files.os, "replace", _disk_full)
    code = main(["extract", str(slides if batch else slides / "a.svs"), "--out", str(out), "--device", "cpu",
                 "--quiet"])
    assert code == OutputError.exit_code
    _one_error_line(capsys.readouterr().err, "no space left", "free some disk space")
    assert _files(out) == []  # no feature file, no report, no temporary


def test_extract_free_space_checked_before_encoding(slides, tmp_path, capsys, monkeypatch, fast_encoder):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(msrl_model.files.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    encoded = []
    monkeypatch.setattr("msrl_model.features.pipeline._encode_tiles",
                        lambda *a, **k: encoded.append(1) or iter(()))
    code = main(["extract", str(slides / "a.svs"), "--out", str(tmp_path / "f"), "--device", "cpu", "--quiet"])
    assert code == 4 and not encoded
    _one_error_line(capsys.readouterr().err, "not enough free space")
    assert _files(tmp_path / "f") == []


def _read_only(*args, **kwargs):
    raise PermissionError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize("target", ["dir", "subdir", "batch"])
def test_extract_read_only_output_is_one_line(target, slides, tmp_path, capsys, monkeypatch, fast_encoder):
    out = tmp_path / "ro" / ("sub" if target == "subdir" else "")
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(msrl_model.files.tempfile, "mkstemp", _read_only)
    code = main(["extract", str(slides if target == "batch" else slides / "a.svs"), "--out", str(out),
                 "--device", "cpu", "--quiet"])
    assert code == 4
    _one_error_line(capsys.readouterr().err, "cannot write to", "read-only")
    assert [p for p in _files(tmp_path / "ro") if p != "sub"] == []


# ---- analyze ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_bundle(tmp_path_factory) -> Path:
    from msrl_model.infer.random_bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("fb") / "fast.msrl", patch_dim=3, n_cases=24, seed=3,
                              encoder={"name": "test-fast", "version": "1", "dim": 3})


def _analyze(argv: list[str]) -> int:
    return main(["analyze", *argv, "--device", "cpu", "--quiet"])


def test_analyze_read_only_output_with_everything_cached(slides, fast_bundle, tmp_path, capsys, monkeypatch,
                                                        fast_encoder):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert _analyze([str(slides / "a.svs"), "--bundle", str(fast_bundle), "--out", str(tmp_path / "first"),
                     "--cache", str(cache)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(msrl_model.files.tempfile, "mkstemp", _read_only)
    assert _analyze([str(slides / "a.svs"), "--bundle", str(fast_bundle), "--out", str(out),
                     "--cache", str(cache)]) == 4
    _one_error_line(capsys.readouterr().err, "cannot write to")
    assert _files(out) == []


def test_analyze_disk_full_on_the_results_leaves_no_result(slides, fast_bundle, tmp_path, capsys, monkeypatch,
                                                           fast_encoder):
    out, cache = tmp_path / "out", tmp_path / "cache"
    real_replace = os.replace

    def replace(src, dst):  # the features fit; the result files do not
        if str(dst).endswith((".json", ".csv")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(msrl_model.files.os, "replace", replace)
    assert _analyze([str(slides / "a.svs"), "--bundle", str(fast_bundle), "--out", str(out),
                     "--cache", str(cache)]) == 4
    _one_error_line(capsys.readouterr().err, "no space left")
    assert _files(out) == []
    assert _files(cache) == ["a.h5"]  # the finished features are kept: a rerun resumes from them


def _no_mpp_tiff(path: Path) -> Path:
    from msrl_model.synth.slides import SlideMorphology, render_slide

    rgb = render_slide(1024, 768, 4, SlideMorphology(), kind="tissue")
    tifffile.imwrite(path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb")
    return path


def test_analyze_keeps_the_slides_warnings(fast_bundle, tmp_path, capsys, fast_encoder):
    slide = _no_mpp_tiff(tmp_path / "nompp.tif")
    out = tmp_path / "out"
    for _ in range(2):  # fresh extraction, then from the cache
        assert _analyze([str(slide), "--bundle", str(fast_bundle), "--out", str(out / str(_)),
                         "--cache", str(tmp_path / "cache")]) == 0
        result = json.loads((out / str(_) / "nompp.json").read_text())
        assert any("assuming 0.25 µm/px" in w for w in result["warnings"]), result["warnings"]
    capsys.readouterr()


def test_feature_file_over_the_patch_cap_is_refused_before_reading(tmp_path):
    path = write_features(tmp_path / "big.h5", np.zeros((500, 4), np.float32), np.zeros((500, 2), np.int64))
    with pytest.raises(FeatureFileError, match="more than the limit of 100"):
        read_features(path, max_rows=100)
    assert len(read_features(path, max_rows=500).features) == 500


def test_predictor_refuses_a_feature_file_over_the_cap(fast_bundle, tmp_path):
    from msrl_model.infer.predictor import Predictor

    predictor = Predictor.from_bundle(fast_bundle, device="cpu")
    path = write_features(tmp_path / "big.h5", np.zeros((300, 3), np.float32), np.zeros((300, 2), np.int64),
                          {"encoder": "test-fast", "encoder_version": "1", "patch_size_level0": 256,
                           "warnings": ["x.tif: assuming 0.25 µm/px"]})
    with pytest.raises(FeatureFileError, match="--max-patches"):
        predictor.predict_features_file(path, max_patches=100)
    result = predictor.predict_features_file(path, max_patches=300)
    assert result.warnings[0] == "x.tif: assuming 0.25 µm/px"


# ---- bad slides ------------------------------------------------------------------------------------


def _hostile_tiff(path: Path, side: int) -> Path:
    """A few KB claiming ``side`` x ``side`` px: one real JPEG tile, the size tags patched."""
    import struct

    small = path.with_suffix(".small.tif")
    tifffile.imwrite(small, np.zeros((256, 256, 3), np.uint8), tile=(256, 256), compression="jpeg")
    data = bytearray(small.read_bytes())
    with tifffile.TiffFile(small) as tif:
        for tag in (tif.pages[0].tags["ImageWidth"], tif.pages[0].tags["ImageLength"]):
            struct.pack_into("<I", data, tag.valueoffset, side)
    small.unlink()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["float32", "200k", "1M"])
def test_float32_and_hostile_tiffs_are_refused_in_one_line(kind, tmp_path, capsys, fast_encoder):
    slide = tmp_path / f"{kind}.tif"
    if kind == "float32":
        tifffile.imwrite(slide, np.zeros((3, 512, 512), np.float32))
        needle = "float32 TIFF; MSRL Studio reads 8-bit RGB"
    else:
        _hostile_tiff(slide, 200_000 if kind == "200k" else 1_000_000)
        needle = "200000x200000" if kind == "200k" else "1000000x1000000"
    t0 = time.perf_counter()
    code = main(["extract", str(slide), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert code == 2 and time.perf_counter() - t0 < 30
    _one_error_line(capsys.readouterr().err, needle)
    assert _files(tmp_path / "out") == []


def test_patch_cap_refuses_with_a_message(slides, tmp_path, capsys, fast_encoder):
    code = main(["extract", str(slides / "a.svs"), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet",
                 "--max-patches", "2"])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "more than 2 tissue patches", "--max-patches")
    assert _files(tmp_path / "o") == []


def test_huge_declared_grid_allocates_nothing_proportional(tmp_path):
    from msrl_model.slide import TilingParams, tile_grid
    from msrl_model.slide.tissue import TissueMask

    class Declared:  # a slide object declaring 900000 x 900000 px at 10 µm/px (no pixels needed)
        path = tmp_path / "declared.tif"
        dimensions = (900_000, 900_000)
        mpp = 10.0

    mask = TissueMask(np.ones((8, 8), bool), downsample=112_500.0, mpp=1.0, threshold=0.1, level=0)
    with pytest.raises(SlideError, match="patch positions"):
        tile_grid(Declared(), mask, TilingParams())


class _DeclaredSlide:
    """A slide object declaring ``levels`` (width, height, downsample), all pink tissue, no file."""

    mpp = 0.25

    def __init__(self, path: Path, levels: list[tuple[int, int, float]]) -> None:
        self.path = path
        self.dimensions = levels[0][:2]
        self.level_count = len(levels)
        self.level_dimensions = [lv[:2] for lv in levels]
        self.level_downsamples = [lv[2] for lv in levels]

    def best_level_for_downsample(self, ds: float) -> int:
        return max(i for i, d in enumerate(self.level_downsamples) if d <= ds * 1.001)

    def read_region(self, location, level, size):
        w, h = size
        out = np.empty((h, w, 3), np.uint8)
        out[...] = (200, 120, 180)
        return out


def test_declared_200k_slide_is_bounded_and_capped(tmp_path):
    import resource

    from msrl_model.slide import tile_grid, tissue_mask

    flat = _DeclaredSlide(tmp_path / "flat.tif", [(200_000, 200_000, 1.0)])
    with pytest.raises(SlideError, match="no pyramid level coarse enough"):
        tissue_mask(flat)  # refused before reading 4e10 px
    pyramid = _DeclaredSlide(tmp_path / "pyr.tif", [(200_000, 200_000, 1.0), (6250, 6250, 32.0)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask = tissue_mask(pyramid)
    with pytest.raises(SlideError, match="more than 100,000 tissue patches.*--max-patches"):
        tile_grid(pyramid, mask)  # 152,100 tissue patches
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1500, grown_mb


# ---- cache and temporaries ------------------------------------------------------------------------------


def test_cached_file_with_the_key_but_bad_content_is_recomputed(slides, tmp_path, capsys, fast_encoder):
    out = tmp_path / "f"
    assert main(["extract", str(slides / "a.svs"), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    good = read_features(out / "a.h5")
    with h5py.File(out / "a.h5", "a") as f:  # keep cache_key, drop the encoder attributes, break the shape
        del f.attrs["encoder"]
        del f["features"]
        f["features"] = np.zeros((len(good.coords), 7), np.float32)
    capsys.readouterr()
    assert main(["extract", str(slides / "a.svs"), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "was not valid" in capsys.readouterr().err
    fixed = read_features(out / "a.h5")
    assert fixed.attrs["encoder"] == "test-fast"
    np.testing.assert_array_equal(fixed.features, good.features)


def test_cached_file_over_the_patch_cap_is_recomputed(slides, tmp_path, capsys, fast_encoder):
    out = tmp_path / "f"
    args = ["extract", str(slides / "a.svs"), "--out", str(out), "--device", "cpu", "--quiet", "--max-patches", "100"]
    assert main(args) == 0
    good = read_features(out / "a.h5")
    write_features(out / "a.h5", np.zeros((300, 3), np.float32), np.zeros((300, 2), np.int64), good.attrs)
    capsys.readouterr()
    assert main(args) == 0
    assert "300 patches, more than 100" in capsys.readouterr().err
    np.testing.assert_array_equal(read_features(out / "a.h5").features, good.features)


def test_an_unexpected_os_error_is_still_one_line(tmp_path, capsys, monkeypatch):
    import msrl_model.features.cli

    def broken(args):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x"))

    monkeypatch.setattr(msrl_model.features.cli, "run_extract", broken)
    assert main(["extract", str(tmp_path), "--out", str(tmp_path)]) == 4
    _one_error_line(capsys.readouterr().err, "Input/output error", str(tmp_path / "x"))


def test_orphaned_temporaries_are_removed_but_a_live_writers_is_kept(slides, tmp_path, fast_encoder):
    import fcntl

    out = tmp_path / "f"
    out.mkdir()
    orphan = out / ".a.h5.k1ll3d.tmp"
    orphan.write_bytes(b"half")
    live = out / ".b.h5.wr1t1ng.tmp"
    live.write_bytes(b"busy")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a writer in another process holds
    try:
        assert main(["extract", str(slides / "a.svs"), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
        assert not orphan.exists() and live.exists()
    finally:
        os.close(fd)
    assert msrl_model.files.remove_orphaned_temporaries(out) == [live]


def test_no_fixed_temporary_names_in_the_writers():
    for path in (REPO / "msrl_model").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert '.tmp"' not in text.replace('TMP_SUFFIX = ".tmp"', "") and ".tmp'" not in text, path


def test_gcn_leaves_no_template_file_in_the_temp_folder(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    code = ("import torch; from msrl_model.nn.graph import GCN; g = GCN(4, 4, 2); "
            "print(g(torch.ones(2, 4), torch.tensor([[0, 1], [1, 0]]), torch.ones(2)).shape)")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(temp)}, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert not [p for p in temp.rglob("*") if p.is_file()], list(temp.rglob("*"))


def test_decoder_errors_reach_the_warnings(slides, tmp_path, monkeypatch, fast_encoder):
    from msrl_model.features.pipeline import ExtractStats, extract_slide
    from msrl_model.features.reader import JpegTileSource
    from msrl_model.progress import drive

    real = JpegTileSource.region

    def region(self, x, y, w, h):
        if (x, y) == (0, 256):
            raise RuntimeError("Corrupt JPEG data")  # what imagecodecs raises on a damaged tile
        return real(self, x, y, w, h)

    monkeypatch.setattr(JpegTileSource, "region", region)
    stats = ExtractStats()
    out = drive(extract_slide(slides / "b.svs", tmp_path, "builtin-he", "cpu", 1, 8, stats=stats), show=False)
    assert any("could not be decoded directly" in w for w in stats.warnings), stats.warnings
    assert any("could not be decoded directly" in w for w in read_features(out).attrs["warnings"])


# ---- subprocesses: SIGINT and kill -9 ------------------------------------------------------------------

# A driver for `msrl`: a fast encoder that prints a marker per batch (and sleeps, so the parent can hit
# a chosen point), and an atomic rename that announces itself and waits (a kill during the write).
DRIVER = r"""
import os, sys, time, torch
import msrl_model.encoders, msrl_model.files
from msrl_model.encoders import PatchEncoder
SLEEP = float(os.environ.get("FI_SLEEP", "0.2"))
class Mean(torch.nn.Module):
    def forward(self, x):
        print("FI batch", file=sys.stderr, flush=True)
        time.sleep(SLEEP)
        return x.mean(dim=(2, 3))
def build(spec="builtin-he", device="cpu"):
    return PatchEncoder(name="test-fast", version="1", dim=3, model=Mean(),
                        transform=lambda b: b.permute(0, 3, 1, 2).float(), precision=torch.float32, input_size=256)
msrl_model.encoders.build_encoder = build
real_replace = os.replace
def replace(src, dst):
    if str(dst).endswith(".h5"):
        print("FI replace", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("FI_REPLACE_SLEEP", "0")))
    return real_replace(src, dst)
msrl_model.files.os.replace = replace
from msrl_model.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(tmp_path: Path, args: list[str], **env: str) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), *args], cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _wait_for(proc: subprocess.Popen, marker: str, count: int = 1, timeout: float = 120) -> list[str]:
    seen, lines, t0 = 0, [], time.time()
    while seen < count:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "".join(lines)
        assert time.time() - t0 < timeout, "".join(lines)
        lines.append(line)
        seen += marker in line
    return lines


def _extract_args(slide: Path, out: Path) -> list[str]:
    return ["extract", str(slide), "--out", str(out), "--device", "cpu", "--batch-size", "2", "--workers", "1",
            "--quiet"]


def _same_features(a: Path, b: Path) -> None:
    fa, fb = read_features(a), read_features(b)
    np.testing.assert_array_equal(fa.features, fb.features)
    np.testing.assert_array_equal(fa.coords, fb.coords)
    assert fa.attrs["cache_key"] == fb.attrs["cache_key"]


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory) -> Path:
    """Features of a.svs from an uninterrupted run of the same driver."""
    root = tmp_path_factory.mktemp("ref")
    proc = _start(root, _extract_args(slides / "a.svs", root / "f"), FI_SLEEP="0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return root / "f" / "a.h5"


def test_sigint_during_extract_is_one_line_and_exit_130_and_the_rerun_resumes(slides, reference, tmp_path):
    out = tmp_path / "f"
    proc = _start(tmp_path, _extract_args(slides / "a.svs", out))
    _wait_for(proc, "FI batch", 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    _one_error_line(err, "interrupted", "run the same command again")
    assert _files(out) == ["a.partial.h5"]  # no feature file; the tiles encoded so far are kept
    rerun = _start(tmp_path, _extract_args(slides / "a.svs", out), FI_SLEEP="0")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "Traceback" not in err, err
    assert _files(out) == ["a.h5"]
    _same_features(out / "a.h5", reference)  # resumed features equal an uninterrupted run's


def test_kill_9_during_the_write_then_rerun_gives_identical_features(slides, reference, tmp_path):
    out = tmp_path / "f"
    proc = _start(tmp_path, _extract_args(slides / "a.svs", out), FI_SLEEP="0", FI_REPLACE_SLEEP="30")
    _wait_for(proc, "FI replace")
    proc.kill()
    proc.wait(timeout=30)
    assert [p for p in _files(out) if p.endswith(".tmp")], "the kill should leave the writer's temporary"
    assert not (out / "a.h5").exists()
    rerun = _start(tmp_path, _extract_args(slides / "a.svs", out), FI_SLEEP="0")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "Traceback" not in err, err
    assert _files(out) == ["a.h5"]  # the orphan is gone
    _same_features(out / "a.h5", reference)


@pytest.mark.heavy
@pytest.mark.parametrize("batches", [1, 2, 3])  # a.svs has 4 batches of 2 tissue tiles
def test_kill_9_after_n_batches_then_rerun_gives_identical_features(batches, slides, reference, tmp_path):
    out = tmp_path / "f"
    proc = _start(tmp_path, _extract_args(slides / "a.svs", out))
    _wait_for(proc, "FI batch", batches)
    proc.kill()
    proc.wait(timeout=30)
    assert not (out / "a.h5").exists()
    rerun = _start(tmp_path, _extract_args(slides / "a.svs", out), FI_SLEEP="0")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "Traceback" not in err, err
    assert _files(out) == ["a.h5"]
    _same_features(out / "a.h5", reference)


@pytest.mark.heavy
def test_kill_9_during_a_batch_then_resume(slides, tmp_path):
    out = tmp_path / "f"
    proc = _start(tmp_path, ["extract", str(slides), "--out", str(out), "--device", "cpu", "--quiet"],
                  FI_SLEEP="0", FI_REPLACE_SLEEP="30")
    _wait_for(proc, "FI replace", 2)  # a.h5 done, b.h5 being renamed
    proc.kill()
    proc.wait(timeout=30)
    rerun = _start(tmp_path, ["extract", str(slides), "--out", str(out), "--device", "cpu", "--quiet"],
                   FI_SLEEP="0")
    stdout, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "Traceback" not in err, err
    assert "1 extracted, 1 cached" in stdout
    assert _files(out) == ["a.h5", "b.h5", "extract_report.json"]


@pytest.mark.heavy
def test_two_concurrent_extractions_on_one_output(slides, reference, tmp_path):
    out = tmp_path / "f"
    procs = [_start(tmp_path, _extract_args(slides / "a.svs", out), FI_SLEEP="0.05") for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in err, err
    assert _files(out) == ["a.h5"]
    _same_features(out / "a.h5", reference)


@pytest.mark.heavy
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file modes")
def test_real_read_only_folder(slides, tmp_path, capsys, fast_encoder):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "sub"):
            assert main(["extract", str(slides / "a.svs"), "--out", str(out), "--device", "cpu", "--quiet"]) == 4
            _one_error_line(capsys.readouterr().err, "cannot write to")
        assert _files(ro) == []
    finally:
        ro.chmod(0o755)
