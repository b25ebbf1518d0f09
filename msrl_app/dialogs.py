"""The main window's file dialogs, its About text, and the Open recent list (kept in QSettings)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSettings, qVersion
from PySide6.QtWidgets import QFileDialog, QMenu, QWidget

from msrl_model import RESEARCH_USE_ONLY, __version__

APP = "MSRL Studio"
SLIDE_SUFFIXES = ("svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif", "dcm")
SLIDE_FILTER = (f"Whole-slide images ({' '.join('*.' + s for s in SLIDE_SUFFIXES)});;All files (*)")
EXPRESSION_FILTER = "Expression tables (*.csv *.txt);;All files (*)"
MAX_RECENT = 10


def _folder(settings: QSettings, key: str) -> str:
    return str(settings.value(key, str(Path.home())))


def choose_slide(parent: QWidget, settings: QSettings) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Open slide", _folder(settings, "paths/last_dir"), SLIDE_FILTER)
    return path or None


def choose_bundle(parent: QWidget, current: Path | None) -> Path | None:
    """A bundle folder (its manifest.json chosen) or a .msrl file."""
    start = str(current.parent if current else Path.home())
    dialog = QFileDialog(parent, "Open model bundle", start, "MSRL model bundles (*.msrl manifest.json)")
    dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
    if not dialog.exec():
        return None
    chosen = Path(dialog.selectedFiles()[0])
    return chosen.parent if chosen.name == "manifest.json" else chosen


def choose_expression(parent: QWidget, settings: QSettings) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Load expression for this case",
                                          _folder(settings, "paths/expression_dir"), EXPRESSION_FILTER)
    return path or None


def choose_export(parent: QWidget, settings: QSettings, title: str, stem: str, suffix: str,
                  file_filter: str) -> str | None:
    start = Path(_folder(settings, "paths/export_dir")) / f"{stem}{suffix}"
    path, _ = QFileDialog.getSaveFileName(parent, title, str(start), file_filter)
    return path or None


def about_text(log_path: Path | None) -> str:
    log_line = str(log_path) if log_path else "not available (the log folder is not writable)"
    return (f"<h3>{APP} {__version__}</h3>"
            f"<p><b>{RESEARCH_USE_ONLY}.</b> Predictions are research outputs of the MSRL method "
            f"and must not be used to diagnose or treat patients.</p>"
            f"<p>Slides read with OpenSlide / tiffslide; Qt {qVersion()} (PySide6).</p>"
            f"<p>Log file:<br><code>{log_line}</code></p>")


class RecentFiles:
    """File ▸ Open recent: the last ``MAX_RECENT`` slides opened, newest first, in ``settings``."""

    def __init__(self, settings: QSettings, menu: QMenu, open_slide: Callable[[str], object]) -> None:
        self.settings, self.menu, self.open_slide = settings, menu, open_slide
        self.rebuild()

    def files(self) -> list[str]:
        value = self.settings.value("recent/files", [])
        if isinstance(value, str):  # QSettings INI gives a bare string for one-element lists
            value = [value]
        return [str(v) for v in (value or [])]

    def set(self, files: list[str]) -> None:
        self.settings.setValue("recent/files", files[:MAX_RECENT])
        self.settings.sync()
        self.rebuild()

    def remember(self, path: Path) -> None:
        item = str(path.resolve())
        self.set([item] + [f for f in self.files() if f != item])

    def forget(self, path: Path) -> None:
        item = str(path.resolve())
        if item in self.files():
            self.set([f for f in self.files() if f != item])

    def rebuild(self) -> None:
        self.menu.clear()
        files = self.files()
        for i, item in enumerate(files):
            act = self.menu.addAction(f"&{i + 1 if i < 9 else 0}  {Path(item).name}")
            act.setStatusTip(item)
            act.setToolTip(item)
            act.triggered.connect(lambda _=False, p=item: self.open_slide(p))
        if files:
            self.menu.addSeparator()
            self.menu.addAction("Clear list", lambda: self.set([]))
        self.menu.setEnabled(bool(files))
