"""Synthetic Aperio SVS slides: readable by OpenSlide and tiffslide, deterministic, H&E-like."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from msrl_model.errors import MSRLError
from msrl_model.synth.slides import SlideMorphology, make_slide, render_slide, write_svs

W, H = 1024, 768  # small render size for the statistics tests


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dark_purple(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin-dominated (nuclear) pixels: dark and bluer than green."""
    f = rgb.astype(np.int32)
    return (f.mean(axis=2) < 140) & (f[..., 2] > f[..., 1] + 25)


def _white(rgb: np.ndarray) -> np.ndarray:
    return rgb.min(axis=2) > 225


def _pink(rgb: np.ndarray) -> np.ndarray:
    """Eosin-dominated (stroma) pixels: red high, green clearly lower, not dark."""
    f = rgb.astype(np.int32)
    return (f[..., 0] > 190) & (f[..., 0] - f[..., 1] > 60) & (f[..., 2] > f[..., 1])


@pytest.fixture(scope="module")
def svs_2048(tmp_path_factory) -> Path:
    return make_slide(tmp_path_factory.mktemp("svs") / "s.svs", 2048, 1536, seed=3)


def test_openslide_reports_aperio(svs_2048):
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(svs_2048)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(20)
        assert slide.dimensions == (2048, 1536)
        assert slide.level_count == 2
        assert slide.level_dimensions[1] == (512, 384)
        assert slide.level_downsamples[1] == pytest.approx(4)
        assert {"thumbnail", "label", "macro"} <= set(slide.associated_images)
        region = np.asarray(slide.read_region((512, 384), 0, (512, 512)).convert("RGB"))
        assert region.std() > 10  # real content, not a flat fill


def test_tiffslide_reads_same_pixels(svs_2048):
    tiffslide = pytest.importorskip("tiffslide")
    openslide = pytest.importorskip("openslide")
    with tiffslide.TiffSlide(svs_2048) as ts, openslide.OpenSlide(str(svs_2048)) as os_:
        assert ts.properties["tiffslide.vendor"] == "aperio"
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        assert ts.level_dimensions == os_.level_dimensions
        a = np.asarray(ts.read_region((256, 256), 0, (256, 256)).convert("RGB")).astype(int)
        b = np.asarray(os_.read_region((256, 256), 0, (256, 256)).convert("RGB")).astype(int)
        assert np.abs(a - b).mean() < 2


def test_jpeg_round_trip_keeps_the_image(tmp_path):
    openslide = pytest.importorskip("openslide")
    rgb = render_slide(W, H, seed=11)
    path = write_svs(tmp_path / "r.svs", rgb)
    with openslide.OpenSlide(str(path)) as slide:
        back = np.asarray(slide.read_region((0, 0), 0, (W, H)).convert("RGB")).astype(int)
    assert np.abs(back - rgb.astype(int)).mean() < 4


def test_pyramid_levels_for_a_large_slide(tmp_path):
    openslide = pytest.importorskip("openslide")
    rgb = np.full((2100, 8200, 3), 240, np.uint8)  # cheap flat image, many levels
    path = write_svs(tmp_path / "big.svs", rgb, mpp=0.25, app_mag=40)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((8200, 2100), (2050, 525), (512, 131))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.objective-power"]) == pytest.approx(40)


def test_same_seed_same_bytes(tmp_path):
    a = make_slide(tmp_path / "a" / "s.svs", W, H, seed=5)
    b = make_slide(tmp_path / "b" / "s.svs", W, H, seed=5)
    c = make_slide(tmp_path / "c" / "s.svs", W, H, seed=6)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


def test_tissue_vs_blank():
    tissue = render_slide(W, H, seed=2)
    blank = render_slide(W, H, seed=2, kind="blank")
    sat = lambda rgb: (rgb.max(axis=2).astype(int) - rgb.min(axis=2)) > 25  # noqa: E731
    assert sat(blank).mean() < 0.001
    assert blank.min() > 200
    frac = 1 - _white(tissue).mean()
    assert 0.2 < frac < 0.75
    assert _dark_purple(tissue).mean() > 0.01
    assert _pink(tissue).mean() > 0.03


@pytest.mark.parametrize("field, low, high, measure", [
    ("nuclear_density", 0.4, 2.0, lambda rgb: _dark_purple(rgb).mean()),
    ("nuclear_size", 0.7, 1.5, lambda rgb: _mean_blob_area(rgb)),
    ("stroma_fraction", 0.2, 0.8, lambda rgb: _pink(rgb).mean()),
    ("lumen_fraction", 0.0, 0.25, lambda rgb: _white(rgb).mean()),
    ("tissue_fraction", 0.25, 0.6, lambda rgb: 1 - _white(rgb).mean()),
    ("stain_eosin", 0.6, 1.5, lambda rgb: -rgb[..., 1][_pink(rgb) | _pink_ish(rgb)].mean()),
    ("atypia", 0.0, 1.0, lambda rgb: _blob_area_cv(rgb)),
    ("clear_cell_fraction", 0.0, 0.5, lambda rgb: _cytoplasm_pallor(rgb)),
])
def test_morphology_moves_statistics(field, low, high, measure):
    lo = render_slide(W, H, 4, dataclasses.replace(SlideMorphology(), **{field: low}))
    hi = render_slide(W, H, 4, dataclasses.replace(SlideMorphology(), **{field: high}))
    assert measure(hi) > measure(lo) * 1.05 + 1e-9


def _cytoplasm_pallor(rgb: np.ndarray) -> float:
    """Mean green (high = little eosin) of tissue pixels that are neither nuclei nor pink stroma."""
    cyto = ~_white(rgb) & ~_dark_purple(rgb) & ~_pink(rgb)
    return float(rgb[..., 1][cyto].mean())


def _pink_ish(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.int32)
    return (f[..., 0] - f[..., 1] > 30) & (f.mean(axis=2) > 120)


def _blob_areas(rgb: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(_dark_purple(rgb))
    areas = np.bincount(labels.ravel())[1:]
    return areas[areas >= 4]


def _mean_blob_area(rgb: np.ndarray) -> float:
    return float(_blob_areas(rgb).mean())  # merged neighbours count as one blob


def _blob_area_cv(rgb: np.ndarray) -> float:
    areas = _blob_areas(rgb)
    small = areas[areas < np.quantile(areas, 0.9)]  # ignore merged clusters
    return float(small.std() / small.mean())


def test_hue_shift_changes_colour():
    base = render_slide(W, H, 4)
    blue = render_slide(W, H, 4, SlideMorphology(hue_shift=-1.0))
    mask = ~_white(base)
    assert (blue[..., 2].astype(int) - blue[..., 0])[mask].mean() > \
        (base[..., 2].astype(int) - base[..., 0])[mask].mean()


def test_bad_kind_and_size(tmp_path):
    with pytest.raises(MSRLError, match="kind"):
        make_slide(tmp_path / "never.svs", W, H, 0, kind="fish")
    with pytest.raises(MSRLError, match="size"):
        make_slide(tmp_path / "never.svs", 10, H, 0)
    with pytest.raises(MSRLError, match="uint8"):
        write_svs(tmp_path / "never.svs", np.zeros((10, 10), np.float32))
    assert not (tmp_path / "never.svs").exists()


def test_cli_writes_a_slide(tmp_path, capsys):
    from msrl_model.cli import main

    out = tmp_path / "demo.svs"
    assert main(["synth", "slide", str(out), "--width", "1024", "--height", "768",
                 "--seed", "2", "--kind", "tissue"]) == 0
    assert out.exists() and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert str(out) in printed and "1024x768" in printed


@pytest.mark.parametrize("argv, message", [
    (["--kind", "fish"], "kind"),
    (["--width", "5"], "size"),
    (["--seed", "-1"], "seed"),
])
def test_cli_rejects_bad_args(tmp_path, capsys, argv, message):
    from msrl_model.cli import main

    code = main(["synth", "slide", str(tmp_path / "x.svs"), "--width", "256", "--height", "256",
                 *argv])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "x.svs").exists()


def test_run_slide_command_rejects_non_svs(tmp_path):
    from msrl_model.synth.slides import run_slide_command

    args = argparse.Namespace(out=str(tmp_path / "x.tif"), width=256, height=256, seed=0,
                              kind="tissue")
    with pytest.raises(MSRLError, match=r"\.svs"):
        run_slide_command(args)
