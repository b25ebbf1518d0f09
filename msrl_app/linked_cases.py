"""The Linked cases tab: the graph neighbours of the slide in the training cohort as a sortable,
filterable table, and the selected case's detail (fields, thumbnail, authentic vs reconstructed
pathway activity). The case-formatting helpers here also serve the PDF report."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFrame, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QScrollArea, QSplitter, QTableView, QVBoxLayout, QWidget)

from msrl_app.labels import heading as _heading
from msrl_app.labels import muted as _muted
from msrl_app.labels import task_title
from msrl_app.plots import BarsPlot
from msrl_model.infer.results import LinkedCase, PredictionResult, TaskResult

PATHWAY_TOP_N = 12  # pathways shown in the paired bar chart
FIXED_COLUMNS = [  # (key, header) of the linked-cases table; label columns follow
    ("case_id", "Case"), ("weight", "Edge weight"), ("project", "Project"),
    ("survival_months", "Survival (mo)"), ("status", "Status"), ("stage", "Stage"),
]
HIDDEN_CASE_KEYS = {"case_id", "project", "survival_months", "censorship", "stage", "slide_id"}


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


def paired_pathways(names: list[str], this_slide: list[float], case: list[float],
                    top_n: int = PATHWAY_TOP_N) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The ``top_n`` pathways with the largest activity in either series, strongest first."""
    a, b = np.asarray(this_slide, dtype=float), np.asarray(case, dtype=float)
    order = np.argsort(-np.maximum(np.abs(a), np.abs(b)), kind="stable")[:top_n]
    short = [names[i].removeprefix("HALLMARK_").replace("_", " ").lower() for i in order]
    return short, a[order], b[order]


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
