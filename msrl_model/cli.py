"""``msrl``: the command line of MSRL Studio.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed args and returning an exit code.
User errors (:class:`~msrl_model.errors.MSRLError`), file-system failures and Ctrl-C print one
line and exit non-zero, never a traceback (see :func:`main`).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from msrl_model import __version__
from msrl_model.errors import MSRLError

# Modules that provide a ``register(subparsers)`` function, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = (
    "msrl_model.synth.cli",
    "msrl_model.features.cli",
    "msrl_model.infer.cli",
    "msrl_model.train.cli",
    "msrl_model.infer.keygen",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msrl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"msrl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


INTERRUPTED = ("interrupted; nothing partial was kept (finished outputs stay) - run the same command again "
               "to resume")


def _interrupt_once(signum: int, frame: object) -> None:
    """SIGINT: raise KeyboardInterrupt the first time; ignore more presses while the job cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; every failure ends in one ``error: ...`` line and a non-zero exit.

    Exit codes: 0 done, 2 a user error (:class:`MSRLError`), 3 some inputs of a batch failed, 4 an
    output could not be written (read-only folder, disk full), 130 interrupted (Ctrl-C / SIGINT).
    """
    from msrl_model.device import passive_openmp_waits

    passive_openmp_waits()  # before anything imports torch
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt_once) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"error: {INTERRUPTED}", file=sys.stderr)
        return 130
    except OSError as err:  # a file-system failure no layer turned into an MSRLError: still one line
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = " ".join((err.strerror or str(err) or type(err).__name__).split())
        print(f"error: {reason}{where}; check the paths, their permissions and the free disk space, then run "
              "again", file=sys.stderr)
        return 4
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
