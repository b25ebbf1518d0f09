"""``msrl-app [SLIDE] [--quit]``: start MSRL Studio.

Start-up imports only Qt, numpy and the light ``msrl_model`` modules; torch and torch_geometric
are imported when a model is first needed, so the window shows in well under two seconds.
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
    parser.add_argument("--quit", action="store_true",
                        help="quit once the window is shown and the slide opened (smoke tests, timing); "
                             "exit status 1 if the slide could not be opened")
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
    window.show()
    status = {"code": 0}
    if args.slide is not None:
        def open_initial() -> None:
            if not window.open_slide(args.slide):
                status["code"] = 1
        QTimer.singleShot(0, open_initial)
    if args.quit:
        QTimer.singleShot(0, window.close)
        QTimer.singleShot(0, app.quit)
    code = app.exec()
    return code or status["code"]


if __name__ == "__main__":
    sys.exit(main())
