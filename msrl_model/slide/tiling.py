"""The patch grid: non-overlapping ``patch_size`` px patches at ``target_mpp`` µm/px over the tissue.

With level-0 resolution ``m`` (µm/px), one patch covers ``patch_size * target_mpp`` µm, i.e.
``patch_size_level0 = round(patch_size * target_mpp / m)`` level-0 pixels (40x, m = 0.25: 512;
20x, m = 0.5: 256; m = 0.499: 257). Pixels are read from the coarsest pyramid level whose mpp is
still <= ``target_mpp`` (never upsampling when avoidable), ``read_size = round(patch_size_level0 /
level_downsample)`` px there, and resized to ``patch_size`` when ``read_size != patch_size``.
Patch coordinates are level-0 top-left ``(x, y)`` int64, row-major; a patch is kept when at least
``min_tissue_fraction`` of it is on the tissue mask.

Bounded memory: the candidate grid is scored in chunks of rows (never ``nx × ny`` coordinates at
once), more than :data:`MAX_GRID_CELLS` candidate patches are refused from the declared size alone,
and a slide with more than ``max_patches`` tissue patches (default :data:`DEFAULT_MAX_PATCHES`; a 40x
TCGA slide has 10k-40k) is refused with a message saying how to raise the cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from msrl_model.errors import NoTissueError, SlideError
from msrl_model.slide.reader import Slide
from msrl_model.slide.tissue import TissueMask

__all__ = ["DEFAULT_MAX_PATCHES", "MAX_GRID_CELLS", "TilingParams", "TileGrid", "tile_grid"]

DEFAULT_MAX_PATCHES = 100_000  # patches per slide; `msrl extract/analyze --max-patches` changes it
MAX_GRID_CELLS = 50_000_000  # candidate patch positions (nx * ny) a slide may declare
_CHUNK_CELLS = 1_000_000  # candidate positions scored at a time


@dataclass(frozen=True)
class TilingParams:
    patch_size: int = 256  # output patch side in pixels (what the encoder sees)
    target_mpp: float = 0.5  # µm per output pixel (0.5 = "20x", the usual pathology-FM resolution)
    min_tissue_fraction: float = 0.25  # keep a patch when at least this fraction of it is on the tissue mask

    def to_dict(self) -> dict[str, float | int]:
        """The parameters as a JSON-ready dict (part of the feature cache key)."""
        return asdict(self)


@dataclass
class TileGrid:
    """The patches to read from one slide, in level-0 coordinates."""

    coords: np.ndarray  # (N, 2) int64 level-0 top-left (x, y) of each patch, row-major order
    patch_size: int  # output patch side in pixels
    patch_size_level0: int  # patch side in level-0 pixels
    read_level: int  # pyramid level the pixels are read from
    read_size: int  # patch side in pixels at read_level (resized to patch_size when different)
    target_mpp: float  # µm per output pixel
    level0_mpp: float  # the slide's level-0 µm per pixel
    tissue_fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) fraction of each patch on tissue
    warnings: list[str] = field(default_factory=list)  # e.g. upsampling because the scan is coarser than target

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def read_tile(self, slide: Slide, i: int) -> np.ndarray:
        """Patch ``i`` as patch_size x patch_size x 3 uint8 RGB. Raises UnreadableTileError."""
        from PIL import Image

        x, y = (int(v) for v in self.coords[i])
        region = slide.read_region((x, y), self.read_level, (self.read_size, self.read_size))
        if self.read_size != self.patch_size:
            size = (self.patch_size, self.patch_size)
            region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
        return region


def _read_level(slide: Slide, params: TilingParams, patch_size_level0: int) -> tuple[int, int]:
    """(read_level, read_size): the coarsest level with mpp <= target_mpp and the patch side there."""
    level = slide.best_level_for_downsample(params.target_mpp / slide.mpp)
    read_size = max(1, int(round(patch_size_level0 / slide.level_downsamples[level])))
    return level, read_size


def tile_grid(slide: Slide, mask: TissueMask, params: TilingParams = TilingParams(),
              max_patches: int | None = DEFAULT_MAX_PATCHES) -> TileGrid:
    """The non-overlapping patch grid over ``slide`` keeping patches on tissue.

    Raises NoTissueError, or SlideError when the slide has more than ``max_patches`` tissue
    patches (None: no cap) or declares an absurd number of patch positions.
    """
    psl0 = max(1, int(round(params.patch_size * params.target_mpp / slide.mpp)))
    width, height = slide.dimensions
    nx, ny = width // psl0, height // psl0  # whole patches only
    if nx == 0 or ny == 0:
        raise NoTissueError(
            f"{slide.path.name} ({width}x{height} px at {slide.mpp:.3g} µm/px) is smaller than one patch "
            f"({psl0} px = {params.patch_size} px at {params.target_mpp} µm/px); use a larger slide or a "
            "smaller TilingParams.patch_size")
    if nx * ny > MAX_GRID_CELLS:
        raise SlideError(
            f"{slide.path.name} declares {width}x{height} px at {slide.mpp:.3g} µm/px, i.e. {nx * ny:,} patch "
            f"positions (more than {MAX_GRID_CELLS:,}); the file or its resolution metadata is wrong - check the slide")
    if not mask.mask.any():
        raise NoTissueError(
            f"no tissue found on {slide.path.name}: it looks blank at the detection threshold "
            f"(saturation {mask.threshold:.3f}); check the slide or lower TissueParams.min_saturation")
    kept_coords: list[np.ndarray] = []
    kept_fractions: list[np.ndarray] = []
    n_kept = 0
    rows = max(1, _CHUNK_CELLS // nx)
    xs = np.arange(nx, dtype=np.int64) * psl0
    for y0 in range(0, ny, rows):  # row-major order is kept: chunks are whole rows, in order
        ys = np.arange(y0, min(ny, y0 + rows), dtype=np.int64) * psl0
        chunk = np.stack([np.tile(xs, len(ys)), np.repeat(ys, nx)], axis=1)  # (rows*nx, 2) as (x, y)
        fractions = mask.tissue_fraction(chunk, psl0)
        keep = fractions >= params.min_tissue_fraction
        n_kept += int(keep.sum())
        if max_patches is not None and n_kept > max_patches:
            raise SlideError(
                f"{slide.path.name} has more than {max_patches:,} tissue patches of {params.patch_size} px at "
                f"{params.target_mpp} µm/px (the per-slide cap); check the slide's resolution metadata, or "
                "raise the cap with --max-patches")
        kept_coords.append(chunk[keep])
        kept_fractions.append(fractions[keep])
    if n_kept == 0:
        raise NoTissueError(
            f"no patch of {slide.path.name} is at least {params.min_tissue_fraction:.0%} tissue (tissue covers "
            f"{mask.fraction:.1%} of the slide in small pieces); lower TilingParams.min_tissue_fraction")
    level, read_size = _read_level(slide, params, psl0)
    warnings = []
    if slide.mpp > params.target_mpp * 1.01:
        warnings.append(
            f"{slide.path.name} is scanned at {slide.mpp:.3g} µm/px, coarser than the {params.target_mpp} µm/px "
            f"target: patches are upsampled from {read_size} px and will look blurrier than the training data")
    return TileGrid(coords=np.concatenate(kept_coords), patch_size=params.patch_size, patch_size_level0=psl0,
                    read_level=level, read_size=read_size, target_mpp=params.target_mpp,
                    level0_mpp=slide.mpp, tissue_fractions=np.concatenate(kept_fractions), warnings=warnings)
