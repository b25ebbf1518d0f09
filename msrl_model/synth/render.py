"""Render synthetic H&E-looking RGB images (synthetic data, not real tissue)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SlideMorphology:
    """Visible tissue properties; the cohort generator maps latent tumour biology onto these."""

    nuclear_density: float = 1.0  # nuclei per unit area relative to normal tissue (0.2 - 3)
    nuclear_size: float = 1.0  # mean nuclear diameter relative to normal (~7 px = 3.5 µm at 0.5 mpp)
    atypia: float = 0.3  # 0..1: spread of nuclear size/shape and hyperchromasia (darker nuclei)
    stroma_fraction: float = 0.5  # 0..1: share of tissue area that is eosin-pink stroma (vs cellular)
    lumen_fraction: float = 0.08  # 0..0.4: share of tissue area that is glandular lumina (white)
    tissue_fraction: float = 0.45  # 0..0.9: approximate share of the glass covered by tissue
    stain_hematoxylin: float = 1.0  # haematoxylin (purple) stain strength multiplier
    stain_eosin: float = 1.0  # eosin (pink) stain strength multiplier
    hue_shift: float = 0.0  # -1..1: shifts the stain vectors toward blue (-) or red/magenta (+)


def downsample_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Block-average an H x W x C uint8 image by ``factor`` -> (H//f) x (W//f) x C (edges cropped)."""
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    h, w = max(h, 1), max(w, 1)
    crop = rgb[: h * factor, : w * factor].astype(np.float32)
    # (H, W, C) -> (h, f, w, f, C) so the two f axes are the block
    blocks = crop.reshape(h, crop.shape[0] // h, w, crop.shape[1] // w, -1)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def render_slide(width: int, height: int, seed: int,
                 morphology: SlideMorphology = SlideMorphology(),
                 kind: str = "tissue") -> np.ndarray:
    """A ``height x width x 3`` uint8 RGB image of synthetic H&E tissue (or blank glass)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 243, np.float32)
    img += rng.normal(0, 1.5, (height, width, 1)).astype(np.float32)
    if kind == "blank":
        return np.clip(img, 0, 255).astype(np.uint8)
    lo = (max(height // 32, 4), max(width // 32, 4))
    field = ndimage.gaussian_filter(rng.normal(size=lo), sigma=2.0)
    thr = np.quantile(field, 1 - morphology.tissue_fraction)
    mask_lo = (field > thr).astype(np.float32)
    mask = ndimage.zoom(mask_lo, (height / lo[0], width / lo[1]), order=1)[:height, :width] > 0.5
    img[mask] = (225, 150, 190)
    n = int(mask.sum() * 0.01 * morphology.nuclear_density / 10)
    ys = rng.integers(0, height, n)
    xs = rng.integers(0, width, n)
    keep = mask[ys, xs]
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            img[np.clip(ys[keep] + dy, 0, height - 1), np.clip(xs[keep] + dx, 0, width - 1)] = (
                90, 50, 140)
    return np.clip(img, 0, 255).astype(np.uint8)
