r"""``bench encoder``: the slide encoder φ_H over 5k–60k patches and a whole 4-task Predictor call
(``--mode slide``, the default; issue 9), or the patch encoder's tiles/s (``--mode patch``).

**slide** — :class:`~msrl_model.nn.slide_encoder.SlideEncoder` at the demo scale
(:meth:`MSRLConfig.demo() <msrl_model.nn.config.MSRLConfig.demo>`: patch_dim 264, d = 128, 2 layers,
4 heads, random weights, eval mode, inference mode) through its public API only (``from_config``,
``forward(x, pos, mask)``), so it measures whichever attention φ_H has. One bag per size (``--sizes``,
default 5k/10k/20k/40k/60k patches of a compact tissue blob; an all-True mask): wall and process-CPU
seconds (best of ``--repeats``, after a warm-up forward), peak memory, and FLOPs:

* ``gflop_tokenwise`` — analytic and exact for the layers that act on each token alone (patch
  embedding, QKV/output projections, MLP), for T = N + 1 tokens:
  :math:`2NPd + L\,T\,(8 + 4r)\,d^2` (P patch_dim, L layers, r MLP ratio);
* ``gflop_full_attention`` — what full self-attention's :math:`QK^\top` and :math:`AV` would add:
  :math:`4 L T^2 d` (the quadratic term a linear-cost attention avoids);
* ``gflop_counted`` — every matmul/attention FLOP the forward actually ran, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` on a separate, untimed forward (so the timing is
  not disturbed); ``gflop_counted − gflop_tokenwise`` is the attention's own cost.

Then ``time(largest)/time(10k)`` (issue 9's target: time(60k)/time(10k) ≤ 7; linear cost gives 6),
and one :meth:`Predictor.predict <msrl_model.infer.predictor.Predictor.predict>` call with features
given directly (no slide reading) on a ``--predictor-patches`` bag (default 60,000) with a random bundle
at the demo bundle's scale (``resources/bundle``: the demo preset's config, 50 gene groups, 300 buffer
cases, its 4 tasks survival / stage / TP53_mut / HER2_status, all MSRL): the first call (which also
builds each task's engine) and a second, warm one (the target: ≤ 30 s on 2 cores).

**Memory** on the CPU: the peak of the process's resident set (``/proc/self/statm``, sampled every
2 ms by a thread) above its level just before the call, after handing freed memory back to the OS
(glibc ``malloc_trim``) — tracemalloc cannot see torch's allocations.
On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation at the start. ``--threads`` sets
torch's intra-op threads; the output states the count used.

**patch** — the patch encoder (``--encoder``, default builtin-he) on random (batch, 256, 256, 3)
tiles: tiles/s by wall clock and by process CPU time (the latter is robust to other jobs sharing the
machine: with one thread it is the per-core rate). For builtin-he on the CPU, its torch path is timed
right after on the same tiles (``torch_path_tiles_per_s``, ``fused_over_torch_path``).

Numbers depend on the machine; this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.bench import emit

DEFAULT_SIZES = (5_000, 10_000, 20_000, 40_000, 60_000)
RATIO_BASE = 10_000  # time(largest) / time(RATIO_BASE) is the scaling figure (issue 9: ≤ 7 at 60k)
DEMO_BUFFER_CASES = 300  # the demo bundle's training cohort
DEMO_TASKS = (("survival", ()), ("stage", ("I", "II", "III", "IV")), ("TP53_mut", ("0", "1")),
              ("HER2_status", ("negative", "positive")))  # the demo bundle's tasks (train/presets.py)
PATCH_SIZE_LEVEL0 = 256  # the bags' grid: 256 px patches at level 0
SAMPLE_S = 0.002  # RSS sampling interval


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encoder", help="slide encoder φ_H at 5k-60k patches and a 4-task Predictor call (or: --mode patch)",
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("slide", "patch"), default="slide",
                   help="slide: φ_H and the Predictor (default); patch: patch-encoder tiles/s")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), metavar="N",
                   help="slide: patches per bag (default 5000 10000 20000 40000 60000)")
    p.add_argument("--repeats", type=int, default=2,
                   help="slide: timed forwards per size, the best counts (default 2: a shared machine's noise)")
    p.add_argument("--predictor-patches", type=int, default=60_000, metavar="N",
                   help="slide: patches of the Predictor call's bag (default 60000; 0 skips it)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the thread policy of msrl_model.device)")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the bags")
    p.add_argument("--encoder", default="builtin-he", help="patch: encoder spec")
    p.add_argument("--batch", type=int, default=64, help="patch: tiles per encode() call")
    p.add_argument("--seconds", type=float, default=5.0, help="patch: minimum measuring time")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


# ---- memory ---------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    """This process's resident set size (Linux ``/proc``), None where there is no ``/proc``."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_freed_memory() -> None:
    """Hand memory freed by earlier calls back to the OS (glibc ``malloc_trim``), so that the next
    call's allocations raise the resident set instead of silently reusing what is left over."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def memory_method(device: Any) -> str:
    """How :class:`PeakMemory` measures on ``device`` (stated in the output)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above the allocation at the start"
    return (f"peak resident set (/proc/self/statm, sampled every {SAMPLE_S * 1e3:g} ms) above its level before "
            "the call, freed memory handed back to the OS first (malloc_trim)")


class PeakMemory:
    """Peak memory of a block above its level at entry, MB (``mb``; None where it cannot be measured).

    CPU: the resident set sampled every :data:`SAMPLE_S` s by a thread (torch releases the GIL in its
    kernels, so the sampler runs during them). CUDA: ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _release_freed_memory()
        base = _rss_bytes()
        if base is not None:
            self._base = self._peak = base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.mb = (max(self._peak, _rss_bytes() or 0) - self._base) / 2**20


# ---- φ_H ------------------------------------------------------------------------------------------


def tokenwise_flops(n: int, cfg: Any) -> int:
    """FLOPs of φ_H's per-token layers on an n-patch bag: 2·n·P·d + L·(n+1)·(8 + 4r)·d²."""
    d, t = cfg.d, n + 1
    return int(2 * n * cfg.patch_dim * d + cfg.slide_layers * t * (8 + 4 * cfg.slide_mlp_ratio) * d * d)


def full_attention_flops(n: int, cfg: Any) -> int:
    """FLOPs full self-attention's QKᵀ and AV would take over n patches + CLS: 4·L·(n+1)²·d."""
    return int(4 * cfg.slide_layers * (n + 1) ** 2 * cfg.d)


def random_bag(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, dim) float32 standard normal, coords (n, 2) int64 of a compact tissue blob)."""
    from msrl_model.synth.bags import grid_coords

    rng = np.random.default_rng([seed, n])
    return rng.standard_normal((n, dim), dtype=np.float32), grid_coords(n, rng, PATCH_SIZE_LEVEL0)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bag_tensors(n: int, cfg: Any, seed: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    from msrl_model.nn.slide_encoder import grid_positions

    features, coords = random_bag(n, cfg.patch_dim, seed)
    x = torch.from_numpy(features)[None].to(device)  # (1, n, P)
    pos = grid_positions(torch.from_numpy(coords), PATCH_SIZE_LEVEL0)[None].to(device)  # (1, n, 2)
    return x, pos, torch.ones(1, n, dtype=torch.bool, device=device)


def measure_slide_encoder(sizes: list[int], cfg: Any, device: Any, repeats: int, seed: int) -> list[dict[str, Any]]:
    """One record per size: seconds (wall, CPU), peak MB and FLOPs of one φ_H forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from msrl_model.nn.slide_encoder import SlideEncoder

    torch.manual_seed(seed)
    model = SlideEncoder.from_config(cfg).to(device).eval()
    records = []
    with torch.inference_mode():
        model(*_bag_tensors(min(sizes), cfg, seed, device))  # warm-up: threads, allocator, kernels
        for n in sizes:
            x, pos, mask = _bag_tensors(n, cfg, seed, device)
            best_wall, best_cpu, peak = float("inf"), float("inf"), None
            for _ in range(repeats):
                memory = PeakMemory(device)
                with memory:
                    _sync(device)
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    h, attn = model(x, pos, mask)
                    _sync(device)
                    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                del h, attn
                best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
                peak = memory.mb if peak is None or memory.mb is None else max(peak, memory.mb)
            counter = FlopCounterMode(display=False)
            with counter:
                model(x, pos, mask)
            counted = counter.get_total_flops()
            del x, pos, mask
            records.append({
                "patches": n, "seconds": round(best_wall, 4), "cpu_seconds": round(best_cpu, 4),
                "peak_mb": None if peak is None else round(peak, 1),
                "gflop_tokenwise": round(tokenwise_flops(n, cfg) / 1e9, 3),
                "gflop_full_attention": round(full_attention_flops(n, cfg) / 1e9, 3),
                "gflop_counted": round(counted / 1e9, 3),
                "gflop_per_s": round(counted / 1e9 / best_wall, 2) if best_wall > 0 else None,
            })
    return records


def time_ratio(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """time(largest) / time(10k) (else / time(smallest)) by wall clock and by CPU time, with what linear
    and quadratic cost would give; None with a single size."""
    by_size = {r["patches"]: r for r in records}
    top = max(by_size)
    base = RATIO_BASE if RATIO_BASE in by_size and RATIO_BASE < top else min(by_size)
    if base == top or by_size[base]["seconds"] <= 0 or by_size[base]["cpu_seconds"] <= 0:
        return None
    return {"of": top, "over": base, "ratio": round(by_size[top]["seconds"] / by_size[base]["seconds"], 2),
            "cpu_ratio": round(by_size[top]["cpu_seconds"] / by_size[base]["cpu_seconds"], 2),
            "linear": round(top / base, 2), "quadratic": round((top / base) ** 2, 2)}


# ---- the Predictor ----------------------------------------------------------------------------------


def demo_scale_bundle(out: Path, seed: int = 0) -> Path:
    """A random-weight bundle at the demo bundle's scale (see the module docstring) in ``out``."""
    import torch

    from msrl_model.infer.bundle import TaskBundle, write_bundle
    from msrl_model.infer.random_bundle import random_cases
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.nn.msrl import MSRLNet, TaskSpec
    from msrl_model.slide import TilingParams, TissueParams
    from msrl_model.synth.latents import make_gene_sets

    sets = make_gene_sets(seed)
    genes = list(dict.fromkeys(g for s in sets for g in s.genes))
    index = {g: i for i, g in enumerate(genes)}
    groups = [[index[g] for g in s.genes] for s in sets]
    cfg = MSRLConfig.demo(readout_skip=True, group_sizes=tuple(len(g) for g in groups))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cases = random_cases(DEMO_BUFFER_CASES, seed)
    edges = (0.0, *np.quantile(cases.survival_months, [0.25, 0.5, 0.75]).round(2), float("inf"))
    tasks = []
    for name, classes in DEMO_TASKS:
        spec = (TaskSpec(name, "survival", bin_edges=tuple(float(e) for e in edges)) if not classes
                else TaskSpec(name, "classification", classes=classes))
        net = MSRLNet(cfg, spec, "msrl")
        tasks.append(TaskBundle(
            spec=spec, variant="msrl", state_dict={k: v.clone() for k, v in net.state_dict().items()},
            buffer_nodes=rng.standard_normal((len(cases), net.node_dim)).astype(np.float32), cases=cases,
            pathways=rng.standard_normal((len(cases), len(groups))).astype(np.float32)))
    return write_bundle(
        out, config=cfg, tasks=tasks, encoder={"name": "builtin-he", "version": "1.0", "dim": cfg.patch_dim},
        tiling=TilingParams().to_dict(), tissue=TissueParams().to_dict(),
        genomics={"genes": genes, "group_names": [s.name for s in sets], "groups": groups,
                  "scaler_mean": np.zeros(len(genes), np.float32), "scaler_std": np.ones(len(genes), np.float32),
                  "expression_scale": "raw"},
        cohort_summary={"n_cases": len(cases), "synthetic": True, "source": "bench encoder (random, untrained)"},
        model_card="# bench encoder\n\nRandom weights at the demo bundle's scale; its predictions mean nothing.\n")


def measure_predictor(n: int, device: Any, seed: int) -> dict[str, Any]:
    """A first (engines built) and a second (warm) 4-task ``Predictor.predict`` on an n-patch bag."""
    from msrl_model.infer.predictor import Predictor

    features, coords = random_bag(n, 264, seed + 1)
    with tempfile.TemporaryDirectory(prefix="msrl-bench-encoder-") as tmp:
        predictor = Predictor.from_bundle(demo_scale_bundle(Path(tmp) / "bundle", seed), device=str(device))
    cfg = predictor.bundle.config
    calls = []
    for _ in range(2):
        memory = PeakMemory(device)
        with memory:
            t0 = time.perf_counter()
            result = predictor.predict(features, coords, PATCH_SIZE_LEVEL0)
            calls.append((time.perf_counter() - t0, memory))
    first, warm = calls
    return {"patches": n, "tasks": len(result.tasks), "buffer_cases": DEMO_BUFFER_CASES, "d": cfg.d,
            "slide_layers": cfg.slide_layers, "slide_heads": cfg.slide_heads, "patch_dim": cfg.patch_dim,
            "first_call_s": round(first[0], 3), "seconds": round(warm[0], 3),
            "first_call_peak_mb": None if first[1].mb is None else round(first[1].mb, 1),
            "peak_mb": None if warm[1].mb is None else round(warm[1].mb, 1)}


def run_slide(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode slide``: the record (see the module docstring)."""
    import torch

    from msrl_model.device import resolve_device
    from msrl_model.errors import MSRLError
    from msrl_model.nn.config import MSRLConfig

    if any(n < 1 for n in args.sizes) or args.repeats < 1 or args.predictor_patches < 0:
        raise MSRLError("--sizes must be positive patch counts, --repeats at least 1 and --predictor-patches >= 0")
    from msrl_model.device import apply_threads

    apply_threads(args.threads, torch)
    device = resolve_device(args.device)
    cfg = MSRLConfig.demo()
    sizes = sorted(set(args.sizes))
    phi = measure_slide_encoder(sizes, cfg, device, args.repeats, args.seed)
    return {
        "benchmark": "encoder", "mode": "slide", "device": str(device), "threads": torch.get_num_threads(),
        "memory": memory_method(device),
        "slide_encoder": {"d": cfg.d, "slide_layers": cfg.slide_layers, "slide_heads": cfg.slide_heads,
                          "patch_dim": cfg.patch_dim, "mlp_ratio": cfg.slide_mlp_ratio},
        "flops": {"tokenwise": "2*N*P*d + L*(N+1)*(8+4r)*d^2", "full_attention": "4*L*(N+1)^2*d",
                  "counted": "torch.utils.flop_counter.FlopCounterMode, separate forward"},
        "sizes": phi, "time_ratio": time_ratio(phi),
        "predictor": measure_predictor(args.predictor_patches, device, args.seed) if args.predictor_patches else None,
    }


def print_slide(r: dict[str, Any]) -> None:
    """The ``--mode slide`` record for people."""
    enc = r["slide_encoder"]
    print(f"φ_H SlideEncoder (demo scale: patch_dim {enc['patch_dim']}, d={enc['d']}, {enc['slide_layers']} layers, "
          f"{enc['slide_heads']} heads), device {r['device']}, {r['threads']} torch thread(s)")
    print(f"memory: {r['memory']}")
    print(f"FLOPs: token-wise {r['flops']['tokenwise']}; full attention would add {r['flops']['full_attention']}; "
          f"counted: {r['flops']['counted']}")
    print(f"{'patches':>8} {'seconds':>9} {'cpu s':>9} {'peak MB':>9} {'GFLOP tokenwise':>16} {'GFLOP counted':>14} "
          f"{'GFLOP full-attn':>16} {'GFLOP/s':>8}")
    for s in r["sizes"]:
        peak = "n/a" if s["peak_mb"] is None else f"{s['peak_mb']:,.0f}"
        print(f"{s['patches']:>8,} {s['seconds']:>9.3f} {s['cpu_seconds']:>9.3f} {peak:>9} "
              f"{s['gflop_tokenwise']:>16,.2f} {s['gflop_counted']:>14,.2f} {s['gflop_full_attention']:>16,.2f} "
              f"{s['gflop_per_s'] or 0:>8,.1f}")
    ratio = r["time_ratio"]
    if ratio is not None:
        print(f"time({ratio['of']:,}) / time({ratio['over']:,}) = {ratio['ratio']:.2f} by wall clock, "
              f"{ratio['cpu_ratio']:.2f} by CPU time (linear cost: {ratio['linear']:g}, quadratic: "
              f"{ratio['quadratic']:g})")
    p = r["predictor"]
    if p is not None:
        peak = ("n/a" if p["peak_mb"] is None else
                f"{p['peak_mb']:,.0f} MB warm, {p['first_call_peak_mb']:,.0f} MB first call")
        print(f"Predictor.predict, {p['tasks']} tasks, {p['patches']:,} patches, demo scale "
              f"({p['buffer_cases']} buffer cases): {p['seconds']:.2f} s warm, {p['first_call_s']:.2f} s first "
              f"call (builds the engines); peak {peak}")


# ---- the patch encoder ------------------------------------------------------------------------------


def measure_patch_encoder(encoder: str, device: str, threads: int | None, batch: int,
                          seconds: float) -> dict[str, Any]:
    """Encode one random (batch, 256, 256, 3) uint8 batch repeatedly for at least ``seconds``. For
    builtin-he on the CPU, its torch path (what CUDA and a CPU without numba run) is timed the same way
    right after the fused kernel, side by side."""
    import torch

    from msrl_model.device import apply_threads, resolve_device
    from msrl_model.encoders import build_encoder

    apply_threads(threads, torch)
    dev = resolve_device(device)
    enc = build_encoder(encoder, device=str(dev))
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
    tiles = tiles.to(dev)
    record = {
        "benchmark": "encoder", "mode": "patch", "encoder": enc.name, "encoder_version": enc.version,
        "dim": enc.dim, "device": str(dev), "threads": torch.get_num_threads(), "batch": batch,
        **_encode_rates(enc, tiles, seconds),
    }
    if getattr(enc.model, "fused_cpu", False) and dev.type == "cpu":
        enc.model.fused_cpu = False
        torch_path = _encode_rates(enc, tiles, seconds)
        enc.model.fused_cpu = True
        record["torch_path_tiles_per_s"] = torch_path["tiles_per_s"]
        record["torch_path_tiles_per_cpu_s"] = torch_path["tiles_per_cpu_s"]
        record["fused_over_torch_path"] = round(record["tiles_per_s"] / max(torch_path["tiles_per_s"], 1e-9), 2)
    return record


def _encode_rates(enc: Any, tiles: Any, seconds: float) -> dict[str, float]:
    """tiles/s of ``enc.encode(tiles)`` repeated for at least ``seconds`` after one warm-up call, by wall
    clock and by process CPU time."""
    import torch

    enc.encode(tiles)  # warm-up (encode runs under inference mode)
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        enc.encode(tiles)
        n += tiles.shape[0]
    if tiles.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"tiles": n, "tiles_per_s": round(n / wall, 1), "tiles_per_cpu_s": round(n / cpu, 1) if cpu > 0 else 0.0}


def run(args: argparse.Namespace) -> int:
    if args.mode == "patch":
        emit(measure_patch_encoder(args.encoder, args.device, args.threads, max(1, args.batch), args.seconds),
             args.json)
        return 0
    record = run_slide(args)
    if args.json:
        print(json.dumps(record, allow_nan=False), flush=True)
    else:
        print_slide(record)
    return 0
