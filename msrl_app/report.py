"""The PDF report (QPdfWriter + QPainter, plots rendered as images). The machine-readable results
(JSON, CSV, GeoJSON) are written by :mod:`msrl_model.infer.export`, shared with ``msrl analyze``.

Report (A4 portrait, sections flow over pages):
    header (slide id, date, software version, bundle and its fingerprint, mode), the research-use
    disclaimer, the synthetic-cohort warning when so, the slide thumbnail with the attention
    heat-map, the key results and the slide's facts; risk in the training cohort and survival
    curves, what the linked cases say and the graph contribution; class probabilities beside the linked
    cases' labels; the top linked training cases with their exact influence; pathway activity; the model
    card summary. Every page's footer repeats the disclaimer. The slide id is also the PDF's title (metadata).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QMarginsF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPageLayout, QPageSize, QPainter, QPdfWriter, QPen

from msrl_app.overlays import colormap_lut, heatmap_raster
from msrl_app.plots import PATHWAY_AXIS, RISK_GROUP_COLORS, BarsPlot, RiskHistogram, SurvivalPlot, render_plot
from msrl_app.labels import metrics_line, mode_title, patches_text, survival_curves, task_title
from msrl_app.linked_cases import (event_status, format_influence, format_months, format_value, graph_summary,
                                   influence_tip, influence_title, influence_value, label_columns,
                                   neighbours_summary, paired_pathways)
from msrl_app.state import primary_task
from msrl_model import RESEARCH_USE_ONLY as DISCLAIMER
from msrl_model import __version__
from msrl_model.files import atomic_path
from msrl_model.infer.results import PredictionResult, readable_label

TOP_CASES = 15  # linked cases listed in the report
DPI = 300  # PDF device resolution (px per inch) used for layout and plot images


@dataclass
class ReportInputs:
    """What the report shows besides the result itself."""

    result: PredictionResult  # the prediction
    manifest: dict[str, Any] = field(default_factory=dict)  # the bundle's manifest (model card summary)
    slide_thumbnail: QImage | None = None  # the whole slide, any size
    slide_size: tuple[int, int] | None = None  # level-0 (width, height) the thumbnail covers
    cohort_risks: dict[str, np.ndarray] = field(default_factory=dict)  # survival task -> training risks
    slide_summary: list[tuple[str, str]] = field(default_factory=list)  # (name, value) facts about the slide
    model_card: str = ""  # the bundle's Markdown model card (its first paragraph is quoted)


def heatmap_thumbnail(thumbnail: QImage, slide_size: tuple[int, int], result: PredictionResult,
                      opacity: float = 0.55) -> QImage:
    """The slide thumbnail with the first survival task's (else first task's) attention drawn over it."""
    image = thumbnail.convertToFormat(QImage.Format.Format_ARGB32)
    task = primary_task(result)
    if not task.attention:
        return image
    raster = heatmap_raster(np.asarray(result.coords), result.patch_size_level0, np.asarray(task.attention))
    sx, sy = image.width() / slide_size[0], image.height() / slide_size[1]  # thumbnail px per level-0 px
    painter = QPainter(image)
    painter.setOpacity(opacity)
    r = raster.rect
    painter.drawImage(QRectF(r.x() * sx, r.y() * sy, r.width() * sx, r.height() * sy), raster.image)
    painter.end()
    return image


class _Layout:
    """A page cursor in device pixels on a QPdfWriter: text, headings, images, tables, page breaks."""

    def __init__(self, writer: QPdfWriter, painter: QPainter, result: PredictionResult) -> None:
        self.writer, self.p, self.result = writer, painter, result
        rect = writer.pageLayout().paintRectPixels(writer.resolution())
        self.width, self.height = rect.width(), rect.height()
        self.y = 0.0
        self.page = 1
        self.footer_h = self.mm(10)

    def mm(self, value: float) -> float:
        return value * DPI / 25.4

    def font(self, size: float, bold: bool = False, color: str = "#1f2933") -> None:
        font = QFont("DejaVu Sans")
        font.setPointSizeF(size)
        font.setBold(bold)
        self.p.setFont(font)
        self.p.setPen(QColor(color))

    def room(self, h: float) -> None:
        if self.y + h > self.height - self.footer_h:
            self.new_page()

    def new_page(self) -> None:
        self.footer()
        self.writer.newPage()
        self.page += 1
        self.y = 0.0

    def footer(self) -> None:
        self.font(7.5, color="#6b7280")
        y = self.height - self.mm(6)
        self.p.drawLine(0, int(y - self.mm(1.5)), int(self.width), int(y - self.mm(1.5)))
        self.p.drawText(QRectF(0, y, self.width, self.mm(5)), Qt.AlignmentFlag.AlignLeft,
                        f"{DISCLAIMER} · {self.result.slide_id}")
        self.p.drawText(QRectF(0, y, self.width, self.mm(5)), Qt.AlignmentFlag.AlignRight,
                        f"MSRL Studio {__version__} · page {self.page}")

    def text(self, text: str, size: float = 9.5, bold: bool = False, color: str = "#1f2933",
             x: float = 0.0, width: float | None = None, gap: float = 1.2) -> float:
        """Wrapped text at the cursor; returns its height."""
        self.font(size, bold, color)
        width = width if width is not None else self.width - x
        rect = self.p.boundingRect(QRectF(x, 0, width, 10_000), int(Qt.TextFlag.TextWordWrap), text)
        if self.y + rect.height() > self.height - self.footer_h:
            self.new_page()
            self.font(size, bold, color)  # the footer of the page left set its own
        self.p.drawText(QRectF(x, self.y, width, rect.height()), int(Qt.TextFlag.TextWordWrap), text)
        self.y += rect.height() + self.mm(gap)
        return rect.height()

    def heading(self, text: str, keep: float = 0.0) -> None:
        """A section heading; ``keep``: height (device px) of what follows that must stay on its page."""
        self.room(self.mm(14) + keep)
        self.y += self.mm(2.5)
        self.text(text, 12, True, "#0b3d66", gap=0.6)
        self.p.setPen(QPen(QColor("#0b3d66"), self.mm(0.35)))
        self.p.drawLine(0, int(self.y), int(self.width), int(self.y))
        self.y += self.mm(2.5)

    def image(self, image: QImage, width: float, height: float, x: float = 0.0) -> None:
        self.room(height)
        self.p.drawImage(QRectF(x, self.y, width, height), image)
        self.y += height + self.mm(2)

    def box(self, text: str, fill: str, color: str = "white", size: float = 10.0) -> None:
        """A full-width coloured band with wrapped bold text."""
        self.font(size, True, color)
        inner = self.width - self.mm(6)
        flags = int(Qt.TextFlag.TextWordWrap | Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft)
        h = self.p.boundingRect(QRectF(0, 0, inner, 10_000), flags, text).height() + self.mm(3)
        self.room(h)
        self.p.fillRect(QRectF(0, self.y, self.width, h), QColor(fill))
        self.p.drawText(QRectF(self.mm(3), self.y, inner, h), flags, text)
        self.y += h + self.mm(2)

    def table(self, headers: list[str], rows: list[list[str]], widths: list[float], size: float = 8.0,
              x: float = 0.0, right: set[int] = frozenset()) -> None:
        """A striped table; ``widths`` are fractions of the available width; ``right``: right-aligned columns."""
        total = self.width - x
        line_h = self.mm(5.2)
        xs = [x + sum(widths[:i]) * total for i in range(len(widths) + 1)]

        def row(cells: list[str], bold: bool, fill: str | None) -> None:
            self.room(line_h)
            if fill:
                self.p.fillRect(QRectF(x, self.y, total, line_h), QColor(fill))
            self.font(size, bold, "white" if bold else "#1f2933")
            for i, cell in enumerate(cells):
                align = Qt.AlignmentFlag.AlignRight if i in right else Qt.AlignmentFlag.AlignLeft
                rect = QRectF(xs[i] + self.mm(1.2), self.y, xs[i + 1] - xs[i] - self.mm(2.4), line_h)
                elided = self.p.fontMetrics().elidedText(cell, Qt.TextElideMode.ElideRight, int(rect.width()))
                self.p.drawText(rect, int(align | Qt.AlignmentFlag.AlignVCenter), elided)
            self.y += line_h

        self.room(line_h * min(4, len(rows) + 1))  # never a lone header at the bottom of a page
        row(headers, True, "#0b3d66")
        for i, cells in enumerate(rows):
            if self.y + line_h > self.height - self.footer_h:
                self.new_page()
                row(headers, True, "#0b3d66")  # repeat the header on the next page
            row(cells, False, "#eef2f7" if i % 2 else None)
        self.y += self.mm(2)


def _key_results(result: PredictionResult) -> list[tuple[str, str]]:
    rows = []
    for name, task in result.tasks.items():
        if task.survival is not None:
            s = task.survival
            rows.append((f"{task_title(name)}: risk group", f"{s.risk_group} (percentile {s.percentile:.0f})"))
            rows.append((f"{task_title(name)}: risk score", f"{s.risk:.3f}"))
            rows.append((f"{task_title(name)}: median survival",
                         f"{s.median_survival_months:.0f} months" if s.median_survival_months is not None
                         else "not reached"))
            if s.event_set_text and s.set_coverage is not None:
                rows.append((f"{task_title(name)}: event time ({s.set_coverage:.0%} conformal set)", s.event_set_text))
        elif task.classification is not None:
            c = task.classification
            rows.append((task_title(name), f"{c.predicted_name} ({max(c.probabilities):.0%})"
                         if task.informative is not False else "not informative in cross-validation"))
    rows.append(("Suggested cancer type", result.suggested_project or "—"))
    return rows


def write_report(path: str | os.PathLike, inputs: ReportInputs) -> Path:
    """Write the PDF report atomically (temporary file, then rename); returns its path."""
    path = Path(path)
    result = inputs.result
    with atomic_path(path, suffix=".pdf") as tmp:
        writer = QPdfWriter(str(tmp))
        writer.setResolution(DPI)
        writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait,
                                         QMarginsF(16, 14, 16, 14), QPageLayout.Unit.Millimeter))
        writer.setTitle(f"MSRL Studio report — {result.slide_id}")
        writer.setCreator(f"MSRL Studio {__version__}")
        painter = QPainter(writer)
        if not painter.isActive():
            raise OSError(f"cannot write {path}")
        try:
            _draw_report(_Layout(writer, painter, result), inputs)
        finally:
            painter.end()
    return path


def _draw_report(lay: _Layout, inputs: ReportInputs) -> None:
    _draw_header(lay, inputs.result)
    _draw_slide_and_key_results(lay, inputs)
    _draw_survival(lay, inputs)
    _draw_classes(lay, inputs.result)
    _draw_linked_cases(lay, inputs.result)
    _model_card_summary(lay, inputs)
    lay.footer()


def _draw_header(lay: _Layout, result: PredictionResult) -> None:
    """Page 1: the title band, the disclaimer, the synthetic-cohort warning, the run's facts."""
    mm, p = lay.mm, lay.p
    p.fillRect(QRectF(0, 0, lay.width, mm(20)), QColor("#0b3d66"))
    lay.font(16, True, "white")
    p.drawText(QRectF(mm(4), mm(2), lay.width, mm(10)), int(Qt.AlignmentFlag.AlignVCenter),
               "MSRL Studio — slide report")
    lay.font(9, False, "#d6e4f0")
    p.drawText(QRectF(mm(4), mm(11), lay.width - mm(8), mm(7)), int(Qt.AlignmentFlag.AlignVCenter),
               f"Slide {result.slide_id} · {datetime.now().strftime('%Y-%m-%d %H:%M')} · MSRL Studio "
               f"{result.software_version or __version__}")
    lay.y = mm(23)
    lay.box(f"{DISCLAIMER}. Predictions are research outputs and must not guide diagnosis or treatment.",
            "#b02a1f", size=9.5)
    if result.synthetic_training_cohort:
        lay.box("SYNTHETIC TRAINING COHORT — this model was trained on generated data; its predictions "
                "demonstrate the software only.", "#f59f00", "#1f2933", size=9)
    if result.applicability is not None and result.applicability.flagged:
        lay.box(result.applicability.message + ".", "#8a1c1c", size=9.5)
    bundle = Path(result.bundle_path).name
    lay.text(f"Mode: {mode_title(result.mode)}  ·  Model bundle: {bundle} "
             f"(SHA-256 {result.bundle_sha256[:16]}…)  ·  "
             f"Encoder: {result.encoder.get('name')} {result.encoder.get('version')}  ·  "
             f"Cancer type: {result.project or 'not specified'}  ·  Analysed: {patches_text(result)}", 8.5,
             color="#4b5563")


def _draw_slide_and_key_results(lay: _Layout, inputs: ReportInputs) -> None:
    """The thumbnail with the heat-map on the left, the key results and slide facts on the right."""
    result, mm = inputs.result, lay.mm
    lay.heading("Slide and attention heat-map")
    top = lay.y
    left_w = lay.width * 0.52
    if inputs.slide_thumbnail is not None and not inputs.slide_thumbnail.isNull():
        thumb = (heatmap_thumbnail(inputs.slide_thumbnail, inputs.slide_size, result)
                 if inputs.slide_size else inputs.slide_thumbnail)
        h = min(left_w * thumb.height() / max(1, thumb.width()), mm(95))
        w = h * thumb.width() / max(1, thumb.height())
        lay.image(thumb, w, h)
        _legend(lay, w)
    else:
        lay.text("(no slide thumbnail)", color="#6b7280")
    bottom_left = lay.y
    lay.y = top
    x = left_w + mm(6)
    lay.text("Key results", 10.5, True, x=x)
    for name, value in _key_results(result):
        color = RISK_GROUP_COLORS.get(value.split(" ")[0], "#1f2933") if "risk group" in name else "#1f2933"
        lay.text(name, 8, color="#6b7280", x=x, gap=0.2)
        lay.text(value, 10, True, color=color, x=x, gap=1.6)
    if inputs.slide_summary:
        lay.y += mm(2)
        lay.text("Slide", 10.5, True, x=x)
        for name, value in inputs.slide_summary:
            lay.text(f"{name}: {value}", 8, color="#374151", x=x, gap=0.5)
    lay.y = max(lay.y, bottom_left)
    applicability = result.applicability.message if result.applicability is not None else None
    others = [w for w in result.warnings if w != applicability]  # the red box on top says that one
    if others:
        lay.heading("Warnings")
        for w in others:
            lay.text(f"• {w}", 8.5, color="#9a3412")


def _draw_survival(lay: _Layout, inputs: ReportInputs) -> None:
    """Per survival task: risk among the training cohort, survival curves (pages break where needed)."""
    result, mm = inputs.result, lay.mm
    for name, task in result.tasks.items():
        if task.survival is None:
            continue
        s = task.survival
        lay.heading(f"{task_title(name)}: risk in the training cohort", keep=mm(52))
        lay.text(f"Risk score {s.risk:.3f} — higher than {s.percentile:.0f}% of the training cases; risk group "
                 f"{s.risk_group} (tertiles: {s.risk_thresholds[0]:.3f} / {s.risk_thresholds[1]:.3f}).", 9)
        hist = RiskHistogram("light")
        hist.set_data(inputs.cohort_risks.get(name, np.asarray([])), s.risk, s.risk_thresholds)
        lay.image(_plot_image(hist, lay.width, mm(42)), lay.width, mm(42))
        lay.heading(f"{task_title(name)}: predicted survival", keep=mm(96))  # the curves and what the cases say
        plot = SurvivalPlot("light")
        plot.set_curves(survival_curves(task), s.median_survival_months)
        lay.image(_plot_image(plot, lay.width, mm(72)), lay.width, mm(72))
        _draw_neighbours_say(lay, task)
        lay.text(_metrics_line(task.metrics), 8, color="#4b5563")


def _draw_classes(lay: _Layout, result: PredictionResult) -> None:
    mm = lay.mm
    classes = [(n, t) for n, t in result.tasks.items() if t.classification is not None]
    for i, (name, task) in enumerate(classes):
        c = task.classification
        series = [("this slide (model)", np.asarray(c.probabilities))]
        if c.neighbours_distribution is not None:
            series.append(("linked cases (edge-weighted labels)", np.asarray(c.neighbours_distribution)))
        h = mm(16 + 7 * len(c.classes)) if len(series) == 1 else mm(22 + 11 * len(c.classes))
        if i == 0:  # the heading stays with the first task's title, chart and what the linked cases say
            lay.heading("Class probabilities", keep=h + mm(32))
        lay.room(h + mm(32))  # title, chart and what the linked cases say on one page
        if task.informative is False:  # greyed, as text: no chart that reads as a finding
            lay.text(f"{task_title(name)} — not informative in cross-validation", 9.5, True, color="#6b7280")
            note = task.informative_note.split(": ", 1)[-1]
            lay.text(f"{note[:1].upper()}{note[1:]}. Model output (not a finding): "
                     + ", ".join(f"{n} {p:.0%}" for n, p in zip(c.names, c.probabilities)) + ".",
                     8.5, color="#6b7280")
            _draw_neighbours_say(lay, task)
            continue
        in_set = f" · conformal set: {c.set_text}" if c.set_text else ""
        lay.text(f"{task_title(name)} — most likely {c.predicted_name}{in_set}", 9.5, True)
        bars = BarsPlot("light")
        bars.set_bars(c.names, series, highlight=int(np.argmax(c.probabilities)))
        lay.image(_plot_image(bars, int(lay.width * 0.8), h), lay.width * 0.8, h)
        _draw_neighbours_say(lay, task)
        lay.text(_metrics_line(task.metrics), 8, color="#4b5563")


def _draw_linked_cases(lay: _Layout, result: PredictionResult) -> None:
    """The primary task's top linked training cases and its pathway activity."""
    mm = lay.mm
    task = primary_task(result)
    lay.heading(f"Linked training cases ({task_title(task.name)} graph, top {min(TOP_CASES, len(task.linked_cases))} "
                f"of {len(task.linked_cases)})", keep=mm(60))  # its notes and the first rows of the table
    cases = task.linked_cases[:TOP_CASES]
    extra = label_columns(cases)[:3]
    if task.graph_evidence_note:  # what cross-validation measured of the linked cases' value
        lay.text(task.graph_evidence_note, 8.5, task.graph_evidence is False,
                 color="#92400e" if task.graph_evidence is False else "#166534", gap=0.6)
    lay.text(f"Influence column — {influence_title(task)}: {influence_tip(task)}", 8, color="#4b5563")
    names = result.label_names()  # TP53_mut "0" reads "wild-type", as in the app
    headers = ["Case", "Weight", "Influence", "Project", "Survival, mo", "Status", "Stage"] + [task_title(k) for k in extra]
    rows = [[str(c.case.get("case_id", "")), f"{c.weight:.3f}", format_influence(task, influence_value(task, c)),
             format_value(c.case.get("project")), format_months(c.case.get("survival_months")),
             event_status(c.case) or "—", format_value(c.case.get("stage"))]
            + [format_value(readable_label(names, k, c.case.get(k))) for k in extra] for c in cases]
    base = [0.11, 0.08, 0.10, 0.11, 0.13, 0.09, 0.07]  # the label columns get the rest: readable headers whole
    rest = (1 - sum(base)) / max(1, len(extra))
    lay.table(headers, rows, base + [rest] * len(extra), right={1, 2, 4})
    if task.pathways is not None:
        names, recon, mean = paired_pathways(task.pathways.names, task.pathways.reconstructed,
                                             task.pathways.neighbours_mean)
        lay.heading("Hallmark pathway activity", keep=mm(16 + 7.5 * len(names)) + mm(8))
        lay.text("Reconstructed for this slide from the graph vs the edge-weighted mean of the linked cases' "
                 "authentic (measured) activity.", 8.5, color="#4b5563")
        bars = BarsPlot("light", value_format="{:+.2f}", x_range=None, axis_label=PATHWAY_AXIS)
        bars.set_bars(names, [("this slide (reconstructed)", recon), ("linked cases (authentic, mean)", mean)])
        h = mm(20 + 7.5 * len(names))
        lay.image(_plot_image(bars, int(lay.width), h), lay.width, h)


def _draw_neighbours_say(lay: _Layout, task: Any) -> None:
    """What the linked cases' records say next to the model, and the graph contribution (two short lines)."""
    lay.text("What the linked cases say", 9.5, True, gap=0.4)
    lay.text(neighbours_summary(task), 8.5, color="#1f2933", gap=0.6)
    lay.text(graph_summary(task), 8.5, color="#4b5563")


def _legend(lay: _Layout, width: float) -> None:
    lut = colormap_lut(64)
    h = lay.mm(3)
    step = width * 0.6 / len(lut)
    for i, (r, g, b) in enumerate(lut):
        lay.p.fillRect(QRectF(i * step, lay.y, step + 1, h), QColor(int(r), int(g), int(b)))
    lay.font(7.5, color="#4b5563")
    lay.p.drawText(QRectF(width * 0.6 + lay.mm(2), lay.y - lay.mm(1), width, lay.mm(5)),
                   int(Qt.AlignmentFlag.AlignVCenter), "attention: low → high (rank)")
    lay.y += h + lay.mm(3)


def _metrics_line(metrics: dict[str, Any]) -> str:
    return metrics_line(metrics, "Cross-validated (training cohort): ", ", ")


def _plot_image(plot, width: float, height: float) -> QImage:
    """Render at ~0.4 of the device resolution (120 dpi): sharp enough, with readable tick labels."""
    scale = 0.4
    image = render_plot(plot, int(width * scale), int(height * scale))
    plot.deleteLater()
    return image


def _model_card_summary(lay: _Layout, inputs: ReportInputs) -> None:
    manifest = inputs.manifest or {}
    cohort = manifest.get("cohort") or {}
    encoder = manifest.get("encoder") or inputs.result.encoder
    lay.heading("Model card (summary)", keep=lay.mm(40))
    if cohort.get("synthetic") or inputs.result.synthetic_training_cohort:
        lay.text("Training cohort: SYNTHETIC (generated data, not patients).", 9.5, True, "#b02a1f")
    lay.text(f"Training cases: {cohort.get('n_cases', '?')} · projects: "
             f"{', '.join(map(str, cohort.get('projects') or [])) or '?'} · source: {cohort.get('source', '?')}", 8.5)
    lay.text(f"Patch encoder: {encoder.get('name')} {encoder.get('version')} ({encoder.get('dim')}-d) · "
             f"bundle format {manifest.get('format_version', '?')}, created {manifest.get('created', '?')}", 8.5)
    rows = [[t.get("name", ""), t.get("kind", ""), t.get("variant", ""), str(t.get("n_buffer", "")),
             metrics_line(t.get("metrics") or {}, "", "; ")] for t in manifest.get("tasks") or []]
    if rows:
        lay.table(["Task", "Kind", "Variant", "Buffer cases", "Cross-validated metrics"], rows,
                  [0.18, 0.15, 0.1, 0.14, 0.43], right={3})
    paragraph = _first_paragraph(inputs.model_card)
    if paragraph:
        lay.text(paragraph, 8.5, color="#374151")


def _first_paragraph(markdown: str) -> str:
    """The model card's first prose paragraph (headings skipped), as plain text: Markdown emphasis
    (``**…**``, ``*…*``, backticks) and quote marks removed."""
    for block in markdown.split("\n\n"):
        block = block.strip()
        if block and not block.startswith("#"):
            text = " ".join(line.strip().lstrip("> ") for line in block.splitlines())
            return re.sub(r"(\*\*|__|\*|`)(.+?)\1", r"\2", text)
    return ""
