"""Small widgets around Analyze: the staged progress strip with ETA and Cancel, and the model-card
dialog."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QTextBrowser, QVBoxLayout, QWidget)

from msrl_app.presenter import ProgressPresenter, ProgressView, format_eta
from msrl_model import RESEARCH_USE_ONLY
from msrl_model.progress import Progress, Stage

# What each job stage means to a user; other stages show their own name.
STAGE_TITLES: dict[Stage, str] = {
    Stage.LOAD_MODEL: "Loading the model",
    Stage.OPEN: "Opening the slide",
    Stage.CACHED: "Reusing cached features",
    Stage.TISSUE: "Detecting tissue",
    Stage.READ_ENCODE: "Extracting patch features",
    Stage.WRITE: "Saving features",
    Stage.RETRY: "Retrying",
    Stage.DEMO_SLIDE: "Preparing the demo slide",
}


class AnalysisProgress(QWidget):
    """Stage name, a progress bar (busy when the stage's total is unknown), the ETA and Cancel.

    Hidden while idle; :meth:`begin` shows it, :meth:`on_progress` takes the job's events."""

    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.presenter = ProgressPresenter()
        self.stage_label = QLabel()
        self.stage_label.setMinimumWidth(220)
        self.stage_label.setStyleSheet("color: #e3e5e8;")
        self.bar = QProgressBar()
        self.bar.setFixedWidth(220)
        self.bar.setTextVisible(True)
        self.eta_label = QLabel()
        self.eta_label.setStyleSheet("color: #9aa0a8;")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the analysis (Esc); the patches done so far are kept for the next Analyze")
        self.cancel_button.clicked.connect(self._cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 0, 4, 0)
        for widget in (self.stage_label, self.bar, self.eta_label, self.cancel_button):
            layout.addWidget(widget)
        self.stages_seen: list[str] = []  # stage names in order (tests, logs)
        self.setVisible(False)

    def begin(self, what: str) -> None:
        self.presenter = ProgressPresenter()
        self.stages_seen = []
        self.stage_label.setText(what)
        self.bar.setRange(0, 0)  # busy until the first event with a total
        self.eta_label.setText("")
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.setVisible(True)

    def on_progress(self, event: Progress) -> ProgressView:
        view = self.presenter.update(event)
        if not self.stages_seen or self.stages_seen[-1] != event.stage:
            self.stages_seen.append(event.stage)
        title = STAGE_TITLES.get(event.stage, str(event.stage).capitalize())
        step = f"Step {len(self.stages_seen)} · " if len(self.stages_seen) > 1 else ""
        self.stage_label.setText(f"{step}{title}")
        self.stage_label.setToolTip(view.text)
        if view.percent is None:
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, 100)
            self.bar.setValue(view.percent)
            self.bar.setFormat(f"{event.done:,} / {event.total:,}" if event.total and event.total > 1 else "%p%")
        parts = [event.message] if event.message and event.stage == Stage.RETRY else []
        if view.eta_seconds is not None:
            parts.append(format_eta(view.eta_seconds))
        self.eta_label.setText(" · ".join(parts))
        return view

    def _cancel(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.cancelRequested.emit()

    def end(self) -> None:
        self.setVisible(False)


def model_card_html(manifest: dict[str, Any], provenance: str | None = None) -> str:
    """The banner above the model card: SYNTHETIC cohort warning, provenance, encoder, cohort size, CV metrics.

    ``provenance`` is ``Bundle.provenance``; by default the text the loaded manifest carries
    (``msrl_model.infer.bundle.contents.LoadedManifest``)."""
    import html

    cohort = manifest.get("cohort") or {}
    rows = []
    if provenance is None:
        provenance = getattr(manifest, "provenance", None)
    if cohort.get("synthetic"):
        rows.append("<div style='background:#7a1f1f;color:white;padding:8px;font-weight:bold;'>"
                    "SYNTHETIC TRAINING COHORT — this model was trained on generated data, not on patients. "
                    "Its predictions demonstrate the software only.</div>")
    if provenance:
        trusted = provenance.startswith(("signed by", "shipped with")) and "unknown key" not in provenance
        colour = "#1f5a2a" if trusted else "#7a5a1f"
        rows.append(f"<p style='color:{colour};'><b>Provenance:</b> {html.escape(provenance)}</p>")
    encoder = manifest.get("encoder") or {}
    rows.append(f"<p><b>Encoder:</b> {encoder.get('name', '?')} {encoder.get('version', '')} "
                f"({encoder.get('dim', '?')}-d) · <b>Training cases:</b> {cohort.get('n_cases', '?')} · "
                f"<b>Projects:</b> {', '.join(map(str, cohort.get('projects') or [])) or '?'}</p>")
    metric_rows = []
    for task in manifest.get("tasks") or []:
        for metric, value in (task.get("metrics") or {}).items():
            metric_rows.append(f"<tr><td>{task.get('name')}</td><td>{metric}</td><td>{format_metric(value)}</td></tr>")
    if metric_rows:
        rows.append("<p><b>Cross-validated metrics</b></p><table cellpadding='3' border='0'>"
                    "<tr><th align='left'>Task</th><th align='left'>Metric</th><th align='left'>Mean ± SD</th></tr>"
                    + "".join(metric_rows) + "</table><hr>")
    return "".join(rows)


def format_metric(value: Any) -> str:
    """``{"mean": .61, "std": .03}`` -> ``0.610 ± 0.030``; other values as text; None -> n/a."""
    if isinstance(value, dict):
        mean, std = value.get("mean"), value.get("std")
        if mean is None:
            return "n/a"
        return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


class ModelCardDialog(QDialog):
    """Help ▸ Model card: the bundle's Markdown model card with a summary banner on top."""

    def __init__(self, manifest: dict[str, Any], markdown: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model card")
        self.resize(760, 680)
        self.summary = QTextBrowser()
        self.summary.setHtml(model_card_html(manifest))
        self.summary.setMaximumHeight(260)
        self.summary.setOpenExternalLinks(False)
        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(False)
        self.card.setMarkdown(markdown or "*This bundle has no model card.*")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        title = QLabel(f"<b>{RESEARCH_USE_ONLY}.</b>")
        title.setStyleSheet("color: #f0b450;")
        title.setAlignment(Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(title)
        layout.addWidget(self.summary)
        layout.addWidget(self.card, 1)
        layout.addWidget(buttons)
