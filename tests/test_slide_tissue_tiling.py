"""msrl_model.slide.tissue and .tiling: tissue masks on real and synthetic slides, the patch-grid math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from msrl_model.errors import NoTissueError
from msrl_model.slide import TileGrid, TilingParams, TissueMask, TissueParams, open_slide, tile_grid, tissue_mask

PINK = (175, 85, 165)  # saturation ~0.51, well above any threshold
BACKGROUND = 238  # slide glass grey-white


def _write_pyramid(path: Path, rgb: np.ndarray, mpp: float, downsamples: tuple[int, ...] = (1,)) -> Path:
    """An Aperio SVS with level downsamples ``downsamples`` (level 0, stripped thumbnail, further levels)."""
    h, w = rgb.shape[:2]
    desc = f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = {mpp}"
    jpeg = {"photometric": "rgb", "compression": "jpeg", "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), description=desc, **jpeg)
        tif.write(np.ascontiguousarray(rgb[::8, ::8]), rowsperstrip=16, description=desc, **jpeg)
        for ds in downsamples[1:]:
            level = rgb.reshape(h // ds, ds, w // ds, ds, 3).mean(axis=(1, 3)).astype(np.uint8)
            tif.write(level, tile=(256, 256), description=desc, **jpeg)
    return path


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory) -> tuple[Path, Path]:
    slides = pytest.importorskip("msrl_model.synth.slides")
    folder = tmp_path_factory.mktemp("tissue")
    return (slides.make_slide(folder / "tissue.svs", 1536, 1024, seed=7, kind="tissue"),
            slides.make_slide(folder / "blank.svs", 1024, 1024, seed=7, kind="blank"))


def _naive_fraction(mask: TissueMask, x: int, y: int, size: float) -> float:
    c0, r0 = round(x / mask.downsample), round(y / mask.downsample)
    side = max(1, round(size / mask.downsample))
    return float(mask.mask[r0: r0 + side, c0: c0 + side].sum()) / side**2


def _check_grid(slide, mask: TissueMask, grid: TileGrid, min_fraction: float) -> None:
    assert grid.coords.dtype == np.int64 and grid.coords.shape == (len(grid), 2) and len(grid) > 0
    assert (grid.coords % grid.patch_size_level0 == 0).all()  # on the non-overlapping grid
    w, h = slide.dimensions
    assert (grid.coords >= 0).all()
    assert (grid.coords[:, 0] + grid.patch_size_level0 <= w).all()
    assert (grid.coords[:, 1] + grid.patch_size_level0 <= h).all()
    assert len(np.unique(grid.coords, axis=0)) == len(grid)
    for (x, y), fraction in zip(grid.coords, grid.tissue_fractions):
        assert _naive_fraction(mask, x, y, grid.patch_size_level0) == pytest.approx(fraction)
        assert fraction >= min_fraction


def test_cmu_tissue_and_grid(cmu_slide):
    with open_slide(cmu_slide) as slide:
        mask = tissue_mask(slide)
        assert mask.mask.dtype == bool
        assert mask.mask.shape == (-(-2967 // 16), -(-2220 // 16)) and mask.downsample == 16.0
        assert 0.2 < mask.fraction < 0.6  # one strip of skin on glass
        assert 0.08 <= mask.threshold < 0.4
        grid = tile_grid(slide, mask)
        assert (grid.patch_size_level0, grid.read_level, grid.read_size) == (257, 0, 257)
        assert grid.level0_mpp == pytest.approx(0.499) and grid.warnings == []
        _check_grid(slide, mask, grid, 0.25)
        assert 20 <= len(grid) <= 80
        tile = grid.read_tile(slide, 0)
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
        strict = tile_grid(slide, mask, TilingParams(min_tissue_fraction=0.9))
        centres = (strict.coords + strict.patch_size_level0 / 2) / mask.downsample  # (N, 2) mask (col, row)
        assert 0 < len(strict) < len(grid)
        assert mask.mask[centres[:, 1].astype(int), centres[:, 0].astype(int)].all()


def test_synthetic_tissue_and_blank(synth_pair):
    tissue_path, blank_path = synth_pair
    with open_slide(tissue_path) as slide:
        mask = tissue_mask(slide)
        assert 0.15 < mask.fraction < 0.8
        grid = tile_grid(slide, mask)
        _check_grid(slide, mask, grid, 0.25)
        assert (grid.patch_size_level0, grid.read_size) == (256, 256)
        tile = grid.read_tile(slide, len(grid) - 1)
        assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8 and tile.std() > 5
    with open_slide(blank_path) as slide:
        mask = tissue_mask(slide)
        assert not mask.mask.any()
        with pytest.raises(NoTissueError, match="no tissue found on blank.svs: it looks blank.*min_saturation"):
            tile_grid(slide, mask)


def test_mask_fills_holes_and_drops_specks(tmp_path):
    rgb = np.full((1024, 1024, 3), BACKGROUND, np.uint8)
    rgb[100:700, 100:700] = PINK  # 300 x 300 µm piece at 0.5 µm/px
    rgb[380:420, 380:420] = BACKGROUND  # a 20 µm hole inside it: filled
    rgb[900:912, 900:912] = PINK  # a 6 µm speck: dropped
    with open_slide(_write_pyramid(tmp_path / "shapes.svs", rgb, mpp=0.5)) as slide:
        mask = tissue_mask(slide)
    assert mask.downsample == 16.0 and mask.mask.shape == (64, 64)
    assert mask.mask[25, 25]  # the hole's centre (400 / 16)
    assert not mask.mask[56:, 56:].any()  # the speck's corner
    assert 0.75 * 36 * 36 <= mask.mask.sum() <= 1.25 * 38 * 38  # the piece: 600 px / 16 = 37.5 mask px
    loose = tissue_mask(open_slide(tmp_path / "shapes.svs"), TissueParams(closing_um=0, opening_um=0,
                                                                             min_area_um2=0, max_hole_area_um2=0))
    assert loose.mask[56, 56] and not loose.mask[25, 25]  # speck kept (56 % of its mask pixel), hole open


def test_tissue_fraction_of_squares():
    mask = TissueMask(mask=np.zeros((10, 10), bool), downsample=4.0, mpp=2.0, threshold=0.1, level=0)
    mask.mask[:, :5] = True  # left half (level-0 x < 20)
    coords = np.array([[0, 0], [12, 0], [20, 8], [36, 36], [100, 100]])
    assert mask.tissue_fraction(coords, 16.0).tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert mask.tissue_fraction(coords[:1], 1.0).tolist() == [1.0]  # smaller than a mask pixel


@pytest.mark.parametrize(
    "mpp, downsamples, patch_level0, level, read_size",
    [
        (0.5, (1, 4), 256, 0, 256),  # 20x: read level 0 as is
        (0.499, (1, 4), 257, 0, 257),  # the CMU slide's 20x
        (0.25, (1, 4), 512, 0, 512),  # 40x without a 2x level: read 512 px, resize
        (0.25, (1, 2, 8), 512, 1, 256),  # 40x with a 2x level: read 256 px there
        (0.2527, (1, 4, 16), 507, 0, 507),  # 40x Aperio (256 * 0.5 / 0.2527 = 506.5)
        (0.125, (1, 4), 1024, 1, 256),  # 80x
        (0.26, (1, 2), 492, 0, 492),  # level 1 is 0.52 µm/px: coarser than target, never used
    ],
)
def test_tiling_math(tmp_path, mpp, downsamples, patch_level0, level, read_size):
    rgb = np.full((2048, 2048, 3), PINK, np.uint8)
    with open_slide(_write_pyramid(tmp_path / "scan.svs", rgb, mpp, downsamples)) as slide:
        assert slide.mpp == pytest.approx(mpp)
        mask = tissue_mask(slide)
        assert mask.mask.all()
        grid = tile_grid(slide, mask)
        assert (grid.patch_size_level0, grid.read_level, grid.read_size) == (patch_level0, level, read_size)
        assert len(grid) == (2048 // patch_level0) ** 2 and grid.warnings == []
        tile = grid.read_tile(slide, len(grid) - 1)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8
    assert np.abs(tile.astype(int) - PINK).max() <= 6  # JPEG keeps a flat colour within a few levels


def test_coarse_scan_upsamples_with_warning(tmp_path):
    rgb = np.full((512, 512, 3), PINK, np.uint8)
    with open_slide(_write_pyramid(tmp_path / "x10.svs", rgb, mpp=1.0)) as slide:
        grid = tile_grid(slide, tissue_mask(slide))
        assert (grid.patch_size_level0, grid.read_size) == (128, 128) and len(grid) == 16
        assert len(grid.warnings) == 1 and "upsampled" in grid.warnings[0]
        assert grid.read_tile(slide, 0).shape == (256, 256, 3)


def test_slide_smaller_than_one_patch(tmp_path):
    path = tmp_path / "tiny.tif"
    tifffile.imwrite(path, np.full((150, 200, 3), PINK, np.uint8), photometric="rgb", metadata=None)
    with open_slide(path) as slide:  # no mpp: 0.25 assumed, so a patch is 512 level-0 px
        mask = tissue_mask(slide)
        with pytest.raises(NoTissueError, match=r"tiny.tif \(200x150 px.*smaller than one patch"):
            tile_grid(slide, mask)


def test_no_patch_reaches_the_tissue_fraction(tmp_path):
    rgb = np.full((1024, 1024, 3), BACKGROUND, np.uint8)
    rgb[200:240, 200:520] = PINK  # a 20 x 160 µm strip: tissue, but under 25 % of any 128 µm patch
    with open_slide(_write_pyramid(tmp_path / "strip.svs", rgb, mpp=0.5)) as slide:
        mask = tissue_mask(slide, TissueParams(opening_um=0, min_area_um2=0))  # keep the thin strip
        assert mask.mask.any()
        with pytest.raises(NoTissueError, match="lower TilingParams.min_tissue_fraction"):
            tile_grid(slide, mask)
        assert len(tile_grid(slide, mask, TilingParams(min_tissue_fraction=0.05))) >= 1


def test_mask_does_not_depend_on_the_read_block_size(cmu_slide, monkeypatch):
    import msrl_model.slide.tissue as tissue

    with open_slide(cmu_slide) as slide:
        whole = tissue_mask(slide)
        monkeypatch.setattr(tissue, "_BLOCK_LEVEL_PX", 100)  # 96 px blocks: seams at every 6th mask pixel
        blocks = tissue_mask(slide)
    assert np.array_equal(whole.mask, blocks.mask) and whole.threshold == blocks.threshold
