"""``bench app``: how long the desktop app takes to have its model ready, and to Analyze a slide.

Each run starts ``msrl-app SLIDE --bundle B --device cpu --analyze --export OUT.json --quit`` as a new
process (offscreen Qt, a new user's settings, an empty feature cache: every run encodes the slide) and
reads the app's log, whose lines carry wall-clock times to the millisecond:

* **model ready**: from the process start to the log line ``model bundle … (N tasks…)`` (the bundle's
  warm-up on the worker thread has returned: torch imported, networks built, buffer loaded);
* **Analyze**: from the later of the ``analyze …`` line and model ready to ``analysis done``: the
  slide's tissue detection, patch encoding and prediction once the model is there;
* **start-up**: from the process start to the log's ``starting`` line (Python, Qt and the app's modules);
* **window**: from the process start to ``window shown`` (architecture §9: < 2 s);
* **process**: the whole run, including the JSON export and exit.

The app never imports this module (``msrl_model`` knows no Qt): the runs are subprocesses. The median of
``--runs`` counts (the machine is shared). Architecture §9's targets: model ready ≤ 3 s on a quiet
machine, Analyze of the demo slide ≤ 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from msrl_model.bench import emit
from msrl_model.errors import MSRLError
from msrl_model.resources import shipped_bundle

READY_TARGET_S = 3.0  # model ready after launch, quiet machine (architecture §9)
ANALYZE_TARGET_S = 5.0  # Analyze of the demo slide on 2 cores once the model is ready (issue 16)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("app", help="msrl-app: model-ready time after launch and Analyze time of a slide")
    p.add_argument("--slide", type=Path, default=None, help="slide to analyse (default: the app's demo slide)")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    p.add_argument("--runs", type=int, default=5, help="app launches (the median counts)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def log_times(log: str) -> dict[str, float]:
    """Wall-clock times (epoch seconds) of the app log's first ``starting``, ``window shown``, ``model bundle``,
    ``analyze`` and ``analysis done`` lines; a missing line is left out."""
    marks = {"starting": " starting", "window": ": window shown", "ready": ": model bundle ",
             "analyze": ": analyze ", "done": ": analysis done: "}
    found: dict[str, float] = {}
    for line in log.splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        for key, text in marks.items():
            if key not in found and text in line:
                found[key] = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def one_run(slide: Path, bundle: Path, folder: Path) -> dict[str, float]:
    """Launch the app once in ``folder`` (its settings, log and cache); the run's durations in seconds."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(folder / "logs"),
               MSRL_STUDIO_CACHE_DIR=str(folder / "cache"), HOME=str(folder / "home"),
               XDG_CONFIG_HOME=str(folder / "config"), XDG_STATE_HOME=str(folder / "state"))
    cmd = [sys.executable, "-m", "msrl_app", str(slide), "--bundle", str(bundle), "--device", "cpu", "--analyze",
           "--export", str(folder / "result.json"), "--quit"]
    launched = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    ended = time.time()
    if done.returncode != 0:
        raise MSRLError(f"msrl-app failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    marks = log_times((folder / "logs" / "msrl-studio.log").read_text(encoding="utf-8"))
    if not {"ready", "analyze", "done"} <= set(marks):
        raise MSRLError(f"the app log in {folder / 'logs'} lacks the model-ready or analysis lines")
    return {"startup_s": marks.get("starting", launched) - launched,
            "window_s": marks.get("window", launched) - launched, "model_ready_s": marks["ready"] - launched,
            "analyze_s": marks["done"] - max(marks["analyze"], marks["ready"]), "process_s": ended - launched}


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise MSRLError("--runs must be at least 1")
    bundle = args.bundle or shipped_bundle()
    if bundle is None:
        raise MSRLError("no shipped bundle found: pass --bundle PATH")
    slide = args.slide or _demo_slide()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="msrl-bench-app-") as tmp:
        for i in range(args.runs):
            runs.append(one_run(slide, Path(bundle), Path(tmp) / f"run{i}"))
    record: dict[str, Any] = {"benchmark": "app", "slide": str(slide), "bundle": str(bundle), "runs": args.runs,
                              "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                              "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for key in ("startup_s", "window_s", "model_ready_s", "analyze_s", "process_s"):
        values = [r[key] for r in runs]
        record[f"{key}_median"] = statistics.median(values)
        record[f"{key}_all"] = [round(v, 3) for v in values]
    record["model_ready_target_s"], record["analyze_target_s"] = READY_TARGET_S, ANALYZE_TARGET_S
    record["model_ready_met"] = record["model_ready_s_median"] <= READY_TARGET_S
    record["analyze_met"] = record["analyze_s_median"] <= ANALYZE_TARGET_S
    emit(record, args.json)
    return 0


def _demo_slide() -> Path:
    """The app's demo slide (:data:`~msrl_model.synth.DEMO_SLIDE`), rendered once into the bench cache."""
    from msrl_model.bench import bench_slide
    from msrl_model.synth import DEMO_SLIDE

    return bench_slide(DEMO_SLIDE["width"], DEMO_SLIDE["height"], DEMO_SLIDE["seed"])
