"""``bench threads``: the built-in encoder's tiles/s at the default thread plan vs every ``--threads`` value.

For each condition — quiet, then with a CPU-bound competitor process this benchmark starts itself (one
busy Python loop per ``--competitors``) — it times ``builtin-he`` encoding on a random (batch, 256, 256, 3)
batch (:func:`msrl_model.bench.encoder.measure_patch_encoder`) at the default plan of
:mod:`msrl_model.device` and at 1..``--max-threads`` threads, and reports ``default_over_best`` =
tiles/s(default) / tiles/s(best); architecture §9 asks ≥ 0.9 in both conditions. Work per tile is
≈ 8 MFLOP (issue 16), so a 2-core run at the default 2 s per point takes ~20 s in all.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from msrl_model.bench import emit

TARGET = 0.9  # default within 10 % of the best thread count


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("threads", help="default thread plan vs each --threads value, quiet and loaded")
    p.add_argument("--encoder", default="builtin-he", help="encoder spec")
    p.add_argument("--batch", type=int, default=16, help="tiles per batch")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--max-threads", type=int, default=None, help="largest thread count tried (default: CPUs + 1)")
    p.add_argument("--competitors", type=int, default=1, help="busy processes in the loaded condition")
    p.add_argument("--json", action="store_true", help="one JSON object per condition")
    p.set_defaults(func=run)


def _competitors(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def condition(name: str, args: argparse.Namespace, default: int, counts: list[int]) -> dict[str, Any]:
    from msrl_model.bench.encoder import measure_patch_encoder

    rate = {t: measure_patch_encoder(args.encoder, "cpu", t, args.batch, args.seconds)["tiles_per_s"]
            for t in counts}
    best = max(rate, key=rate.get)
    ratio = rate[default] / rate[best] if rate[best] > 0 else 0.0
    return {"benchmark": "threads", "condition": name, "encoder": args.encoder, "default_threads": default,
            "tiles_per_s": {str(t): r for t, r in rate.items()}, "best_threads": best,
            "default_over_best": round(ratio, 3), "ok": ratio >= TARGET}


def run(args: argparse.Namespace) -> int:
    from msrl_model.device import plan_threads

    plan = plan_threads(None)
    top = args.max_threads or plan.torch + 1
    counts = sorted(set(range(1, top + 1)) | {plan.torch})
    records = [condition("quiet", args, plan.torch, counts)]
    procs = _competitors(max(0, args.competitors))
    try:
        records.append(condition(f"loaded ({len(procs)} busy process)", args, plan.torch, counts))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for rec in records:
        emit({**rec, "plan": plan.line()}, args.json)
    failed = [r["condition"] for r in records if not r["ok"]]
    for name in failed:
        print(f"bench threads: target failed ({name}): default below {TARGET:.0%} of the best", file=sys.stderr)
    return 1 if failed else 0
