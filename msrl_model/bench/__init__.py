"""``python -m msrl_model.bench NAME``: benchmarks, one module per benchmark.

Every module ``msrl_model/bench/<name>.py`` that defines ``register(subparsers)`` is a benchmark
(see ``__main__.py``); it prints one JSON object per line with ``--json``. Helpers shared by the
benchmarks live here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from msrl_model.files import atomic_path


def cache_dir() -> Path:
    """Where generated benchmark inputs are kept between runs (``$MSRL_BENCH_CACHE``, else a temp dir)."""
    path = Path(os.environ.get("MSRL_BENCH_CACHE") or Path(tempfile.gettempdir()) / "msrl-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def add_slide_options(parser: argparse.ArgumentParser) -> None:
    """``--slide`` (a slide to use) or ``--width/--height/--seed`` of the generated one (:func:`input_slide`)."""
    parser.add_argument("--slide", type=Path, default=None, help="slide (default: a generated synthetic SVS)")
    parser.add_argument("--width", type=int, default=8192, help="width of the generated slide")
    parser.add_argument("--height", type=int, default=6144, help="height of the generated slide")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated slide")


def input_slide(args: argparse.Namespace) -> Path:
    """The slide of :func:`add_slide_options`: ``--slide``, else the generated synthetic SVS."""
    return args.slide if args.slide is not None else bench_slide(args.width, args.height, args.seed)


def bench_slide(width: int, height: int, seed: int = 0) -> Path:
    """A synthetic tissue SVS of ``width``×``height`` (generated once, then reused from the cache)."""
    from msrl_model.synth.slides import make_slide

    path = cache_dir() / f"synth_{width}x{height}_seed{seed}.svs"
    if not path.exists():
        with atomic_path(path) as tmp:
            make_slide(tmp, width, height, seed)
    return path


def emit(record: dict[str, Any], as_json: bool) -> None:
    """Print one result: a JSON line, or aligned ``key: value`` lines for people."""
    if as_json:
        print(json.dumps(record, sort_keys=False), flush=True)
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        text = f"{value:,.1f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    print(flush=True)
