"""The slide viewer: tiled multi-resolution rendering, smooth zoom/pan, overlays (their data and
painting: :class:`msrl_app.overlays.OverlayLayers`; the overview and colour legend:
:mod:`msrl_app.overview`; the scale bar: :mod:`msrl_app.scalebar`).

View model: ``scale`` is screen pixels per level-0 pixel (1.0 = 1:1) and ``center`` the level-0
point shown at the middle of the widget. The pyramid level drawn is the coarsest one with at least
one pixel per screen pixel (:func:`msrl_app.tiles.choose_level`); its 512-px tiles are read by a
:class:`~msrl_app.tiles.TileLoader` off the GUI thread and kept in an LRU cache that never evicts
the tiles on screen (:class:`~msrl_app.tiles.TileCache`); a visible tile missing after a load is
requested again. While a tile is loading, the thumbnail and any cached coarser tiles underneath
stand in for it.

Overlays (drawn above the tiles, each with a visibility flag and an opacity):
    ``tissue``   the tissue mask (computed in the background when a slide is set)
    ``patches``  analysed patches, :meth:`SlideViewer.set_patches`
    ``heatmap``  per-patch scores (attention), :meth:`SlideViewer.set_heatmap`, turbo colormap
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (QColor, QFont, QImage, QPainter, QPaintEvent, QResizeEvent,
                           QTransform)
from PySide6.QtWidgets import QSizePolicy, QWidget

from msrl_app.navigation import NavigationMixin
from msrl_app.overlays import HeatmapLegend, OverlayLayers, PatchValue
from msrl_app.overview import BACKGROUND, ColorLegend, OverviewWidget  # noqa: F401 - re-exported
from msrl_app.scalebar import (NICE_LENGTHS_UM, format_length, format_magnification,  # noqa: F401 - re-exported
                               magnification, nice_scale_length, paint_hud)
from msrl_app.tiles import SlideSource, TileCache, TileKey, TileLoader, choose_level, rgb_to_qimage, tiles_in_rect
from msrl_app.worker import call_job, new_worker

if TYPE_CHECKING:
    from msrl_model.slide import Slide

log = logging.getLogger(__name__)

OVERLAYS = OverlayLayers.NAMES
THUMBNAIL_SIZE = 1024


class SlideViewer(NavigationMixin, QWidget):
    """Tiled viewer of one slide. Owns the slide given to :meth:`set_slide` (closes it later)."""

    viewChanged = Signal()  # scale or center changed
    slideChanged = Signal()  # a slide was set or cleared
    thumbnailReady = Signal(QImage)  # the overview image of the current slide
    overlaysChanged = Signal()  # an overlay's data, visibility or opacity changed
    cursorMoved = Signal(float, float)  # level-0 position under the mouse
    backgroundError = Signal(str)  # a background job (thumbnail, tissue) failed; one line

    TILE_SIZE = 512
    MAX_SCALE = 4.0  # screen px per level-0 px at the deepest zoom

    def __init__(self, parent: QWidget | None = None, cache_bytes: int = 256 * 2**20,
                 threads: int | None = None) -> None:
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 150)

        self._source: SlideSource | None = None
        self._scale = 1.0
        self._center = QPointF(0, 0)
        self._auto_fit = True  # re-fit on resize until the user zooms or pans
        self._cache = TileCache(cache_bytes)
        self._failed: set[TileKey] = set()
        self._loader = TileLoader(self.TILE_SIZE, threads, self)
        self._loader.loaded.connect(self._on_tile_loaded)
        self._loader.failed.connect(self._on_tile_failed)
        # background jobs by their signal object (``sender()`` in the slots): (worker, source, on_result, what)
        self._jobs: dict[object, tuple[object, SlideSource | None, object, str]] = {}
        self._thumbnail: QImage | None = None

        self._layers = OverlayLayers()
        self._tissue: tuple[np.ndarray, float] | None = None  # the tissue mask and its downsample, once detected

        self._drag_origin: QPointF | None = None
        self._drag_center = QPointF()
        self._target_scale = 1.0
        self._anchor = QPointF()
        self._anim = QTimer(self)
        self._anim.setInterval(15)
        self._anim.timeout.connect(self._animate)

    # -- slide --------------------------------------------------------------------------------------
    @property
    def slide(self) -> Slide | None:
        return self._source.slide if self._source is not None else None

    def set_slide(self, slide: Slide | None) -> None:
        """Show ``slide`` (or nothing); the previous slide is closed once its reads finish."""
        for worker, *_ in self._jobs.values():
            worker.quit()
        old, self._source = self._source, (SlideSource(slide) if slide is not None else None)
        self._loader.set_source(self._source)
        if old is not None:
            old.close()
        self._cache.clear()
        self._failed.clear()
        self._thumbnail = None
        self._layers.clear()
        self._tissue = None
        self._anim.stop()
        self.slideChanged.emit()
        self.overlaysChanged.emit()
        if self._source is None:
            self.update()
            return
        self.fit()
        self._start_job(self._on_thumbnail, "overview image", self._source.call,
                        lambda s: s.thumbnail(THUMBNAIL_SIZE))
        self._start_job(self._on_tissue, "tissue detection", self._source.call, _compute_tissue)

    def shutdown(self, msecs: int = 5000) -> None:
        """Close the slide and wait (bounded) for background reads and jobs (window closing)."""
        workers = [worker for worker, *_ in self._jobs.values()]
        self.set_slide(None)
        self._loader.shutdown(msecs)
        for worker in workers:
            worker.wait(msecs)

    def _start_job(self, on_result, what: str, fn, *args) -> None:
        """Run ``fn(*args)`` in the background; ``on_result`` gets its result if the slide is still shown."""
        worker = new_worker(call_job, fn, *args)
        self._jobs[worker.signals] = (worker, self._source, on_result, what)
        # bound methods of this widget: Qt disconnects them if the viewer is destroyed first
        worker.returned.connect(self._on_job_returned)
        worker.errored.connect(self._on_job_errored)
        worker.finished.connect(self._on_job_finished)
        worker.start()

    def _on_job_returned(self, result: object) -> None:
        _, source, on_result, _ = self._jobs.get(self.sender(), (None, None, None, ""))
        if source is not None and source is self._source:
            on_result(result)

    def _on_job_errored(self, exc: Exception) -> None:
        _, source, _, what = self._jobs.get(self.sender(), (None, None, None, ""))
        if source is not None and source is self._source:
            log.warning("%s failed: %s", what, exc, exc_info=exc)
            self.backgroundError.emit(f"{what} failed: {exc}")

    def _on_job_finished(self) -> None:
        self._jobs.pop(self.sender(), None)

    def background_jobs(self) -> int:
        """Background jobs (overview image, tissue detection) still running."""
        return len(self._jobs)

    def _on_thumbnail(self, rgb: np.ndarray) -> None:
        self._thumbnail = rgb_to_qimage(rgb)
        self.thumbnailReady.emit(self._thumbnail)
        self.update()

    def thumbnail(self) -> QImage | None:
        return self._thumbnail

    def _on_tissue(self, result: tuple[np.ndarray, float]) -> None:
        self.set_tissue_mask(*result)

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Screen pixels per level-0 pixel."""
        return self._scale

    @property
    def center(self) -> QPointF:
        """Level-0 point at the middle of the widget."""
        return QPointF(self._center)

    def _widget_center(self) -> QPointF:
        return QPointF(self.width() / 2.0, self.height() / 2.0)

    def map_to_level0(self, point: QPointF) -> QPointF:
        return self._center + (QPointF(point) - self._widget_center()) / self._scale

    def map_from_level0(self, point: QPointF) -> QPointF:
        return self._widget_center() + (QPointF(point) - self._center) * self._scale

    def _transform(self) -> QTransform:
        """Level-0 -> widget coordinates."""
        c = self._widget_center()
        return QTransform(self._scale, 0, 0, self._scale, c.x() - self._center.x() * self._scale,
                          c.y() - self._center.y() * self._scale)

    def view_rect_level0(self) -> QRectF:
        """The level-0 rectangle on screen."""
        w, h = self.width() / self._scale, self.height() / self._scale
        return QRectF(self._center.x() - w / 2, self._center.y() - h / 2, w, h)

    def slide_rect(self) -> QRectF:
        slide = self.slide
        return QRectF(0, 0, *slide.dimensions) if slide is not None else QRectF()

    def fit_scale(self) -> float:
        slide = self.slide
        if slide is None:
            return 1.0
        w0, h0 = slide.dimensions
        return 0.96 * min(self.width() / w0, self.height() / h0)

    def min_scale(self) -> float:
        return min(self.fit_scale() / 2, self.MAX_SCALE)

    def current_level(self) -> int:
        slide = self.slide
        return choose_level(slide.level_downsamples, 1.0 / self._scale) if slide is not None else 0

    def visible_tiles(self) -> set[TileKey]:
        """``(level, tx, ty)`` of the tiles needed for the current view at the current level."""
        slide = self.slide
        if slide is None:
            return set()
        level = self.current_level()
        rect = self.view_rect_level0().intersected(self.slide_rect())
        if rect.isEmpty():
            return set()
        return tiles_in_rect(level, slide.level_dimensions[level], slide.level_downsamples[level],
                             rect, self.TILE_SIZE)

    def cached_tiles(self) -> set[TileKey]:
        return set(self._cache.keys())

    def magnification(self) -> float | None:
        slide = self.slide
        return magnification(slide.mpp, self._scale) if slide is not None else None

    # -- navigation ---------------------------------------------------------------------------------
    def fit(self) -> None:
        """Whole slide in view."""
        slide = self.slide
        if slide is None:
            return
        self._anim.stop()
        self._scale = self.fit_scale()
        self._center = QPointF(slide.dimensions[0] / 2, slide.dimensions[1] / 2)
        self._auto_fit = True
        self._view_changed()

    def one_to_one(self) -> None:
        """One screen pixel per level-0 pixel, keeping the center."""
        self.zoom_to(1.0)

    def zoom_to(self, scale: float, anchor: QPointF | None = None) -> None:
        """Set the scale at once, keeping the level-0 point under ``anchor`` (widget px) fixed."""
        if self.slide is None:
            return
        self._anim.stop()
        self._zoom_at(scale, anchor if anchor is not None else self._widget_center())

    def zoom_by(self, factor: float, anchor: QPointF | None = None, animate: bool = False) -> None:
        """Multiply the scale by ``factor`` around ``anchor`` (default: widget center)."""
        if self.slide is None:
            return
        anchor = QPointF(anchor) if anchor is not None else self._widget_center()
        if not animate:
            self.zoom_to(self._scale * factor, anchor)
            return
        base = self._target_scale if self._anim.isActive() else self._scale
        self._target_scale = min(max(base * factor, self.min_scale()), self.MAX_SCALE)
        self._anchor = anchor
        self._anim.start()

    def _animate(self) -> None:
        ratio = self._target_scale / self._scale
        if abs(math.log(ratio)) < 0.004:
            self._anim.stop()
            self._zoom_at(self._target_scale, self._anchor)
        else:
            self._zoom_at(self._scale * ratio ** 0.35, self._anchor)

    def _zoom_at(self, scale: float, anchor: QPointF) -> None:
        fixed = self.map_to_level0(anchor)
        self._scale = min(max(scale, self.min_scale()), self.MAX_SCALE)
        self._set_center(fixed - (anchor - self._widget_center()) / self._scale)

    def pan_by(self, dx: float, dy: float) -> None:
        """Move the view content by (dx, dy) screen pixels (positive = content moves right/down)."""
        self.set_center(self._center - QPointF(dx, dy) / self._scale)

    def set_center(self, point: QPointF) -> None:
        """Put the level-0 ``point`` at the middle of the widget (clamped to the slide)."""
        if self.slide is None:
            return
        self._set_center(QPointF(point))

    def _set_center(self, point: QPointF) -> None:
        w0, h0 = self.slide.dimensions
        self._center = QPointF(min(max(point.x(), 0.0), w0), min(max(point.y(), 0.0), h0))
        self._auto_fit = False
        self._view_changed()

    def _view_changed(self) -> None:
        self._request_tiles()
        self.update()
        self.viewChanged.emit()

    # -- tiles --------------------------------------------------------------------------------------
    def _request_tiles(self) -> None:
        """Pin the visible tiles in the cache (a late load can never evict them) and request those
        missing. Called at every view change, and after every tile load or failure so that a
        visible tile missing for any reason is read again (the loader skips tiles already queued)."""
        slide = self.slide
        if slide is None:
            return
        visible = self.visible_tiles()
        self._cache.pin(visible)
        missing = {k for k in visible if k not in self._cache and k not in self._failed}
        ds = slide.level_downsamples[self.current_level()]
        span = self.TILE_SIZE * ds
        cx, cy = self._center.x(), self._center.y()
        self._loader.request(missing, priority=lambda k: math.hypot((k[1] + 0.5) * span - cx,
                                                                     (k[2] + 0.5) * span - cy))

    def _on_tile_loaded(self, generation: int, key: TileKey, image: QImage) -> None:
        if generation != self._loader.generation:
            return
        self._cache.put(key, image)
        self._loader.finish(generation, key)
        self._request_visible_missing()
        self.update()

    def _request_visible_missing(self) -> None:
        """After a load or a failure: request again any visible tile that is neither cached nor
        unreadable (e.g. evicted by the load that just arrived), so no tile on screen stays blank."""
        if any(k not in self._cache and k not in self._failed for k in self.visible_tiles()):
            self._request_tiles()

    def _on_tile_failed(self, generation: int, key: TileKey, reason: str) -> None:
        if generation != self._loader.generation:
            return
        self._failed.add(key)
        self._loader.finish(generation, key)
        self._request_visible_missing()
        log.warning("tile %s of %s unreadable: %s", key, self.slide.path.name if self.slide else "?", reason)

    # -- overlays (data and painting in msrl_app.overlays.OverlayLayers) -------------------------------
    def _overlays_changed(self) -> None:
        self.overlaysChanged.emit()
        self.update()

    def set_tissue_mask(self, mask: np.ndarray, downsample: float) -> None:
        """Tissue mask ``mask`` (H x W bool) with ``downsample`` level-0 px per mask px."""
        self._layers.set_tissue_mask(mask, downsample)
        self._tissue = (np.asarray(mask, dtype=bool), float(downsample))
        self._overlays_changed()

    def tissue_mask(self) -> tuple[np.ndarray, float] | None:
        """The tissue mask shown (H x W bool, level-0 px per mask px), None until detection finished."""
        return self._tissue

    def tissue_fraction(self) -> float | None:
        """Fraction of the slide area that is tissue, None until detection finished."""
        return self._layers.tissue_fraction

    def set_patches(self, coords: np.ndarray | None, size_level0: float = 0.0) -> None:
        """Analysed patches: ``coords`` (N, 2) level-0 top-left corners of squares of side
        ``size_level0`` level-0 px; None clears them."""
        self._layers.set_patches(coords, size_level0)
        self._overlays_changed()

    def set_heatmap(self, coords: np.ndarray | None, size_level0: float = 0.0,
                    values: np.ndarray | None = None, label: str = "Attention",
                    normalization: str = "percentile") -> None:
        """Per-patch scores drawn with the current colour map (:meth:`set_heatmap_colormap`, low -> high).

        Args:
            coords: (N, 2) level-0 top-left corners of the patches; None clears the heat-map.
            size_level0: patch side in level-0 px.
            values: (N,) scores (e.g. attention weights).
            label: legend title.
            normalization: "percentile" (rank; CLAM-style, robust to a few huge weights) or "minmax".
        """
        self._layers.set_heatmap(coords, size_level0, values, label, normalization)
        self._overlays_changed()

    def heatmap_legend(self) -> HeatmapLegend | None:
        """What the heat-map's legend shows (its scale is the PDF's), None without a heat-map."""
        layers = self._layers
        if layers.heat_range is None:
            return None
        return HeatmapLegend(layers.heat_label, *layers.heat_range, layers.heat_normalization, layers.colormap)

    def heatmap_value_at(self, x: float, y: float) -> PatchValue | None:
        """The heat-map patch under the level-0 point (x, y): its value and rank (None outside)."""
        return self._layers.value_at(x, y)

    def heatmap_colormap(self) -> str:
        return self._layers.colormap

    def set_heatmap_colormap(self, name: str) -> None:
        """Draw the heat-map with the colour map ``name`` (:data:`msrl_app.overlays.COLORMAPS`)."""
        if self._layers.set_colormap(name):
            self._overlays_changed()

    def heatmap_smooth(self) -> bool:
        return self._layers.smooth_heatmap

    def set_heatmap_smooth(self, smooth: bool) -> None:
        """Draw the heat-map smoothed (interpolated between patch centres) or as one square per patch."""
        if self._layers.set_smooth_heatmap(smooth):
            self._overlays_changed()

    def overlay_available(self, name: str) -> bool:
        return self._layers.available(name)

    def overlay_visible(self, name: str) -> bool:
        return self._layers.visible[name]

    def set_overlay_visible(self, name: str, visible: bool) -> None:
        if self._layers.set_visible(name, visible):
            self._overlays_changed()

    def overlay_opacity(self, name: str) -> float:
        return self._layers.opacity[name]

    def set_overlay_opacity(self, name: str, opacity: float) -> None:
        if self._layers.set_opacity(name, opacity):
            self._overlays_changed()

    # -- painting -----------------------------------------------------------------------------------
    def _screen_rect(self, rect: QRectF) -> QRect:
        """Level-0 rect -> widget rect with edges rounded to whole pixels (no seams between tiles)."""
        tl, br = self.map_from_level0(rect.topLeft()), self.map_from_level0(rect.bottomRight())
        x0, y0, x1, y1 = round(tl.x()), round(tl.y()), round(br.x()), round(br.y())
        return QRect(x0, y0, x1 - x0, y1 - y0)

    def _tile_rect(self, key: TileKey, image: QImage) -> QRectF:
        level, tx, ty = key
        ds = self.slide.level_downsamples[level]
        span = self.TILE_SIZE * ds
        return QRectF(tx * span, ty * span, image.width() * ds, image.height() * ds)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        slide = self.slide
        if slide is None:
            self._paint_empty(painter)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 1.0)
        slide_screen = self._screen_rect(self.slide_rect())
        painter.fillRect(slide_screen, QColor("white"))
        if self._thumbnail is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(slide_screen, self._thumbnail)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 1.0)
        view = self.view_rect_level0()
        level = self.current_level()
        # coarser cached tiles as placeholders, coarsest first, then the current level on top
        for key in sorted((k for k in self._cache.keys() if k[0] > level), key=lambda k: -k[0]):
            image = self._cache.peek(key)
            rect = self._tile_rect(key, image)
            if rect.intersects(view):
                painter.drawImage(self._screen_rect(rect), image)
        for key in self.visible_tiles():
            image = self._cache.get(key)
            if image is not None:
                painter.drawImage(self._screen_rect(self._tile_rect(key, image)), image)
        self._layers.paint(painter, self._transform(), self._scale, view)
        paint_hud(painter, self.font(), self.height(), slide.mpp, self._scale)

    def _paint_empty(self, painter: QPainter) -> None:
        painter.setPen(QColor("#8a8f98"))
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        painter.setFont(font)
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                         "Open a slide\nFile ▸ Open slide… (Ctrl+O), or drop a slide file here")

    # -- input --------------------------------------------------------------------------------------
    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.slide is None:
            return
        if self._auto_fit:
            self.fit()
        else:
            self._view_changed()

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(1000, 750)


def _compute_tissue(slide: Slide) -> tuple[np.ndarray, float]:
    from msrl_model.slide import tissue_mask

    result = tissue_mask(slide)
    return result.mask, float(result.downsample)
