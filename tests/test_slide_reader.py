"""msrl_model.slide.reader: opening, metadata, reads and the typed errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from msrl_model.errors import CorruptSlideError, NotASlideError, SlideError, UnreadableTileError
from msrl_model.slide import ASSUMED_MPP, open_slide


def _write_aperio(path: Path, rgb: np.ndarray, tail: str) -> Path:
    """A one-level Aperio SVS (tiled JPEG level 0 + stripped thumbnail) whose description ends with ``tail``."""
    h, w = rgb.shape[:2]
    head = f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb", compression="jpeg", tile=(256, 256),
                  description=head + tail, metadata=None)
        tif.write(np.ascontiguousarray(rgb[::4, ::4]), photometric="rgb", compression="jpeg",
                  rowsperstrip=16, description=f"Aperio Image Library v12.0.15\r\nthumbnail{tail}",
                  metadata=None)
    return path


def _rgb(h: int = 512, w: int = 768) -> np.ndarray:
    rgb = np.full((h, w, 3), 235, np.uint8)
    rgb[100:300, 200:500] = (170, 80, 160)
    return rgb


@pytest.fixture(scope="module")
def synth_svs(tmp_path_factory) -> Path:
    slides = pytest.importorskip("msrl_model.synth.slides")
    return slides.make_slide(tmp_path_factory.mktemp("reader") / "synth.svs", 1536, 1024, seed=3)


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_cmu_slide_metadata(cmu_slide, backend):
    with open_slide(cmu_slide, backend=backend) as slide:
        assert slide.backend == ("openslide" if backend == "auto" else backend)
        assert slide.slide_id == "cmu_small_region"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1 and slide.level_dimensions == [(2220, 2967)]
        assert slide.level_downsamples == [1.0]
        assert slide.vendor == "aperio"
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"
        assert slide.objective_power == 20
        assert slide.warnings == []
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_image_names)
        assert all(isinstance(v, str) for v in slide.properties.values())
        label = slide.associated_image("label")
        assert label.dtype == np.uint8 and label.shape == (463, 387, 3)
        with pytest.raises(SlideError, match="no associated image"):
            slide.associated_image("nonexistent")


def test_backends_read_the_same_pixels(cmu_slide):
    with open_slide(cmu_slide, backend="openslide") as a, open_slide(cmu_slide, backend="tiffslide") as b:
        ra = a.read_region((1000, 1500), 0, (300, 200))
        rb = b.read_region((1000, 1500), 0, (300, 200))
    assert ra.shape == rb.shape == (200, 300, 3) and ra.dtype == rb.dtype == np.uint8
    assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 2.0  # JPEG decoders may differ by a grey level
    assert ra.std() > 10  # real tissue, not a blank fill


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_outside_the_slide_is_white(cmu_slide, backend):
    with open_slide(cmu_slide, backend=backend) as slide:
        w, h = slide.dimensions
        region = slide.read_region((w - 50, h - 50), 0, (100, 100))
        corner = slide.read_region((-30, -30), 0, (60, 60))
    assert region.shape == (100, 100, 3)
    assert (region[50:, :] == 255).all() and (region[:, 50:] == 255).all()
    assert (corner[:30] == 255).all() and (corner[:, :30] == 255).all()
    assert not (region[:50, :50] == 255).all()


def test_thumbnail_and_hash(cmu_slide):
    with open_slide(cmu_slide) as slide:
        thumb = slide.thumbnail(256)
        digest = slide.sha256_head()
    assert thumb.shape == (256, 192, 3) and thumb.dtype == np.uint8
    assert len(digest) == 64 and int(digest, 16) >= 0
    with open_slide(cmu_slide, backend="tiffslide") as again:
        assert again.sha256_head() == digest


def test_synthetic_pyramid(synth_svs):
    with open_slide(synth_svs) as slide:
        assert slide.vendor == "aperio" and slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        assert slide.level_count >= 2 and slide.level_downsamples[1] == pytest.approx(4.0)
        assert slide.best_level_for_downsample(1.0) == 0
        assert slide.best_level_for_downsample(3.99) == 0
        assert slide.best_level_for_downsample(4.0) == 1
        assert slide.best_level_for_downsample(100.0) == slide.level_count - 1
        low = slide.read_region((0, 0), 1, (64, 64))
        assert low.shape == (64, 64, 3)


def test_stripped_tiff_falls_back_to_tiffslide(tmp_path):
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, _rgb(300, 400), photometric="rgb", metadata=None)  # untiled: OpenSlide refuses it
    with open_slide(path) as slide:
        assert slide.backend == "tiffslide"
        assert slide.read_region((200, 100), 0, (10, 10))[0, 0].tolist() == [170, 80, 160]


def test_text_file_named_svs_is_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n")
    with pytest.raises(NotASlideError, match="notes.svs is not a whole-slide image"):
        open_slide(path)


def test_png_is_not_a_slide(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    with pytest.raises(NotASlideError, match="plain PNG image"):
        open_slide(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(CorruptSlideError, match="empty"):
        open_slide(tmp_path / "empty.svs")


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
@pytest.mark.parametrize("source", ["cmu", "synth"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_slide_is_corrupt(tmp_path, cmu_slide, synth_svs, backend, source, keep):
    data = (cmu_slide if source == "cmu" else synth_svs).read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptSlideError, match="cut.svs"):
        open_slide(path, backend=backend)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_damaged_tile_is_unreadable_and_the_slide_recovers(tmp_path, synth_svs, backend):
    with tifffile.TiffFile(synth_svs) as tif:
        page = tif.pages[0]
        offsets, counts, tile = page.dataoffsets, page.databytecounts, page.tilewidth
        tiles_x = -(-page.imagewidth // tile)
    index = tiles_x + 1  # tile (1, 1): neither the first nor the last, which open_slide probes
    data = bytearray(synth_svs.read_bytes())
    data[offsets[index]: offsets[index] + counts[index]] = bytes(counts[index])
    path = tmp_path / "damaged.svs"
    path.write_bytes(bytes(data))
    with open_slide(path, backend=backend) as slide:
        with pytest.raises(UnreadableTileError, match=r"damaged.svs: cannot decode the region at \(256, 256\)"):
            slide.read_region((tile, tile), 0, (tile, tile))
        assert slide.read_region((0, 0), 0, (32, 32)).shape == (32, 32, 3)  # later reads still work


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_mpp_from_objective_power(tmp_path, backend):
    path = _write_aperio(tmp_path / "mag40.svs", _rgb(), "|AppMag = 40")
    with open_slide(path, backend=backend) as slide:
        assert slide.vendor == "aperio"
        assert slide.objective_power == 40
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "objective-power"
        assert len(slide.warnings) == 1 and "40x objective power" in slide.warnings[0]


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_mpp_assumed_with_warning(tmp_path, backend):
    path = _write_aperio(tmp_path / "bare.svs", _rgb(), "|ScanScope ID = X")
    with open_slide(path, backend=backend) as slide:
        assert slide.objective_power is None
        assert slide.mpp == ASSUMED_MPP and slide.mpp_source == "assumed"
        assert len(slide.warnings) == 1 and "assuming 0.25" in slide.warnings[0]


def test_mpp_metadata_from_aperio_description(tmp_path):
    path = _write_aperio(tmp_path / "mpp.svs", _rgb(), "|AppMag = 40|MPP = 0.2527")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.2527) and slide.mpp_source == "metadata"
        assert slide.warnings == []
