"""Tiled reading of a slide pyramid for the viewer: level choice, tile grid, LRU cache, loader.

A tile is identified by ``(level, tx, ty)``: the ``tile_size`` x ``tile_size`` square at column
``tx``, row ``ty`` of pyramid level ``level`` (smaller at the right and bottom edges). Tiles are
read on a private ``QThreadPool`` and arrive on the GUI thread as ``QImage`` (RGB32, the format
QPainter draws fastest); the GUI thread never reads pixels.

The :class:`Slide` is shared by the GUI thread (metadata) and the readers (pixels; the slide
backends allow concurrent reads). :class:`SlideSource` counts the reads in flight so that closing
a slide (when another one is opened) never pulls the handle from under a running read.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QObject, QRectF, QThreadPool, Signal
from PySide6.QtGui import QImage

if TYPE_CHECKING:
    from msrl_model.slide import Slide

log = logging.getLogger(__name__)

TileKey = tuple[int, int, int]  # (level, tx, ty)


def choose_level(level_downsamples: list[float], screen_downsample: float) -> int:
    """The coarsest level that still has at least one pixel per screen pixel.

    ``screen_downsample`` is level-0 pixels per screen pixel (1 / zoom). Picking a level whose
    downsample is <= it (0.1 % tolerance) means tiles are only ever shrunk on screen, never blown up,
    except beyond level 0 (zoomed past 1:1).
    """
    fits = [i for i, ds in enumerate(level_downsamples) if ds <= screen_downsample * 1.001]
    return max(fits, key=lambda i: level_downsamples[i], default=0)


def tiles_in_rect(level_index: int, level_size: tuple[int, int], downsample: float,
                  rect_level0: QRectF, tile_size: int) -> set[TileKey]:
    """Keys of the tiles of level ``level_index`` that intersect ``rect_level0`` (level-0 pixels)."""
    lw, lh = level_size
    nx, ny = math.ceil(lw / tile_size), math.ceil(lh / tile_size)
    span = tile_size * downsample  # level-0 pixels per tile
    tx0 = max(0, math.floor(rect_level0.left() / span))
    ty0 = max(0, math.floor(rect_level0.top() / span))
    tx1 = min(nx - 1, math.ceil(rect_level0.right() / span) - 1)
    ty1 = min(ny - 1, math.ceil(rect_level0.bottom() / span) - 1)
    return {(level_index, tx, ty) for tx in range(tx0, tx1 + 1) for ty in range(ty0, ty1 + 1)}


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """H x W x 3 uint8 -> an independent RGB32 QImage (safe to hand to another thread)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    # QImage wraps the numpy buffer; convertToFormat copies it, so the result owns its pixels.
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).convertToFormat(
        QImage.Format.Format_RGB32)


class TileCache:
    """Least-recently-used tile images bounded by total bytes, never evicting the pinned tiles.

    The viewer pins the tiles of the current view (:meth:`pin`, at every view change), so a late
    load of a tile that is no longer wanted (its read had started before the view moved) evicts
    older off-screen tiles and never a tile on screen — the cause of visible tiles staying blank.

    Budget: ``nbytes <= max_bytes`` holds after every :meth:`put` and :meth:`pin` as long as the
    pinned tiles alone fit. When they do not (a tiny budget, or a huge screen: at the default
    256 MiB a view would need some 250 tiles of 512 px), every unpinned tile is evicted and the
    cache holds exactly the pinned tiles — over budget by at most what is on screen, which has to be
    in memory to be drawn anyway — and is trimmed back to the budget by the next :meth:`pin` of a
    smaller view. Pinned tiles are never evicted, so they are never read twice in a loop. Without
    pins (plain LRU use) the tile just put is kept even if it alone exceeds the budget.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[TileKey, QImage] = OrderedDict()
        self._pinned: frozenset[TileKey] = frozenset()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: TileKey) -> bool:
        return key in self._items

    def keys(self) -> list[TileKey]:
        return list(self._items)

    @property
    def pinned(self) -> frozenset[TileKey]:
        return self._pinned

    def pin(self, keys: Iterable[TileKey]) -> None:
        """Protect exactly ``keys`` (the tiles on screen, cached or not yet) from eviction, and trim
        the other tiles to the budget."""
        self._pinned = frozenset(keys)
        self._trim(keep=None)

    def get(self, key: TileKey) -> QImage | None:
        """The tile, marked as most recently used; None when absent."""
        image = self._items.get(key)
        if image is not None:
            self._items.move_to_end(key)
        return image

    def peek(self, key: TileKey) -> QImage | None:
        """The tile without touching its recency."""
        return self._items.get(key)

    def put(self, key: TileKey, image: QImage) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.sizeInBytes()
        self._items[key] = image
        self.nbytes += image.sizeInBytes()
        self._trim(keep=key if not self._pinned else None)

    def _trim(self, keep: TileKey | None) -> None:
        """Evict unpinned tiles (and not ``keep``), least recently used first, until within budget."""
        if self.nbytes <= self.max_bytes:
            return
        for key in list(self._items):
            if self.nbytes <= self.max_bytes:
                break
            if key in self._pinned or key == keep:
                continue
            self.nbytes -= self._items.pop(key).sizeInBytes()

    def clear(self) -> None:
        """Drop every tile and every pin (another slide)."""
        self._items.clear()
        self._pinned = frozenset()
        self.nbytes = 0


class SlideSource:
    """A slide shared with background readers; closed once no read is in flight."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    def acquire(self) -> Slide | None:
        """The slide for one read (pair with :meth:`release`), or None once it is being closed."""
        with self._lock:
            if self._closing:
                return None
            self._users += 1
            return self.slide

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close_now = self._closing and self._users == 0
        if close_now:
            self.slide.close()

    def close(self) -> None:
        """Close now if idle, else when the last read in flight releases it."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            close_now = self._users == 0
        if close_now:
            self.slide.close()

    def call(self, fn: Callable[[Slide], Any]) -> Any:
        """``fn(slide)`` while holding a read lease; raises RuntimeError once the slide is closed."""
        slide = self.acquire()
        if slide is None:
            raise RuntimeError("the slide was closed")
        try:
            return fn(slide)
        finally:
            self.release()


class TileLoader(QObject):
    """Reads tiles on a private thread pool; results arrive via :attr:`loaded` on the GUI thread.

    :meth:`request` replaces the set of wanted tiles: queued reads of tiles no longer wanted are
    skipped when their turn comes, so fast zooming does not build a backlog.
    """

    loaded = Signal(int, object, object)  # generation, TileKey, QImage
    failed = Signal(int, object, str)  # generation, TileKey, one-line reason

    def __init__(self, tile_size: int = 512, threads: int | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tile_size = tile_size
        self._pool = QThreadPool(self)
        if threads is not None:
            self._pool.setMaxThreadCount(threads)
        self._lock = threading.Lock()
        self._source: SlideSource | None = None
        self._generation = 0
        self._wanted: set[TileKey] = set()
        self._pending: set[TileKey] = set()

    @property
    def generation(self) -> int:
        """Incremented by every :meth:`set_source`; results of older generations are stale."""
        return self._generation

    def set_source(self, source: SlideSource | None) -> None:
        """Switch to another slide (or none); queued reads of the previous one are dropped."""
        with self._lock:
            self._generation += 1
            self._source = source
            self._wanted = set()
            self._pending = set()
        self._pool.clear()

    def request(self, keys: Iterable[TileKey], priority: Callable[[TileKey], float] | None = None) -> None:
        """Want exactly ``keys``; start reads for those not yet queued (lowest priority value first)."""
        keys = set(keys)
        with self._lock:
            self._wanted = keys
            new = sorted(keys - self._pending, key=priority)
            self._pending.update(new)
            generation, source = self._generation, self._source
        if source is None:
            return
        for key in new:
            self._pool.start(lambda key=key: self._read(generation, source, key))

    def _read(self, generation: int, source: SlideSource, key: TileKey) -> None:
        with self._lock:
            if generation != self._generation or key not in self._wanted:
                self._pending.discard(key)
                return
        slide = source.acquire()
        if slide is None:
            return
        try:
            level, tx, ty = key
            lw, lh = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            x, y = tx * self.tile_size, ty * self.tile_size  # level pixels
            size = (min(self.tile_size, lw - x), min(self.tile_size, lh - y))
            rgb = slide.read_region((round(x * ds), round(y * ds)), level, size)
            image = rgb_to_qimage(rgb)
        except Exception as exc:  # noqa: BLE001 - reported to the GUI, which logs it once
            outcome = (self.failed, str(exc) or type(exc).__name__)
        else:
            outcome = (self.loaded, image)
        finally:
            source.release()
        try:
            outcome[0].emit(generation, key, outcome[1])
        except RuntimeError:  # the loader was deleted (window closed) while this read ran
            pass

    def finish(self, generation: int, key: TileKey) -> None:
        """Called by the receiver of :attr:`loaded` / :attr:`failed` once it has stored the outcome,
        so a tile is never "neither pending nor stored" (which would queue it a second time)."""
        with self._lock:
            if generation == self._generation:
                self._pending.discard(key)

    def shutdown(self, msecs: int = 2000) -> bool:
        """Drop queued reads and wait (bounded) for running ones; call before the widget goes away."""
        self.set_source(None)
        return self._pool.waitForDone(msecs)
