"""``msrl``: the command line of MSRL Studio.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed args and returning an exit code.
User errors (:class:`~msrl_model.errors.MSRLError`) print one line and exit non-zero, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from msrl_model import __version__
from msrl_model.errors import MSRLError

# Modules that provide a ``register(subparsers)`` function, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = (
    "msrl_model.synth.cli",
    "msrl_model.features.cli",
    "msrl_model.infer.cli",
    "msrl_model.train.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msrl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"msrl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs were kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
