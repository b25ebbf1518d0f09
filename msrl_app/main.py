"""``msrl-app [SLIDE] [--bundle PATH] [--analyze] [--export OUT.pdf|OUT.json] [--quit]``: start MSRL Studio.

Start-up imports only Qt, numpy and the light ``msrl_model`` modules; torch and torch_geometric
are imported when a model is first needed (the bundle is loaded on a worker thread once the window
is shown), so the window shows in well under two seconds.

Model bundle: ``--bundle PATH``, else the one chosen last (File ▸ Open model bundle…), else the
bundle shipped in ``resources/`` (``resources/bundle`` or ``resources/*.msrl``).

Demo slide: started without a slide (and without ``--quit``/``--no-demo``), the app opens a demo
slide — a synthetic H&E-like Aperio SVS (4096 × 3072 px, fixed seed) rendered once on a worker
thread into the cache folder (``<cache>/demo/msrl-demo-slide.svs``, see :mod:`msrl_app.analysis`).

Automation (installer smoke tests, batch use): ``msrl-app SLIDE --bundle B --analyze --export
OUT.pdf --quit`` runs the same GUI path without a person: opens the slide, analyses it, writes the
report (``.pdf``) or the results (``.json`` plus CSVs) and exits 0; on any error it prints
``error: ...`` on stderr and exits 1. No dialog ever waits for a click in ``--quit`` mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from msrl_model import __version__

log = logging.getLogger("msrl_app")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msrl-app", description="MSRL Studio: view a whole-slide image (research use only).")
    parser.add_argument("slide", nargs="?", type=Path, help="slide to open (.svs or any OpenSlide format)")
    parser.add_argument("--bundle", type=Path, help="model bundle (a bundle folder or a .msrl file)")
    parser.add_argument("--project", help="the slide's cancer type (a project of the bundle, e.g. TCGA-LUAD)")
    parser.add_argument("--expression", type=Path, help="this case's expression CSV (runs MSRL_multi)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="analysis device (default: the setting)")
    parser.add_argument("--analyze", action="store_true", help="analyze the slide once it is open")
    parser.add_argument("--export", type=Path, metavar="OUT",
                        help="after --analyze, write the report (OUT.pdf) or the results (OUT.json + CSVs)")
    parser.add_argument("--no-demo", action="store_true", help="do not open the demo slide when no slide is given")
    parser.add_argument("--quit", action="store_true",
                        help="quit when done: after opening the slide, or after --analyze/--export "
                             "(smoke tests, batch); exit status 1 and the message on stderr on any error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _install_excepthook(window) -> None:
    """Unexpected exceptions in Qt callbacks become a log entry and a dialog, never a dead app."""
    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.error("unhandled exception\n%s", "".join(traceback.format_exception(kind, value, tb)))
        if threading.current_thread() is not threading.main_thread():
            return  # widgets only on the GUI thread; the log has it
        try:
            window.report_error("Unexpected error", value)
        except Exception:  # noqa: BLE001 - the hook itself must never raise
            sys.__excepthook__(kind, value, tb)
    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    """Run the app; returns the process exit status."""
    args = parse_args(argv)
    if args.export is not None and not args.analyze:
        print("error: --export needs --analyze", file=sys.stderr)
        return 2
    from msrl_app.applog import setup_logging
    from msrl_app.window import APP, ORG, MainWindow, apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName(ORG)
    app.setApplicationName(APP)
    app.setApplicationVersion(__version__)
    apply_theme(app)
    log_path = setup_logging()
    log.info("MSRL Studio %s starting", __version__)
    window = MainWindow(log_path=log_path)
    window.show_dialogs = not args.quit  # a smoke run must not wait on a dialog: errors go to stderr
    _install_excepthook(window)
    if args.device:
        window.set_device(args.device, remember=False)
    window.show()
    status = {"code": 0}

    def start() -> None:
        status["code"] = run_startup(window, args)
        if args.quit:
            window.close()
            app.quit()

    QTimer.singleShot(0, start)
    code = app.exec()
    return code or status["code"]


def run_startup(window, args: argparse.Namespace) -> int:
    """What the command line asks for, as a sequence of actions on the window's state; the exit
    status (1 after any error, which was reported on stderr in ``--quit`` mode)."""
    state = window.state
    bundle = args.bundle or _remembered_bundle(window)
    if bundle is not None:
        window.set_bundle(bundle, remember=args.bundle is not None and not args.quit)
    if args.slide is None:
        if args.analyze:
            print("error: --analyze needs a slide", file=sys.stderr)
            return 1
        if not args.quit and not args.no_demo:
            state.open_demo_slide()
        return 0
    if not window.open_slide(args.slide):
        return 1
    if args.expression is not None and not state.load_expression(args.expression):
        return 1
    if args.project:
        state.set_project(args.project)
    if not args.analyze:
        return 0
    outcome = window.analyze_and_wait()  # runs the event loop until the analysis ends
    if outcome != "done":
        if outcome == "cancelled":
            print("error: the analysis was cancelled", file=sys.stderr)
        return 1
    if args.export is not None and not state.export(args.export):
        return 1
    return 0


def _remembered_bundle(window) -> Path | None:
    """The bundle chosen last if it still exists, else the shipped one."""
    from msrl_app.analysis import default_bundle

    remembered = window.settings.value("bundle/path")
    if remembered and Path(str(remembered)).exists():
        return Path(str(remembered))
    return default_bundle()


if __name__ == "__main__":
    sys.exit(main())
