"""Rasterising overlays (tissue mask, patch grid, heat-map) into small images the viewer scales,
and the viewer's overlay layers (:class:`OverlayLayers`).

Everything here is numpy -> ``QImage`` (ARGB32 premultiplied, the format QPainter composes fastest)
and runs in well under a frame for 10^5 patches: a patch grid becomes one image with one pixel per
patch, drawn scaled (no smoothing) over the slide, instead of 10^5 rectangles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QTransform

COLORMAPS = {"viridis": "Viridis", "magma": "Magma", "cividis": "Cividis (colour-vision friendly)",
             "turbo": "Turbo (rainbow)"}
"""Heat-map colour maps (pyqtgraph's copies of matplotlib's and Google's maps), the perceptually
uniform ones first; the name → the menu's wording."""
DEFAULT_COLORMAP = "viridis"  # perceptually uniform: equal steps in rank look like equal steps in colour


def colormap_lut(n: int = 256, name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """(n, 3) uint8 RGB lookup table of the colour map ``name`` (:data:`COLORMAPS`), low -> high."""
    import pyqtgraph as pg  # lazy: the heat-map exists only after an analysis, when pyqtgraph is loaded

    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; use one of {', '.join(COLORMAPS)}")
    return np.asarray(pg.colormap.get(name).getLookupTable(0.0, 1.0, n, alpha=False), dtype=np.uint8)


def normalize(values: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """Map values to [0, 1]: ``"percentile"`` (rank / (N-1), robust to heavy tails, as attention
    scores are) or ``"minmax"`` ((v - min) / (max - min)). Constant input maps to 0.5."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return values
    if mode == "percentile":
        if values.size == 1 or np.all(values == values[0]):
            return np.full(values.shape, 0.5)
        ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
        return ranks / (values.size - 1)
    if mode == "minmax":
        lo, hi = float(values.min()), float(values.max())
        return np.full(values.shape, 0.5) if hi <= lo else (values - lo) / (hi - lo)
    raise ValueError(f"unknown normalisation {mode!r}; use 'percentile' or 'minmax'")


def rgba_to_qimage(rgba: np.ndarray) -> QImage:
    """H x W x 4 uint8 straight-alpha RGBA -> an independent premultiplied ARGB32 QImage."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = rgba.shape[:2]
    image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return image.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)  # copies the buffer


def mask_image(mask: np.ndarray, color: QColor, fill_alpha: int = 80, edge_alpha: int = 230) -> QImage:
    """A boolean mask (H x W) as a tinted image: translucent inside, nearly opaque on its edge."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]) & mask
    rgba = np.zeros(mask.shape + (4,), dtype=np.uint8)  # H x W x 4
    rgba[..., :3] = (color.red(), color.green(), color.blue())
    rgba[..., 3] = np.where(mask, np.where(interior, fill_alpha, edge_alpha), 0)
    return rgba_to_qimage(rgba)


@dataclass(frozen=True)
class GridRaster:
    """Patches on a regular grid drawn as one image, one pixel per grid cell."""

    image: QImage  # nx x ny pixels (ARGB32 premultiplied)
    rect: QRectF  # where the image goes, in level-0 pixels
    count: int  # number of patches drawn


def grid_raster(coords: np.ndarray, size_level0: float, rgba: np.ndarray) -> GridRaster:
    """Rasterise square patches onto their grid.

    Args:
        coords: (N, 2) level-0 top-left corners (x, y) of patches of side ``size_level0``; they are
            snapped to the grid anchored at the smallest coordinates.
        size_level0: patch side in level-0 pixels.
        rgba: (N, 4) uint8 colour of each patch, or (4,) for all.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if size_level0 <= 0:
        raise ValueError(f"patch size must be positive, got {size_level0}")
    if coords.shape[0] == 0:
        return GridRaster(QImage(), QRectF(), 0)
    origin = coords.min(axis=0)
    cells = np.rint((coords - origin) / size_level0).astype(np.int64)  # (N, 2) column, row
    nx, ny = (int(v) + 1 for v in cells.max(axis=0))
    canvas = np.zeros((ny, nx, 4), dtype=np.uint8)  # rows = y, columns = x
    canvas[cells[:, 1], cells[:, 0]] = np.broadcast_to(np.asarray(rgba, dtype=np.uint8), (len(cells), 4))
    rect = QRectF(origin[0], origin[1], nx * size_level0, ny * size_level0)
    return GridRaster(rgba_to_qimage(canvas), rect, len(cells))


def attention_rgba(values: np.ndarray, normalization: str = "percentile",
                   colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Per-patch scores (N,) -> (N, 4) uint8 opaque colours of ``colormap`` (low -> high)."""
    lut = colormap_lut(256, colormap)
    index = np.clip((normalize(values, normalization) * 255).round().astype(int), 0, 255)
    return np.concatenate([lut[index], np.full((len(index), 1), 255, np.uint8)], axis=1)  # (N, 4)


def heatmap_raster(coords: np.ndarray, size_level0: float, values: np.ndarray,
                   normalization: str = "percentile", colormap: str = DEFAULT_COLORMAP) -> GridRaster:
    """The attention heat-map of patches ``coords`` (N, 2) as one grid image (viewer and report)."""
    return grid_raster(coords, size_level0, attention_rgba(values, normalization, colormap))


class HeatmapLegend(NamedTuple):
    """What the heat-map legend shows."""

    label: str  # e.g. "Attention (survival)"
    low: float  # the smallest value
    high: float  # the largest value
    normalization: str  # "percentile" (colours by rank, as the PDF) or "minmax"
    colormap: str  # a key of COLORMAPS


@dataclass(frozen=True)
class PatchValue:
    """The heat-map value under a point: which patch, its score and its rank among the slide's patches."""

    index: int  # patch index (row of the result's coords)
    value: float  # the score (e.g. attention weight)
    percentile: float  # 100 · rank / (N − 1): the share of this slide's patches scored lower, in %


class OverlayLayers:
    """The viewer's overlays — ``tissue`` mask, analysed ``patches``, ``heatmap`` — each with a
    visibility flag and an opacity, and their painting in level-0 coordinates."""

    NAMES = ("tissue", "patches", "heatmap")

    def __init__(self) -> None:
        self.visible = {"tissue": False, "patches": True, "heatmap": True}
        self.opacity = {"tissue": 0.6, "patches": 0.9, "heatmap": 0.55}
        self.heat_label = ""
        self.colormap = DEFAULT_COLORMAP
        self.smooth_heatmap = False  # bilinear between patch centres instead of one flat square per patch
        self.clear()

    def clear(self) -> None:
        self.tissue_image: QImage | None = None
        self.tissue_rect = QRectF()
        self.tissue_fraction: float | None = None  # of the slide area, once detected
        self.patch_coords: np.ndarray | None = None  # (N, 2) level-0 x, y
        self.patch_size = 0.0
        self.patch_raster: GridRaster | None = None
        self.heat: GridRaster | None = None
        self.heat_range: tuple[float, float] | None = None
        self.heat_normalization = "percentile"
        self._heat_args: tuple[np.ndarray, float, np.ndarray] | None = None  # coords (N, 2), size, values (N,)

    def set_tissue_mask(self, mask: np.ndarray, downsample: float) -> None:
        mask = np.asarray(mask, dtype=bool)
        self.tissue_image = mask_image(mask, QColor(60, 220, 120), fill_alpha=110)
        self.tissue_rect = QRectF(0, 0, mask.shape[1] * downsample, mask.shape[0] * downsample)
        self.tissue_fraction = float(mask.mean()) if mask.size else 0.0

    def set_patches(self, coords: np.ndarray | None, size_level0: float) -> None:
        if coords is None:
            self.patch_coords, self.patch_raster = None, None
            return
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)  # (N, 2) x, y
        self.patch_coords, self.patch_size = coords, float(size_level0)
        self.patch_raster = grid_raster(coords, size_level0, np.array([80, 200, 255, 70], np.uint8))

    def set_heatmap(self, coords: np.ndarray | None, size_level0: float, values: np.ndarray | None,
                    label: str, normalization: str) -> None:
        if coords is None:
            self.heat, self.heat_range, self._heat_args = None, None, None
            return
        values = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
        coords = np.asarray(coords).reshape(-1, 2)
        if len(values) != len(coords):
            raise ValueError(f"{len(coords)} patches but {len(values)} heat-map values")
        self.heat = heatmap_raster(coords, size_level0, values, normalization, self.colormap)
        self.heat_range = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
        self.heat_label, self.heat_normalization = label, normalization
        self._heat_args = (np.asarray(coords, dtype=np.float64), float(size_level0), values)

    def set_colormap(self, name: str) -> bool:
        """Redraw the heat-map with the colour map ``name``; True when this changed it."""
        if name not in COLORMAPS:
            raise ValueError(f"unknown colour map {name!r}; use one of {', '.join(COLORMAPS)}")
        changed, self.colormap = name != self.colormap, name
        if changed and self._heat_args is not None:
            coords, size, values = self._heat_args
            self.heat = heatmap_raster(coords, size, values, self.heat_normalization, name)
        return changed

    def set_smooth_heatmap(self, smooth: bool) -> bool:
        """Draw the heat-map interpolated between patch centres (a smoothed map) or as squares; True when
        this changed it. Hover values stay per patch either way."""
        changed, self.smooth_heatmap = self.smooth_heatmap != bool(smooth), bool(smooth)
        return changed

    def value_at(self, x: float, y: float) -> PatchValue | None:
        """The heat-map patch containing the level-0 point (x, y), its value and rank; None outside."""
        if self._heat_args is None:
            return None
        coords, size, values = self._heat_args
        inside = np.flatnonzero((coords[:, 0] <= x) & (x < coords[:, 0] + size)
                                & (coords[:, 1] <= y) & (y < coords[:, 1] + size))
        if not len(inside):
            return None
        i = int(inside[0])
        return PatchValue(i, float(values[i]), float(100 * normalize(values, "percentile")[i]))

    def available(self, name: str) -> bool:
        return {"tissue": self.tissue_image, "patches": self.patch_raster, "heatmap": self.heat}[name] is not None

    def set_visible(self, name: str, visible: bool) -> bool:
        """True when this changed the flag."""
        changed = self.visible[name] != bool(visible)
        self.visible[name] = bool(visible)
        return changed

    def set_opacity(self, name: str, opacity: float) -> bool:
        """Clamped to [0, 1]; True when this changed it."""
        opacity = min(max(float(opacity), 0.0), 1.0)
        changed = self.opacity[name] != opacity
        self.opacity[name] = opacity
        return changed

    def paint(self, painter: QPainter, transform: QTransform, scale: float, view: QRectF) -> None:
        """Draw the visible overlays; ``transform`` maps level-0 to widget px, ``view`` is the
        level-0 rectangle on screen."""
        painter.save()
        painter.setTransform(transform)
        if self.visible["tissue"] and self.tissue_image is not None:
            painter.setOpacity(self.opacity["tissue"])
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(self.tissue_rect, self.tissue_image)
        if self.visible["heatmap"] and self.heat is not None:
            painter.setOpacity(self.opacity["heatmap"])
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.smooth_heatmap)
            painter.drawImage(self.heat.rect, self.heat.image)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        if self.visible["patches"] and self.patch_raster is not None:
            painter.setOpacity(self.opacity["patches"])
            self._paint_patches(painter, scale, view)
        painter.restore()

    def _paint_patches(self, painter: QPainter, scale: float, view: QRectF) -> None:
        coords, size = self.patch_coords, self.patch_size
        if size * scale < 6:  # too small for outlines: a tint per patch
            painter.drawImage(self.patch_raster.rect, self.patch_raster.image)
            return
        inside = ((coords[:, 0] + size >= view.left()) & (coords[:, 0] <= view.right())
                  & (coords[:, 1] + size >= view.top()) & (coords[:, 1] <= view.bottom()))
        pen = QPen(QColor(80, 200, 255), 1.2)
        pen.setCosmetic(True)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRects([QRectF(x, y, size, size) for x, y in coords[inside]])
