"""Take the README's screenshots of the main window before and after Analyze, in a real X window.

Run under Xvfb (see FIELD-NOTES): ``Xvfb :99 -screen 0 1600x1000x24 -nolisten tcp &`` then
``DISPLAY=:99 python docs/screenshots.py SLIDE BUNDLE docs/img [WIDTHxHEIGHT [NAME]]`` (default 1600x1000;
another size is added to the file names, e.g. ``main-window-after-1366x768.png``; NAME replaces
``main-window``, e.g. ``cmu-window`` for another slide). Besides before/after Analyze, the probabilities
and the linked cases, it takes the results popped out into their own window (``…-results-window…``). The screen is captured with
Pillow's ``ImageGrab`` from the X display, i.e. exactly what a user would see. Without a display,
``QT_QPA_PLATFORM=offscreen python docs/screenshots.py …`` grabs the window itself (``window.grab()``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from msrl_app.window import MainWindow, apply_theme


def _wait(app: QApplication, condition, timeout_s: float = 600.0) -> None:
    """Run the Qt event loop until ``condition()`` holds (or fail after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: (condition() or time.monotonic() > deadline) and loop.quit())
    timer.start(50)
    loop.exec()
    if not condition():
        raise SystemExit("timed out waiting for the app")


def _settle(app: QApplication, seconds: float = 1.5) -> None:
    _wait(app, lambda end=time.monotonic() + seconds: time.monotonic() > end)


def _shot(window: QWidget, path: Path) -> None:
    """The X screen under Xvfb, else (offscreen) the window as Qt renders it."""
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        window.grab().save(str(path))
        return
    from PIL import ImageGrab

    frame = window.frameGeometry()  # the window on the X screen, as a user sees it
    ImageGrab.grab(bbox=(frame.x(), frame.y(), frame.x() + frame.width(), frame.y() + frame.height()),
                   xdisplay=os.environ["DISPLAY"]).save(path)


def open_window(size: str, bundle: str) -> tuple[QApplication, MainWindow, Path]:
    """A new user's main window of ``size`` (``WIDTHxHEIGHT``) with ``bundle`` set, its cache, log and
    settings in a scratch folder (returned too)."""
    width, height = (int(v) for v in size.lower().split("x"))
    scratch = Path(tempfile.mkdtemp(prefix="msrl-shots-"))
    os.environ["MSRL_STUDIO_CACHE_DIR"] = str(scratch / "cache")
    os.environ["MSRL_STUDIO_LOG_DIR"] = str(scratch / "logs")
    app = QApplication([])
    apply_theme(app)
    window = MainWindow(settings=QSettings(str(scratch / "settings.ini"), QSettings.Format.IniFormat))
    window.show_dialogs = False
    window.setGeometry(0, 0, width, height)
    window.show()
    window.set_bundle(bundle)
    return app, window, scratch


def main(slide: str, bundle: str, out_dir: str, size: str = "1600x1000", name: str = "main-window") -> None:
    out = Path(out_dir)
    tag = "" if size == "1600x1000" else f"-{size}"
    out.mkdir(parents=True, exist_ok=True)
    app, window, _ = open_window(size, bundle)
    window.open_slide(slide)
    _wait(app, lambda: window.viewer.thumbnail() is not None and window.bundle_manifest is not None)
    _settle(app)
    _shot(window, out / f"{name}-before{tag}.png")
    if window.analyze_and_wait() != "done":
        raise SystemExit(f"analysis failed: {window.last_error}")
    _settle(app, 3.0)
    _shot(window, out / f"{name}-after{tag}.png")
    window.results.tabs.setCurrentIndex(1)  # class probabilities with their conformal sets
    _settle(app)
    _shot(window, out / f"{name}-probabilities{tag}.png")
    window.results.tabs.setCurrentIndex(2)  # the linked training cases
    _settle(app)
    _shot(window, out / f"{name}-linked-cases{tag}.png")
    window.pop_out_results_action.trigger()  # the results in a large window of their own
    _settle(app)
    _shot(window.results_dock, out / f"{name}-results-window{tag}.png")
    window.pop_out_results_action.trigger()
    window.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5, 6) or ("DISPLAY" not in os.environ and os.environ.get("QT_QPA_PLATFORM") != "offscreen"):
        raise SystemExit("usage: DISPLAY=:99 (or QT_QPA_PLATFORM=offscreen) python docs/screenshots.py "
                         "SLIDE BUNDLE OUT_DIR [WIDTHxHEIGHT [NAME]]")
    main(*sys.argv[1:])
