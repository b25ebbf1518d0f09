"""Result plots (pyqtgraph): cohort risk histogram, survival curves, probability bars, paired
pathway bars.

Every plot takes plain numpy arrays and comes in two themes: ``"dark"`` for the app and ``"light"``
for the PDF report. :func:`render_plot` draws a plot into a ``QImage`` (``QWidget.grab`` of an
off-screen widget; pyqtgraph's SVG exporter is not used: it crashes on PySide6 >= 6.11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage
from PySide6.QtWidgets import QWidget


@dataclass(frozen=True)
class Theme:
    """Colours of one plot theme."""

    background: str  # plot background
    foreground: str  # axes, ticks and labels
    grid_alpha: float  # 0..1 opacity of the grid lines
    accent: str  # this slide (curve, marker, bars)
    cohort: str  # the training cohort
    neighbours: str  # the linked training cases
    muted: str  # secondary bars, histogram


THEMES = {
    "dark": Theme("#1f2125", "#c9ccd1", 0.18, "#ff9f43", "#8a93a3", "#4fc3f7", "#56606e"),
    "light": Theme("#ffffff", "#222222", 0.25, "#d9480f", "#6b7280", "#1c7ed6", "#b8c0cc"),
}

RISK_GROUP_COLORS = {"low": "#37b24d", "intermediate": "#f59f00", "high": "#e03131"}


def _pen(color: str, width: float = 2.0, style: Qt.PenStyle = Qt.PenStyle.SolidLine):
    return pg.mkPen(color=color, width=width, style=style)


class _ThemedPlot(pg.PlotWidget):
    """A PlotWidget with the theme's colours, a light grid and no mouse interaction (a figure)."""

    def __init__(self, theme: str = "dark", parent: QWidget | None = None) -> None:
        self.theme = THEMES[theme]
        super().__init__(parent, background=self.theme.background)
        item = self.getPlotItem()
        item.setMenuEnabled(False)
        item.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        for side in ("left", "bottom"):
            axis = item.getAxis(side)
            axis.setPen(_pen(self.theme.foreground, 1))
            axis.setTextPen(_pen(self.theme.foreground, 1))
            axis.setTickFont(font)
        item.showGrid(x=True, y=True, alpha=self.theme.grid_alpha)
        self.setMinimumHeight(150)

    def _label(self, side: str, text: str) -> None:
        self.getPlotItem().setLabel(side, text, color=self.theme.foreground)

    def _legend(self):
        legend = self.getPlotItem().addLegend(offset=(-8, 8), labelTextColor=self.theme.foreground,
                                              brush=pg.mkBrush(self.theme.background + "d0"),
                                              pen=_pen(self.theme.muted, 1))
        legend.setLabelTextSize("8pt")
        return legend


def survival_steps(times: np.ndarray, survival: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Right-continuous step data for S(t): ``times`` (K,) where S changes to ``survival`` (K,).

    Returns x (2K+1,) and y (2K+1,) drawing S = 1 before the first time, horizontal runs and vertical
    drops, ending at ``horizon`` (infinite times are clipped to it)."""
    times = np.minimum(np.asarray(times, dtype=float), horizon)  # (K,)
    survival = np.asarray(survival, dtype=float)  # (K,)
    x, y = [0.0], [1.0]
    level = 1.0
    for t, s in zip(times, survival):
        x += [t, t]
        y += [level, s]
        level = s
    x.append(horizon)
    y.append(level)
    return np.asarray(x), np.asarray(y)


class SurvivalPlot(_ThemedPlot):
    """Predicted S(t) of this slide with the cohort's and the neighbours' Kaplan–Meier curves."""

    def __init__(self, theme: str = "dark", parent: QWidget | None = None) -> None:
        super().__init__(theme, parent)
        self._label("bottom", "Months")
        self._label("left", "Survival probability")
        self.setYRange(0, 1.02, padding=0)
        self.legend = self._legend()
        self.curves: dict[str, pg.PlotDataItem] = {}  # name -> curve (tests, export)
        self.median_line: pg.InfiniteLine | None = None

    def set_curves(self, curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]],
                   median: float | None = None) -> None:
        """``curves``: (key, legend name, times (K,), S (K,)) with key in {"slide", "cohort",
        "neighbours"}; ``median``: this slide's predicted median survival in months (a dashed line)."""
        item = self.getPlotItem()
        for curve in self.curves.values():
            item.removeItem(curve)
        self.legend.clear()
        self.curves.clear()
        if self.median_line is not None:
            item.removeItem(self.median_line)
            self.median_line = None
        finite = [float(t) for _, _, ts, _ in curves for t in np.asarray(ts, float) if np.isfinite(t)]
        horizon = max(finite) * 1.1 if finite else 60.0
        styles = {"slide": (self.theme.accent, 3.0, Qt.PenStyle.SolidLine),
                  "cohort": (self.theme.cohort, 2.0, Qt.PenStyle.DashLine),
                  "neighbours": (self.theme.neighbours, 2.0, Qt.PenStyle.SolidLine)}
        for key, name, times, survival in curves:
            x, y = survival_steps(times, survival, horizon)
            color, width, style = styles.get(key, (self.theme.muted, 1.5, Qt.PenStyle.SolidLine))
            curve = self.plot(x, y, pen=_pen(color, width, style), name=name)
            self.curves[key] = curve
        if median is not None and np.isfinite(median):
            self.median_line = pg.InfiniteLine(
                pos=float(median), angle=90, pen=_pen(self.theme.accent, 1, Qt.PenStyle.DotLine),
                label=f"median {median:.0f} mo", labelOpts={"color": self.theme.accent, "position": 0.1})
            item.addItem(self.median_line)
        self.setXRange(0, horizon, padding=0)
        self.setYRange(0, 1.02, padding=0)


class RiskHistogram(_ThemedPlot):
    """The training cohort's risk scores as a histogram, risk-group cut-offs and this slide's marker."""

    def __init__(self, theme: str = "dark", parent: QWidget | None = None) -> None:
        super().__init__(theme, parent)
        self._label("bottom", "Risk score (higher = shorter predicted survival)")
        self._label("left", "Training cases")  # counts per bin
        self.getPlotItem().showGrid(x=False, y=False)
        self.setMinimumHeight(120)
        self.bars: pg.BarGraphItem | None = None
        self.marker: pg.InfiniteLine | None = None

    def set_data(self, cohort_risks: np.ndarray, risk: float, cutoffs: Sequence[float] = ()) -> None:
        """``cohort_risks`` (N,) training risks, ``risk`` this slide's, ``cutoffs`` group boundaries."""
        self.clear()
        cohort_risks = np.asarray(cohort_risks, dtype=float)
        cohort_risks = cohort_risks[np.isfinite(cohort_risks)]
        lo = min([risk, *cohort_risks]) if len(cohort_risks) else risk - 1
        hi = max([risk, *cohort_risks]) if len(cohort_risks) else risk + 1
        span = (hi - lo) or 1.0
        edges = np.linspace(lo - 0.02 * span, hi + 0.02 * span, 26)  # 25 bins
        counts, _ = np.histogram(cohort_risks, bins=edges)
        centers = (edges[:-1] + edges[1:]) / 2
        brushes = []
        cuts = sorted(cutoffs)
        for c in centers:  # colour each bin by the risk group it falls in
            group = ["low", "intermediate", "high"][min(2, sum(c > cut for cut in cuts))] if len(cuts) == 2 else None
            color = QColor(RISK_GROUP_COLORS[group] if group else self.theme.muted)
            color.setAlpha(150)
            brushes.append(pg.mkBrush(color))
        self.bars = pg.BarGraphItem(x=centers, height=counts, width=(edges[1] - edges[0]) * 0.92,
                                    brushes=brushes, pen=pg.mkPen(None))
        self.addItem(self.bars)
        for cut in cuts:
            self.addItem(pg.InfiniteLine(pos=cut, angle=90, pen=_pen(self.theme.foreground, 1, Qt.PenStyle.DotLine)))
        self.marker = pg.InfiniteLine(pos=float(risk), angle=90, pen=_pen(self.theme.accent, 3),
                                      label="this slide", labelOpts={"color": self.theme.accent, "position": 0.88})
        self.addItem(self.marker)
        self.setXRange(edges[0], edges[-1], padding=0)
        self.setYRange(0, max(1, counts.max()) * 1.15, padding=0)


PATHWAY_AXIS = "Pathway activity (mean z-score of its genes)"  # the x axis of the pathway bar charts


class PercentAxis(pg.AxisItem):
    """Tick labels as percentages (probabilities)."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph override
        return [f"{v:.0%}" for v in values]


class BarsPlot(_ThemedPlot):
    """Horizontal bars with their values; one or two series (this slide vs a linked case)."""

    ROW_PX = 26  # height of one bar row in pixels

    def __init__(self, theme: str = "dark", parent: QWidget | None = None, value_format: str = "{:.0%}",
                 x_range: tuple[float, float] | None = (0.0, 1.0), axis_label: str = "Probability") -> None:
        super().__init__(theme, parent)
        if value_format.endswith("%}"):
            self.getPlotItem().setAxisItems({"bottom": PercentAxis("bottom")})
            axis = self.getPlotItem().getAxis("bottom")
            axis.setPen(_pen(self.theme.foreground, 1))
            axis.setTextPen(_pen(self.theme.foreground, 1))
        self._label("bottom", axis_label)  # what the bars measure: every chart says it (app and PDF)
        self.getPlotItem().getAxis("bottom").enableAutoSIPrefix(False)  # ticks in the values' own units
        self.value_format = value_format
        self.x_range = x_range
        self.getPlotItem().showGrid(x=True, y=False, alpha=self.theme.grid_alpha)
        self.getPlotItem().getAxis("left").setStyle(tickLength=0)
        self.bar_items: list[pg.BarGraphItem] = []
        self.values: list[np.ndarray] = []  # the values of each series, label order (tests, export)
        self.legend = self._legend()

    def set_bars(self, labels: Sequence[str], series: Sequence[tuple[str, np.ndarray]],
                 highlight: int | None = None) -> None:
        """``labels`` (C,) top to bottom; ``series``: (name, values (C,)); ``highlight``: index of the
        bar drawn in the accent colour (e.g. the most probable class), the others muted."""
        self.clear()
        self.legend.clear()
        self.bar_items, self.values = [], []
        n, k = len(labels), len(series)
        rows = np.arange(n)[::-1].astype(float)  # first label on top
        height = 0.72 / max(1, k)
        colors = [self.theme.accent, self.theme.neighbours]
        lo, hi = self.x_range if self.x_range else (0.0, 0.0)
        for j, (name, values) in enumerate(series):
            values = np.asarray(values, dtype=float)
            y = rows + (0.36 - height * (j + 0.5)) if k > 1 else rows
            if k == 1 and highlight is not None:
                style = {"brushes": [pg.mkBrush(self.theme.accent if i == highlight else self.theme.muted)
                                     for i in range(n)]}
            else:
                style = {"brush": pg.mkBrush(colors[j % 2])}  # one brush: the legend swatch shows it
            bars = pg.BarGraphItem(x0=np.minimum(values, 0.0), y=y, height=height * 0.88, width=np.abs(values),
                                   pen=pg.mkPen(None), **style)
            self.addItem(bars)
            self.bar_items.append(bars)
            self.values.append(values)
            if k > 1:
                self.legend.addItem(bars, name)
            for yi, v in zip(y, values):
                text = pg.TextItem(" " + self.value_format.format(v) + " ", color=self.theme.foreground,
                                   anchor=(0, 0.5) if v >= 0 else (1, 0.5))
                text.setPos(v, yi)
                self.addItem(text)
            if not self.x_range:
                lo, hi = min(lo, float(values.min(initial=0))), max(hi, float(values.max(initial=0)))
        axis = self.getPlotItem().getAxis("left")
        axis.setTicks([[(r, label) for r, label in zip(rows, labels)]])
        # room for the longest category name: an unshown plot (the PDF) never grows the axis itself
        metrics = QFontMetrics(axis.style.get("tickFont") or self.font())
        axis.setWidth(max((metrics.horizontalAdvance(str(label)) for label in labels), default=0) + 14)
        self.legend.setVisible(k > 1)
        pad = (0.12 if self.x_range else 0.25) * ((hi - lo) or 1.0)  # room for the value labels
        self.setXRange(lo - (pad if lo < 0 else 0), hi + pad, padding=0)
        top = n - 0.4 + (1.0 * k if k > 1 else 0)  # room above the bars for the legend (one row per entry)
        self.setYRange(-0.6, top, padding=0)
        self.setFixedHeight(int(62 + self.ROW_PX * (top + 0.6) * (1.25 if k > 1 else 1)))  # 18 px: the axis title
def render_plot(plot: pg.PlotWidget, width: int, height: int) -> QImage:
    """Draw ``plot`` (shown or not) into a ``width`` x ``height`` image (``QWidget.grab``)."""
    plot.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    plot.setMinimumSize(0, 0)
    plot.setMaximumSize(16777215, 16777215)  # QWIDGETSIZE_MAX: lift any fixed size
    plot.resize(width, height)
    if not plot.isVisible():
        plot.show()  # lays out the scene; WA_DontShowOnScreen keeps it off screen
    return plot.grab().toImage()
