"""The CPU kernel of ``builtin-he`` for 256² uint8 tiles: one fused pass per tile, compiled by numba.

The maths and the output layout are those of :mod:`msrl_model.encoders.builtin_he`; the kernel (its numba
functions are in :mod:`~msrl_model.encoders.builtin_he_kernel`, this module runs them) computes them tile by
tile with every map of a tile in the core's cache (the level-1 stack is 512 KB, a level's
maps far less) instead of one torch operation per map over a chunk of tiles, which was bound by passes
over memory and by the cost of issuing ~150 operations per tile.

Two kinds of functions, kept apart because numba's fast-math flags are per function:

* **exact** (``_EXACT``, IEEE float32, no reassociation, no fused multiply-add): everything a threshold or a
  local maximum reads — the OD of each pixel (the float32 lookup table of ``builtin_he._optical_density``),
  the Haar block means, H, E, ODm and grey Y (``((x0·w0 + x1·w1) + x2·w2)``, each product and sum
  rounded), the histogram cells, the binomial pyramid (four [1 1] passes per axis, in the v1.0 order),
  8|∇g| (the Sobel sums in the v1.0 association) and the LoG of H at the blob levels — with the v1.0
  operations in the v1.0 order, so they are bit-identical to the torch path and to v1.0;
* **reductions** (``_FAST``: reassociation allowed, so they vectorise): sums over a row of a map that
  only feed statistics, accumulated in float64.

What needs torch's own reduction order stays in torch: the mean of 8|∇g| sets the edge threshold
(2·mean), so the kernel writes each level's 8|∇g| map and the caller reduces it with the very
``sum`` of the torch path (:func:`builtin_he.edge_statistics`).

Tiles are independent: :func:`encode_tiles` runs a batch on threads (numba releases the GIL) that take
chunks of 4 tiles as they become free, so a thread that another process slows down does less of the
batch instead of holding the others up at the end. The functions are compiled on first use and cached on
disk (numba's cache, next to the kernel's file or in the user's cache directory), so a process pays the compile once per install
(~10 s here) and a load from the cache (~0.6 s) after that.

Throughput, measured on the shared 2-core machine (AVX-512; 64 tiles of the bench slide, quiet): 0.50 ms
per tile on one core, ~1,850 tiles/s, of it level 1 (lookups, Haar step, mixes, finest texture) 0.21 ms,
the level-1 filter bank of H, E, ODm 0.15 ms, counts and colour moments 0.05 ms, levels 2-4 the rest.
The tile's ~8 MFLOP of elementwise work thus runs at ~16 GFLOP/s, against < 5 GFLOP/s for the torch
path (1.63 ms per tile), whose every operation streams its maps through memory.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from msrl_model.encoders.builtin_he_kernel import GRAD_SIDES, H_CELLS, LEVELS, count_above_into, encode_range

CHUNK = 4  # tiles a thread takes at a time (~2 ms of work): a thread slowed by other processes takes fewer


def count_above(grad: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Elements of each map grad (B, C, h, w) float32 above its threshold (B, C) float32 -> (B, C) int64:
    the edge counts, one pass (torch's gt and sum took two and a map)."""
    counts = np.empty(grad.shape[:2], np.int64)
    count_above_into(np.ascontiguousarray(grad), np.ascontiguousarray(threshold, np.float32), counts)
    return counts


def encode_tiles(x: np.ndarray, constants: dict[str, np.ndarray], dim: int, threads: int) -> tuple[np.ndarray, ...]:
    """Tiles x (B, 256, 256, 3) uint8 -> (features (B, 264) float32 with the histograms and
    filter-bank [4..6] left 0, cells (B, 22, 22) int64, the 8|∇g| maps per level (B, 3, side, side)
    float32, Σ(8|∇g|)² (B, 4, 3) float64), over ``threads`` threads.

    ``constants`` (``BuiltinHE._cpu_constants``): lut (256,), weights (3, 4), grey_w (4,),
    h_thresholds (4,), scalars (tissue OD, dark Y, H cells per unit, E cells per unit), blob_thresholds
    (2,) times 256, all float32.
    """
    x = np.ascontiguousarray(x)  # the compiled kernel takes C-contiguous tiles
    b = x.shape[0]
    out = np.zeros((b, dim), np.float32)
    cells = np.zeros((b, H_CELLS, H_CELLS), np.int64)
    grads = [np.empty((b, 3, side, side), np.float32) for side in GRAD_SIDES]
    square_sums = np.empty((b, LEVELS, 3), np.float64)
    args = (constants["lut"], constants["weights"], constants["grey_w"], constants["h_thresholds"],
            constants["scalars"], constants["blob_thresholds"], out, cells, *grads, square_sums)
    workers = max(1, min(threads, -(-b // CHUNK)))
    if workers == 1:
        encode_range(x, 0, b, *args)
        return out, cells, grads, square_sums
    starts = iter(range(0, b, CHUNK))  # shared: each worker takes the next chunk when it is free
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            encode_range(x, start, min(start + CHUNK, b), *args)

    pool = _pool(workers)
    for done in [pool.submit(work) for _ in range(workers)]:
        done.result()
    return out, cells, grads, square_sums


_POOL: dict[int, ThreadPoolExecutor] = {}  # the kernel's worker threads by pool size, kept between calls (one pool)
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of at least ``workers`` threads, made once and replaced only by a larger one."""
    with _POOL_LOCK:
        size = max(_POOL, default=0)
        if size < workers:
            if size:
                _POOL.pop(size).shutdown(wait=False)
            _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="builtin-he")
            size = workers
        return _POOL[size]


def compiled_this_process() -> bool:
    """True when this process compiled the kernel (no usable entry in numba's disk cache) rather than
    loading it."""
    return any(encode_range.stats.cache_misses.values())


def cached_on_disk() -> bool | None:
    """Whether numba's disk cache holds a compiled kernel (False: the next call compiles it, ~10 s here);
    None where the cache cannot be inspected (numba's internals moved)."""
    try:
        index = encode_range._cache._cache_file._index_path
    except AttributeError:
        return None
    return os.path.isfile(index)
