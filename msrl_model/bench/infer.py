"""``bench infer``: the exact inference engine against the paper's dense per-query graph (architecture §5, §9).

For each buffer size: random buffer at the paper's dimensions (fused 1,536-d, K = 12, GSL 2 layers,
GCN 3 layers → 256, random-but-fixed weights), the dense reference (GSL + dense post-processing +
dense GCN over [buffer; query], as the paper's Algorithm 2.III) and the exact engine on the same
queries, one query per call. Reported: per-query times (``exact_ms`` mean, ``_p95``, ``_max``, after one
warm-up query whose time, one-off kernel set-up included, is ``first_ms``; ``screen_ms``: the one pass
over the buffer alone, timed apart), the max |Δ| over every output (z, linked rows' edge weights, self weight, top
similarities; different linked sets count as infinite), the speed-up, the engine's precompute time and
the process's peak resident memory right after it (``precompute_peak_mb``) and at the end, dense checks
included (``peak_mem_mb``), the torch thread count and the load average at the start (the machine may be
shared: timings are only comparable within one run). With ``--competitors N`` the same queries are timed
again while N busy processes run (``loadedN_ms``...). ``failed`` names each missed target with its figure.

At 1,000,000 cases the dense N×N graph does not fit and the engine's own all-pairs top-K precompute
is 2·N²·D ≈ 3·10^15 flops (hours on 2 cores), so the buffer is built from 128 clusters of
non-negative features on disjoint 12-coordinate supports (still 1,536-d rows to the engine: its int8
screen reads 1.5 GB of codes per query, the fp32 one 6.1 GB): similarities across clusters are exactly
0, so each cluster's exact neighbour lists are computed within the cluster and handed to the engine
(``buffer_knn``), and the query's output is checked against the dense reference over its own cluster
(its connected component). ``dense_ms`` is null there; ``lists_s`` is the time of those per-cluster lists
(bench set-up, not the engine's precompute).

Run: ``python -m msrl_model.bench.infer [--json] [--device cpu|cuda] [--sizes 434 4340 ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from msrl_model.infer.engine import SCREENS, DenseReference, ExactEngine, QueryResult
from msrl_model.nn.graph import GCN, GSL, knn_lists

DEFAULT_SIZES = (434, 4340, 21700, 1_000_000)
DENSE_LIMIT = 30_000  # largest buffer for which the dense reference runs (N² float32 matrices)
MAX_ABS_DIFF = 1e-6  # exact: every output within this of the dense reference (architecture §9)
LARGE_MS = 250  # mean ms per query at 10^6 buffer cases, 2 cores
LARGE_PEAK_MB = 4096  # peak RSS at 10^6 cases, precompute included
MIN_SPEEDUP = 20  # over the dense reference at 21,700 cases


@dataclass(frozen=True)
class BenchConfig:
    dim: int = 1536  # fused feature dimension (2d, d = 768)
    k: int = 12  # neighbours per node
    gsl_layers: int = 2  # GSL Hadamard layers
    hidden: int = 256  # GCN hidden width
    out_dim: int = 256  # GCN output width
    clusters: int = 128  # disjoint-support clusters of the 10^6 buffer (dim must be a multiple)
    seed: int = 0  # seed of weights, buffers and queries


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_models(cfg: BenchConfig, device: torch.device) -> tuple[GSL, GCN]:
    """Random-but-fixed GSL (positive weights) and GCN (glorot weights, random biases)."""
    torch.manual_seed(cfg.seed)
    gsl = GSL(cfg.dim, cfg.gsl_layers, cfg.k)
    with torch.no_grad():
        for w in gsl.weights:
            w.uniform_(0.5, 1.5)
    gcn = GCN(cfg.dim, cfg.hidden, cfg.out_dim, layers=3)
    with torch.no_grad():
        for conv in gcn.convs:
            conv.bias.uniform_(-0.1, 0.1)
    return gsl.to(device).eval(), gcn.to(device).eval()


def max_abs_diff(a: QueryResult, b: QueryResult) -> float:
    """Largest |Δ| over every output of one query; inf when the linked rows or top lists differ."""
    if sorted(a.linked.tolist()) != sorted(b.linked.tolist()) or a.top_indices.tolist() != b.top_indices.tolist():
        return math.inf
    wa = a.linked_weights[torch.argsort(a.linked)]
    wb = b.linked_weights[torch.argsort(b.linked)]
    parts = [(a.z - b.z).abs().max(), (wa - wb).abs().max() if wa.numel() else torch.zeros(()),
             (a.self_weight - b.self_weight).abs(), (a.top_similarities - b.top_similarities).abs().max()]
    return float(max(float(p) for p in parts))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_predict(predict, q: torch.Tensor, device: torch.device) -> tuple[QueryResult, float]:
    _sync(device)
    t0 = time.perf_counter()
    res = predict(q[None])[0]
    _sync(device)
    return res, (time.perf_counter() - t0) * 1e3


class ClusteredBuffer:
    """10^6-scale buffer: cluster c has non-negative uniform features on coordinates [c·w, (c+1)·w)."""

    def __init__(self, n_rows: int, cfg: BenchConfig) -> None:
        self.n_rows, self.dim, self.cfg = n_rows, cfg.dim, cfg
        self.width = cfg.dim // cfg.clusters  # support width of one cluster
        self.bounds = [round(i * n_rows / cfg.clusters) for i in range(cfg.clusters + 1)]

    def cluster(self, c: int) -> torch.Tensor:
        """Cluster c's rows on its support, (n_c, width) float32, deterministic."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + c)
        return torch.rand(self.bounds[c + 1] - self.bounds[c], self.width, generator=g)

    def dense_cluster(self, c: int) -> torch.Tensor:
        """Cluster c's rows as full (n_c, dim) features."""
        out = torch.zeros(self.bounds[c + 1] - self.bounds[c], self.dim)
        out[:, c * self.width:(c + 1) * self.width] = self.cluster(c)
        return out

    def rows(self, start: int, stop: int) -> torch.Tensor:
        out = torch.zeros(stop - start, self.dim)
        for c in range(self.cfg.clusters):
            lo, hi = max(start, self.bounds[c]), min(stop, self.bounds[c + 1])
            if lo < hi:
                block = self.cluster(c)[lo - self.bounds[c]:hi - self.bounds[c]]  # (hi - lo, width)
                out[lo - start:hi - start, c * self.width:(c + 1) * self.width] = block
        return out

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (sorted) as (len(idx), dim): each cluster they fall in is generated once."""
        out = torch.zeros(idx.shape[0], self.dim)
        owner = torch.bucketize(idx.cpu(), torch.tensor(self.bounds[1:]), right=True)
        for c in owner.unique().tolist():
            at = torch.nonzero(owner == c).flatten()
            out[at, c * self.width:(c + 1) * self.width] = self.cluster(c)[idx[at].cpu() - self.bounds[c]]
        return out

    def knn(self, gsl: GSL, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact neighbour lists: cross-cluster similarities are 0, so each row's list is in its cluster."""
        idx, sim = [], []
        for c in range(self.cfg.clusters):
            with torch.no_grad():
                e = gsl(self.dense_cluster(c).to(device))  # (n_c, dim), zero outside the support
                cols = slice(c * self.width, (c + 1) * self.width)
                i, s = knn_lists(e[:, cols].contiguous(), k)
            idx.append(i + self.bounds[c])
            sim.append(s)
        return torch.cat(idx), torch.cat(sim)

    def query(self, c: int, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 1_000_000 + 31 * c + i)
        out = torch.zeros(self.dim)
        out[c * self.width:(c + 1) * self.width] = torch.rand(self.width, generator=g)
        return out


def _percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


def _time_queries(engine: ExactEngine, qs: list[torch.Tensor], device: torch.device) -> tuple[list, list[float],
                                                                                            list[float]]:
    """Each query once through ``engine.predict`` (timed), and the engine's screen alone (timed apart)."""
    results, total_ms, screen_ms = [], [], []
    for q in qs:
        res, t = _timed_predict(engine.predict, q, device)
        results.append(res)
        total_ms.append(t)
        with torch.no_grad():
            e_q = engine.gsl(q[None].to(device, engine.dtype))
            _sync(device)
            t0 = time.perf_counter()
            engine.screen_rows.bounds(e_q, engine.emb)
            _sync(device)
        screen_ms.append((time.perf_counter() - t0) * 1e3)
    return results, total_ms, screen_ms


def _timing(prefix: str, ms: list[float]) -> dict:
    return {f"{prefix}_ms": round(sum(ms) / len(ms), 3), f"{prefix}_ms_p95": round(_percentile(ms, 95), 3),
            f"{prefix}_ms_max": round(max(ms), 3)}


def bench_size(n: int, cfg: BenchConfig, device: torch.device, queries: int, screen: str,
               competitors: int = 0) -> dict:
    """One buffer size: the JSON record (``screen``: the engine's, :data:`~msrl_model.infer.engine.SCREENS`;
    ``competitors``: busy processes started for a second, loaded timing of the same queries)."""
    gsl, gcn = build_models(cfg, device)
    rss0 = peak_rss_mb()
    g = torch.Generator().manual_seed(cfg.seed + n)
    record: dict = {"buffer": n, "dim": cfg.dim, "k": cfg.k, "device": device.type, "screen": screen,
                    "threads": torch.get_num_threads(), "loadavg_1min": round(os.getloadavg()[0], 2)}
    if n <= DENSE_LIMIT:
        buffer = torch.randn(n, cfg.dim, generator=g).to(device)
        qs = list(torch.randn(queries, cfg.dim, generator=g).to(device))
        t0 = time.perf_counter()
        engine = ExactEngine(gsl, gcn, buffer, cfg.k, screen=screen)
        record["reference"] = "dense [buffer; query]"
    else:
        source = ClusteredBuffer(n, cfg)
        t0 = time.perf_counter()
        knn = source.knn(gsl, cfg.k, device)
        record["lists_s"] = round(time.perf_counter() - t0, 3)  # the bench's exact per-cluster lists (buffer_knn)
        t0 = time.perf_counter()
        engine = ExactEngine(gsl, gcn, source, cfg.k, buffer_knn=knn, screen=screen)
        del knn
        clusters = [(37 * i + 5) % cfg.clusters for i in range(queries)]
        qs = [source.query(c, i).to(device) for i, c in enumerate(clusters)]
        record["reference"] = "dense over the query's cluster (its connected component); clustered buffer"
    _sync(device)
    record["precompute_s"] = round(time.perf_counter() - t0, 3)
    record["precompute_peak_mb"] = round(peak_rss_mb(), 1)
    record["first_ms"] = round(_timed_predict(engine.predict, qs[0], device)[1], 3)  # one-off kernel set-up included
    results, exact_ms, screen_ms = _time_queries(engine, qs, device)
    record.update(_timing("exact", exact_ms))
    record["screen_ms"] = round(sum(screen_ms) / len(screen_ms), 3)  # the one pass over the buffer, of exact_ms
    if competitors:
        from msrl_model.bench.threads import busy_processes

        with busy_processes(competitors):
            record.update(_timing(f"loaded{competitors}", _time_queries(engine, qs, device)[1]))
    del engine  # the dense checks below need only its results
    dense_ms, diffs = [], []
    if n <= DENSE_LIMIT:
        dense = DenseReference(gsl, gcn, buffer, cfg.k)
        for a, q in zip(results[:queries if n <= 5000 else 1], qs):  # the dense reference: ~20 s per query at 21,700
            b, t = _timed_predict(dense.predict, q, device)
            dense_ms.append(t)
            diffs.append(max_abs_diff(a, b))
    else:
        for a, q, c in zip(results, qs, clusters):
            # reference: dense graph over the query's connected component [its cluster; query]
            comp = DenseReference(gsl, gcn, source.dense_cluster(c).to(device), cfg.k).predict(q[None])[0]
            off = source.bounds[c]
            comp.linked, comp.top_indices = comp.linked + off, comp.top_indices + off
            diffs.append(max_abs_diff(a, comp))
    record["queries"] = len(exact_ms)
    record["dense_ms"] = round(sum(dense_ms) / len(dense_ms), 3) if dense_ms else None
    record["max_abs_diff"] = max(diffs)
    record["speedup"] = round(record["dense_ms"] / record["exact_ms"], 1) if dense_ms else None
    record["peak_mem_mb"] = round(peak_rss_mb(), 1)  # the dense checks included
    record["peak_mem_delta_mb"] = round(peak_rss_mb() - rss0, 1)
    if device.type == "cuda":
        record["cuda_peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return record


def targets_failed(rec: dict) -> list[str]:
    """The architecture §9 targets a record misses, each with the figure that misses it and why (empty: all hold)."""
    out = []
    if not rec["max_abs_diff"] <= MAX_ABS_DIFF:
        out.append(f"exactness: max |Δ| {rec['max_abs_diff']:.3g} > {MAX_ABS_DIFF:g} against the "
                   f"{rec['reference']}" + (" (different linked rows or top lists)"
                                            if rec["max_abs_diff"] == math.inf else ""))
    if rec["buffer"] >= 1_000_000 and rec["exact_ms"] > LARGE_MS:
        out.append(f"speed: {rec['exact_ms']:.1f} ms mean per query > {LARGE_MS} ms at 10^6 cases (of it the "
                   f"{rec['screen']} screen {rec['screen_ms']:.1f} ms; {rec['threads']} torch threads, load "
                   f"average {rec['loadavg_1min']} at the start)")
    if rec["buffer"] >= 1_000_000 and rec["precompute_peak_mb"] > LARGE_PEAK_MB:
        out.append(f"memory: precompute peak RSS {rec['precompute_peak_mb']:.0f} MB > {LARGE_PEAK_MB} MB (4 GiB) "
                   "at 10^6 cases")
    if rec["speedup"] is not None and rec["buffer"] >= 21_700 and rec["speedup"] < MIN_SPEEDUP:
        out.append(f"speed-up: {rec['speedup']}x < {MIN_SPEEDUP}x over the dense reference at {rec['buffer']:,}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per buffer size")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="buffer sizes")
    parser.add_argument("--queries", type=int, default=10, help="timed queries per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the thread policy of msrl_model.device)")
    parser.add_argument("--competitors", type=int, default=0,
                        help="busy processes started for a second timing of the same queries (loaded figure)")
    parser.add_argument("--screen", choices=SCREENS, default="int8",
                        help="how the engine screens the buffer before its exact re-rank (default int8)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for ``args`` (see :func:`add_arguments`); 0 when every target holds."""
    from msrl_model.device import apply_threads

    apply_threads(args.threads, torch)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("bench infer: CUDA was asked for but is not available; use --device cpu", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False  # the exact comparison needs full float32
    cfg = BenchConfig(seed=args.seed)
    failed: list[str] = []
    for n in args.sizes:
        rec = bench_size(n, cfg, device, args.queries, args.screen, args.competitors)
        rec["failed"] = targets_failed(rec)
        failed += [f"buffer {n:,}: {why}" for why in rec["failed"]]
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            dense = "skipped" if rec["dense_ms"] is None else f"{rec['dense_ms']:.1f} ms"
            speed = "" if rec["speedup"] is None else f"  speed-up {rec['speedup']}x"
            print(f"buffer {n:>9,}: exact {rec['exact_ms']:.1f} ms (p95 {rec['exact_ms_p95']:.1f}, screen "
                  f"{rec['screen_ms']:.1f})  dense {dense}{speed}  max|Δ| {rec['max_abs_diff']:.2e}  precompute "
                  f"{rec['precompute_s']:.1f} s, peak RSS {rec['precompute_peak_mb']:.0f} MB", flush=True)
    for why in failed:
        print(f"bench infer: target failed: {why}", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``infer`` to a ``bench`` sub-command parser (``func`` runs it)."""
    parser = subparsers.add_parser("infer", help="exact inference engine vs dense reference")
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msrl_model.bench.infer", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
