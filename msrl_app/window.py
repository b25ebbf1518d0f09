"""The main window: viewer in the middle, overview and slide properties on the left, overlays and
results on the right, menus, recent files, drag and drop; Analyze (a worker thread running
``Predictor.predict_slide``), model bundles, expression files, exports.

Every failure (opening a slide, loading a bundle, analysing) becomes a dialog saying what happened
and what to do, plus a log line; the slide already open stays open, and so does the app.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QSettings, Qt, Signal, qVersion
from PySide6.QtGui import QAction, QActionGroup, QColor, QDragEnterEvent, QDropEvent, QKeySequence, QPalette
from PySide6.QtWidgets import (QApplication, QComboBox, QDockWidget, QFileDialog, QLabel, QMainWindow,
                               QMessageBox, QStyleFactory, QToolBar, QToolButton, QVBoxLayout, QWidget)

from msrl_app.analysis import (DEVICES, NO_BUNDLE, AnalysisOutcome, AnalysisRequest, PredictorCache, analysis_job,
                               features_dir, read_expression)
from msrl_app.controls import AnalysisProgress, ModelCardDialog
from msrl_app.panels import OverlayPanel, SlidePropertiesPanel
from msrl_app.viewer import OverviewWidget, SlideViewer, format_magnification
from msrl_app.worker import GeneratorWorker
from msrl_model import __version__
from msrl_model.errors import MSRLError
from msrl_model.progress import Progress, Stage

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
    bundleLoaded = Signal(str)  # path of a bundle whose manifest was read
    analysisProgress = Signal(object)  # each Progress event of the running analysis
    analysisFinished = Signal(str)  # "done" | "error" | "cancelled" | "ignored" (the slide changed meanwhile)

    def __init__(self, settings: QSettings | None = None, log_path: Path | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else default_settings()
        self.log_path = log_path
        self.show_dialogs = True  # False: errors go to stderr instead of a dialog (``msrl-app --quit``)
        self.last_error: str | None = None  # text of the last error reported (automation, tests)
        self.bundle_path: Path | None = None  # the model bundle Analyze uses
        self.bundle_manifest: dict[str, Any] | None = None  # its manifest, once read (background)
        self.bundle_card = ""  # its model card (Markdown)
        self.predictors = PredictorCache()  # loaded models, kept between runs
        self.expression: dict[str, float] | None = None  # this case's expression (MSRL_multi)
        self.expression_name = ""  # the expression file's name
        self.result: Any = None  # the PredictionResult shown (msrl_model.infer.results)
        self.result_slide: Path | None = None  # the slide it belongs to
        self.cohort_risks: dict[str, np.ndarray] = {}  # survival task -> training cohort risks
        self._analysis: GeneratorWorker | None = None
        self._analysis_slide: Path | None = None
        self._bundle_worker: GeneratorWorker | None = None
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
        from msrl_app.results_view import ResultsPanel  # after the window module: keeps start-up lean

        self.results = ResultsPanel()
        self.results.rerunRequested.connect(self.rerun_as)
        self.results.linked.thumbnail_for = self._case_thumbnail
        self.results_dock = self._dock("Results", self.results, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([self.overview_dock, self.results_dock], [320, 520], Qt.Orientation.Horizontal)
        self.resizeDocks([self.overlays_dock, self.results_dock], [150, 700], Qt.Orientation.Vertical)

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self.viewer.viewChanged.connect(self._update_readouts)
        self.viewer.cursorMoved.connect(self._on_cursor)
        self.viewer.backgroundError.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.viewer.overlaysChanged.connect(self._sync_overlay_actions)
        self.viewer.slideChanged.connect(self._update_analysis_actions)
        self._restore_window()
        self._rebuild_recent_menu()
        self._update_readouts()
        self._update_analysis_actions()

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
        self.progress = AnalysisProgress()
        self.progress.cancelRequested.connect(self.cancel_analysis)
        bar.addPermanentWidget(self.progress)  # permanent: temporary messages never draw over it
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
        self.analyze_action = action("&Analyze", self.start_analysis, "Ctrl+R",
                                     "Predict survival, stage and mutations for this slide with the model bundle")
        self.cancel_action = action("&Cancel analysis", self.cancel_analysis, "Esc")
        self.open_bundle_action = action("Open model &bundle…", self.choose_bundle, None,
                                         "Use another model bundle (a bundle folder or a .msrl file)")
        self.expression_action = action("Load &expression for this case…", self.choose_expression, None,
                                        "Add this case's gene expression (CSV): runs MSRL_multi")
        self.clear_expression_action = action("Clear expression", self.clear_expression, None,
                                              "Back to MSRL (slide only)")
        self.export_pdf_action = action("Export &report (PDF)…", self.choose_export_pdf, "Ctrl+P",
                                        "A PDF report of this slide's results")
        self.export_results_action = action("Export results (JSON/CSV)…", self.choose_export_results, "Ctrl+E",
                                            "Machine-readable results")
        self.model_card_action = action("&Model card", self.show_model_card, None,
                                        "The model bundle's model card: training cohort, metrics, encoder")
        self.device_actions: dict[str, QAction] = {}
        group = QActionGroup(self)
        titles = {"auto": "&Automatic (GPU if available)", "cpu": "&CPU", "cuda": "CUDA &GPU"}
        for name in DEVICES:
            act = QAction(titles[name], self)
            act.setCheckable(True)
            act.setChecked(name == self.device())
            act.triggered.connect(lambda _=False, n=name: self.set_device(n))
            group.addAction(act)
            self.device_actions[name] = act
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
        file_menu.addAction(self.open_bundle_action)
        file_menu.addAction(self.expression_action)
        file_menu.addAction(self.clear_expression_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_pdf_action)
        file_menu.addAction(self.export_results_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        analysis_menu = menu.addMenu("&Analysis")
        analysis_menu.addAction(self.analyze_action)
        analysis_menu.addAction(self.cancel_action)
        view_menu = menu.addMenu("&View")
        for act in (self.fit_action, self.one_to_one_action, self.zoom_in_action, self.zoom_out_action):
            view_menu.addAction(act)
        view_menu.addSeparator()
        overlays = view_menu.addMenu("&Overlays")
        for act in self.overlay_actions.values():
            overlays.addAction(act)
        panels = view_menu.addMenu("&Panels")
        for dock in (self.overview_dock, self.properties_dock, self.overlays_dock, self.results_dock):
            panels.addAction(dock.toggleViewAction())
        settings_menu = menu.addMenu("&Settings")
        device_menu = settings_menu.addMenu("&Device")
        for act in self.device_actions.values():
            device_menu.addAction(act)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.model_card_action)
        help_menu.addSeparator()
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
        bar.addSeparator()
        bar.addWidget(QLabel(" Cancer type "))
        self.project_combo = QComboBox()
        self.project_combo.setMinimumContentsLength(14)
        self.project_combo.setToolTip("The slide's cancer type (project) among the bundle's training projects")
        self.project_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        bar.addWidget(self.project_combo)
        bar.addAction(self.analyze_action)
        self.analyze_button = bar.widgetForAction(self.analyze_action)
        if isinstance(self.analyze_button, QToolButton):
            self.analyze_button.setObjectName("analyze_button")
            self.analyze_button.setStyleSheet(
                "QToolButton#analyze_button { background: #2f6fce; color: white; font-weight: bold;"
                " padding: 3px 14px; border-radius: 3px; }"
                "QToolButton#analyze_button:hover { background: #3d7fd9; }"
                "QToolButton#analyze_button:disabled { background: #3a3e45; color: #7b8089; }")
        self.mode_badge = QLabel()
        self.mode_badge.setStyleSheet("color: #4fc3f7; padding-left: 8px;")
        bar.addWidget(self.mode_badge)
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
        self.cancel_analysis()
        self.viewer.set_slide(slide)
        self.properties.set_slide(slide)
        self.show_result(None)
        self.setWindowTitle(f"{path.name} — {APP}")
        self.settings.setValue("paths/last_dir", str(path.parent))
        self._remember_recent(path)
        if slide.warnings:
            self.statusBar().showMessage(slide.warnings[0], 15000)
        else:
            self.statusBar().showMessage(f"Opened {path.name}", 5000)
        self.slideOpened.emit(str(path))
        return True

    def open_demo_slide(self) -> None:
        """Open the demo slide, rendering it first (once, on a worker thread) when needed."""
        from msrl_app.analysis import demo_slide_job, demo_slide_path

        if demo_slide_path().is_file():
            self.open_slide(demo_slide_path())
            return
        self.statusBar().showMessage("Preparing the demo slide (synthetic H&E, once; a few seconds)…")
        worker = GeneratorWorker(demo_slide_job)
        worker.returned.connect(lambda path: self.viewer.slide is None and self.open_slide(path))
        worker.errored.connect(lambda exc: self.report_error("Cannot prepare the demo slide", exc,
                                                             "Open a slide of your own with File ▸ Open slide…"))
        self._demo_worker = worker
        worker.start()

    def close_slide(self) -> None:
        self.cancel_analysis()
        self.viewer.set_slide(None)
        self.properties.set_slide(None)
        self.setWindowTitle(APP)
        self._update_readouts()

    def report_error(self, title: str, exc: BaseException, hint: str | None = None) -> None:
        """A dialog with the cause and what to do, and a log line (with traceback if unexpected).

        ``hint``: what to try for an unexpected (non-MSRLError) exception; the default is about slides."""
        kept = (f"\n\n{self.viewer.slide.path.name} is still open." if self.viewer.slide is not None else "")
        if isinstance(exc, MSRLError):
            log.error("%s: %s", title, exc)
            text = f"{exc}{kept}"
        else:
            log.error("%s: unexpected %s", title, type(exc).__name__, exc_info=exc)
            where = f"\n\nDetails are in the log file:\n{self.log_path}" if self.log_path else ""
            hint = hint or ("Check that the file is a whole-slide image and readable; if it opens in other "
                            "viewers, please report this with the log file.")
            text = f"Unexpected error: {type(exc).__name__}: {exc}\n\n{hint}{where}{kept}"
        self.last_error = f"{title}: {text}"
        if self.show_dialogs:
            QMessageBox.critical(self, title, text)
        else:
            print(f"error: {title}: {text}", file=sys.stderr)

    # -- model bundle ---------------------------------------------------------------------------------
    def device(self) -> str:
        """The Settings ▸ Device choice: "auto" (CUDA when available, else CPU), "cpu" or "cuda"."""
        value = getattr(self, "_device_override", None) or str(self.settings.value("analysis/device", "auto"))
        return value if value in DEVICES else "auto"

    def set_device(self, device: str, remember: bool = True) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}")
        self._device_override = None if remember else device
        if remember:
            self.settings.setValue("analysis/device", device)
        self.device_actions[device].setChecked(True)
        self.predictors.clear()  # the next Analyze loads the model on the new device
        self.statusBar().showMessage(f"Analysis device: {device}", 5000)

    def choose_bundle(self) -> None:
        start = str(self.bundle_path.parent if self.bundle_path else Path.home())
        dialog = QFileDialog(self, "Open model bundle", start, "MSRL model bundles (*.msrl manifest.json)")
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        if dialog.exec():
            chosen = Path(dialog.selectedFiles()[0])
            self.set_bundle(chosen.parent if chosen.name == "manifest.json" else chosen)

    def set_bundle(self, path: str | os.PathLike | None, remember: bool = True) -> None:
        """Use the bundle at ``path`` (directory or .msrl). Its manifest is read on a worker thread
        (this is also where torch is first imported); projects fill the cancer-type list when done."""
        self.bundle_path = Path(path).expanduser().absolute() if path else None
        self.bundle_manifest, self.bundle_card = None, ""
        self.results.set_model(None)
        self.predictors.clear()
        self._fill_projects([])
        if remember and self.bundle_path is not None:
            self.settings.setValue("bundle/path", str(self.bundle_path))
        self._update_analysis_actions()
        if self.bundle_path is None:
            return
        bundle, device = self.bundle_path, self.device()

        def job():  # loads the model in the background: a warm-up for Analyze, and validates the bundle
            yield Progress(Stage.LOAD_MODEL, 0, 1, bundle.name)
            predictor = self.predictors.get(bundle, device)
            return predictor.bundle.manifest, predictor.bundle.model_card

        worker = GeneratorWorker(job)
        worker.returned.connect(lambda value, b=bundle: self._on_bundle(b, *value))
        worker.errored.connect(lambda exc, b=bundle: self._on_bundle_error(b, exc))
        self._bundle_worker = worker
        worker.start()

    def _on_bundle(self, bundle: Path, manifest: dict[str, Any], card: str) -> None:
        if bundle != self.bundle_path:
            return  # another bundle was chosen meanwhile
        self.bundle_manifest, self.bundle_card = manifest, card
        self.results.set_model(manifest, bundle.name)
        cohort = manifest.get("cohort") or {}
        self._fill_projects([str(p) for p in cohort.get("projects") or []])
        synthetic = " · SYNTHETIC training cohort" if cohort.get("synthetic") else ""
        log.info("model bundle %s (%d tasks%s)", bundle, len(manifest.get("tasks") or []), synthetic)
        self.statusBar().showMessage(f"Model bundle: {bundle.name}{synthetic}", 8000)
        self._update_analysis_actions()
        self.bundleLoaded.emit(str(bundle))

    def _on_bundle_error(self, bundle: Path, exc: Exception) -> None:
        from msrl_model.errors import BundleError

        if bundle != self.bundle_path:
            return
        if not isinstance(exc, BundleError):  # e.g. the chosen device is missing: keep the bundle
            self.report_error("Cannot load the model", exc, "Check Settings ▸ Device.")
            return
        self.bundle_path = None
        self.settings.remove("bundle/path")
        self._update_analysis_actions()
        self.report_error("Cannot use this model bundle", exc,
                          "Check that the path is an MSRL Studio bundle (a folder with manifest.json, or a "
                          ".msrl file) and that it was copied completely.")

    def _fill_projects(self, projects: list[str]) -> None:
        current = self.project_combo.currentData()
        self.project_combo.clear()
        self.project_combo.addItem("Not specified", None)
        for project in projects:
            self.project_combo.addItem(project, project)
        index = self.project_combo.findData(current) if current else -1
        if current and index < 0:  # chosen before the bundle loaded (command line): keep it
            self.project_combo.addItem(current, current)
            index = self.project_combo.count() - 1
        self.project_combo.setCurrentIndex(max(0, index))

    def project(self) -> str | None:
        return self.project_combo.currentData()

    def set_project(self, project: str | None) -> None:
        index = self.project_combo.findData(project)
        if index < 0 and project:
            self.project_combo.addItem(project, project)
            index = self.project_combo.count() - 1
        self.project_combo.setCurrentIndex(max(0, index))

    def _case_thumbnail(self, task: str, row: int) -> bytes | None:
        """A linked case's thumbnail from the loaded bundle (None when it has none)."""
        predictor = self.predictors.current()
        if predictor is None:
            return None
        thumbnails = predictor.bundle.tasks[task].thumbnails
        return thumbnails[row] if thumbnails and 0 <= row < len(thumbnails) and thumbnails[row] else None

    def show_model_card(self) -> None:
        if self.bundle_manifest is None:
            self.report_error("No model card", MSRLError(NO_BUNDLE if self.bundle_path is None else
                              "the model bundle is still loading; try again in a moment"))
            return
        self.model_card_dialog = ModelCardDialog(self.bundle_manifest, self.bundle_card, self)
        self.model_card_dialog.show()

    # -- expression ---------------------------------------------------------------------------------
    def choose_expression(self) -> None:
        start = str(self.settings.value("paths/expression_dir", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(self, "Load expression for this case", start,
                                              "Expression tables (*.csv *.txt);;All files (*)")
        if path:
            self.load_expression(path)

    def load_expression(self, path: str | os.PathLike, analyze: bool = True) -> bool:
        """Read one case's expression; the next Analyze (started now when ``analyze`` and a slide is
        open) runs MSRL_multi."""
        path = Path(path)
        try:
            values = read_expression(path)
        except Exception as exc:  # noqa: BLE001 - a dialog, never a crash
            self.report_error(f"Cannot load {path.name}", exc, "Save the expression as a CSV text file.")
            return False
        self.expression, self.expression_name = values, path.name
        self.settings.setValue("paths/expression_dir", str(path.parent))
        log.info("expression %s: %d genes", path, len(values))
        self.statusBar().showMessage(f"Expression loaded: {len(values):,} genes from {path.name} — "
                                     f"Analyze runs MSRL_multi", 10000)
        self._update_analysis_actions()
        if analyze and self.viewer.slide is not None and not self.analysis_running():
            self.start_analysis()
        return True

    def clear_expression(self) -> None:
        self.expression, self.expression_name = None, ""
        self._update_analysis_actions()
        self.statusBar().showMessage("Expression cleared — Analyze runs MSRL (slide only)", 6000)

    # -- analysis -----------------------------------------------------------------------------------
    def analysis_running(self) -> bool:
        return self._analysis is not None

    def start_analysis(self) -> bool:
        """Analyze the open slide on a worker thread; False when it cannot start (a dialog says why)."""
        if self.analysis_running():
            return False
        slide = self.viewer.slide
        if slide is None:
            self.report_error("Nothing to analyze", MSRLError("no slide is open; open one with File ▸ Open slide…"))
            self.analysisFinished.emit("error")
            return False
        if self.bundle_path is None:
            self.report_error("Cannot analyze", MSRLError(NO_BUNDLE))
            self.analysisFinished.emit("error")
            return False
        request = AnalysisRequest(slide=slide.path, bundle=self.bundle_path, device=self.device(),
                                  project=self.project(), expression=self.expression, cache=features_dir())
        log.info("analyze %s with %s (device %s, project %s, %s)", request.slide, request.bundle,
                 request.device, request.project, "with expression" if request.expression else "slide only")
        worker = GeneratorWorker(lambda: analysis_job(request, self.predictors))
        worker.yielded.connect(self._on_analysis_progress)
        worker.returned.connect(self._on_analysis_result)
        worker.errored.connect(self._on_analysis_error)
        worker.aborted.connect(self._on_analysis_cancelled)
        worker.finished.connect(self._on_analysis_finished)
        self._analysis, self._analysis_slide = worker, slide.path
        self.progress.begin("Starting the analysis…")
        self._update_analysis_actions()
        worker.start()
        return True

    def cancel_analysis(self) -> None:
        if self._analysis is not None:
            log.info("analysis cancel requested")
            self._analysis.quit()
            self.progress.cancel_button.setEnabled(False)
            self.progress.cancel_button.setText("Cancelling…")

    def rerun_as(self, project: str) -> None:
        """Confirm the suggested cancer type and analyse again (features come from the cache)."""
        if project:
            self.set_project(project)
            self.start_analysis()

    def _on_analysis_progress(self, event: Progress) -> None:
        if self.sender() is not self._analysis:
            return
        self.progress.on_progress(event)
        self.analysisProgress.emit(event)
        if event.stage == "retry":
            self.statusBar().showMessage(event.message, 20000)

    def _on_analysis_result(self, outcome: AnalysisOutcome) -> None:
        if self.sender() is not self._analysis:
            return
        slide = self.viewer.slide
        if slide is None or slide.path != self._analysis_slide:
            log.info("analysis result for %s dropped: that slide is no longer open", self._analysis_slide)
            self._finish_status = "ignored"
            return
        result = outcome.result
        self.cohort_risks = outcome.cohort_risks
        self.show_result(result, slide.path)
        self._finish_status = "done"
        log.info("analysis done: %s", result.summary())
        self.statusBar().showMessage(f"Analysis of {slide.path.name} finished", 8000)

    def _on_analysis_error(self, exc: Exception) -> None:
        if self.sender() is not self._analysis:
            return
        self._finish_status = "error"
        name = self._analysis_slide.name if self._analysis_slide else "the slide"
        self.report_error(f"Analysis of {name} failed", exc,
                          "The slide and the model bundle may be incompatible, or this is a bug; the slide "
                          "stays open and you can try again.")

    def _on_analysis_cancelled(self) -> None:
        if self.sender() is not self._analysis:
            return
        self._finish_status = "cancelled"
        log.info("analysis of %s cancelled", self._analysis_slide)
        self.statusBar().showMessage("Analysis cancelled — nothing was kept; click Analyze to start again", 10000)
        if self.show_dialogs:
            QMessageBox.information(self, "Analysis cancelled",
                                    "The analysis was cancelled; nothing partial was kept.\n\n"
                                    "Click Analyze (Ctrl+R) to start again: patch features already "
                                    "saved for this slide are reused.")

    def _on_analysis_finished(self) -> None:
        if self.sender() is not self._analysis:
            return
        status = getattr(self, "_finish_status", "error")
        self._analysis, self._analysis_slide, self._finish_status = None, None, "error"
        self.progress.end()
        self._update_analysis_actions()
        self.analysisFinished.emit(status)

    def show_result(self, result: Any, slide_path: Path | None = None) -> None:
        """Fill the results panels and the heat-map overlay (None clears both)."""
        self.result, self.result_slide = result, slide_path
        projects = [self.project_combo.itemData(i) for i in range(1, self.project_combo.count())]
        self.results.set_result(result, self.cohort_risks if result is not None else None, projects)
        if result is None:
            self.viewer.set_heatmap(None)
            self.viewer.set_patches(None)
        else:
            coords = np.asarray(result.coords, dtype=np.int64).reshape(-1, 2)  # (N, 2) level-0 x, y
            task = next((t for t in result.tasks.values() if t.kind == "survival"), next(iter(result.tasks.values())))
            self.viewer.set_patches(coords, result.patch_size_level0)
            self.viewer.set_heatmap(coords, result.patch_size_level0, np.asarray(task.attention),
                                    label=f"Attention ({task.name})")
            self.viewer.set_overlay_visible("heatmap", True)
            self.results_dock.show()
            self.results_dock.raise_()
        self._update_analysis_actions()

    def _update_analysis_actions(self) -> None:
        running = self.analysis_running()
        has_slide = self.viewer.slide is not None
        self.analyze_action.setEnabled(has_slide and not running)
        self.analyze_action.setToolTip(
            "Open a slide first" if not has_slide else
            (NO_BUNDLE if self.bundle_path is None else "Analyze this slide (Ctrl+R)"))
        self.cancel_action.setEnabled(running)
        self.project_combo.setEnabled(not running)
        self.expression_action.setEnabled(not running)
        self.clear_expression_action.setEnabled(self.expression is not None and not running)
        self.open_bundle_action.setEnabled(not running)
        has_result = self.result is not None
        self.export_pdf_action.setEnabled(has_result and not running)
        self.export_results_action.setEnabled(has_result and not running)
        self.mode_badge.setText(f"MSRL_multi · expression: {self.expression_name}" if self.expression else "")

    # -- export -------------------------------------------------------------------------------------
    def _export_start(self, suffix: str) -> str:
        folder = Path(str(self.settings.value("paths/export_dir", str(Path.home()))))
        stem = self.result.slide_id if self.result is not None else "results"
        return str(folder / f"{stem}{suffix}")

    def choose_export_pdf(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", self._export_start("-report.pdf"),
                                              "PDF (*.pdf)")
        if path:
            self.export_pdf(path)

    def choose_export_results(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export results", self._export_start(".json"),
                                              "JSON and CSV (*.json)")
        if path:
            self.export_results(path)

    def export_pdf(self, path: str | os.PathLike) -> bool:
        """Write the PDF report of the shown result; False (and a dialog) on failure."""
        from msrl_app.report import write_report

        path = Path(path)
        try:
            if self.result is None:
                raise MSRLError("there are no results to export; click Analyze first")
            write_report(path, self._report_inputs())
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"Cannot write {path.name}", exc, "Choose a folder you can write to.")
            return False
        self.settings.setValue("paths/export_dir", str(path.parent))
        log.info("report written: %s", path)
        self.statusBar().showMessage(f"Report written: {path}", 8000)
        return True

    def export_results(self, path: str | os.PathLike) -> bool:
        """Write ``<path>.json`` (the full result) and ``<stem>.csv`` and ``<stem>-linked-cases.csv``."""
        from msrl_model.infer.export import write_results

        path = Path(path)
        try:
            if self.result is None:
                raise MSRLError("there are no results to export; click Analyze first")
            written = write_results(path, self.result)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"Cannot write {path.name}", exc, "Choose a folder you can write to.")
            return False
        self.settings.setValue("paths/export_dir", str(path.parent))
        log.info("results written: %s", ", ".join(map(str, written)))
        self.statusBar().showMessage(f"Results written: {', '.join(p.name for p in written)}", 8000)
        return True

    def _report_inputs(self):
        from msrl_app.report import ReportInputs

        slide = self.viewer.slide
        return ReportInputs(result=self.result, manifest=self.bundle_manifest or {},
                            slide_thumbnail=self._slide_thumbnail(),
                            slide_size=slide.dimensions if slide is not None else None,
                            cohort_risks=self.cohort_risks, slide_summary=self.properties_summary(),
                            model_card=self.bundle_card)

    def _slide_thumbnail(self):
        """The viewer's overview image; read now if its background job has not finished."""
        from msrl_app.tiles import rgb_to_qimage
        from msrl_app.viewer import THUMBNAIL_SIZE

        image = self.viewer.thumbnail()
        if image is None and self.viewer.slide is not None:
            image = rgb_to_qimage(self.viewer.slide.thumbnail(THUMBNAIL_SIZE))
        return image

    def properties_summary(self) -> list[tuple[str, str]]:
        """A few facts about the open slide for the report."""
        from msrl_app.panels import slide_summary

        slide = self.viewer.slide
        if slide is None:
            return []
        rows = dict(row for _, section in slide_summary(slide) for row in section)
        return [(k, rows[k]) for k in ("File", "Vendor", "Dimensions", "Physical size", "Microns per pixel",
                                       "Objective power") if k in rows]

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
        if self._analysis is not None:
            worker = self._analysis
            worker.quit()
            worker.wait(10000)
        if self._bundle_worker is not None:
            # the model load cannot be interrupted inside torch's import; exiting the interpreter
            # under it crashes (seen: SIGSEGV on `msrl-app SLIDE --quit` with a bundle), so let it end
            self._bundle_worker.quit()
            self._bundle_worker.wait(120000)
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.sync()
        self.viewer.shutdown()
        super().closeEvent(event)
