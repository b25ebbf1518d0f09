"""Throughput of the builtin-he encoder: ``python -m msrl_model.encoders.bench_builtin [--threads N] ...``.

Prints tiles/s by wall clock and by process CPU time (the latter is robust to other jobs sharing the
machine: with one thread it is the per-core rate). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from msrl_model.encoders import build_encoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=64, help="tiles per encode() call")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum measuring time")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    enc = build_encoder("builtin-he", device=args.device)
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.batch, 256, 256, 3), dtype=np.uint8))
    tiles = tiles.to(enc.model.od_to_channels.device)
    enc.encode(tiles)  # warm-up
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < args.seconds:
        enc.encode(tiles)
        n += args.batch
    if tiles.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        f"builtin-he v{enc.version} dim={enc.dim} device={args.device} threads={args.threads} batch={args.batch}: "
        f"{n / wall:.1f} tiles/s wall, {n / cpu:.1f} tiles/s per CPU-second ({n} tiles)"
    )


if __name__ == "__main__":
    main()
