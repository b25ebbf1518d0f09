"""Parallel tile reader: worker threads with their own slide handles, batches in grid order.

Why threads: OpenSlide (and tiffslide's imagecodecs) decode JPEG with the GIL released, so two
threads keep two cores busy; each thread opens its own :class:`~msrl_model.slide.Slide` (handles
are not shared, so there is no lock around decoding).

Why runs: a naive loop pays a fixed cost per ``read_region`` call (the library's tile lookup,
cairo compositing, the ARGB→RGB conversion, a Python round trip) on top of the JPEG decode. Tiles
of a grid that sit side by side on one row are read here as one region ``k·read_size`` wide and
sliced, which pays that fixed cost once per run instead of once per tile. The first run is checked
pixel-for-pixel against :meth:`TileGrid.read_tile`; if it differs (a backend that resamples, a
non-integer downsample), the reader falls back to one ``read_tile`` per tile.

Prefetch is bounded: at most ``prefetch`` batches are queued or being read ahead of the consumer,
so reading overlaps whatever the consumer does (encoding) without holding the whole slide in RAM.
:meth:`ParallelTileReader.close` (also on ``with`` exit, on exceptions and on cancellation) stops
the workers after their current run and closes every handle.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

THREAD_PREFIX = "msrl-tile-reader"  # worker thread names start with this (tests look for leftovers)


@dataclass(frozen=True)
class ReaderConfig:
    """How the parallel reader works."""

    workers: int = 2  # reader threads, each with its own slide handle
    batch_size: int = 64  # tiles per yielded batch
    prefetch: int = 3  # batches read ahead of the consumer (bounded queue)
    max_run: int = 16  # most horizontally adjacent tiles read in one read_region call
    merge_runs: bool = True  # False reads strictly one read_tile per tile


@dataclass
class _Unit:
    """A piece of work for one worker: tiles ``indices`` into ``out[offset:offset+len]``."""

    batch: np.ndarray  # (B, P, P, 3) uint8 destination batch
    offset: int  # first row of ``batch`` this unit fills
    start: int  # first grid index
    count: int  # number of consecutive grid indices
    merged: bool  # True: read as one region and slice; False: read_tile one by one
    verify: bool = False  # True: check the merged read against read_tile (first batch only)


def plan_runs(coords: np.ndarray, step: int, max_run: int, start: int, stop: int) -> list[tuple[int, int]]:
    """Split grid indices ``[start, stop)`` into runs of horizontally adjacent tiles.

    A run is consecutive indices whose coords share ``y`` and whose ``x`` grows by ``step``
    (the patch size in level-0 px), at most ``max_run`` long. Returns ``(first_index, length)``.
    """
    runs: list[tuple[int, int]] = []
    i = start
    while i < stop:
        n = 1
        while (i + n < stop and n < max_run and coords[i + n, 1] == coords[i, 1]
               and coords[i + n, 0] == coords[i + n - 1, 0] + step):
            n += 1
        runs.append((i, n))
        i += n
    return runs


def _merge_possible(grid: Any) -> bool:
    """Slicing a wide region equals read_tile only without resampling and on a whole-pixel lattice."""
    if grid.read_size != grid.patch_size:
        return False
    if grid.read_level == 0:
        return grid.patch_size_level0 == grid.read_size
    return False


class ParallelTileReader:
    """Iterate ``(first_index, batch)`` over a tile grid, batches (B×P×P×3 uint8) in grid order.

    Args:
        slide_path: the slide file; each worker opens its own handle with ``open_fn``.
        grid: a :class:`~msrl_model.slide.TileGrid` (coords, patch_size, read_level, read_size, ...).
        config: workers, batch size, prefetch depth, run merging.
        open_fn: opens a slide (default :func:`msrl_model.slide.open_slide`).
        indices: optional subset ``[start, stop)`` of the grid (default: all tiles).
    """

    def __init__(self, slide_path: str | Path, grid: Any, config: ReaderConfig = ReaderConfig(),
                 open_fn: Callable[[Path], Any] | None = None,
                 indices: tuple[int, int] | None = None) -> None:
        if open_fn is None:
            from msrl_model.slide import open_slide as open_fn
        self.slide_path = Path(slide_path)
        self.grid = grid
        self.config = config
        self._open = open_fn
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._start, self._stop_index = indices if indices is not None else (0, len(grid.coords))
        self._merge = config.merge_runs and _merge_possible(grid)
        self.read_wait_s = 0.0  # seconds the consumer spent waiting for tiles (reader-bound time)

    # ---- worker side -------------------------------------------------------------------------
    def _slide(self) -> Any:
        slide = getattr(self._local, "slide", None)
        if slide is None:
            slide = self._open(self.slide_path)
            self._local.slide = slide
            with self._lock:
                self._handles.append(slide)
        return slide

    def _read_merged(self, slide: Any, unit: _Unit) -> None:
        g = self.grid
        x, y = (int(v) for v in g.coords[unit.start])
        size = g.read_size
        region = slide.read_region((x, y), g.read_level, (size * unit.count, size))  # (P, k·P, 3)
        for j in range(unit.count):
            unit.batch[unit.offset + j] = region[:, j * size:(j + 1) * size]

    def _work(self, unit: _Unit) -> None:
        if self._stop.is_set():
            return
        slide = self._slide()
        if unit.merged and self._merge:
            self._read_merged(slide, unit)
            if unit.verify:
                self._verify(slide, unit)
            return
        for j in range(unit.count):
            if self._stop.is_set():
                return
            unit.batch[unit.offset + j] = self.grid.read_tile(slide, unit.start + j)

    def _verify(self, slide: Any, unit: _Unit) -> None:
        """Compare the run's last tile with read_tile; on a difference re-read it and stop merging."""
        j = unit.count - 1
        expected = self.grid.read_tile(slide, unit.start + j)
        if not np.array_equal(unit.batch[unit.offset + j], expected):
            self._merge = False
            for k in range(unit.count):
                unit.batch[unit.offset + k] = self.grid.read_tile(slide, unit.start + k)

    # ---- consumer side -----------------------------------------------------------------------
    def _plan_batch(self, first: int, verify: bool) -> tuple[np.ndarray, list[_Unit]]:
        cfg, g = self.config, self.grid
        stop = min(first + cfg.batch_size, self._stop_index)
        batch = np.empty((stop - first, g.patch_size, g.patch_size, 3), dtype=np.uint8)
        if self._merge:
            runs = plan_runs(g.coords, g.patch_size_level0, cfg.max_run, first, stop)
        else:
            # Without merging, give each worker a contiguous share of the batch.
            share = max(1, -(-(stop - first) // max(1, cfg.workers)))
            runs = [(i, min(share, stop - i)) for i in range(first, stop, share)]
        units = [_Unit(batch, i - first, i, n, merged=self._merge and n > 1, verify=verify) for i, n in runs]
        return batch, units

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import time

        cfg = self.config
        self._pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers), thread_name_prefix=THREAD_PREFIX)
        pending: deque[tuple[int, np.ndarray, list[Future]]] = deque()
        next_first = self._start
        first_verified = not self._merge
        try:
            while True:
                while next_first < self._stop_index and len(pending) < max(1, cfg.prefetch):
                    batch, units = self._plan_batch(next_first, verify=not first_verified)
                    futures = [self._pool.submit(self._work, u) for u in units]
                    pending.append((next_first, batch, futures))
                    next_first += len(batch)
                    if not first_verified:
                        # Every merged run of the first batch is checked against read_tile before
                        # more batches are planned with merging.
                        for fut in futures:
                            fut.result()
                        first_verified = True
                if not pending:
                    return
                first, batch, futures = pending.popleft()
                t0 = time.perf_counter()
                for fut in futures:
                    fut.result()  # re-raises a worker's exception (UnreadableTileError, ...)
                self.read_wait_s += time.perf_counter() - t0
                yield first, batch
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers (after their current run) and close every slide handle. Idempotent."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            handles, self._handles = self._handles, []
        for slide in handles:
            slide.close()

    def __enter__(self) -> ParallelTileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
