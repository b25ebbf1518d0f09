"""Dispatch ``python -m msrl_model.bench NAME [options]`` to the benchmark module ``NAME``.

The registry is the package itself: every module here (not starting with ``_``) that defines
``register(subparsers)`` adds a sub-command, so a new benchmark is one new file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import msrl_model.bench as bench_pkg
from msrl_model.errors import MSRLError


def benchmark_modules() -> list[str]:
    """Names of the benchmark modules, sorted."""
    names = []
    for info in pkgutil.iter_modules(bench_pkg.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{bench_pkg.__name__}.{info.name}")
        if hasattr(module, "register"):
            names.append(info.name)
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m msrl_model.bench",
                                     description="MSRL Studio benchmarks (DESIGN §9)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name in benchmark_modules():
        importlib.import_module(f"{bench_pkg.__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
