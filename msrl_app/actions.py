"""The main window's actions, menus, toolbar and status bar (built here, wired in the window).

Each ``build_*`` function adds widgets and attributes to the window it is given (``open_action``,
``analyze_action``, ``overlay_actions``, ``device_actions``, ``foundation_models_action``, ``recent_menu``,
``project_combo``, ``mode_badge``, the status-bar labels…), whose slots are the window's methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QComboBox, QLabel, QMenu, QToolBar, QToolButton

from msrl_app.analysis import DEVICES
from msrl_app.controls import AnalysisProgress
from msrl_app.dialogs import FoundationModelsDialog, apply_stored_weights, choose_dicom_folder
from msrl_app.panels import OverlayPanel
from msrl_model import RESEARCH_USE_ONLY

if TYPE_CHECKING:
    from msrl_app.window import MainWindow

DEVICE_TITLES = {"auto": "&Automatic (GPU if available)", "cpu": "&CPU", "cuda": "CUDA &GPU"}
ANALYZE_BUTTON_STYLE = (
    "QToolButton#analyze_button { background: #2f6fce; color: white; font-weight: bold;"
    " padding: 3px 14px; border-radius: 3px; }"
    "QToolButton#analyze_button:hover { background: #3d7fd9; }"
    "QToolButton#analyze_button:disabled { background: #3a3e45; color: #7b8089; }")


def _action(window: MainWindow, text: str, slot, shortcut=None, tip: str = "") -> QAction:
    act = QAction(text, window)
    if shortcut is not None:
        act.setShortcut(QKeySequence(shortcut))
    act.setStatusTip(tip)
    act.triggered.connect(slot)
    return act


def build_status_bar(w: MainWindow) -> None:
    bar = w.statusBar()
    w.progress = AnalysisProgress()
    w.progress.cancelRequested.connect(w.cancel_analysis)
    bar.addPermanentWidget(w.progress)  # permanent: temporary messages never draw over it
    w.position_label, w.level_label, w.mag_label = QLabel(), QLabel(), QLabel()
    w.research_label = QLabel(RESEARCH_USE_ONLY)
    w.research_label.setObjectName("research_only")
    w.research_label.setStyleSheet("color: #f0b450; font-weight: bold; padding: 0 6px;")
    for label in (w.position_label, w.level_label, w.mag_label):
        label.setStyleSheet("color: #b8bcc4; padding: 0 6px;")
        bar.addPermanentWidget(label)
    bar.addPermanentWidget(w.research_label)


def build_actions(w: MainWindow) -> None:
    a = _action
    w.open_action = a(w, "&Open slide…", w.choose_slide, QKeySequence.StandardKey.Open, "Open a whole-slide image")
    w.open_dicom_action = a(w, "Open &DICOM folder…", lambda: _open_dicom_folder(w), None,
                            "Open a DICOM whole-slide series: the folder of its .dcm files")
    w.close_action = a(w, "&Close slide", w.close_slide, QKeySequence.StandardKey.Close)
    w.quit_action = a(w, "&Quit", w.close, QKeySequence.StandardKey.Quit)
    w.fit_action = a(w, "&Fit to window", w.viewer.fit, "F", "Show the whole slide")
    w.one_to_one_action = a(w, "&1:1 (full resolution)", w.viewer.one_to_one, "1",
                            "One screen pixel per scanned pixel")
    w.zoom_in_action = a(w, "Zoom &in", lambda: w.viewer.zoom_by(1.5, animate=True), "+")
    w.zoom_out_action = a(w, "Zoom &out", lambda: w.viewer.zoom_by(1 / 1.5, animate=True), "-")
    w.about_action = a(w, "&About MSRL Studio", w.show_about)
    w.analyze_action = a(w, "&Analyze", w.start_analysis, "Ctrl+R",
                         "Predict survival, stage and mutations for this slide with the model bundle")
    w.cancel_action = a(w, "&Cancel analysis", w.cancel_analysis, "Esc")
    w.open_bundle_action = a(w, "Open model &bundle…", w.choose_bundle, None,
                             "Use another model bundle (a bundle folder or a .msrl file)")
    w.expression_action = a(w, "Load &expression for this case…", w.choose_expression, None,
                            "Add this case's gene expression (CSV): runs MSRL_multi")
    w.clear_expression_action = a(w, "Clear expression", w.clear_expression, None, "Back to MSRL (slide only)")
    w.export_pdf_action = a(w, "Export &report (PDF)…", w.choose_export_pdf, "Ctrl+P",
                            "A PDF report of this slide's results")
    w.export_results_action = a(w, "Export results (JSON/CSV)…", w.choose_export_results, "Ctrl+E",
                                "Machine-readable results")
    w.model_card_action = a(w, "&Model card", w.show_model_card, None,
                            "The model bundle's model card: training cohort, metrics, encoder")
    w.device_actions = {}
    group = QActionGroup(w)
    for name in DEVICES:
        act = QAction(DEVICE_TITLES[name], w)
        act.setCheckable(True)
        act.setChecked(name == w.device())
        act.triggered.connect(lambda _=False, n=name: w.set_device(n))
        group.addAction(act)
        w.device_actions[name] = act
    w.overlay_actions = {}
    for i, (name, title) in enumerate(OverlayPanel.TITLES.items()):
        act = QAction(title, w)
        act.setCheckable(True)
        act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
        act.toggled.connect(lambda on, n=name: w.viewer.set_overlay_visible(n, on))
        w.overlay_actions[name] = act


def build_menus(w: MainWindow) -> None:
    menu = w.menuBar()
    file_menu = menu.addMenu("&File")
    file_menu.addAction(w.open_action)
    file_menu.addAction(w.open_dicom_action)
    w.recent_menu = file_menu.addMenu("Open &recent")
    for group in ([w.close_action], [w.open_bundle_action, w.expression_action, w.clear_expression_action],
                  [w.export_pdf_action, w.export_results_action], [w.quit_action]):
        for act in group:
            file_menu.addAction(act)
        if group[0] is not w.quit_action:
            file_menu.addSeparator()
    analysis_menu = menu.addMenu("&Analysis")
    analysis_menu.addAction(w.analyze_action)
    analysis_menu.addAction(w.cancel_action)
    view_menu = menu.addMenu("&View")
    for act in (w.fit_action, w.one_to_one_action, w.zoom_in_action, w.zoom_out_action):
        view_menu.addAction(act)
    view_menu.addSeparator()
    overlays = view_menu.addMenu("&Overlays")
    for act in w.overlay_actions.values():
        overlays.addAction(act)
    panels = w.panels_menu = view_menu.addMenu("&Panels")
    for dock in (w.overview_dock, w.properties_dock, w.overlays_dock, w.results_dock):
        panels.addAction(dock.toggleViewAction())
    settings_menu = menu.addMenu("&Settings")
    device_menu = settings_menu.addMenu("&Device")
    for act in w.device_actions.values():
        device_menu.addAction(act)
    build_coverage_menu(w, settings_menu)
    build_foundation_models(w, settings_menu)
    help_menu = menu.addMenu("&Help")
    help_menu.addAction(w.model_card_action)
    help_menu.addSeparator()
    help_menu.addAction(w.about_action)


def _open_dicom_folder(w: MainWindow) -> None:
    """File ▸ Open DICOM folder…: a folder chosen in the dialog is opened as one slide."""
    folder = choose_dicom_folder(w, w.settings)
    if folder:
        w.open_slide(folder)


COVERAGES = (0.8, 0.9, 0.95)  # the conformal coverages offered in Settings ▸ Prediction sets


def build_coverage_menu(w: MainWindow, settings_menu: QMenu) -> None:
    """Settings ▸ Prediction sets: the coverage of the conformal sets (remembered; ``w.coverage_actions``).
    A change applies from the next Analyze (the slide's features are cached: it is quick)."""
    stored = float(w.settings.value("analysis/coverage", 0.9))
    coverage = min(COVERAGES, key=lambda c: abs(c - stored))
    menu = settings_menu.addMenu("&Prediction sets")
    group = QActionGroup(w)
    w.coverage_actions = {}
    for c in COVERAGES:
        act = QAction(f"{c:.0%} coverage", w, checkable=True)
        act.setToolTip(f"Conformal sets that hold the true class / event time for {c:.0%} of cases like the "
                       "training cases; applies from the next Analyze")
        act.toggled.connect(lambda on, c=c: on and _set_coverage(w, c))
        group.addAction(act)
        menu.addAction(act)
        w.coverage_actions[c] = act
    w.coverage_actions[coverage].setChecked(True)
    w.state.set_coverage(coverage)


def _set_coverage(w: MainWindow, coverage: float) -> None:
    w.state.set_coverage(coverage)
    w.settings.setValue("analysis/coverage", coverage)


def build_foundation_models(w: MainWindow, settings_menu: QMenu) -> None:
    """Settings ▸ Foundation models… (``w.foundation_models_action``), and the weights chosen there before
    handed to the encoders' weights resolver."""
    apply_stored_weights(w.settings)
    w.foundation_models_action = _action(
        w, "&Foundation models…", lambda: open_foundation_models(w), None,
        "Where the weights of each foundation model (UNI, CONCH v1.5, Virchow 2…) are on this computer")
    settings_menu.addAction(w.foundation_models_action)


def open_foundation_models(w: MainWindow) -> None:
    """The Foundation models dialog; once accepted, the next Analyze builds its encoder from the new choice."""
    if FoundationModelsDialog(w.settings, w).exec():
        w.state.predictors.clear()


def build_toolbar(w: MainWindow) -> None:
    bar = QToolBar("Main", w)
    bar.setObjectName("main_toolbar")
    bar.setMovable(False)
    bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    for act in (w.open_action, None, w.fit_action, w.one_to_one_action, w.zoom_out_action, w.zoom_in_action, None):
        bar.addSeparator() if act is None else bar.addAction(act)
    for act in w.overlay_actions.values():
        bar.addAction(act)
    bar.addSeparator()
    bar.addWidget(QLabel(" Cancer type "))
    w.project_combo = QComboBox()
    w.project_combo.setMinimumContentsLength(14)
    w.project_combo.setToolTip("The slide's cancer type (project) among the bundle's training projects")
    w.project_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    w.project_combo.addItem("Not specified", None)
    bar.addWidget(w.project_combo)
    bar.addAction(w.analyze_action)
    w.analyze_button = bar.widgetForAction(w.analyze_action)
    if isinstance(w.analyze_button, QToolButton):
        w.analyze_button.setObjectName("analyze_button")
        w.analyze_button.setStyleSheet(ANALYZE_BUTTON_STYLE)
    w.mode_badge = QLabel()
    w.mode_badge.setStyleSheet("color: #4fc3f7; padding-left: 8px;")
    bar.addWidget(w.mode_badge)
    w.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)


def fill_projects(combo: QComboBox, choices: list[str], current: str | None) -> None:
    """The cancer-type list: "Not specified", then ``choices``; ``current`` selected (added when
    missing). Signals are blocked: the list follows the state, it does not change it."""
    combo.blockSignals(True)
    try:
        combo.clear()
        combo.addItem("Not specified", None)
        for project in choices:
            combo.addItem(project, project)
        select_project(combo, current)
    finally:
        combo.blockSignals(False)


def select_project(combo: QComboBox, project: str | None) -> None:
    index = combo.findData(project) if project else 0
    if index < 0:
        combo.addItem(project, project)
        index = combo.count() - 1
    blocked = combo.blockSignals(True)
    combo.setCurrentIndex(max(0, index))
    combo.blockSignals(blocked)
