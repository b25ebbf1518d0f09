"""How many tiles the encoder takes at once, what happens when the GPU runs out of memory, and how long a
slide will take on the CPU.

**Batch size from free GPU memory.** The encoder's memory is ``M(b) ≈ M₀ + b·m`` for a batch of ``b``
tiles (weights resident, activations per tile ``m``). :func:`measure_tile_bytes` runs two untimed
forwards (1 and :data:`PROBE_TILES` tiles) and reads CUDA's peak allocation of each:
``m = (peak(k) − peak(1)) / (k − 1)``. :func:`plan_batch_size` then takes
``b = ⌊(free · (1 − reserve)) / m⌋`` from ``torch.cuda.mem_get_info`` (what every process leaves free),
rounded down to a multiple of 8 (tensor-core tiles) and capped at :data:`MAX_BATCH`. A ViT-L (UNI) in
fp16 needs ~20 MB of activations per 224² tile, so a 80 GB H100 with 70 GB free takes the cap and a
12 GB card ~400.

**Back-off on out-of-memory** (:class:`AdaptiveBatch`): another process may take GPU memory after the
plan. A batch that fails with ``torch.cuda.OutOfMemoryError`` is split in halves, and the halved size
is remembered for every later batch of the run (not re-tried at the full size each time); one tile that
does not fit is an :class:`~msrl_model.errors.EncoderError` that says to use the CPU.

**CPU estimate** (:func:`cpu_estimate_note`): a foundation model on 2 CPU cores runs ~1–3 tiles/s
(ViT-L: ~60 GFLOP per tile); the rate of the first batch and the number of tiles left give the time the
slide will take, told to the user before the rest runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from msrl_model.errors import EncoderError
from msrl_model.progress import format_duration

PROBE_TILES = 4  # tiles of the second probe forward (the first is one tile)
MAX_BATCH = 512  # no gain past this on any current GPU; bounds the pinned staging buffer (512·256²·3 B = 100 MB)
RESERVE = 0.15  # share of the free GPU memory left unplanned (allocator fragmentation, cuDNN workspaces)
CPU_NOTE_SECONDS = 60.0  # a CPU run estimated longer than this gets a note with the estimate


def plan_batch_size(free_bytes: int, tile_bytes: int, reserve: float = RESERVE, cap: int = MAX_BATCH) -> int:
    """Tiles per batch that fit ``free_bytes`` at ``tile_bytes`` each, leaving ``reserve`` of it free;
    a multiple of 8 from 8 up, at least 1, at most ``cap``."""
    if tile_bytes <= 0:
        return cap
    fits = int(free_bytes * (1.0 - reserve) // tile_bytes)
    if fits >= 8:
        fits -= fits % 8
    return max(1, min(cap, fits))


def measure_tile_bytes(encoder: Any, patch_size: int, device: Any) -> int:
    """Peak CUDA memory per tile of ``encoder`` on ``device`` (bytes), from two untimed forwards of
    1 and :data:`PROBE_TILES` uint8 tiles of ``patch_size``² (see the module docstring)."""
    import torch

    peaks = []
    for tiles in (1, PROBE_TILES):
        batch = torch.zeros((tiles, patch_size, patch_size, 3), dtype=torch.uint8, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        encoder.encode(batch)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    return max(1, math.ceil((peaks[1] - peaks[0]) / (PROBE_TILES - 1)))


def auto_batch_size(encoder: Any, patch_size: int, device: str, cpu_batch: int) -> tuple[int, str]:
    """``(batch size, how it was chosen)``: on CUDA from the free memory (:func:`plan_batch_size` of
    :func:`measure_tile_bytes`), on the CPU ``cpu_batch``."""
    if not str(device).startswith("cuda"):
        return cpu_batch, f"{cpu_batch} tiles per batch on the CPU"
    import torch

    tile_bytes = measure_tile_bytes(encoder, patch_size, device)
    free, total = torch.cuda.mem_get_info(torch.device(device))
    size = plan_batch_size(free, tile_bytes)
    return size, (f"{size} tiles per batch: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free on {device}, "
                  f"{tile_bytes / 2**20:.1f} MiB per tile")


@dataclass
class AdaptiveBatch:
    """Encodes batches of at most ``limit`` tiles; halves ``limit`` on CUDA out-of-memory and keeps it."""

    limit: int  # tiles per encoder call now (only ever lowered)
    backoffs: int = 0  # times the limit was halved in this run

    def encode(self, encoder: Any, batch: Any) -> Any:
        """``encoder.encode`` of ``batch`` (B, P, P, 3) in chunks of ``limit`` → (B, D); EncoderError when
        one tile does not fit."""
        import torch

        out = []
        first = 0
        while first < len(batch):
            chunk = batch[first:first + self.limit]
            try:
                out.append(encoder.encode(chunk))
            except torch.cuda.OutOfMemoryError:
                if self.limit == 1:
                    raise EncoderError("CUDA out of memory on a single tile: another process holds "
                                       "the GPU's memory; free it, or rerun with --device cpu") from None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.limit = max(1, min(self.limit, len(chunk)) // 2)
                self.backoffs += 1
                continue
            first += len(chunk)
        return out[0] if len(out) == 1 else torch.cat(out)


def cpu_estimate_note(encoder_name: str, tiles_done: int, seconds: float, tiles_left: int,
                      threshold_s: float | None = None) -> str | None:
    """What to tell the user after the first ``tiles_done`` tiles took ``seconds`` on the CPU: the rate and
    the time the other ``tiles_left`` will take; None when that is under ``threshold_s`` (default
    :data:`CPU_NOTE_SECONDS`)."""
    if tiles_done <= 0 or seconds <= 0:
        return None
    rate = tiles_done / seconds
    remaining = tiles_left / rate
    if remaining < (CPU_NOTE_SECONDS if threshold_s is None else threshold_s):
        return None
    return (f"{encoder_name} runs {rate:.1f} tiles/s on the CPU: the other {tiles_left:,} tiles of this slide "
            f"will take about {format_duration(remaining)}; a CUDA GPU (--device cuda) encodes hundreds of tiles per second")


__all__ = ["AdaptiveBatch", "MAX_BATCH", "auto_batch_size", "cpu_estimate_note", "measure_tile_bytes",
           "plan_batch_size"]
