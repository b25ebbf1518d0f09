"""``bench extract``: feature extraction throughput, overall and per stage (architecture §9).

Runs :func:`~msrl_model.features.pipeline.extract_slide` on a slide (default: a generated
synthetic SVS) into a fresh temporary directory (never a cache hit), with CUDA synchronised after
each stage so the split is exact. Reports tiles/s overall and for each stage:

* read: a separate reader-only pass over the same tile grid (what the reader alone sustains), and
  ``read_wait_s``, the time the encoder waited on the reader during extraction;
* transfer: host→device copy (pinned, non_blocking);
* encode: the encoder's forward (transform + model + features back to the host).

And the encoder's cost: ``gflop_per_tile``, every matmul / convolution / attention FLOP of one
tile's forward, counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a separate untimed
forward (a weight-free encoder such as builtin-he, made of pooling and arithmetic, counts ~0), and
``encode_gflop_per_s`` = ``gflop_per_tile`` × ``encode_tiles_per_s``, what the encode stage achieved
(e.g. against the device's peak). ``--encoder NAME`` takes any spec: ``uni_v1@/path/pytorch_model.bin``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from msrl_model.bench import add_slide_options, emit, input_slide


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="feature extraction tiles/s, overall and per stage")
    add_slide_options(p)
    p.add_argument("--encoder", default="builtin-he", help="encoder spec")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=None, help="reader threads (default: as --threads)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the thread policy of msrl_model.device)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per encoder batch")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def _rate(tiles: int, seconds: float) -> float:
    return round(tiles / seconds, 1) if seconds > 0 else 0.0


def tile_gflop(encoder: Any, patch_size: int) -> float:
    """GFLOP of one ``patch_size``² tile's forward through ``encoder`` (a PatchEncoder), counted."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tile = torch.zeros((1, patch_size, patch_size, 3), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        encoder.encode(tile)
    return counter.get_total_flops() / 1e9


def measure(path: Path, encoder: str, device: str, workers: int, batch_size: int) -> dict[str, Any]:
    from msrl_model.features.pipeline import ExtractStats, extract_slide
    from msrl_model.features.reader import ParallelTileReader, ReaderConfig
    from msrl_model.progress import drive
    from msrl_model.slide import open_slide, tile_grid, tissue_mask

    stats = ExtractStats(sync_timing=True)
    with tempfile.TemporaryDirectory(prefix="msrl-bench-extract-") as out:
        drive(extract_slide(path, out, encoder, device, workers, batch_size, stats=stats), show=False)
    with open_slide(path) as slide:
        grid = tile_grid(slide, tissue_mask(slide))
    t0 = time.perf_counter()
    for _ in ParallelTileReader(path, grid, ReaderConfig(workers=workers, batch_size=batch_size)):
        pass
    read_s = time.perf_counter() - t0
    loop_s = stats.read_wait_s + stats.transfer_s + stats.encode_s
    from msrl_model.encoders import build_encoder

    gflop = tile_gflop(build_encoder(encoder, device=stats.device), grid.patch_size)
    encode_rate = _rate(stats.tiles, stats.encode_s)
    return {
        "benchmark": "extract",
        "slide": str(path),
        "encoder": encoder,
        "device": stats.device,
        "workers": workers,
        "batch_size": batch_size,
        "tiles": stats.tiles,
        "total_s": round(stats.total_s, 3),
        "tiles_per_s": _rate(stats.tiles, stats.total_s),
        "read_tiles_per_s": _rate(len(grid.coords), read_s),
        "transfer_tiles_per_s": _rate(stats.tiles, stats.transfer_s),
        "encode_tiles_per_s": encode_rate,
        "gflop_per_tile": round(gflop, 4),
        "encode_gflop_per_s": round(gflop * encode_rate, 2),
        "read_wait_s": round(stats.read_wait_s, 3),
        "transfer_s": round(stats.transfer_s, 3),
        "encode_s": round(stats.encode_s, 3),
        "tissue_s": round(stats.tissue_s, 3),
        "write_s": round(stats.write_s, 3),
        "read_wait_fraction": round(stats.read_wait_s / loop_s, 3) if loop_s > 0 else 0.0,
    }


def run(args: argparse.Namespace) -> int:
    from msrl_model.device import apply_threads

    path = input_slide(args)
    plan = apply_threads(args.threads, readers=args.workers)
    record = measure(path, args.encoder, args.device, plan.readers, max(1, args.batch_size))
    emit({**record, "threads": plan.torch, "threads_from": plan.source}, args.json)
    return 0
