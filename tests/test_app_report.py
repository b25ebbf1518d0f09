"""PDF and chart defects of issue 13: category names on bar charts rendered off screen (the PDF),
a labelled y axis on the risk histogram, the model card's first paragraph without Markdown marks,
one precision for follow-up months."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtGui import QFontMetrics

from msrl_app.linked_cases import format_months
from msrl_app.plots import PATHWAY_AXIS, BarsPlot, RiskHistogram
from msrl_app.report import _first_paragraph


@pytest.mark.parametrize("labels", [["I", "II"], ["estrogen response early", "interferon gamma response"]])
def test_bar_chart_axis_fits_its_longest_category_name(qtbot, labels):
    plot = BarsPlot("light", value_format="{:+.2f}", x_range=None)
    qtbot.addWidget(plot)
    plot.set_bars(labels, [("this slide", np.array([0.2, -0.1]))])
    axis = plot.getPlotItem().getAxis("left")
    metrics = QFontMetrics(axis.style.get("tickFont") or plot.font())
    assert axis.minimumWidth() >= max(metrics.horizontalAdvance(label) for label in labels)  # laid out so


@pytest.mark.parametrize("kwargs, title", [({}, "Probability"),
                                           ({"value_format": "{:+.2f}", "x_range": None, "axis_label": PATHWAY_AXIS},
                                            PATHWAY_AXIS)])
def test_bar_charts_name_their_value_axis_in_its_own_units(qtbot, kwargs, title):
    """Every bar chart says what its bars measure, and its ticks are the values themselves (pyqtgraph would
    otherwise rescale ±0.6 to ±600 with a '(x0.001)' on the title)."""
    plot = BarsPlot("light", **kwargs)
    qtbot.addWidget(plot)
    plot.set_bars(["a", "b"], [("this slide", np.array([0.6, -0.4]))])
    axis = plot.getPlotItem().getAxis("bottom")
    assert axis.labelText == title and axis.style["showValues"]
    assert axis.autoSIPrefixScale == 1.0 and "x0.001" not in axis.labelString()


def test_risk_histogram_names_its_y_axis(qtbot):
    hist = RiskHistogram("light")
    qtbot.addWidget(hist)
    axis = hist.getPlotItem().getAxis("left")
    assert axis.labelText == "Training cases" and axis.style["showValues"]


@pytest.mark.parametrize("markdown, expected", [
    ("# Card\n\n**Research use only.** Not a device.\n", "Research use only. Not a device."),
    ("# Card\n\n> **Trained on a SYNTHETIC cohort** (`msrl synth`)\n", "Trained on a SYNTHETIC cohort (msrl synth)"),
])
def test_model_card_paragraph_is_plain_text(markdown, expected):
    assert _first_paragraph(markdown) == expected


@pytest.mark.parametrize("value, text", [(103, "103.0"), (58.9, "58.9"), (71.56, "71.6"), (None, "—")])
def test_follow_up_months_have_one_precision(value, text):
    assert format_months(value) == text


def test_header_says_loading_names_the_model_and_the_placeholder_follows_the_slide(qtbot):
    from pathlib import Path

    from msrl_app.results_view import PLACEHOLDER_NO_SLIDE, PLACEHOLDER_SLIDE_OPEN, ResultsPanel

    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.set_model(None, loading=Path("/opt/msrl/resources/bundle"))
    assert panel.model_label.text().startswith("Loading the model bundle…")
    manifest = {"cohort": {"name": "synthetic-300c-3p-seed0", "n_cases": 300, "synthetic": True},
                "tasks": [{"name": "survival"}]}
    from msrl_app.labels import model_display_name

    panel.set_model(manifest, model_display_name(manifest, "bundle"))
    assert "Model: synthetic-300c-3p-seed0" in panel.model_label.text() and "bundle" not in panel.model_label.text()
    panel.set_model(None)
    assert "No model bundle loaded" in panel.model_label.text()
    assert panel.placeholder.text() == PLACEHOLDER_NO_SLIDE
    panel.set_has_slide(True)
    assert panel.placeholder.text() == PLACEHOLDER_SLIDE_OPEN and "Open a slide" not in PLACEHOLDER_SLIDE_OPEN


@pytest.mark.parametrize("screen, expected", [((1366, 768), (1366, 768)), ((2560, 1440), (1400, 900))])
def test_first_window_size_fits_the_screen(screen, expected):
    from PySide6.QtCore import QRect, QSize

    from msrl_app.theme import first_size

    class Screen:
        def availableGeometry(self):  # noqa: N802 - Qt's name
            return QRect(0, 0, *screen)

    assert first_size(Screen()) == QSize(*expected)
    assert first_size(None) == QSize(1400, 900)
