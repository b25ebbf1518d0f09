"""The results dock: a header (mode, research use only, synthetic cohort), the suggested project,
and three tabs — Survival (risk in the cohort, survival curves), Probabilities (one bar chart per
classification task), Linked cases (sortable table of the graph neighbours and a detail pane with
the case's fields, thumbnail and authentic vs reconstructed pathway activity).

Views only: every number comes from :class:`msrl_model.infer.results.PredictionResult`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QPushButton, QScrollArea, QSplitter, QTableView, QTabWidget,
                               QVBoxLayout, QWidget)

from msrl_app.plots import RISK_GROUP_COLORS, BarsPlot, RiskHistogram, SurvivalPlot
from msrl_model.infer.results import LinkedCase, PredictionResult, TaskResult

RESEARCH_ONLY_HEADER = "Research use only — not for diagnostic use"
MODE_TITLES = {
    "msrl": "MSRL (slide only)",
    "msrl_multi": "MSRL_multi (with this case's expression)",
    "msrl_h": "MSRL_H (slide only, no genomics)",
}
PATHWAY_TOP_N = 12  # pathways shown in the paired bar chart
FIXED_COLUMNS = [  # (key, header) of the linked-cases table; label columns follow
    ("case_id", "Case"), ("weight", "Edge weight"), ("project", "Project"),
    ("survival_months", "Survival (mo)"), ("status", "Status"), ("stage", "Stage"),
]
HIDDEN_CASE_KEYS = {"case_id", "project", "survival_months", "censorship", "stage", "slide_id"}


def mode_title(mode: str) -> str:
    return MODE_TITLES.get(mode, mode)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def event_status(case: dict[str, Any]) -> str:
    """'event' / 'censored' from the ``censorship`` column (1 = censored), '' when unknown."""
    c = case.get("censorship")
    if is_missing(c):
        return ""
    return "censored" if int(c) == 1 else "event"


def format_value(value: Any) -> str:
    if is_missing(value):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def label_columns(cases: list[LinkedCase]) -> list[str]:
    """Label columns of the case table (everything that is not an id, the project or survival)."""
    keys: list[str] = []
    for c in cases:
        for k in c.case:
            if k not in HIDDEN_CASE_KEYS and k not in keys:
                keys.append(k)
    return keys


class LinkedCasesModel(QAbstractTableModel):
    """The linked training cases of one task. ``Qt.UserRole`` holds the sort key (numbers as
    numbers, missing values last), so the proxy sorts 9 < 10 and weights numerically."""

    SORT_ROLE = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.cases: list[LinkedCase] = []
        self.columns: list[tuple[str, str]] = list(FIXED_COLUMNS)

    def set_cases(self, cases: list[LinkedCase]) -> None:
        self.beginResetModel()
        self.cases = list(cases)
        self.columns = list(FIXED_COLUMNS) + [(k, k) for k in label_columns(self.cases)]
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.cases)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802
                   role: int = Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section][1]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole:
            key = self.columns[section][0]
            return {"weight": "Normalised graph edge weight between this slide and the training case",
                    "status": "event = death observed; censored = alive at last follow-up"}.get(key)
        return None

    def raw(self, row: int, key: str) -> Any:
        case = self.cases[row]
        if key == "weight":
            return case.weight
        if key == "status":
            return event_status(case.case)
        return case.case.get(key)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        key = self.columns[index.column()][0]
        value = self.raw(index.row(), key)
        if role == Qt.ItemDataRole.DisplayRole:
            if key == "weight":
                return f"{value:.3f}"
            if key == "survival_months" and not is_missing(value):
                return f"{float(value):.1f}"
            return format_value(value)
        if role == self.SORT_ROLE:
            if is_missing(value):
                return (1, 0.0, "")  # missing last in ascending order
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                return (0, float(value), "")
            return (0, 0.0, str(value).lower())
        if role == Qt.ItemDataRole.TextAlignmentRole:
            numeric = key in ("weight", "survival_months") or isinstance(value, (int, float))
            return int((Qt.AlignmentFlag.AlignRight if numeric else Qt.AlignmentFlag.AlignLeft)
                       | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and key == "status":
            return QColor("#ff8787") if value == "event" else QColor("#9aa0a8")
        return None


class CaseSortProxy(QSortFilterProxyModel):
    """Sorts on the model's tuple sort keys; filters on any column's text."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setSortRole(LinkedCasesModel.SORT_ROLE)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)

    def lessThan(self, left: QModelIndex, right: QModelIndex) -> bool:  # noqa: N802
        return left.data(self.sortRole()) < right.data(self.sortRole())


def _heading(text: str) -> QLabel:
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    font.setPointSizeF(font.pointSizeF() * 1.05)
    label.setFont(font)
    label.setStyleSheet("color: #e3e5e8; padding-top: 6px;")
    return label


def _muted(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #9aa0a8;")
    return label


class SurvivalSection(QWidget):
    """One survival task: risk group, score, percentile, median; cohort histogram; S(t) curves."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.group_label = QLabel()
        self.group_label.setObjectName("risk_group")
        font = self.group_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        self.group_label.setFont(font)
        self.risk_label = QLabel()
        self.risk_label.setObjectName("risk_score")
        self.risk_label.setWordWrap(True)
        self.median_label = QLabel()
        self.histogram = RiskHistogram()
        self.histogram.setFixedHeight(140)
        self.cohort_note = _muted()
        self.plot = SurvivalPlot()
        self.plot.setMinimumHeight(240)
        self.metrics_label = _muted()
        top = QGridLayout()
        top.addWidget(self.group_label, 0, 0, 2, 1)
        top.addWidget(self.risk_label, 0, 1)
        top.addWidget(self.median_label, 1, 1)
        top.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(_heading("Risk in the training cohort"))
        layout.addWidget(self.histogram)
        layout.addWidget(self.cohort_note)
        layout.addWidget(_heading("Predicted survival"))
        layout.addWidget(self.plot)
        layout.addWidget(self.metrics_label)

    def set_task(self, task: TaskResult, cohort_risks: np.ndarray | None) -> None:
        s = task.survival
        color = RISK_GROUP_COLORS.get(s.risk_group, "#e3e5e8")
        self.group_label.setText(f"{s.risk_group.capitalize()} risk")
        self.group_label.setStyleSheet(f"color: {color}; padding-right: 14px;")
        within = (f" · {s.percentile_in_project:.0f}th among {s.project_cases} cases of its project"
                  if s.percentile_in_project is not None else "")
        self.risk_label.setText(f"Risk score <b>{s.risk:.3f}</b> · higher than <b>{s.percentile:.0f}%</b> "
                                f"of training cases{within}")
        median = s.median_survival_months
        self.median_label.setText("Predicted median survival: " + (
            f"<b>{median:.0f} months</b>" if median is not None else "<b>not reached</b> within the follow-up"))
        risks = cohort_risks if cohort_risks is not None else np.asarray([], dtype=float)
        self.histogram.set_data(risks, s.risk, s.risk_thresholds)
        self.cohort_note.setText(
            f"Groups are tertiles of the training cohort's risks (low < {s.risk_thresholds[0]:.3f} ≤ "
            f"intermediate ≤ {s.risk_thresholds[1]:.3f} < high).")
        curves = [("slide", "This slide (predicted)", s.curve.times, s.curve.survival),
                  ("neighbours", f"Linked cases (KM, n={len(task.linked_cases)})", s.neighbours_km.times,
                   s.neighbours_km.survival),
                  ("cohort", "Training cohort (KM)", s.cohort_km.times, s.cohort_km.survival)]
        self.plot.set_curves(curves, median)
        self.metrics_label.setText(format_metrics(task.metrics))


def format_metrics(metrics: dict[str, Any]) -> str:
    from msrl_app.controls import format_metric

    if not metrics:
        return ""
    names = {"c_index": "C-index", "auc": "AUC", "f1": "macro F1"}
    return "Cross-validated: " + " · ".join(f"{names.get(k, k)} {format_metric(v)}" for k, v in metrics.items())


class ClassificationSection(QWidget):
    """One classification task: probabilities as horizontal bars, the predicted class highlighted."""

    def __init__(self, task: TaskResult, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        c = task.classification
        self.title = _heading(task_title(task.name))
        best = int(np.argmax(c.probabilities))
        self.summary = QLabel(f"Most likely: <b>{c.predicted}</b> ({c.probabilities[best]:.0%})")
        self.plot = BarsPlot()
        self.plot.set_bars(list(c.classes), [("probability", np.asarray(c.probabilities))], highlight=best)
        self.metrics_label = _muted(format_metrics(task.metrics))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 8)
        for w in (self.title, self.summary, self.plot, self.metrics_label):
            layout.addWidget(w)


def task_title(name: str) -> str:
    """'EGFR_mut' -> 'EGFR mutation', 'HER2_status' -> 'HER2 status', 'stage' -> 'Stage'."""
    if name.endswith("_mut"):
        return f"{name[:-4]} mutation"
    return name.replace("_", " ")[:1].upper() + name.replace("_", " ")[1:]


def paired_pathways(names: list[str], this_slide: list[float], case: list[float],
                    top_n: int = PATHWAY_TOP_N) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The ``top_n`` pathways with the largest activity in either series, strongest first."""
    a, b = np.asarray(this_slide, dtype=float), np.asarray(case, dtype=float)
    order = np.argsort(-np.maximum(np.abs(a), np.abs(b)), kind="stable")[:top_n]
    short = [names[i].removeprefix("HALLMARK_").replace("_", " ").lower() for i in order]
    return short, a[order], b[order]


class LinkedCasesSection(QWidget):
    """Task picker, filter, sortable table, and the selected case's detail pane."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: PredictionResult | None = None
        self.thumbnail_for: Callable[[str, int], bytes | None] = lambda task, row: None
        self.task_combo = QComboBox()
        self.task_combo.setToolTip("Each task has its own graph: pick whose neighbours to list")
        self.task_combo.currentIndexChanged.connect(self._on_task)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter…")
        self.filter_edit.setClearButtonEnabled(True)
        self.model = LinkedCasesModel(self)
        self.proxy = CaseSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().currentRowChanged.connect(self._on_row)
        self.summary_label = _muted()

        self.detail_title = _heading("")
        self.detail_fields = QLabel()
        self.detail_fields.setTextFormat(Qt.TextFormat.RichText)
        self.detail_fields.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.detail_fields.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.thumbnail = QLabel()
        self.thumbnail.setFixedSize(128, 128)
        self.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail.setStyleSheet("background: #1b1d21; border: 1px solid #3a3e45; color: #6b7079;")
        self.pathway_title = _heading("Hallmark pathway activity")
        self.pathway_note = _muted()
        self.pathway_plot = BarsPlot(value_format="{:+.2f}", x_range=None)
        self.pathway_plot.setVisible(False)
        fields_row = QHBoxLayout()
        fields_row.addWidget(self.detail_fields, 1)
        fields_row.addWidget(self.thumbnail, 0, Qt.AlignmentFlag.AlignTop)
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addWidget(self.detail_title)
        dl.addLayout(fields_row)
        dl.addWidget(self.pathway_title)
        dl.addWidget(self.pathway_note)
        dl.addWidget(self.pathway_plot)
        dl.addStretch(1)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Graph of:"))
        row.addWidget(self.task_combo, 1)
        row.addWidget(self.filter_edit, 1)
        tl.addLayout(row)
        tl.addWidget(self.summary_label)
        tl.addWidget(self.table, 1)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(top)
        detail_scroll = QScrollArea()
        detail_scroll.setWidgetResizable(True)
        detail_scroll.setFrameShape(QFrame.Shape.NoFrame)
        detail_scroll.setWidget(detail)
        self.splitter.addWidget(detail_scroll)
        self.splitter.setChildrenCollapsible(False)
        self.table.setMinimumHeight(150)
        self.splitter.setSizes([260, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

    def set_result(self, result: PredictionResult | None) -> None:
        self.result = result
        self.task_combo.blockSignals(True)
        self.task_combo.clear()
        if result is not None:
            for name in result.tasks:
                self.task_combo.addItem(task_title(name), name)
        self.task_combo.blockSignals(False)
        self._on_task()

    def current_task(self) -> TaskResult | None:
        if self.result is None or self.task_combo.currentIndex() < 0:
            return None
        return self.result.tasks[self.task_combo.currentData()]

    def _on_task(self) -> None:
        task = self.current_task()
        self.model.set_cases(task.linked_cases if task is not None else [])
        self.proxy.sort(1, Qt.SortOrder.DescendingOrder)
        self.table.horizontalHeader().setSortIndicator(1, Qt.SortOrder.DescendingOrder)
        if task is not None:
            events = sum(event_status(c.case) == "event" for c in task.linked_cases)
            self.summary_label.setText(
                f"{len(task.linked_cases)} training cases linked to this slide in the {task_title(task.name)} "
                f"graph ({events} with an observed event) · self-loop weight {task.self_weight:.3f}")
        else:
            self.summary_label.setText("")
        if self.proxy.rowCount():
            self.table.selectRow(0)
        else:
            self.show_case(None)

    def _on_row(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.show_case(self.model.cases[self.proxy.mapToSource(current).row()])

    def show_case(self, case: LinkedCase | None) -> None:
        task = self.current_task()
        if case is None or task is None:
            self.detail_title.setText("Select a linked case")
            self.detail_fields.setText("")
            self.thumbnail.clear()
            self.pathway_plot.setVisible(False)
            return
        self.detail_title.setText(f"{case.case.get('case_id', '?')}  ·  edge weight {case.weight:.3f}")
        rows = [("Slide", case.case.get("slide_id")), ("Project", case.case.get("project")),
                ("Survival", None if is_missing(case.case.get("survival_months"))
                 else f"{float(case.case['survival_months']):.1f} months"),
                ("Status", event_status(case.case) or None), ("Stage", case.case.get("stage"))]
        rows += [(k, case.case.get(k)) for k in label_columns([case])]
        self.detail_fields.setText("<table cellspacing='0' cellpadding='2'>" + "".join(
            f"<tr><td style='color:#9aa0a8;padding-right:10px'>{k}</td><td>{format_value(v)}</td></tr>"
            for k, v in rows) + "</table>")
        jpeg = self.thumbnail_for(task.name, case.row)
        image = QImage.fromData(jpeg) if jpeg else QImage()
        if image.isNull():
            self.thumbnail.setPixmap(QPixmap())
            self.thumbnail.setText("no thumbnail\nin the bundle")
        else:
            self.thumbnail.setPixmap(QPixmap.fromImage(image).scaled(
                126, 126, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
        if task.pathways is None or not case.pathways:
            self.pathway_note.setText("This bundle has no pathway decoder for this task.")
            self.pathway_plot.setVisible(False)
            return
        names, recon, authentic = paired_pathways(task.pathways.names, task.pathways.reconstructed, case.pathways)
        self.pathway_note.setText(f"Top {len(names)} pathways: reconstructed for this slide (from the graph) "
                                  f"vs measured in {case.case.get('case_id', 'the case')} (authentic expression).")
        self.pathway_plot.set_bars(names, [("this slide (reconstructed)", recon),
                                           (f"{case.case.get('case_id', 'case')} (authentic)", authentic)])
        self.pathway_plot.setVisible(True)


class ResultsPanel(QWidget):
    """Everything predicted for the open slide."""

    rerunRequested = Signal(str)  # the suggested project the user confirmed

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: PredictionResult | None = None
        self.title = QLabel("Results")
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.title.setFont(font)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("mode")
        self.research_label = QLabel(RESEARCH_ONLY_HEADER)
        self.research_label.setStyleSheet("color: #f0b450; font-weight: bold;")
        self.synthetic_label = QLabel("SYNTHETIC TRAINING COHORT — predictions demonstrate the software only")
        self.synthetic_label.setStyleSheet("background: #7a1f1f; color: white; font-weight: bold; padding: 3px 6px;")
        self.synthetic_label.setWordWrap(True)
        self.synthetic_label.setVisible(False)
        self.meta_label = _muted()
        self.model_label = _muted("No model bundle loaded")
        self.model_label.setObjectName("model")
        self.suggest_label = QLabel()
        self.suggest_label.setWordWrap(True)
        self.suggest_button = QPushButton()
        self.suggest_button.clicked.connect(lambda: self.rerunRequested.emit(self._suggested or ""))
        self._suggested: str | None = None
        suggest = QFrame()
        suggest.setStyleSheet("QFrame { background: #25303d; border-radius: 4px; }")
        sl = QHBoxLayout(suggest)
        sl.setContentsMargins(6, 4, 6, 4)
        sl.addWidget(self.suggest_label, 1)
        sl.addWidget(self.suggest_button)
        self.suggest_frame = suggest
        self.warnings_label = QLabel()
        self.warnings_label.setWordWrap(True)
        self.warnings_label.setStyleSheet("color: #e0a030;")

        self.placeholder = _muted("No results yet. Open a slide, choose its cancer type and click "
                                  "Analyze (Ctrl+R).")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.tabs = QTabWidget()
        self.survival_sections: dict[str, SurvivalSection] = {}
        self.class_sections: dict[str, ClassificationSection] = {}
        self.survival_tab, self.survival_layout = self._scroll_tab()
        self.class_tab, self.class_layout = self._scroll_tab()
        self.linked = LinkedCasesSection()
        self.tabs.addTab(self.survival_tab, "Survival")
        self.tabs.addTab(self.class_tab, "Probabilities")
        self.tabs.addTab(self.linked, "Linked cases")

        header = QVBoxLayout()
        header.setSpacing(2)
        header.addWidget(self.title)
        header.addWidget(self.mode_label)
        header.addWidget(self.research_label)
        header.addWidget(self.synthetic_label)
        header.addWidget(self.meta_label)
        header.addWidget(self.model_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addWidget(self.suggest_frame)
        layout.addWidget(self.warnings_label)
        layout.addWidget(self.placeholder, 1)
        layout.addWidget(self.tabs, 3)
        self.set_result(None)

    def set_model(self, manifest: dict[str, Any] | None, name: str = "") -> None:
        """The model bundle line of the header (None: no bundle)."""
        if manifest is None:
            self.model_label.setText("No model bundle loaded — File ▸ Open model bundle…")
            return
        cohort = manifest.get("cohort") or {}
        tasks = ", ".join(task_title(t.get("name", "?")) for t in manifest.get("tasks") or [])
        synthetic = " · <b style='color:#ff8787'>synthetic cohort</b>" if cohort.get("synthetic") else ""
        self.model_label.setText(f"Model: {name} · {tasks} · {cohort.get('n_cases', '?')} training cases{synthetic}")

    def _scroll_tab(self) -> tuple[QScrollArea, QVBoxLayout]:
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setContentsMargins(4, 4, 8, 4)
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setWidget(inner)
        return area, layout

    @staticmethod
    def _clear_layout(layout: QVBoxLayout) -> None:
        while layout.count():
            item = layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()

    def set_result(self, result: PredictionResult | None, cohort_risks: dict[str, np.ndarray] | None = None,
                   projects: list[str] | None = None) -> None:
        """Show ``result`` (None clears). ``cohort_risks``: per survival task the training cases'
        risks for the histogram; ``projects``: the bundle's projects (the suggestion is offered only
        when it differs from the project the slide was analysed as)."""
        self.result = result
        self._clear_layout(self.survival_layout)
        self._clear_layout(self.class_layout)
        self.survival_sections.clear()
        self.class_sections.clear()
        has = result is not None
        self.tabs.setVisible(has)
        self.placeholder.setVisible(not has)
        self.suggest_frame.setVisible(False)
        self.warnings_label.setVisible(False)
        if result is None:
            self.title.setText("Results")
            self.mode_label.setText("")
            self.meta_label.setText("")
            self.synthetic_label.setVisible(False)
            self.linked.set_result(None)
            return
        self.title.setText(result.slide_id)
        self.mode_label.setText(mode_title(result.mode))
        style = "#4fc3f7" if result.mode == "msrl_multi" else "#c9ccd1"
        self.mode_label.setStyleSheet(f"color: {style}; font-weight: bold;")
        self.synthetic_label.setVisible(result.synthetic_training_cohort)
        n = len(result.coords)
        self.meta_label.setText(f"{result.slide_id} · analysed as {result.project or 'unspecified cancer type'} · "
                                f"{n:,} patches · encoder {result.encoder.get('name', '?')}")
        self._suggested = result.suggested_project
        if result.suggested_project and result.suggested_project != result.project:
            self.suggest_label.setText(f"The slide's graph neighbours are mostly <b>{result.suggested_project}</b> "
                                       f"cases; analysed as {result.project or 'unspecified'}.")
            self.suggest_button.setText(f"Rerun as {result.suggested_project}")
            self.suggest_frame.setVisible(True)
        if result.warnings:
            self.warnings_label.setText("⚠ " + "<br>⚠ ".join(result.warnings))
            self.warnings_label.setVisible(True)
        for name, task in result.tasks.items():
            if task.survival is not None:
                section = SurvivalSection()
                if len([t for t in result.tasks.values() if t.survival is not None]) > 1:
                    self.survival_layout.addWidget(_heading(task_title(name)))
                section.set_task(task, (cohort_risks or {}).get(name))
                self.survival_layout.addWidget(section)
                self.survival_sections[name] = section
            elif task.classification is not None:
                section = ClassificationSection(task)
                self.class_layout.addWidget(section)
                self.class_sections[name] = section
        if not self.class_sections:
            self.class_layout.addWidget(_muted("This bundle has no classification task."))
        if not self.survival_sections:
            self.survival_layout.addWidget(_muted("This bundle has no survival task."))
        self.survival_layout.addStretch(1)
        self.class_layout.addStretch(1)
        self.linked.set_result(result)

    def risk_text(self) -> str:
        """The headline of the first survival task (tests, window title)."""
        for section in self.survival_sections.values():
            return f"{section.group_label.text()} · {section.risk_label.text()}"
        return ""


__all__ = ["CaseSortProxy", "LinkedCasesModel", "MODE_TITLES", "ResultsPanel", "mode_title", "task_title"]
