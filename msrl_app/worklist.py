"""The Worklist dock: the slides of a folder (or list file) as a case list — thumbnail, status (with the
reason of a failure), risk group and top findings per slide — with Analyze all (one progress bar,
Cancel) and a click on a row opening that slide with its result in the main window.

The dock owns nothing: it shows :class:`msrl_app.worklist_model.WorklistModel` (Qt-free, evented) and
calls its actions. :func:`install` adds it to the main window (tabbed with the results), with File ▸
Open worklist folder… / Open worklist file… and View ▸ Panels ▸ Worklist; ``msrl-app --worklist DIR``
opens one at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSize, Qt
from PySide6.QtGui import QAction, QColor, QKeySequence, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QProgressBar,
                               QPushButton, QTableView, QVBoxLayout, QWidget)

from msrl_app.labels import task_title
from msrl_app.worklist_model import THUMBNAIL_PX, WorklistModel
from msrl_model.infer.worklist import SlideStatus, WorklistEntry, default_results_dir
from msrl_model.progress import Progress

if TYPE_CHECKING:
    from msrl_app.window import MainWindow

STATUS_COLOURS = {SlideStatus.DONE: "#7fd08a", SlideStatus.FAILED: "#ff8a80", SlideStatus.RUNNING: "#6aa6ff",
                  SlideStatus.QUEUED: "#c9b26b", SlideStatus.NOT_ANALYSED: "#9aa0a8"}
ICON_PX = THUMBNAIL_PX // 2  # the thumbnail as a row shows it
ROW_PX = ICON_PX + 8  # the least row height
NO_CALL = "no informative call"  # every classification task is at chance level in cross-validation
UNRELIABLE_COLOUR = "#ffb74d"  # the findings of a slide unlike the training cohort (amber, as the banner warns)
LIST_FILTER = "Slide lists (*.txt *.lst *.csv);;All files (*)"


def risk_line(entry: WorklistEntry) -> str:
    """'High risk, percentile 78' (among the training cases, as the report says it); '' without a survival
    task or before a result."""
    if entry.risk_group is None:
        return ""
    pct = f", percentile {entry.risk_percentile:.0f}" if entry.risk_percentile is not None else ""
    return f"{entry.risk_group.capitalize()} risk{pct}"


UNLIKE_TRAINING = "⚠ Unlike the training cohort: unreliable"


def findings_text(entry: WorklistEntry, informative_only: bool = True) -> str:
    """The risk line, then one line per call, 'Stage: II 62%'; tasks not better than chance in
    cross-validation are left out (``informative_only``; :data:`NO_CALL` when that leaves none) or marked.
    A slide the applicability check flagged starts with :data:`UNLIKE_TRAINING`, as its result's banner does."""
    lines = [UNLIKE_TRAINING] if entry.unlike_training else []
    lines += [risk_line(entry)] if entry.risk_group is not None else []
    calls = [f"{task_title(f.task)}: {f.call} {f.probability:.0%}" + (" (not informative)" if f.informative is False else "")
             for f in entry.findings if not (informative_only and f.informative is False)]
    if entry.findings and not calls:
        calls = [NO_CALL]
    return "\n".join(lines + calls)


def status_text(entry: WorklistEntry, full: bool = False) -> str:
    """The status, with the reason of a failure (or the note of an interrupted run) after it: its first
    clause (up to the first ';', what to do follows in the tooltip), or all of it (``full``)."""
    if entry.status not in (SlideStatus.FAILED, SlideStatus.NOT_ANALYSED) or not entry.message:
        return str(entry.status)
    reason = entry.message if full else entry.message.split("; ")[0]
    return f"{entry.status}: {reason}"


def wrappable(name: str) -> str:
    """``name`` with a zero-width space after each '-', '_' and '.', where a narrow column may wrap it."""
    return "".join(c + "\u200b" if c in "-_." else c for c in name)


class WorklistTableModel(QAbstractTableModel):
    """Rows = worklist entries; columns: thumbnail, slide name, status, risk group and findings."""

    HEADERS = ("", "Slide", "Status", "Risk and findings")

    def __init__(self, model: WorklistModel) -> None:
        super().__init__()
        self.model = model
        self._pixmaps: dict[int, QPixmap] = {}
        model.events.opened.connect(self._reset)
        model.events.entry.connect(lambda i: self._changed(i, 2, 3))
        model.events.thumbnail.connect(self._thumbnail)

    def _reset(self, _: Any = None) -> None:
        self.beginResetModel()
        self._pixmaps = {}
        self.endResetModel()

    def _changed(self, row: int, first: int, last: int) -> None:
        self.dataChanged.emit(self.index(row, first), self.index(row, last))

    def _thumbnail(self, row: int) -> None:
        from msrl_app.tiles import rgb_to_qimage

        image = rgb_to_qimage(self.model.thumbnails[row])
        self._pixmaps[row] = QPixmap.fromImage(image).scaled(
            ICON_PX, ICON_PX, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self._changed(row, 0, 0)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.model.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry, column = self.model.entries[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole and column > 0:
            return (wrappable(entry.name), status_text(entry), findings_text(entry))[column - 1]
        if role == Qt.ItemDataRole.DecorationRole and column == 0:
            return self._pixmaps.get(index.row())
        if role == Qt.ItemDataRole.ForegroundRole and column == 2:
            return QColor(STATUS_COLOURS.get(entry.status, "#e3e5e8"))
        if role == Qt.ItemDataRole.ForegroundRole and column == 3 and entry.unlike_training:
            return QColor(UNRELIABLE_COLOUR)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(entry)
        return None

    @staticmethod
    def _tooltip(entry: WorklistEntry) -> str:
        parts = [entry.path, status_text(entry, full=True)]
        if entry.status == SlideStatus.DONE and entry.message:
            parts.append(f"Warnings: {entry.message}")
        findings = findings_text(entry, informative_only=False)
        if findings:
            parts.append(findings)
        if entry.seconds is not None:
            parts.append(f"last run {entry.seconds:.1f} s")
        return "\n".join(parts) + "\n\nClick to open the slide with its result."


class WorklistPanel(QWidget):
    """The dock's content: source, Analyze all / Cancel, one progress bar, the table, a summary line."""

    def __init__(self, model: WorklistModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.source_label = QLabel("No worklist: File ▸ Open worklist folder…")
        self.source_label.setWordWrap(True)
        self.source_label.setStyleSheet("color: #b8bcc4;")
        self.open_button = QPushButton("Open folder…")
        self.analyze_button = QPushButton("Analyze all")
        self.analyze_button.setToolTip("Analyse every slide in the background; done slides are skipped, "
                                       "stopped ones continue where they stopped")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current batch; finished slides and computed features are kept")
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.stage_label = QLabel()
        self.stage_label.setStyleSheet("color: #9aa0a8;")
        self.stage_label.setWordWrap(True)
        self.table_model = WorklistTableModel(model)
        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setIconSize(QSize(ICON_PX, ICON_PX))
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setMinimumSectionSize(ROW_PX)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(ICON_PX + 8)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(0, ICON_PX + 8)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.summary_label.setStyleSheet("color: #9aa0a8;")
        buttons = QHBoxLayout()
        for button in (self.open_button, self.analyze_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for item in (self.source_label, buttons, self.bar, self.stage_label, self.table, self.summary_label):
            layout.addLayout(item) if isinstance(item, QHBoxLayout) else layout.addWidget(item)
        layout.setStretchFactor(self.table, 1)
        self.analyze_button.clicked.connect(model.analyze_all)
        self.cancel_button.clicked.connect(self._cancel)
        self.table.clicked.connect(lambda index: model.open_entry(index.row()))
        events = model.events
        events.opened.connect(lambda _: self._refresh())
        events.entry.connect(lambda _: self._refresh())
        events.running.connect(self._on_running)
        events.progress.connect(self._on_progress)
        model.state.events.bundle_loaded.connect(lambda _: self._refresh())  # the model the rows were made with
        self._on_running(False)
        self._refresh()

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.model.cancel()

    def _on_running(self, running: bool) -> None:
        self.bar.setVisible(running)
        self.stage_label.setVisible(running)
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.analyze_button.setEnabled(not running and bool(self.model.entries))
        self.open_button.setEnabled(not running)
        if running:
            self.bar.setRange(0, 0)  # busy while the model loads
            self.stage_label.setText("Loading the model…")

    def _on_progress(self, tick: Progress) -> None:
        if tick.stage == "notice":  # e.g. how long a foundation model will take on the CPU: the status line
            self.model.state.message(tick.message, 120000)
            return
        if tick.stage != "slides" or not tick.total:
            return
        self.bar.setRange(0, tick.total)
        self.bar.setValue(tick.done)
        self.bar.setFormat(f"{tick.done} / {tick.total} slides")
        self.stage_label.setText(wrappable(tick.message))

    def _refresh(self) -> None:
        worklist = self.model.worklist
        if worklist is None:
            return
        beside = Path(worklist.out_dir) == default_results_dir(worklist.source)
        where = f"beside the slides ({Path(worklist.out_dir).name})" if beside else "in the app's cache (read-only folder)"
        self.source_label.setText(wrappable(f"{Path(worklist.source).name} · results {where}"))
        self.source_label.setToolTip(f"{worklist.source}\nResults: {worklist.out_dir}")
        counts = worklist.counts()
        parts = [f"{n} {status}" for status, n in counts.items() if n]
        summary = (f"{len(worklist.entries)} slides: {', '.join(parts)}" if worklist.entries
                   else "No slides in this folder (slide files, DICOM folders, pictures).")
        if self.model.other_model and counts[SlideStatus.DONE.value]:
            summary += " · done with another model: Analyze all renews them"
        self.summary_label.setText(summary)
        self.analyze_button.setEnabled(not self.model.running and bool(worklist.entries))


def choose_folder(window: MainWindow) -> None:
    folder = QFileDialog.getExistingDirectory(window, "Open worklist folder", _start_dir(window))
    if folder:
        _open(window, folder)


def choose_list(window: MainWindow) -> None:
    path, _ = QFileDialog.getOpenFileName(window, "Open worklist file (one slide path per line)",
                                          _start_dir(window), LIST_FILTER)
    if path:
        _open(window, path)


def _start_dir(window: MainWindow) -> str:
    return str(window.settings.value("paths/worklist_dir", window.settings.value("paths/last_dir", "")))


def _open(window: MainWindow, source: str) -> None:
    if window.worklist.open(source):
        window.settings.setValue("paths/worklist_dir", str(Path(source).parent))


def install(window: MainWindow) -> None:
    """The Worklist dock (tabbed with the results: ``window.worklist_dock``, ``window.worklist_panel``),
    its model (``window.worklist``), File ▸ Open worklist folder… / file… and View ▸ Panels ▸ Worklist."""
    model = WorklistModel(window.state)
    window.worklist = model
    window.worklist_panel = WorklistPanel(model)
    dock = window.worklist_dock = window._dock("Worklist", window.worklist_panel, Qt.DockWidgetArea.RightDockWidgetArea)
    window.tabifyDockWidget(window.results_dock, dock)
    window.results_dock.raise_()
    model.events.opened.connect(lambda _: (dock.show(), dock.raise_()))
    window.worklist_panel.open_button.clicked.connect(lambda: choose_folder(window))
    window.open_worklist_action = QAction("Open &worklist folder…", window)
    window.open_worklist_action.setShortcut(QKeySequence("Ctrl+Shift+O"))
    window.open_worklist_action.setStatusTip("Open a folder of slides as a case list (Analyze all, statuses, findings)")
    window.open_worklist_action.triggered.connect(lambda: choose_folder(window))
    window.open_worklist_list_action = QAction("Open worklist &file…", window)
    window.open_worklist_list_action.setStatusTip("Open a text file with one slide path per line as a case list")
    window.open_worklist_list_action.triggered.connect(lambda: choose_list(window))
    file_menu = window.recent_menu.parentWidget()  # File: the two entries go above Open recent
    file_menu.insertActions(window.recent_menu.menuAction(),
                            [window.open_worklist_action, window.open_worklist_list_action])
    window.panels_menu.addAction(dock.toggleViewAction())


__all__ = ["WorklistPanel", "WorklistTableModel", "findings_text", "install", "risk_line", "status_text", "wrappable"]
