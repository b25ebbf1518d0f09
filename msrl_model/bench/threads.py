"""``bench threads``: the built-in encoder's tiles/s at the default thread plan vs every ``--threads`` value.

For each condition — quiet, then with a CPU-bound competitor process this benchmark starts itself (one
busy Python loop per ``--competitors``) — it times ``builtin-he`` encoding on a random (batch, 256, 256, 3)
batch (:func:`msrl_model.bench.encoder.measure_patch_encoder`) at 1..``--max-threads`` threads (best
of ``--repeats``, the counts interleaved) and
compares the default plan of :mod:`msrl_model.device`, planned afresh in each condition (the policy
leaves CPUs that other processes keep busy to them), with the best count: ``default_over_best`` =
tiles/s(default) / tiles/s(best); architecture §9 asks ≥ 0.9 in both conditions. "Quiet" means no
competitor of ours: on a shared machine other work still runs, so every condition records the 1-minute
load average and the plan's line (which says how many CPUs were busy elsewhere).

:func:`compare_threads` and :func:`busy_processes` are shared with ``bench extract``, which makes the
same comparison on whole extractions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from msrl_model.bench import emit

TARGET = 0.9  # default within 10 % of the best thread count
SETTLE_S = 0.3  # after starting competitors: they are running before the plan reads /proc/loadavg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("threads", help="default thread plan vs each --threads value, quiet and loaded")
    p.add_argument("--encoder", default="builtin-he", help="encoder spec")
    p.add_argument("--batch", type=int, default=16, help="tiles per batch")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=2, help="measurements per thread count, the best counts")
    p.add_argument("--max-threads", type=int, default=None, help="largest thread count tried (default: CPUs + 1)")
    p.add_argument("--competitors", type=int, default=1, help="busy processes in the loaded condition")
    p.add_argument("--json", action="store_true", help="one JSON object per condition")
    p.set_defaults(func=run)


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` CPU-bound competitor processes (busy Python loops) for the duration, then killed."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, n))]
    try:
        if procs:
            time.sleep(SETTLE_S)
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def compare_threads(condition: str, measure_at: Callable[[int], dict[str, float]], key: str,
                    max_threads: int | None = None, repeats: int = 1) -> dict[str, Any]:
    """Measure ``measure_at(threads)`` (rates by name) at 1..``max_threads`` (default: CPUs + 1) and at the
    default plan, planned now; compare the plan's count with the best on ``key``.

    Each count is measured ``repeats`` times, the counts interleaved, and its best kept (other work on
    a shared machine only ever slows a run down). The default plan sets torch and reader threads to its
    count N exactly as ``--threads N`` does, so its rate is the one measured at N. Returns
    ``{"condition", "default_threads", "plan", "loadavg_1min", "<rate name>": {threads: rate}, ...,
    "best_threads", "default_over_best", "ok"}``.
    """
    from msrl_model.device import available_cpus, plan_threads

    plan = plan_threads(None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    top = max_threads or available_cpus()[0] + 1
    counts = sorted(set(range(1, top + 1)) | {plan.torch})
    best: dict[int, dict[str, float]] = {}
    for _ in range(max(1, repeats)):
        for t in counts:
            rates = measure_at(t)
            if t not in best or rates[key] > best[t][key]:
                best[t] = rates
    top_count = max(counts, key=lambda t: best[t][key])
    ratio = best[plan.torch][key] / best[top_count][key] if best[top_count][key] > 0 else 0.0
    per_name = {name: {str(t): best[t][name] for t in counts} for name in best[counts[0]]}
    return {"condition": condition, "default_threads": plan.torch, "plan": plan.line(),
            "loadavg_1min": None if load is None else round(load, 2), **per_name, "best_threads": top_count,
            "default_over_best": round(ratio, 3), "ok": ratio >= TARGET}


def quiet_and_loaded(measure_at: Callable[[int], dict[str, float]], key: str, competitors: int,
                     max_threads: int | None = None, repeats: int = 1) -> list[dict[str, Any]]:
    """:func:`compare_threads` without, then with ``competitors`` busy processes of our own."""
    records = [compare_threads("quiet (no competitor of ours)", measure_at, key, max_threads, repeats)]
    with busy_processes(competitors) as procs:
        name = f"loaded ({len(procs)} busy process{'es' if len(procs) != 1 else ''} of ours)"
        records.append(compare_threads(name, measure_at, key, max_threads, repeats))
    return records


def failed_conditions(records: list[dict[str, Any]]) -> list[str]:
    """One line per condition whose default plan is below :data:`TARGET` of the best count."""
    return [f"{r['condition']}: default {r['default_threads']} thread(s) at {r['default_over_best']:.0%} of the "
            f"best ({r['best_threads']}), below {TARGET:.0%}" for r in records if not r["ok"]]


def run(args: argparse.Namespace) -> int:
    from msrl_model.bench.encoder import measure_patch_encoder

    def measure_at(threads: int) -> dict[str, float]:
        record = measure_patch_encoder(args.encoder, "cpu", threads, args.batch, args.seconds)
        return {"tiles_per_s": record["tiles_per_s"]}

    records = quiet_and_loaded(measure_at, "tiles_per_s", args.competitors, args.max_threads, args.repeats)
    for rec in records:
        emit({"benchmark": "threads", "encoder": args.encoder, **rec}, args.json)
    for line in failed_conditions(records):
        print(f"bench threads: target failed: {line}", file=sys.stderr)
    return 1 if failed_conditions(records) else 0
