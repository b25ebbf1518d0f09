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

``thread_policy`` (on the CPU, unless ``--no-compare-threads``): whole extractions at 1..CPUs+1
threads (torch and readers, as ``--threads N``), best of ``--repeats`` each, quiet and then with
``--competitors`` busy processes this benchmark starts itself; the default plan of
:mod:`msrl_model.device`, planned afresh in each condition, against the best count on overall tiles/s
(:func:`msrl_model.bench.threads.compare_threads`; target ≥ 0.9), with the encode stage's tiles/s at
each count. "Quiet" means no competitor of ours: on a shared machine each condition records the load.

Targets (architecture §9), listed in ``targets_failed`` and on stderr, exit status 1 when any fails:
builtin-he's encode stage ≥ 1,000 tiles/s at the default plan, and the default plan within 10 % of
the best thread count in both conditions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from msrl_model.bench import add_slide_options, emit, input_slide

BUILTIN_ENCODE_TARGET = 1000.0  # tiles/s of builtin-he's encode stage on 2 CPU cores (issue 16)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="feature extraction tiles/s, overall and per stage")
    add_slide_options(p)
    p.add_argument("--encoder", default="builtin-he", help="encoder spec")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--workers", type=int, default=None, help="reader threads (default: as --threads)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the thread policy of msrl_model.device)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per encoder batch")
    p.add_argument("--compare-threads", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: also compare the default thread plan with every --threads value, quiet and loaded")
    p.add_argument("--competitors", type=int, default=1, help="busy processes in the loaded condition")
    p.add_argument("--repeats", type=int, default=2, help="extractions per thread count, the best counts")
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


def extract_once(path: Path, encoder: str, device: str, workers: int, batch_size: int) -> Any:
    """One extraction of ``path`` into a fresh temporary directory (never a cache hit) -> its ExtractStats."""
    from msrl_model.features.pipeline import ExtractStats, extract_slide
    from msrl_model.progress import drive

    stats = ExtractStats(sync_timing=True)
    with tempfile.TemporaryDirectory(prefix="msrl-bench-extract-") as out:
        drive(extract_slide(path, out, encoder, device, workers, batch_size, stats=stats), show=False)
    return stats


def measure(path: Path, encoder: str, device: str, workers: int, batch_size: int) -> dict[str, Any]:
    from msrl_model.features.reader import ParallelTileReader, ReaderConfig
    from msrl_model.slide import open_slide, tile_grid, tissue_mask

    stats = extract_once(path, encoder, device, workers, batch_size)
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


def thread_policy(args: argparse.Namespace, path: Path) -> list[dict[str, Any]]:
    """The default plan vs each thread count on whole extractions, quiet and loaded (module docstring)."""
    from msrl_model.bench.threads import quiet_and_loaded
    from msrl_model.device import apply_threads

    def measure_at(threads: int) -> dict[str, float]:
        plan = apply_threads(threads, readers=args.workers)
        stats = extract_once(path, args.encoder, "cpu", plan.readers, max(1, args.batch_size))
        return {"tiles_per_s": _rate(stats.tiles, stats.total_s),
                "encode_tiles_per_s": _rate(stats.tiles, stats.encode_s)}

    return quiet_and_loaded(measure_at, "tiles_per_s", args.competitors, repeats=args.repeats)


def failed_targets(record: dict[str, Any]) -> list[str]:
    """One line per target of the module docstring that ``record`` misses."""
    from msrl_model.bench.threads import failed_conditions

    failed = []
    if record["encoder"] == "builtin-he" and record["encode_tiles_per_s"] < BUILTIN_ENCODE_TARGET:
        failed.append(f"builtin-he encode stage {record['encode_tiles_per_s']:,.0f} tiles/s with "
                      f"{record['threads']} thread(s), below {BUILTIN_ENCODE_TARGET:,.0f}")
    return failed + failed_conditions(record.get("thread_policy") or [])


def run(args: argparse.Namespace) -> int:
    from msrl_model.device import apply_threads

    path = input_slide(args)
    plan = apply_threads(args.threads, readers=args.workers)
    record = measure(path, args.encoder, args.device, plan.readers, max(1, args.batch_size))
    record = {**record, "threads": plan.torch, "threads_from": plan.source}
    if args.compare_threads and record["device"] == "cpu":
        record["thread_policy"] = thread_policy(args, path)
    record["targets_failed"] = failed_targets(record)
    emit(record, args.json)
    for line in record["targets_failed"]:
        print(f"bench extract: target failed: {line}", file=sys.stderr)
    return 1 if record["targets_failed"] else 0
