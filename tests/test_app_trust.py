"""Issue 12 in the app: the out-of-distribution banner, tasks not informative in cross-validation, class names;
issue 11: what cross-validation measured of the linked cases, next to them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PySide6.QtCore import QSettings

from msrl_app.results_view import ResultsPanel
from msrl_app.window import MainWindow
from msrl_model.infer.results import Applicability


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from msrl_model.infer.predictor import Predictor
    from msrl_model.infer.random_bundle import make_random_bundle

    bundle = make_random_bundle(tmp_path_factory.mktemp("b") / "trust", patch_dim=32, n_cases=30, seed=2)
    rng = np.random.default_rng(0)
    out = Predictor.from_bundle(bundle, device="cpu").predict(rng.normal(size=(20, 32)).astype(np.float32),
                                                             rng.integers(0, 4000, (20, 2)), 256)
    flagged = Applicability(0.003, 0.05, True, 0.9, "bundle", 350,
                            "This slide is unlike the training cohort, so its predictions are unreliable: its "
                            "tissue, staining or scanning differs (p = 0.003)")
    egfr = out.tasks["EGFR_mut"]
    tasks = {**out.tasks, "EGFR_mut": dataclasses.replace(egfr, classification=dataclasses.replace(
        egfr.classification, class_names=["wild-type", "mutant"]))}
    return dataclasses.replace(out, applicability=flagged, warnings=[flagged.message], tasks=tasks)


def test_results_panel_flags_the_slide_and_greys_a_task_at_chance(qtbot, result):
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    assert result.tasks["EGFR_mut"].informative is False  # the random bundle's AUC 0.5 ± 0: chance
    panel.set_result(result)
    assert not panel.ood_label.isHidden() and "Unlike the training cohort" in panel.ood_label.text()
    assert panel.warnings_label.isHidden()  # the banner says it; no second copy
    section = panel.class_sections["EGFR_mut"]
    assert section.plot.isHidden() and "Not informative in cross-validation" in section.metrics_label.text()
    assert "wild-type" in section.summary.text() and "not a finding" in section.summary.text()
    panel.set_result(None)
    assert panel.ood_label.isHidden()


def test_window_banner_above_the_slide(qtbot, tmp_path, result):
    window = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window._on_result(result)
    assert not window.ood_banner.isHidden()
    assert "This slide is unlike the training cohort, so its predictions are unreliable." in window.ood_banner.text()
    window._on_result(dataclasses.replace(result, applicability=None))
    assert window.ood_banner.isHidden()


@pytest.mark.parametrize("earned", [False, True, None])
def test_linked_cases_say_what_cross_validation_measured_of_them(qtbot, result, earned):
    from msrl_app.linked_cases import EVIDENCE_STYLE, LinkedCasesSection
    from msrl_model.infer.graph_evidence import graph_evidence

    metrics = {"c_index": {"mean": 0.69, "std": 0.04, "n_folds": 15}}
    if earned is not None:
        metrics["c_index@no_graph"] = {"mean": 0.62 if earned else 0.694, "std": 0.04, "n_folds": 15,
                                       "p": 0.004 if earned else 0.64}
    known, note = graph_evidence("survival", metrics)
    assert known is earned
    survival = dataclasses.replace(result.tasks["survival"], graph_evidence=known, graph_evidence_note=note)
    section = LinkedCasesSection()
    qtbot.addWidget(section)
    section.set_result(dataclasses.replace(result, tasks={"survival": survival}))
    assert section.evidence_label.isHidden() is (earned is None)
    assert section.evidence_label.text() == note and section.evidence_label.styleSheet() == EVIDENCE_STYLE[earned]
    if earned is False:
        assert "not as the reason for the prediction" in section.evidence_label.text()


def test_survival_shows_its_conformal_event_time_set_and_hides_the_ablation_metrics(qtbot, result):
    from msrl_app.labels import metrics_line

    task = result.tasks["survival"]
    with_set = dataclasses.replace(task, survival=dataclasses.replace(
        task.survival, event_set=[1, 3], event_set_text="between 14 and 31 months, or after 52 months",
        set_coverage=0.9), metrics={**task.metrics, "c_index@no_graph": {"mean": 0.7, "std": 0.1, "p": 0.5}})
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.set_result(dataclasses.replace(result, tasks={**result.tasks, "survival": with_set}))
    section = panel.survival_sections["survival"]
    assert not section.event_set_label.isHidden()
    assert "90% conformal set" in section.event_set_label.text() and "after 52 months" in section.event_set_label.text()
    assert "@" not in section.metrics_label.text() and "C-index" in section.metrics_label.text()
    assert metrics_line({"c_index@no_graph": {"mean": 0.7, "std": 0.1}}, "x", ", ") == ""
    panel.set_result(result)  # the random bundle has no survival calibration: no set, no line
    assert panel.survival_sections["survival"].event_set_label.isHidden()


def test_prediction_set_coverage_is_a_remembered_setting_that_reaches_the_predictor(qtbot, tmp_path):
    from msrl_app.analysis import AnalysisRequest, analysis_job

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    assert window.state.coverage == 0.9 and window.coverage_actions[0.9].isChecked()
    window.coverage_actions[0.95].trigger()
    assert window.state.coverage == 0.95 and float(settings.value("analysis/coverage")) == 0.95
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    assert again.state.coverage == 0.95 and again.coverage_actions[0.95].isChecked()

    class Predictor:  # records the coverage it predicts at
        device_name = "cpu"
        coverage = None

        def predict_slide(self, *args, **kw):
            yield from ()
            return "result"

        def cohort_risks(self):
            return {}

    predictor = Predictor()

    class Cache:
        def get(self, bundle, device):
            return predictor

    job = analysis_job(AnalysisRequest(slide=tmp_path / "s.svs", bundle=tmp_path / "b", coverage=0.8), Cache())
    for _ in job:
        pass
    assert predictor.coverage == 0.8
