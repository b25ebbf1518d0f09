"""The main window: viewer in the middle, overview and slide properties on the left, overlays and
results on the right, menus, recent files, drag and drop.

The window owns no app state: it wires its widgets to :class:`msrl_app.state.AppState` (its
``state``) — menu items and buttons call the state's actions, and the widgets follow the state's
events. The methods kept here (``open_slide``, ``set_bundle``, ``start_analysis``, ``export_pdf``…)
forward to the state and add what only a window has (settings, recent files, dialogs).

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
from PySide6.QtCore import QByteArray, QEventLoop, QSettings, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QDockWidget, QMainWindow, QMessageBox, QVBoxLayout, QWidget

from msrl_app import actions, dialogs, window_layout, worklist
from msrl_app.banner import ApplicabilityBanner
from msrl_app.analysis import DEVICES, NO_BUNDLE
from msrl_app.controls import ModelCardDialog
from msrl_app.labels import model_display_name
from msrl_app.dialogs import APP, MAX_RECENT, SLIDE_FILTER, SLIDE_SUFFIXES, RecentFiles  # noqa: F401 - re-exported
from msrl_app.overview import OverviewWidget
from msrl_app.panels import OverlayPanel, SlidePropertiesPanel
from msrl_app.regions import RegionTools
from msrl_app.scalebar import format_magnification, position_text
from msrl_app.state import AppState, ErrorReport, JobState, StatusMessage, primary_task
from msrl_app.theme import apply_theme, first_size  # noqa: F401 - apply_theme re-exported (main, docs/screenshots.py)
from msrl_app.viewer import SlideViewer
from msrl_app.worker import new_worker
from msrl_model import RESEARCH_USE_ONLY  # noqa: F401 - re-exported
from msrl_model.errors import MSRLError
from msrl_model.progress import Progress

log = logging.getLogger(__name__)

ORG = "MSRL"


def default_settings() -> QSettings:
    """Per-user INI settings (its folder follows ``QSettings.setPath(IniFormat, UserScope, …)``)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


CANCELLED_TEXT = ("The analysis was cancelled: no result was produced.\n\nThe patch features encoded so far are "
                  "kept; click Analyze (Ctrl+R) to continue from them.")


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
        self.state = AppState(job_factory=new_worker, log_path=log_path)
        device = str(self.settings.value("analysis/device", "auto"))
        self.state.device = device if device in DEVICES else "auto"
        self.state.report_writer = self._write_report
        self.setWindowTitle(APP)
        self.setAcceptDrops(True)
        self.resize(first_size(QGuiApplication.primaryScreen()))  # a saved geometry replaces it
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self._build_docks()
        actions.build_status_bar(self)
        actions.build_actions(self)
        actions.build_menus(self)
        actions.build_toolbar(self)
        worklist.install(self)  # the Worklist dock, File ▸ Open worklist folder…
        self.region_tools = RegionTools(self)  # the Regions toolbar, import/export menu entries, drawing on the viewer
        window_layout.install(self)  # column widths on the first show, the results' own window
        self.recent = RecentFiles(self.settings, self.recent_menu, self.open_slide)
        self._connect_viewer()
        self._connect_state()
        self._restore_window()
        self._sync_overlay_actions()
        self._update_readouts()
        self._update_analysis_actions()

    # -- construction -------------------------------------------------------------------------------
    def _build_docks(self) -> None:
        self.viewer = SlideViewer()
        self.ood_banner = ApplicabilityBanner()  # above the slide: shown when it is unlike the training cohort
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.ood_banner)
        column.addWidget(self.viewer, 1)
        self.setCentralWidget(central)
        self.overview = OverviewWidget(self.viewer)
        self.properties = SlidePropertiesPanel()
        self.overlays = OverlayPanel(self.viewer)
        left = Qt.DockWidgetArea.LeftDockWidgetArea  # top to bottom: overview, overlays, slide properties
        self.overview_dock = self._dock("Overview", self.overview, left)
        self.overlays_dock = self._dock("Overlays", self.overlays, left)
        self.properties_dock = self._dock("Slide properties", self.properties, left)
        from msrl_app.results_view import ResultsPanel  # after the window module: keeps start-up lean

        self.results = ResultsPanel()
        self.results.rerunRequested.connect(self.rerun_as)
        self.results.linked.thumbnail_for = self._case_thumbnail
        self.results_dock = self._dock("Results", self.results, Qt.DockWidgetArea.RightDockWidgetArea)
        self.resizeDocks([self.overview_dock, self.overlays_dock], [200, 190], Qt.Orientation.Vertical)

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

    def _connect_viewer(self) -> None:
        self.viewer.viewChanged.connect(self._update_readouts)
        self.viewer.cursorMoved.connect(self._on_cursor)
        self.viewer.backgroundError.connect(lambda text: self.statusBar().showMessage(text, 10000))
        self.viewer.overlaysChanged.connect(self._sync_overlay_actions)
        self.viewer.slideChanged.connect(self._update_analysis_actions)
        self.project_combo.currentIndexChanged.connect(
            lambda _: self.state.set_project(self.project_combo.currentData()))

    def _connect_state(self) -> None:
        """The one place where the widgets subscribe to the state."""
        ev = self.state.events
        ev.slide.connect(self._on_slide)
        ev.bundle.connect(lambda path: (self.results.set_model(None, loading=path), self._update_analysis_actions()))
        ev.bundle_loaded.connect(self._on_bundle_loaded)
        ev.bundle_rejected.connect(lambda _: (self.settings.remove("bundle/path"), self._update_analysis_actions()))
        ev.projects.connect(lambda choices: actions.fill_projects(self.project_combo, choices, self.state.project))
        ev.project.connect(lambda project: actions.select_project(self.project_combo, project))
        ev.expression.connect(self._on_expression)
        ev.device.connect(self._on_device)
        ev.result.connect(self._on_result)
        ev.job.connect(self._on_job)
        ev.progress.connect(self._on_progress)
        ev.finished.connect(self._on_finished)
        ev.error.connect(self._on_error)
        ev.message.connect(self._on_message)
        ev.exported.connect(lambda path: self.settings.setValue("paths/export_dir", str(Path(path).parent)))

    def _restore_window(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = self.settings.value("window/state")  # an older layout's state is not restored
        self.state_restored = isinstance(state, QByteArray) and self.restoreState(state, window_layout.STATE_VERSION)

    # -- state, read through (automation, tests) ------------------------------------------------------
    result = property(lambda self: self.state.result)  # the PredictionResult shown
    result_slide = property(lambda self: self.state.result_slide)
    cohort_risks = property(lambda self: self.state.cohort_risks)
    bundle_path = property(lambda self: self.state.bundle_path)
    bundle_manifest = property(lambda self: self.state.bundle_manifest)
    bundle_card = property(lambda self: self.state.bundle_card)
    predictors = property(lambda self: self.state.predictors)
    expression = property(lambda self: self.state.expression)
    expression_name = property(lambda self: self.state.expression_name)

    @property
    def last_error(self) -> str | None:
        """Text of the last error reported (automation, tests)."""
        return str(self.state.last_error) if self.state.last_error is not None else None

    # -- state events -> widgets ----------------------------------------------------------------------
    def _on_slide(self, path: Path | None) -> None:
        slide = self.state.slide_handle if path is not None else None
        self.results.set_has_slide(path is not None)
        self.viewer.set_slide(slide)
        self.properties.set_slide(slide)
        if path is None:
            self.setWindowTitle(APP)
            self._update_readouts()
            return
        self.setWindowTitle(f"{path.name} — {APP}")
        self.settings.setValue("paths/last_dir", str(path.parent))
        self.recent.remember(path)
        self.slideOpened.emit(str(path))

    def _on_bundle_loaded(self, bundle: Path) -> None:
        self.results.set_model(self.state.bundle_manifest, model_display_name(self.state.bundle_manifest, bundle.name))
        self._update_analysis_actions()
        self.bundleLoaded.emit(str(bundle))

    def _on_expression(self, path: Path | None) -> None:
        if path is not None:
            self.settings.setValue("paths/expression_dir", str(Path(path).parent))
        self._update_analysis_actions()

    def _on_device(self, device: str) -> None:
        self.device_actions[device].setChecked(True)
        self.statusBar().showMessage(f"Analysis device: {device}", 5000)

    def _on_result(self, result: Any) -> None:
        """Fill the results panels and the heat-map overlay (None clears both)."""
        self.results.set_result(result, self.state.cohort_risks if result is not None else None,
                                self.state.project_choices())
        self.ood_banner.show_result(result)
        if result is None:
            self.viewer.set_heatmap(None)
            self.viewer.set_patches(None)
        else:
            coords = np.asarray(result.coords, dtype=np.int64).reshape(-1, 2)  # (N, 2) level-0 x, y
            task = primary_task(result)
            self.viewer.set_patches(coords, result.patch_size_level0)
            self.viewer.set_heatmap(coords, result.patch_size_level0, np.asarray(task.attention),
                                    label=f"Attention ({task.name})")
            self.viewer.set_overlay_visible("heatmap", True)
            self.results_dock.show()
            self.results_dock.raise_()
        self._update_analysis_actions()

    def _on_job(self, job: JobState) -> None:
        if job is JobState.ANALYSING:  # entered once per analysis
            self.progress.begin("Starting the analysis…")
        elif job is JobState.CANCELLING:
            self.progress.cancel_button.setEnabled(False)
            self.progress.cancel_button.setText("Cancelling…")
        elif not self.state.analysis_running:
            self.progress.end()
        self._update_analysis_actions()

    def _on_progress(self, event: Progress) -> None:
        self.progress.on_progress(event)
        self.analysisProgress.emit(event)

    def _on_finished(self, outcome: str) -> None:
        if outcome == "cancelled" and self.show_dialogs:
            QMessageBox.information(self, "Analysis cancelled", CANCELLED_TEXT)
        self.analysisFinished.emit(outcome)

    def _on_error(self, report: ErrorReport) -> None:
        if self.show_dialogs:
            QMessageBox.critical(self, report.title, report.text)
        else:
            print(f"error: {report}", file=sys.stderr)

    def _on_message(self, message: StatusMessage) -> None:
        self.statusBar().showMessage(message.text, message.timeout_ms)

    def _update_analysis_actions(self) -> None:
        state = self.state
        running, has_slide = state.analysis_running, state.slide is not None
        self.analyze_action.setEnabled(has_slide and not running)
        self.analyze_action.setToolTip(
            "Open a slide first" if not has_slide else
            (NO_BUNDLE if state.bundle_path is None else "Analyze this slide (Ctrl+R)"))
        self.cancel_action.setEnabled(running)
        for widget in (self.project_combo, self.expression_action, self.open_bundle_action):
            widget.setEnabled(not running)
        self.clear_expression_action.setEnabled(state.expression is not None and not running)
        has_result = state.result is not None
        self.export_pdf_action.setEnabled(has_result and not running)
        self.export_results_action.setEnabled(has_result and not running)
        self.mode_badge.setText(f"MSRL_multi · expression: {state.expression_name}" if state.expression else "")

    # -- slides -------------------------------------------------------------------------------------
    def choose_slide(self) -> None:
        path = dialogs.choose_slide(self, self.settings)
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | os.PathLike) -> bool:
        """Open ``path`` in the viewer. On failure show why, keep the current slide, return False."""
        if self.state.open_slide(path) is not None:
            return True
        path = Path(path).expanduser().absolute()
        if not path.exists():
            self.recent.forget(path)
        return False

    def open_demo_slide(self) -> None:
        """Open the demo slide, rendering it first (once, on a worker thread) when needed."""
        self.state.open_demo_slide()

    def close_slide(self) -> None:
        self.state.close_slide()

    def report_error(self, title: str, exc: BaseException, hint: str | None = None) -> None:
        """A dialog with the cause and what to do, and a log line (see ``AppState.report_error``)."""
        self.state.report_error(title, exc, hint)

    def recent_files(self) -> list[str]:
        return self.recent.files()

    # -- model bundle, device, project -----------------------------------------------------------------
    def device(self) -> str:
        """The Settings ▸ Device choice: "auto" (CUDA when available, else CPU), "cpu" or "cuda"."""
        return self.state.device

    def set_device(self, device: str, remember: bool = True) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}")
        if remember:
            self.settings.setValue("analysis/device", device)
        self.state.set_device(device)

    def choose_bundle(self) -> None:
        chosen = dialogs.choose_bundle(self, self.state.bundle_path)
        if chosen is not None:
            self.set_bundle(chosen)

    def set_bundle(self, path: str | os.PathLike | None, remember: bool = True) -> None:
        """Use the bundle at ``path`` (directory or .msrl). Its manifest is read on a worker thread
        (this is also where torch is first imported); projects fill the cancer-type list when done."""
        if remember and path:
            self.settings.setValue("bundle/path", str(Path(path).expanduser().absolute()))
        self.state.set_bundle(path)

    def project(self) -> str | None:
        return self.state.project

    def set_project(self, project: str | None) -> None:
        self.state.set_project(project)

    def _case_thumbnail(self, task: str, row: int) -> bytes | None:
        """A linked case's thumbnail from the loaded bundle (None when it has none)."""
        predictor = self.state.predictors.current()
        if predictor is None:
            return None
        thumbnails = predictor.bundle.tasks[task].thumbnails
        return thumbnails[row] if thumbnails and 0 <= row < len(thumbnails) and thumbnails[row] else None

    def show_model_card(self) -> None:
        if self.state.bundle_manifest is None:
            self.report_error("No model card", MSRLError(NO_BUNDLE if self.state.bundle_path is None else
                              "the model bundle is still loading; try again in a moment"))
            return
        self.model_card_dialog = ModelCardDialog(self.state.bundle_manifest, self.state.bundle_card, self)
        self.model_card_dialog.show()

    # -- expression ---------------------------------------------------------------------------------
    def choose_expression(self) -> None:
        path = dialogs.choose_expression(self, self.settings)
        if path:
            self.load_expression(path)

    def load_expression(self, path: str | os.PathLike, analyze: bool = True) -> bool:
        """Read one case's expression; the next Analyze (started now when ``analyze`` and a slide is
        open) runs MSRL_multi."""
        return self.state.load_expression(path, analyze=analyze)

    def clear_expression(self) -> None:
        self.state.clear_expression()

    # -- analysis -----------------------------------------------------------------------------------
    def analysis_running(self) -> bool:
        return self.state.analysis_running

    def start_analysis(self) -> bool:
        """Analyze the open slide on a worker thread; False when it cannot start (a dialog says why)."""
        return self.state.start_analysis()

    def cancel_analysis(self) -> None:
        self.state.cancel_analysis()

    def analyze_and_wait(self) -> str:
        """Analyze, running the event loop until the analysis ends; how it ended ("done", "error",
        "cancelled", "ignored"). For automation (``msrl-app --analyze``)."""
        outcome: list[str] = []
        loop = QEventLoop()

        def ended(status: str) -> None:
            outcome.append(status)
            loop.quit()

        self.state.events.finished.connect(ended)
        try:
            if self.start_analysis() and not outcome:
                loop.exec()
        finally:
            self.state.events.finished.disconnect(ended)
        return outcome[0] if outcome else "cancelled"  # no outcome: the app quit meanwhile

    def rerun_as(self, project: str) -> None:
        """Confirm the suggested cancer type and analyse again (features come from the cache)."""
        if project:
            self.set_project(project)
            self.start_analysis()

    def show_result(self, result: Any, slide_path: Path | None = None) -> None:
        """Show ``result`` (None clears it)."""
        self.state.set_result(result, slide_path)

    # -- export -------------------------------------------------------------------------------------
    def choose_export_pdf(self) -> None:
        path = dialogs.choose_export(self, self.settings, "Export report", self._export_stem(), "-report.pdf",
                                     "PDF (*.pdf)")
        if path:
            self.export_pdf(path)

    def choose_export_results(self) -> None:
        path = dialogs.choose_export(self, self.settings, "Export results", self._export_stem(), ".json",
                                     "JSON and CSV (*.json)")
        if path:
            self.export_results(path)

    def _export_stem(self) -> str:
        return self.state.result.slide_id if self.state.result is not None else "results"

    def export_pdf(self, path: str | os.PathLike) -> bool:
        """Write the PDF report of the shown result; False (and a dialog) on failure."""
        return self.state.export_pdf(path)

    def export_results(self, path: str | os.PathLike) -> bool:
        """Write ``<path>.json`` (the full result) and ``<stem>.csv`` and ``<stem>-linked-cases.csv``."""
        return self.state.export_results(path)

    def _write_report(self, path: Path) -> None:
        from msrl_app.panels import report_facts
        from msrl_app.report import ReportInputs, write_report
        from msrl_app.tiles import rgb_to_qimage
        from msrl_app.viewer import THUMBNAIL_SIZE

        slide = self.viewer.slide
        thumbnail = self.viewer.thumbnail()  # the overview image; read now if its job has not finished
        if thumbnail is None and slide is not None:
            thumbnail = rgb_to_qimage(slide.thumbnail(THUMBNAIL_SIZE))
        write_report(path, ReportInputs(
            result=self.state.result, manifest=self.state.bundle_manifest or {}, slide_thumbnail=thumbnail,
            slide_size=slide.dimensions if slide is not None else None, cohort_risks=self.state.cohort_risks,
            slide_summary=report_facts(slide) if slide is not None else [], model_card=self.state.bundle_card))

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
        patch = self.viewer.heatmap_value_at(x, y) if self.viewer.overlay_visible("heatmap") else None
        self.position_label.setText(position_text(slide.dimensions, slide.mpp, x, y, patch))

    def _sync_overlay_actions(self) -> None:
        for name, act in self.overlay_actions.items():
            act.blockSignals(True)
            act.setChecked(self.viewer.overlay_visible(name))
            act.blockSignals(False)
            act.setEnabled(self.viewer.overlay_available(name))

    # -- help -----------------------------------------------------------------------------------------
    def about_text(self) -> str:
        return dialogs.about_text(self.log_path)

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
        self.state.shutdown()  # cancels the analysis and waits (bounded) for every background job
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState(window_layout.STATE_VERSION))
        self.settings.sync()
        self.viewer.shutdown()
        super().closeEvent(event)
