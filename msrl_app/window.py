"""The main window: viewer in the middle, overview and slide properties on the left, overlays on
the right (the right dock area also takes the results panels), menus, recent files, drag and drop.

Every failure to open a slide becomes a dialog saying what happened and what to do, plus a log
line; the slide already open stays open.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, Signal, qVersion
from PySide6.QtGui import QAction, QColor, QDragEnterEvent, QDropEvent, QKeySequence, QPalette
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QStyleFactory, QToolBar, QVBoxLayout, QWidget)

from msrl_app.panels import OverlayPanel, SlidePropertiesPanel
from msrl_app.viewer import OverviewWidget, SlideViewer, format_magnification
from msrl_model import __version__
from msrl_model.errors import MSRLError

log = logging.getLogger(__name__)

ORG, APP = "MSRL", "MSRL Studio"
SLIDE_SUFFIXES = ("svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "svslide", "bif", "dcm")
SLIDE_FILTER = (f"Whole-slide images ({' '.join('*.' + s for s in SLIDE_SUFFIXES)});;All files (*)")
MAX_RECENT = 10
RESEARCH_ONLY = "Research use only — not for diagnostic use"


def default_settings() -> QSettings:
    """Per-user INI settings (its folder follows ``QSettings.setPath(IniFormat, UserScope, …)``)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


def apply_theme(app: QApplication) -> None:
    """Fusion style with a dark palette (viewer-centred tools read better dark)."""
    app.setStyle(QStyleFactory.create("Fusion"))
    p = QPalette()
    base, window, text = QColor("#1f2125"), QColor("#2a2d32"), QColor("#e3e5e8")
    for role, color in [
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor("#262930")),
        (QPalette.ColorRole.ToolTipBase, QColor("#33373d")), (QPalette.ColorRole.ToolTipText, text),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.BrightText, QColor("#ff6b6b")),
        (QPalette.ColorRole.Highlight, QColor("#3d7fd9")), (QPalette.ColorRole.HighlightedText, QColor("white")),
        (QPalette.ColorRole.Link, QColor("#6aa6ff")), (QPalette.ColorRole.PlaceholderText, QColor("#8a8f98")),
    ]:
        p.setColor(role, color)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7079"))
    app.setPalette(p)


class MainWindow(QMainWindow):
    """MSRL Studio's main window."""

    slideOpened = Signal(str)  # path of a slide that opened successfully

    def __init__(self, settings: QSettings | None = None, log_path: Path | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else default_settings()
        self.log_path = log_path
        self.show_dialogs = True  # False: errors go to stderr instead of a dialog (``msrl-app --quit``)
        self.setWindowTitle(APP)
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)

        self.viewer = SlideViewer()
        self.setCentralWidget(self.viewer)
        self.overview = OverviewWidget(self.viewer)
        self.properties = SlidePropertiesPanel()
        self.overlays = OverlayPanel(self.viewer)
        self.overview_dock = self._dock("Overview", self.overview, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.properties_dock = self._dock("Slide properties", self.properties, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.overlays_dock = self._dock("Overlays", self.overlays, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([self.overview_dock, self.overlays_dock], [360, 250], Qt.Orientation.Horizontal)

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self.viewer.viewChanged.connect(self._update_readouts)
        self.viewer.cursorMoved.connect(self._on_cursor)
        self.viewer.backgroundError.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.viewer.overlaysChanged.connect(self._sync_overlay_actions)
        self._restore_window()
        self._rebuild_recent_menu()
        self._update_readouts()

    # -- construction -------------------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.replace(" ", "_"))  # for saveState
        holder = QWidget()
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(widget)
        dock.setWidget(holder)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.position_label = QLabel()
        self.level_label = QLabel()
        self.mag_label = QLabel()
        self.research_label = QLabel(RESEARCH_ONLY)
        self.research_label.setObjectName("research_only")
        self.research_label.setStyleSheet("color: #f0b450; font-weight: bold; padding: 0 6px;")
        for label in (self.position_label, self.level_label, self.mag_label):
            label.setStyleSheet("color: #b8bcc4; padding: 0 6px;")
            bar.addPermanentWidget(label)
        bar.addPermanentWidget(self.research_label)

    def _build_actions(self) -> None:
        def action(text: str, slot, shortcut=None, tip: str = "") -> QAction:
            act = QAction(text, self)
            if shortcut is not None:
                act.setShortcut(QKeySequence(shortcut))
            act.setStatusTip(tip)
            act.triggered.connect(slot)
            return act

        self.open_action = action("&Open slide…", self.choose_slide, QKeySequence.StandardKey.Open,
                                  "Open a whole-slide image")
        self.close_action = action("&Close slide", self.close_slide, QKeySequence.StandardKey.Close)
        self.quit_action = action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.fit_action = action("&Fit to window", self.viewer.fit, "F", "Show the whole slide")
        self.one_to_one_action = action("&1:1 (full resolution)", self.viewer.one_to_one, "1",
                                        "One screen pixel per scanned pixel")
        self.zoom_in_action = action("Zoom &in", lambda: self.viewer.zoom_by(1.5, animate=True), "+")
        self.zoom_out_action = action("Zoom &out", lambda: self.viewer.zoom_by(1 / 1.5, animate=True), "-")
        self.about_action = action("&About MSRL Studio", self.show_about)
        self.overlay_actions: dict[str, QAction] = {}
        for i, (name, title) in enumerate(OverlayPanel.TITLES.items()):
            act = QAction(title, self)
            act.setCheckable(True)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.toggled.connect(lambda on, n=name: self.viewer.set_overlay_visible(n, on))
            self.overlay_actions[name] = act
        self._sync_overlay_actions()

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        file_menu.addAction(self.close_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        view_menu = menu.addMenu("&View")
        for act in (self.fit_action, self.one_to_one_action, self.zoom_in_action, self.zoom_out_action):
            view_menu.addAction(act)
        view_menu.addSeparator()
        overlays = view_menu.addMenu("&Overlays")
        for act in self.overlay_actions.values():
            overlays.addAction(act)
        panels = view_menu.addMenu("&Panels")
        for dock in (self.overview_dock, self.properties_dock, self.overlays_dock):
            panels.addAction(dock.toggleViewAction())
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.about_action)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Main", self)
        bar.setObjectName("main_toolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for act in (self.open_action, None, self.fit_action, self.one_to_one_action,
                    self.zoom_out_action, self.zoom_in_action, None):
            bar.addSeparator() if act is None else bar.addAction(act)
        for act in self.overlay_actions.values():
            bar.addAction(act)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)

    def _restore_window(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)

    # -- slides -------------------------------------------------------------------------------------
    def choose_slide(self) -> None:
        start = str(self.settings.value("paths/last_dir", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", start, SLIDE_FILTER)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | os.PathLike) -> bool:
        """Open ``path`` in the viewer. On failure show why, keep the current slide, return False."""
        path = Path(path).expanduser().absolute()
        try:
            from msrl_model.slide import open_slide  # imported on first use: keeps start-up fast

            if not path.is_file():
                raise MSRLError(f"{path} does not exist or is not a file; it may have been moved, renamed "
                                f"or deleted - choose it again with File ▸ Open slide…")
            slide = open_slide(path)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a dialog, never a crash
            if not path.exists():
                self._forget_recent(path)
            self.report_error(f"Cannot open {path.name}", exc)
            return False
        log.info("opened %s (%s, %s, %dx%d, %d levels, mpp %.4g %s)", path, slide.vendor, slide.backend,
                 *slide.dimensions, slide.level_count, slide.mpp, slide.mpp_source)
        for warning in slide.warnings:
            log.warning(warning)
        self.viewer.set_slide(slide)
        self.properties.set_slide(slide)
        self.setWindowTitle(f"{path.name} — {APP}")
        self.settings.setValue("paths/last_dir", str(path.parent))
        self._remember_recent(path)
        if slide.warnings:
            self.statusBar().showMessage(slide.warnings[0], 15000)
        else:
            self.statusBar().showMessage(f"Opened {path.name}", 5000)
        self.slideOpened.emit(str(path))
        return True

    def close_slide(self) -> None:
        self.viewer.set_slide(None)
        self.properties.set_slide(None)
        self.setWindowTitle(APP)
        self._update_readouts()

    def report_error(self, title: str, exc: BaseException) -> None:
        """A dialog with the cause and what to do, and a log line (with traceback if unexpected)."""
        kept = (f"\n\n{self.viewer.slide.path.name} is still open." if self.viewer.slide is not None else "")
        if isinstance(exc, MSRLError):
            log.error("%s: %s", title, exc)
            text = f"{exc}{kept}"
        else:
            log.error("%s: unexpected %s", title, type(exc).__name__, exc_info=exc)
            where = f"\n\nDetails are in the log file:\n{self.log_path}" if self.log_path else ""
            text = (f"Unexpected error: {type(exc).__name__}: {exc}\n\nCheck that the file is a whole-slide "
                    f"image and readable; if it opens in other viewers, please report this with the log "
                    f"file.{where}{kept}")
        if self.show_dialogs:
            QMessageBox.critical(self, title, text)
        else:
            print(f"error: {title}: {text}", file=sys.stderr)

    # -- recent files -------------------------------------------------------------------------------
    def recent_files(self) -> list[str]:
        value = self.settings.value("recent/files", [])
        if isinstance(value, str):  # QSettings INI gives a bare string for one-element lists
            value = [value]
        return [str(v) for v in (value or [])]

    def _set_recent(self, files: list[str]) -> None:
        self.settings.setValue("recent/files", files[:MAX_RECENT])
        self.settings.sync()
        self._rebuild_recent_menu()

    def _remember_recent(self, path: Path) -> None:
        item = str(path.resolve())
        self._set_recent([item] + [f for f in self.recent_files() if f != item])

    def _forget_recent(self, path: Path) -> None:
        item = str(path.resolve())
        if item in self.recent_files():
            self._set_recent([f for f in self.recent_files() if f != item])

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for i, item in enumerate(files):
            act = self.recent_menu.addAction(f"&{i + 1 if i < 9 else 0}  {Path(item).name}")
            act.setStatusTip(item)
            act.setToolTip(item)
            act.triggered.connect(lambda _=False, p=item: self.open_slide(p))
        if files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", lambda: self._set_recent([]))
        self.recent_menu.setEnabled(bool(files))

    # -- readouts and overlays ----------------------------------------------------------------------
    def _update_readouts(self) -> None:
        slide = self.viewer.slide
        if slide is None:
            for label in (self.position_label, self.level_label, self.mag_label):
                label.setText("")
            return
        level = self.viewer.current_level()
        self.level_label.setText(f"Level {level} (÷{slide.level_downsamples[level]:.3g})")
        self.mag_label.setText(f"{format_magnification(self.viewer.magnification())}  "
                               f"{slide.mpp / self.viewer.scale:.3g} µm/px")

    def _on_cursor(self, x: float, y: float) -> None:
        slide = self.viewer.slide
        if slide is None:
            return
        w0, h0 = slide.dimensions
        if 0 <= x < w0 and 0 <= y < h0:
            self.position_label.setText(f"x {x * slide.mpp / 1000:.3f} mm, y {y * slide.mpp / 1000:.3f} mm "
                                        f"({int(x):,}, {int(y):,} px)")
        else:
            self.position_label.setText("")

    def _sync_overlay_actions(self) -> None:
        for name, act in self.overlay_actions.items():
            act.blockSignals(True)
            act.setChecked(self.viewer.overlay_visible(name))
            act.blockSignals(False)
            act.setEnabled(self.viewer.overlay_available(name))

    # -- help -----------------------------------------------------------------------------------------
    def about_text(self) -> str:
        log_line = str(self.log_path) if self.log_path else "not available (the log folder is not writable)"
        return (f"<h3>{APP} {__version__}</h3>"
                f"<p><b>{RESEARCH_ONLY}.</b> Predictions are research outputs of the MSRL method "
                f"and must not be used to diagnose or treat patients.</p>"
                f"<p>Slides read with OpenSlide / tiffslide; Qt {qVersion()} (PySide6).</p>"
                f"<p>Log file:<br><code>{log_line}</code></p>")

    def show_about(self) -> None:
        QMessageBox.about(self, f"About {APP}", self.about_text())

    # -- window events -------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        files = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if files:
            event.acceptProposedAction()
            self.open_slide(files[0])
            if len(files) > 1:
                self.statusBar().showMessage(f"Opened the first of {len(files)} dropped files", 8000)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.sync()
        self.viewer.shutdown()
        super().closeEvent(event)
