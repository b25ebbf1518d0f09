"""The results dock: a header (mode, research use only, synthetic cohort), the suggested project,
and three tabs — Survival (risk in the cohort, survival curves, what the linked cases say and the
graph contribution), Probabilities (one bar chart per classification task, beside the linked cases'
edge-weighted labels), Linked cases (sortable table of the graph neighbours with their exact
influence, and a detail pane with the case's fields, thumbnail, the prediction without it and
authentic vs reconstructed pathway activity).

Views only: every number comes from :class:`msrl_model.infer.results.PredictionResult`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFrame, QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QTabWidget,
                               QToolButton, QVBoxLayout, QWidget)

from msrl_app.labels import MODE_TITLES, big_label, metrics_line, mode_title, patches_text, survival_curves, task_title
from msrl_app.labels import heading as _heading
from msrl_app.labels import muted as _muted
from msrl_app.linked_cases import (CaseSortProxy, LinkedCasesModel, LinkedCasesSection, event_status,  # noqa: F401
                                   format_value, graph_summary, is_missing, label_columns, neighbours_summary,
                                   paired_pathways)
from msrl_app.plots import RISK_GROUP_COLORS, BarsPlot, RiskHistogram, SurvivalPlot
from msrl_model import RESEARCH_USE_ONLY
from msrl_model.infer.results import PredictionResult, TaskResult


class SurvivalSection(QWidget):
    """One survival task: risk group, score, percentile, median; cohort histogram; S(t) curves."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.group_label = big_label(1.6, "risk_group")
        self.risk_label = QLabel()
        self.risk_label.setObjectName("risk_score")
        self.risk_label.setWordWrap(True)
        self.median_label = QLabel()
        self.median_label.setWordWrap(True)
        self.event_set_label = QLabel()  # the conformal set of time bins for the event
        self.event_set_label.setWordWrap(True)
        self.event_set_label.setToolTip("Holds the event time for that share of cases like the training cases "
                                        "(calibrated on held-out folds, censoring-weighted)")
        self.histogram = RiskHistogram()
        self.histogram.setFixedHeight(140)
        self.cohort_note = _muted()
        self.plot = SurvivalPlot()
        self.plot.setMinimumHeight(240)
        self.neighbours_label = QLabel()
        self.neighbours_label.setWordWrap(True)
        self.graph_label = _muted()
        self.metrics_label = _muted()
        top = QGridLayout()
        top.addWidget(self.group_label, 0, 0, 3, 1)
        top.addWidget(self.risk_label, 0, 1)
        top.addWidget(self.median_label, 1, 1)
        top.addWidget(self.event_set_label, 2, 1)
        top.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(_heading("Risk in the training cohort"))
        layout.addWidget(self.histogram)
        layout.addWidget(self.cohort_note)
        layout.addWidget(_heading("Predicted survival"))
        layout.addWidget(self.plot)
        layout.addWidget(_heading("What the linked cases say"))
        layout.addWidget(self.neighbours_label)
        layout.addWidget(self.graph_label)
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
        self.event_set_label.setText(event_set_text(s))
        self.event_set_label.setVisible(bool(s.event_set_text))
        risks = cohort_risks if cohort_risks is not None else np.asarray([], dtype=float)
        self.histogram.set_data(risks, s.risk, s.risk_thresholds)
        self.cohort_note.setText(
            f"Groups are tertiles of the training cohort's risks (low < {s.risk_thresholds[0]:.3f} ≤ "
            f"intermediate ≤ {s.risk_thresholds[1]:.3f} < high).")
        self.plot.set_curves(survival_curves(task), median)
        self.neighbours_label.setText(neighbours_summary(task))
        self.graph_label.setText(graph_summary(task))
        self.metrics_label.setText(format_metrics(task.metrics))
        if task.informative is False:  # greyed: the risk group is not a finding
            self.group_label.setStyleSheet(f"color: {GREY}; padding-right: 14px;")
            self.metrics_label.setText(not_informative_text(task))
            self.metrics_label.setStyleSheet(f"color: {NOT_INFORMATIVE_COLOR}; font-weight: bold;")


GREY = "#6b7078"  # a task not informative in cross-validation
NOT_INFORMATIVE_COLOR = "#c9a060"


def not_informative_text(task: TaskResult) -> str:
    """'Not informative in cross-validation — …' with the evidence (TaskResult.informative_note)."""
    note = task.informative_note.split(": ", 1)[-1]
    return f"Not informative in cross-validation — {note}."


def event_set_text(s: Any) -> str:
    """'Event 90 % conformal set: between 14 and 31 months, or after 52 months' ('' without one)."""
    if not s.event_set_text or s.set_coverage is None:
        return ""
    return f"Event time, {s.set_coverage:.0%} conformal set: <b>{s.event_set_text}</b>"


def format_metrics(metrics: dict[str, Any]) -> str:
    return metrics_line(metrics, "Cross-validated: ", " · ")


class ClassificationSection(QWidget):
    """One classification task: probabilities as horizontal bars (the predicted class highlighted, or beside
    the linked cases' edge-weighted label shares when they have labels), what the linked cases say, the
    graph contribution."""

    def __init__(self, task: TaskResult, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        c = task.classification
        names = c.names
        self.title = _heading(task_title(task.name))
        best = int(np.argmax(c.probabilities))
        in_set = f" · conformal set: <b>{c.set_text}</b>" if c.set_text else ""
        self.summary = QLabel(f"Most likely: <b>{c.predicted_name}</b> ({c.probabilities[best]:.0%}){in_set}")
        self.summary.setToolTip("The conformal set holds the true class for that share of cases like the "
                                "training cases (calibrated on held-out folds)" if in_set else "")
        self.summary.setWordWrap(True)
        self.plot = BarsPlot()
        series = [("this slide (model)", np.asarray(c.probabilities))]
        if c.neighbours_distribution is not None:
            series.append(("linked cases (edge-weighted labels)", np.asarray(c.neighbours_distribution)))
        self.plot.set_bars(names, series, highlight=best)
        self.neighbours_label = QLabel(neighbours_summary(task))
        self.neighbours_label.setWordWrap(True)
        self.graph_label = _muted(graph_summary(task))
        self.metrics_label = _muted(format_metrics(task.metrics))
        if task.informative is False:  # no confident bar: the output is shown greyed, as text
            self.title.setStyleSheet(f"color: {GREY}; padding-top: 6px;")
            shares = ", ".join(f"{n} {p:.0%}" for n, p in zip(names, c.probabilities))
            self.summary.setText(f"<span style='color:{GREY}'>Model output {shares} — not a finding</span>")
            self.plot.setVisible(False)
            self.metrics_label.setText(not_informative_text(task))
            self.metrics_label.setStyleSheet(f"color: {NOT_INFORMATIVE_COLOR}; font-weight: bold;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 8)
        for w in (self.title, self.summary, self.metrics_label, self.plot, self.neighbours_label, self.graph_label):
            layout.addWidget(w)


PLACEHOLDER_NO_SLIDE = "No results yet. Open a slide, choose its cancer type and click Analyze (Ctrl+R)."
PLACEHOLDER_SLIDE_OPEN = ("No results for this slide yet. Choose its cancer type (or leave it unknown) and click "
                          "Analyze (Ctrl+R).")


class ResultsPanel(QWidget):
    """Everything predicted for the open slide."""

    rerunRequested = Signal(str)  # the suggested project the user confirmed
    popOutRequested = Signal()  # the pop-out button: results in their own window, or back beside the slide

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: PredictionResult | None = None
        self.title = big_label(1.3)
        self.title.setText("Results")
        self.title.setWordWrap(True)  # a long slide id breaks at its hyphens
        self.pop_out_button = QToolButton()
        self.pop_out_button.setAutoRaise(True)
        self.pop_out_button.clicked.connect(self.popOutRequested)
        self.set_popped_out(False)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("mode")
        self.research_label = QLabel(RESEARCH_USE_ONLY)
        self.research_label.setStyleSheet("color: #f0b450; font-weight: bold;")
        self.research_label.setWordWrap(True)
        self.synthetic_label = QLabel("SYNTHETIC TRAINING COHORT — predictions demonstrate the software only")
        self.synthetic_label.setStyleSheet("background: #7a1f1f; color: white; font-weight: bold; padding: 3px 6px;")
        self.synthetic_label.setWordWrap(True)
        self.synthetic_label.setVisible(False)
        self.ood_label = QLabel()  # the slide is unlike the training cohort (result.applicability)
        self.ood_label.setObjectName("applicability")
        self.ood_label.setStyleSheet("background: #8a1c1c; color: white; font-weight: bold; padding: 4px 6px;")
        self.ood_label.setWordWrap(True)
        self.ood_label.setVisible(False)
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

        self.placeholder = _muted(PLACEHOLDER_NO_SLIDE)
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

        title_row = QHBoxLayout()
        title_row.addWidget(self.title, 1)
        title_row.addWidget(self.pop_out_button, 0, Qt.AlignmentFlag.AlignTop)
        header = QVBoxLayout()
        header.setSpacing(2)
        header.addLayout(title_row)
        header.addWidget(self.mode_label)
        header.addWidget(self.research_label)
        header.addWidget(self.synthetic_label)
        header.addWidget(self.ood_label)
        self.details = QWidget()  # how it was analysed, the model, the suggestion: folded on the Linked cases tab
        details = QVBoxLayout(self.details)
        details.setContentsMargins(0, 0, 0, 0)
        details.setSpacing(2)
        details.addWidget(self.meta_label)
        details.addWidget(self.model_label)
        details.addWidget(self.suggest_frame)
        header.addWidget(self.details)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(header)
        layout.addWidget(self.warnings_label)
        layout.addWidget(self.placeholder, 1)
        layout.addWidget(self.tabs, 3)
        self.tabs.currentChanged.connect(self._fold_details)
        self.set_result(None)

    def _fold_details(self) -> None:
        """The Linked cases tab gives its table the header's detail lines (the research-use, synthetic-cohort
        and applicability banners stay); the other tabs and no result show them."""
        self.details.setVisible(self.result is None or self.tabs.currentWidget() is not self.linked)

    def set_model(self, manifest: dict[str, Any] | None, name: str = "", loading: Path | None = None) -> None:
        """The model bundle line of the header: ``manifest`` None means none yet — being read from
        ``loading``, or none chosen."""
        if manifest is None:
            self.model_label.setText(f"Loading the model {loading.name}… (Analyze is ready when it is)" if loading
                                     else "No model bundle loaded — File ▸ Open model bundle…")
            return
        cohort = manifest.get("cohort") or {}
        tasks = ", ".join(task_title(t.get("name", "?")) for t in manifest.get("tasks") or [])
        synthetic = " · <b style='color:#ff8787'>synthetic cohort</b>" if cohort.get("synthetic") else ""
        self.model_label.setText(f"Model: {name} · {tasks} · {cohort.get('n_cases', '?')} training cases{synthetic}")

    def set_popped_out(self, popped_out: bool) -> None:
        """The pop-out button's wording: the results are in their own window (``popped_out``) or docked."""
        self.pop_out_button.setText("Dock back" if popped_out else "Pop out")
        self.pop_out_button.setToolTip("Put the results back beside the slide (Ctrl+Shift+D)" if popped_out else
                                       "Show the results in a large window of their own (Ctrl+Shift+D)")

    def set_has_slide(self, has_slide: bool) -> None:
        """The placeholder's advice: open a slide, or (one is open) analyse it."""
        self.placeholder.setText(PLACEHOLDER_SLIDE_OPEN if has_slide else PLACEHOLDER_NO_SLIDE)

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
        self.mode_label.setVisible(has)  # no empty lines in the header before a result
        self.meta_label.setVisible(has)
        self.suggest_frame.setVisible(False)
        self.warnings_label.setVisible(False)
        self._fold_details()
        if result is None:
            self.title.setText("Results")
            self.mode_label.setText("")
            self.meta_label.setText("")
            self.synthetic_label.setVisible(False)
            self.ood_label.setVisible(False)
            self.linked.set_result(None)
            return
        self.title.setText(result.slide_id)
        self.mode_label.setText(mode_title(result.mode))
        style = "#4fc3f7" if result.mode == "msrl_multi" else "#c9ccd1"
        self.mode_label.setStyleSheet(f"color: {style}; font-weight: bold;")
        self.synthetic_label.setVisible(result.synthetic_training_cohort)
        a = result.applicability
        self.ood_label.setText(f"⚠ Unlike the training cohort — predictions unreliable (p = {a.p_value:.3f})"
                               if a is not None and a.flagged else "")
        self.ood_label.setToolTip(a.message if a is not None else "")
        self.ood_label.setVisible(a is not None and a.flagged)
        self.meta_label.setText(f"Analysed as {result.project or 'unspecified cancer type'} · "
                                f"{patches_text(result)} · encoder {result.encoder.get('name', '?')}")
        self._suggested = result.suggested_project
        if result.suggested_project and result.suggested_project != result.project:
            self.suggest_label.setText(f"The slide's graph neighbours are mostly <b>{result.suggested_project}</b> "
                                       f"cases; analysed as {result.project or 'unspecified'}.")
            self.suggest_button.setText(f"Rerun as {result.suggested_project}")
            self.suggest_frame.setVisible(True)
        others = [w for w in result.warnings if a is None or w != a.message]  # the banner says that one
        if others:
            self.warnings_label.setText("⚠ " + "<br>⚠ ".join(others))
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


__all__ = ["CaseSortProxy", "LinkedCasesModel", "MODE_TITLES", "ResultsPanel", "event_status", "format_value",
           "is_missing", "label_columns", "mode_title", "paired_pathways", "task_title"]
