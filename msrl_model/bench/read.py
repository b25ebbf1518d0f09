"""``bench read``: naive single-threaded ``read_region`` loop vs the parallel tile reader (architecture §9).

Both read the same tiles: every whole ``patch``×``patch`` level-0 tile of the slide, row-major.

* naive: what people write — ``openslide.OpenSlide(path)``, then per tile
  ``np.asarray(slide.read_region((x, y), 0, (p, p)).convert("RGB"))``.
* parallel: :class:`~msrl_model.features.reader.ParallelTileReader` with ``--workers`` threads,
  batches of ``--batch-size`` (its default mode: level-0 runs from directly decoded JPEG tiles).
* parallel_openslide: the same reader with direct JPEG decoding off (threads + region runs through
  OpenSlide), to show how much comes from threads alone on this machine.

Each variant runs ``--repeats`` times, interleaved, and the best rate counts (the machine is
shared; the best run is the least disturbed one). A sample of tiles is checked pixel-for-pixel
between the naive loop and the parallel reader; a mismatch is an error.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.bench import add_slide_options, emit, input_slide


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("read", help="tile reading: naive read_region loop vs the parallel reader")
    add_slide_options(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reader threads (default: CPU count)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per batch")
    p.add_argument("--patch", type=int, default=256, help="tile side in level-0 pixels")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant (best counts)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def lattice_grid(width: int, height: int, patch: int, mpp: float) -> Any:
    """A TileGrid of every whole ``patch``² level-0 tile (row-major), read at level 0 without resizing."""
    from msrl_model.slide import TileGrid

    ys, xs = np.mgrid[0:height // patch, 0:width // patch]  # (ny, nx) each
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64) * patch  # (ny*nx, 2) as (x, y)
    return TileGrid(coords=coords, patch_size=patch, patch_size_level0=patch, read_level=0, read_size=patch,
                    target_mpp=mpp, level0_mpp=mpp)


def naive_read(path: Path, coords: np.ndarray, patch: int, keep: set[int] | None = None) -> tuple[float, dict]:
    """Seconds for the naive loop over ``coords``, and the tiles whose index is in ``keep``."""
    import openslide

    kept: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    slide = openslide.OpenSlide(str(path))
    for i, (x, y) in enumerate(coords):
        tile = np.asarray(slide.read_region((int(x), int(y)), 0, (patch, patch)).convert("RGB"))
        if keep is not None and i in keep:
            kept[i] = tile
    slide.close()
    return time.perf_counter() - t0, kept


def parallel_read(path: Path, grid: Any, config: Any, keep: set[int] | None = None) -> tuple[float, dict, str]:
    """Seconds for the parallel reader over ``grid``, the kept tiles and the reader's mode."""
    from msrl_model.features.reader import ParallelTileReader

    kept: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    reader = ParallelTileReader(path, grid, config)
    n = 0
    for first, batch in reader:
        n += len(batch)
        for i in keep or ():
            if first <= i < first + len(batch):
                kept[i] = batch[i - first].copy()
    elapsed = time.perf_counter() - t0
    assert n == len(grid.coords), f"reader returned {n} of {len(grid.coords)} tiles"
    return elapsed, kept, reader.mode


def measure(path: Path, workers: int, batch_size: int, patch: int, repeats: int) -> dict[str, Any]:
    """Run the three variants ``repeats`` times (interleaved) and return the result record."""
    from msrl_model.features.reader import ReaderConfig
    from msrl_model.slide import open_slide

    with open_slide(path) as slide:
        width, height = slide.dimensions
        grid = lattice_grid(width, height, patch, slide.mpp)
    n = len(grid.coords)
    if n == 0:
        raise ValueError(f"{path} is smaller than one {patch}px tile")
    sample = set(np.random.default_rng(0).choice(n, size=min(16, n), replace=False).tolist())
    fast = ReaderConfig(workers=workers, batch_size=batch_size)
    threads = ReaderConfig(workers=workers, batch_size=batch_size, direct_jpeg=False)
    best = {"naive": float("inf"), "parallel": float("inf"), "openslide": float("inf")}
    mode = ""
    for r in range(repeats):
        t, naive_tiles = naive_read(path, grid.coords, patch, sample if r == 0 else None)
        best["naive"] = min(best["naive"], t)
        t, par_tiles, mode = parallel_read(path, grid, fast, sample if r == 0 else None)
        best["parallel"] = min(best["parallel"], t)
        if r == 0:
            bad = [i for i in sample if not np.array_equal(naive_tiles[i], par_tiles[i])]
            if bad:
                raise AssertionError(f"parallel reader pixels differ from read_region at tiles {sorted(bad)}")
        t, _, _ = parallel_read(path, grid, threads)
        best["openslide"] = min(best["openslide"], t)
    naive, parallel, openslide_par = (n / best[k] for k in ("naive", "parallel", "openslide"))
    return {
        "benchmark": "read",
        "slide": str(path),
        "width": width,
        "height": height,
        "tiles": n,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "naive_tiles_per_s": round(naive, 1),
        "parallel_tiles_per_s": round(parallel, 1),
        "speedup": round(parallel / naive, 2),
        "parallel_mode": mode,
        "parallel_openslide_tiles_per_s": round(openslide_par, 1),
        "openslide_threads_speedup": round(openslide_par / naive, 2),
        "pixels_equal_sample": len(sample),
    }


def run(args: argparse.Namespace) -> int:
    path = input_slide(args)
    emit(measure(path, max(1, args.workers), max(1, args.batch_size), args.patch, max(1, args.repeats)), args.json)
    return 0
