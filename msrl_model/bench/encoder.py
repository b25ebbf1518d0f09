"""``bench encoder``: patch-encoder throughput on random tiles (default: the builtin-he encoder).

Reports tiles/s by wall clock and by process CPU time (the latter is robust to other jobs sharing the
machine: with one thread it is the per-core rate). ``--threads`` sets torch's intra-op threads.
Numbers depend on the machine; this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from msrl_model.bench import emit


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("encoder", help="patch-encoder tiles/s on random tiles (wall and CPU time)")
    p.add_argument("--encoder", default="builtin-he", help="encoder spec")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--batch", type=int, default=64, help="tiles per encode() call")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum measuring time")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def measure(encoder: str, device: str, threads: int | None, batch: int, seconds: float) -> dict[str, Any]:
    """Encode one random (batch, 256, 256, 3) uint8 batch repeatedly for at least ``seconds``."""
    import numpy as np
    import torch

    from msrl_model.device import resolve_device
    from msrl_model.encoders import build_encoder

    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    enc = build_encoder(encoder, device=str(dev))
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
    tiles = tiles.to(dev)
    enc.encode(tiles)  # warm-up (encode runs under inference mode)
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        enc.encode(tiles)
        n += batch
    if tiles.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "benchmark": "encoder",
        "encoder": enc.name,
        "encoder_version": enc.version,
        "dim": enc.dim,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "tiles": n,
        "tiles_per_s": round(n / wall, 1),
        "tiles_per_cpu_s": round(n / cpu, 1) if cpu > 0 else 0.0,
    }


def run(args: argparse.Namespace) -> int:
    emit(measure(args.encoder, args.device, args.threads, max(1, args.batch), args.seconds), args.json)
    return 0
