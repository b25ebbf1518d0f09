"""Dispatch ``python -m msrl_model.bench NAME [options]`` to the benchmark module ``NAME``.

The registry is the package itself: every module here (not starting with ``_``) defines
``register(subparsers)``, which adds its sub-command; a new benchmark is one new file. Only the
module named on the command line is imported, so one benchmark's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import msrl_model.bench as bench_pkg
from msrl_model.errors import MSRLError


def benchmark_modules() -> list[str]:
    """Names of the benchmark modules, sorted (found without importing them)."""
    return sorted(info.name for info in pkgutil.iter_modules(bench_pkg.__path__) if not info.name.startswith("_"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the benchmark named first in ``argv`` is imported (imports can be heavy)."""
    parser = argparse.ArgumentParser(prog="python -m msrl_model.bench",
                                     description="MSRL Studio benchmarks (architecture §9)")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    names = benchmark_modules()
    chosen = [argv[0]] if argv and argv[0] in names else names
    for name in chosen:
        importlib.import_module(f"{bench_pkg.__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from msrl_model.device import passive_openmp_waits

    passive_openmp_waits()  # before anything imports torch
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
