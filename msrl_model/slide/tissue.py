"""Tissue detection on a low-resolution view of the slide.

Steps, at about ``TissueParams.mask_mpp`` µm per mask pixel:

1. read the slide from the coarsest pyramid level that is at least that fine, in blocks, and
   area-average ``k x k`` level pixels into one mask pixel (``k`` an integer, so the mask's
   downsample ``k * level_downsample`` is exact);
2. saturation ``S = (max(R,G,B) - min(R,G,B)) / max(R,G,B)`` (HSV); tissue is ``S > t`` with
   ``t = clip(otsu(S), min_saturation, max_saturation)`` - the floor keeps a blank white slide
   (JPEG noise only) empty and the ceiling keeps a slide covered in tissue whole, since Otsu always
   splits something, even a histogram with one mode;
3. morphological closing then opening with discs of ``closing_um`` / ``opening_um`` radius, holes up
   to ``max_hole_area_um2`` filled, connected components below ``min_area_um2`` dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from msrl_model.errors import SlideError
from msrl_model.slide.reader import Slide

__all__ = ["TissueParams", "TissueMask", "tissue_mask"]

_BLOCK_LEVEL_PX = 2048  # about this many level pixels per side of one read block (bounds memory)
# Most mask pixels (a 200k x 100k px 40x slide at 8 µm/px has 20M). A slide declaring more gets a
# coarser mask, so the mask and its by-products stay within a few hundred MB whatever the file says.
MAX_MASK_PIXELS = 32_000_000
# Most pixels read for the mask: a slide without a pyramid level coarse enough would be read whole at
# full resolution (a flat 200k x 200k TIFF: 4e10 px, most of an hour) - refused with a message instead.
MAX_MASK_SOURCE_PIXELS = 10**10


@dataclass(frozen=True)
class TissueParams:
    mask_mpp: float = 8.0  # target µm per mask pixel (coarser levels are used when they exist)
    min_saturation: float = 0.08  # floor of the saturation threshold (0..1); raise to ignore faint tissue
    max_saturation: float = 0.2  # ceiling of the threshold: a slide covered in tissue (one mode) is not split in half
    use_otsu: bool = True  # threshold = Otsu on the slide's saturation, clipped to the two bounds; False: the floor only
    closing_um: float = 16.0  # radius (µm) of the disc closing small gaps between tissue pixels
    opening_um: float = 8.0  # radius (µm) of the disc opening that removes thin bright-field noise
    max_hole_area_um2: float = 250_000.0  # holes up to this area (µm²; 0.25 mm²) are filled as tissue
    min_area_um2: float = 10_000.0  # tissue pieces smaller than this (µm²; 0.01 mm²) are dropped as specks

    def to_dict(self) -> dict[str, float | bool]:
        """The parameters as a JSON-ready dict (part of the feature cache key)."""
        return asdict(self)


@dataclass
class TissueMask:
    """A boolean tissue mask at low resolution. Mask pixel ``(r, c)`` covers level-0 pixels
    ``[c * downsample, (c + 1) * downsample) x [r * downsample, (r + 1) * downsample)``."""

    mask: np.ndarray  # H x W bool, True on tissue
    downsample: float  # level-0 pixels per mask pixel
    mpp: float  # µm per mask pixel (level-0 mpp * downsample)
    threshold: float  # saturation threshold that was applied (0..1)
    level: int  # pyramid level the mask was computed from
    _sat: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)  # summed-area table

    @property
    def fraction(self) -> float:
        """Fraction of the slide's area on tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def tissue_fraction(self, coords_level0: np.ndarray, size_level0: float) -> np.ndarray:
        """Fraction on tissue of each ``size_level0``-wide square with top-left ``coords_level0`` (N, 2) as (x, y).

        Squares are snapped to the mask grid (edges rounded to the nearest mask pixel, at least one
        pixel wide); parts outside the mask count as background. Returns (N,) float64 in [0, 1].
        """
        coords = np.asarray(coords_level0, dtype=np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        # summed-area table with a zero row/column in front: sat[r, c] = mask[:r, :c].sum(); computed once
        if self._sat is None:
            dtype = np.int32 if self.mask.size < 2**31 else np.int64
            sat = np.zeros((h + 1, w + 1), dtype)
            np.cumsum(self.mask, axis=0, dtype=dtype, out=sat[1:, 1:])
            np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
            self._sat = sat
        sat = self._sat
        c0 = np.rint(coords[:, 0] / self.downsample).astype(np.int64)
        r0 = np.rint(coords[:, 1] / self.downsample).astype(np.int64)
        side = max(1, int(round(size_level0 / self.downsample)))
        area = float(side * side)
        c1, r1 = np.clip(c0 + side, 0, w), np.clip(r0 + side, 0, h)
        c0, r0 = np.clip(c0, 0, w), np.clip(r0, 0, h)
        inside = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
        return inside / area


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> H x W float32 HSV saturation in [0, 1] (0 where the pixel is black)."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def _low_resolution(slide: Slide, mask_mpp: float) -> tuple[np.ndarray, float, int]:
    """The slide area-averaged to about ``mask_mpp`` µm/px: (H x W x 3 uint8, downsample, level)."""
    wanted = max(1.0, mask_mpp / slide.mpp)  # level-0 px per mask px
    level = slide.best_level_for_downsample(wanted)
    level_ds = slide.level_downsamples[level]
    k = max(1, int(round(wanted / level_ds)))  # level px per mask px
    lw, lh = slide.level_dimensions[level]
    if lw * lh > MAX_MASK_SOURCE_PIXELS:
        raise SlideError(
            f"{slide.path.name} has no pyramid level coarse enough for tissue detection: it would read "
            f"{lw}x{lh} px at full resolution; save the slide with a pyramid (e.g. `vips tiffsave --tile "
            "--pyramid`) or export it again from the scanner software")
    while -(-lw // k) * -(-lh // k) > MAX_MASK_PIXELS:  # bound the allocation by the declared size
        k *= 2
    mw, mh = -(-lw // k), -(-lh // k)  # ceil: a partial edge block still gets a mask pixel
    out = np.empty((mh, mw, 3), np.uint8)
    block = k * max(1, _BLOCK_LEVEL_PX // k)  # level px per read block side, a multiple of k
    for by in range(0, lh, block):
        for bx in range(0, lw, block):
            bw, bh = min(block, mw * k - bx), min(block, mh * k - by)  # whole k x k cells
            inside = (min(bw, lw - bx), min(bh, lh - by))  # the part within the level
            region = slide.read_region((int(round(bx * level_ds)), int(round(by * level_ds))), level, inside)
            # replicate the last row/column so a partial edge cell is not diluted with white
            region = np.pad(region, ((0, bh - inside[1]), (0, bw - inside[0]), (0, 0)), mode="edge")
            sums = region.reshape(bh // k, k, bw // k, k, 3).sum(axis=(1, 3), dtype=np.uint32)  # (bh/k, bw/k, 3)
            out[by // k: by // k + bh // k, bx // k: bx // k + bw // k] = (sums + k * k // 2) // (k * k)
    return out, k * level_ds, level


def _disc(radius_px: float) -> np.ndarray | None:
    r = int(round(radius_px))
    if r < 1:
        return None
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    return xx * xx + yy * yy <= r * r


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Set to True every background component not touching the border with area <= max_area_px."""
    from scipy import ndimage

    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_area_px
    fill[0] = False  # label 0 is tissue itself
    fill[border] = False
    return mask | fill[labels]


def _drop_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area_px
    keep[0] = False
    return keep[labels]


def tissue_mask(slide: Slide, params: TissueParams = TissueParams()) -> TissueMask:
    """Detect tissue on ``slide`` (see the module docstring for the method). scipy and scikit-image are
    imported here, not with the module: loading a model bundle (which reads the tissue parameters) stays
    free of them."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    rgb, downsample, level = _low_resolution(slide, params.mask_mpp)
    mpp = slide.mpp * downsample
    saturation = _saturation(rgb)
    threshold = params.min_saturation
    if params.use_otsu and saturation.size and np.ptp(saturation) > 0:
        threshold = min(max(threshold, float(threshold_otsu(saturation))), params.max_saturation)
    mask = saturation > threshold

    closing, opening = _disc(params.closing_um / mpp), _disc(params.opening_um / mpp)
    if closing is not None:  # pad so closing does not glue tissue to the image border
        pad = closing.shape[0]
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=closing)[pad:-pad, pad:-pad]
    if opening is not None:  # border_value=1: tissue running off the image edge is not eroded there
        mask = ndimage.binary_dilation(ndimage.binary_erosion(mask, opening, border_value=1), opening)
    px_area = mpp * mpp  # µm² per mask pixel
    mask = _fill_small_holes(mask, params.max_hole_area_um2 / px_area)
    mask = _drop_small_objects(mask, params.min_area_um2 / px_area)
    return TissueMask(mask=mask, downsample=float(downsample), mpp=float(mpp), threshold=threshold, level=level)
