"""The Linked cases tab: the graph neighbours of the slide in the training cohort as a sortable,
filterable table (with each case's exact influence on the prediction), and the selected case's detail
(fields, thumbnail, the prediction with and without it, authentic vs reconstructed pathway activity).
The wording of the cases and their influence is in :mod:`msrl_app.case_wording`. On a narrow tab
the table shows ``TABLE_ROWS`` rows with the detail below; on a wide one (the results in their own
window) the detail sits beside the table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QEvent, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFrame, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QScrollArea, QSplitter, QTableView, QVBoxLayout, QWidget)

from msrl_app.case_wording import (  # noqa: F401 - re-exported (results view, report)
    event_status, format_influence, format_months, format_value, graph_line, graph_summary, influence_tip,
    influence_title, influence_value, is_missing, label_columns, neighbours_summary, paired_pathways, without_case_html)
from msrl_app.labels import heading as _heading
from msrl_app.labels import muted as _muted
from msrl_app.labels import task_title
from msrl_app.plots import PATHWAY_AXIS, BarsPlot
from msrl_model.infer.results import LinkedCase, PredictionResult, TaskResult, readable_label

TABLE_ROWS = 12  # rows the linked-cases table shows before the case detail below it gets the rest of the tab
DETAIL_MIN_PX = 110  # a case detail pane lower than this starts collapsed (drag the splitter handle up)
WIDE_PX = 900  # a tab at least this wide (the results in their own window) puts the detail beside the table
DETAIL_MIN_WIDTH_PX = 380  # the detail's least width beside the table
FIXED_COLUMNS = [  # (key, header) of the linked-cases table; label columns follow ("influence": per task).
    # In this order a narrow (docked) table keeps what matters first: the case, its edge weight and influence,
    # its outcome (survival, event or censored), then stage and project.
    ("case_id", "Case"), ("weight", "Weight"), ("influence", "Influence"), ("survival_months", "Months"),
    ("status", "Status"), ("stage", "Stage"), ("project", "Project"),
]
RISK_UP, RISK_DOWN = "#ff8787", "#69db7c"  # an influence that raises / lowers the risk


class LinkedCasesModel(QAbstractTableModel):
    """The linked training cases of one task. ``Qt.UserRole`` holds the sort key (numbers as
    numbers, missing values last), so the proxy sorts 9 < 10 and weights and influences numerically."""

    SORT_ROLE = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.task: TaskResult | None = None
        self.cases: list[LinkedCase] = []
        self.columns: list[tuple[str, str]] = list(FIXED_COLUMNS)
        self.label_names: dict[str, dict[str, str]] = {}  # PredictionResult.label_names of the result shown

    def set_task(self, task: TaskResult | None) -> None:
        """Show ``task``'s linked cases (None: none); the influence column is named after the task."""
        self.beginResetModel()
        self.task = task
        self.cases = list(task.linked_cases) if task is not None else []
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
            if key == "influence" and self.task is not None:
                return f"{influence_title(self.task)}. {influence_tip(self.task)}"
            return {"weight": "Normalised graph edge weight between this slide and the training case",
                    "survival_months": "Survival or follow-up time of the training case, in months",
                    "status": "event = death observed; censored = alive at last follow-up"}.get(key)
        return None

    def raw(self, row: int, key: str) -> Any:
        case = self.cases[row]
        if key == "weight":
            return case.weight
        if key == "influence":
            return influence_value(self.task, case) if self.task is not None else None
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
            if key == "influence":
                return format_influence(self.task, value)
            if key == "survival_months":
                return format_months(value)
            return format_value(readable_label(self.label_names, key, value))
        if role == self.SORT_ROLE:
            if is_missing(value):
                return (1, 0.0, "")  # missing last in ascending order
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                return (0, float(value), "")
            return (0, 0.0, str(value).lower())
        if role == Qt.ItemDataRole.ToolTipRole and key == "influence" and self.task is not None:
            return influence_tip(self.task)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            numeric = key in ("weight", "influence", "survival_months") or isinstance(value, (int, float))
            return int((Qt.AlignmentFlag.AlignRight if numeric else Qt.AlignmentFlag.AlignLeft)
                       | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and key == "status":
            return QColor("#ff8787") if value == "event" else QColor("#9aa0a8")
        if role == Qt.ItemDataRole.ForegroundRole and key == "influence" and self.task is not None \
                and self.task.kind == "survival" and value:
            return QColor(RISK_UP if value > 0 else RISK_DOWN)
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


# The note on what cross-validation measured of the linked cases: amber when they did not improve the
# task (a caution, not an error), muted green when they did.
EVIDENCE_STYLE = {
    False: "color: #f0c36a; background: #2e2816; border-left: 3px solid #d9a53f; padding: 4px 6px;",
    True: "color: #9fd3a8; background: #18261b; border-left: 3px solid #5fae6e; padding: 4px 6px;",
    None: "",
}


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
        self.table.verticalHeader().setMinimumSectionSize(12)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 4)  # compact rows
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        # never sideways: the columns that do not fit are hidden (show_columns_that_fit), not scrolled to
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.installEventFilter(self)  # its resizes re-fit the columns
        self.table.selectionModel().currentRowChanged.connect(self._on_row)
        self.summary_label = _muted()
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.evidence_label = QLabel()  # what cross-validation measured of the linked cases' value
        self.evidence_label.setWordWrap(True)
        self.evidence_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.evidence_label.setVisible(False)

        self.detail_title = _heading("")
        self.detail_fields = QLabel()
        self.detail_fields.setTextFormat(Qt.TextFormat.RichText)
        self.detail_fields.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.detail_fields.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.influence_label = QLabel()
        self.influence_label.setWordWrap(True)
        self.influence_label.setTextFormat(Qt.TextFormat.RichText)
        self.thumbnail = QLabel()
        self.thumbnail.setFixedSize(128, 128)
        self.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail.setStyleSheet("background: #1b1d21; border: 1px solid #3a3e45; color: #6b7079;")
        self.pathway_title = _heading("Hallmark pathway activity")
        self.pathway_note = _muted()
        self.pathway_plot = BarsPlot(value_format="{:+.2f}", x_range=None, axis_label=PATHWAY_AXIS)
        self.pathway_plot.setVisible(False)
        fields_row = QHBoxLayout()
        fields_row.addWidget(self.detail_fields, 1)
        fields_row.addWidget(self.thumbnail, 0, Qt.AlignmentFlag.AlignTop)
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addWidget(self.detail_title)
        dl.addLayout(fields_row)
        dl.addWidget(self.influence_label)
        dl.addWidget(self.pathway_title)
        dl.addWidget(self.pathway_note)
        dl.addWidget(self.pathway_plot)
        dl.addStretch(1)

        row = QHBoxLayout()
        row.addWidget(QLabel("Graph of:"))
        row.addWidget(self.task_combo, 1)
        row.addWidget(self.filter_edit, 1)
        self.detail_scroll = QScrollArea()
        self.detail_scroll.setWidgetResizable(True)
        self.detail_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.detail_scroll.setWidget(detail)
        self.splitter = QSplitter(Qt.Orientation.Vertical)  # the table above, the selected case's detail below
        self.splitter.addWidget(self.table)
        self.splitter.addWidget(self.detail_scroll)
        self.splitter.setCollapsible(0, False)
        self.splitter.setStretchFactor(1, 1)  # a taller tab grows the detail; the table keeps its rows
        self.splitter.splitterMoved.connect(self._on_splitter_moved)
        self.splitter.handle(1).setToolTip("Drag to share the space between the table and the selected case's "
                                           "detail (Pop out, top right, gives the results a window of their own)")
        self.table.setMinimumHeight(self.table_height(3))
        self._user_sized = False  # the user moved the splitter: their sizes stand
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.evidence_label)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.splitter, 1)

    def table_height(self, rows: int) -> int:
        """The table's height showing ``rows`` whole rows: header, rows, frame and a horizontal scroll bar."""
        t = self.table
        return (t.horizontalHeader().sizeHint().height() + rows * t.verticalHeader().defaultSectionSize()
                + 2 * t.frameWidth() + t.horizontalScrollBar().sizeHint().height())

    def column_width(self, column: int) -> int:
        """The width column ``column`` needs to show its header and its cells whole."""
        return max(self.table.sizeHintForColumn(column), self.table.horizontalHeader().sectionSizeHint(column))

    def table_width(self) -> int:
        """The table's width showing every column whole: the columns, frame and a vertical scroll bar."""
        t = self.table
        hidden = [c for c in range(self.proxy.columnCount()) if t.isColumnHidden(c)]
        for c in hidden:  # a hidden column's header has no size hint
            t.setColumnHidden(c, False)
        columns = sum(self.column_width(c) for c in range(self.proxy.columnCount()))
        for c in hidden:
            t.setColumnHidden(c, True)
        return columns + 2 * t.frameWidth() + t.verticalScrollBar().sizeHint().width()

    def show_columns_that_fit(self) -> None:
        """Show the columns, in their order (case, weight, influence, project, …), as long as they fit the
        table whole; hide the rest rather than scroll sideways. They come back in a wider table (Pop out); the
        selected case's detail lists every field, and the header's tooltip names the hidden columns."""
        t = self.table
        room = t.width() - 2 * t.frameWidth() - t.verticalScrollBar().sizeHint().width()
        used, hidden = 0, []
        for column in range(self.proxy.columnCount()):  # a hidden column's header has no size hint
            t.setColumnHidden(column, False)
        for column in range(self.proxy.columnCount()):
            used += self.column_width(column)
            fits = column == 0 or (not hidden and used <= room)
            t.setColumnHidden(column, not fits)
            if not fits:
                hidden.append(str(self.proxy.headerData(column, Qt.Orientation.Horizontal)))
        t.horizontalHeader().setToolTip(
            f"Not shown at this width: {', '.join(hidden)} — Pop out (top right) for every column, or select a "
            "case: its detail lists every field" if hidden else "")

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt override
        if watched is self.table and event.type() == QEvent.Type.Resize:
            self.show_columns_that_fit()
        return super().eventFilter(watched, event)

    def fit_table(self) -> None:
        """A wide tab (``WIDE_PX``) puts the detail beside the table, which gets the width of its columns;
        otherwise the table gets ``TABLE_ROWS`` rows and the detail below it the rest of the tab (collapsed
        when that is under ``DETAIL_MIN_PX``: its splitter handle stays, to drag it up)."""
        wide = self.width() >= WIDE_PX
        orientation = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self.splitter.orientation() != orientation:
            self.splitter.setOrientation(orientation)
            self._user_sized = False  # sizes along the other direction no longer apply
        if self._user_sized:
            return
        if wide:
            total = self.splitter.width() - self.splitter.handleWidth()
            table = min(self.table_width(), total - DETAIL_MIN_WIDTH_PX)
            self.splitter.setSizes([table, total - table])
            return
        total = self.splitter.height() - self.splitter.handleWidth()
        table = min(total, self.table_height(TABLE_ROWS))
        detail = total - table
        self.splitter.setSizes([table + detail, 0] if detail < DETAIL_MIN_PX else [table, detail])

    def _on_splitter_moved(self) -> None:
        self._user_sized = True

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.fit_table()

    def set_result(self, result: PredictionResult | None) -> None:
        self.result = result
        self.model.label_names = result.label_names() if result is not None else {}
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
        self.model.set_task(task)
        self.show_columns_that_fit()
        self.proxy.sort(1, Qt.SortOrder.DescendingOrder)
        self.table.horizontalHeader().setSortIndicator(1, Qt.SortOrder.DescendingOrder)
        if task is not None:
            events = sum(event_status(c.case) == "event" for c in task.linked_cases)
            self.summary_label.setText(
                f"{len(task.linked_cases)} linked training cases ({events} with an observed event) · self-loop "
                f"weight {task.self_weight:.3f}\n{graph_line(task)}")
            self.summary_label.setToolTip(f"{neighbours_summary(task)}\n\n{graph_summary(task)}\n\n"
                                          f"{influence_tip(task)}")
        else:
            self.summary_label.setText("")
            self.summary_label.setToolTip("")
        note = task.graph_evidence_note if task is not None else ""
        self.evidence_label.setText(note)
        self.evidence_label.setVisible(bool(note))
        self.evidence_label.setStyleSheet(EVIDENCE_STYLE[task.graph_evidence if task is not None else None])
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
            self.influence_label.setText("")
            self.thumbnail.clear()
            self.pathway_plot.setVisible(False)
            return
        title = influence_title(task)
        self.detail_title.setText(f"{case.case.get('case_id', '?')}  ·  edge weight {case.weight:.3f}  ·  "
                                  f"{title[0].lower()}{title[1:]} {format_influence(task, influence_value(task, case))}")
        self.influence_label.setText(without_case_html(task, case))
        rows = [("Slide", case.case.get("slide_id")), ("Project", case.case.get("project")),
                ("Survival", None if is_missing(case.case.get("survival_months"))
                 else f"{format_months(case.case['survival_months'])} months"),
                ("Status", event_status(case.case) or None), ("Stage", case.case.get("stage"))]
        rows += [(k, readable_label(self.model.label_names, k, case.case.get(k))) for k in label_columns([case])]
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
