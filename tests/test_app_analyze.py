"""Analyze end to end in the window (tiny random bundle, small synthetic slide), cancel, errors,
exports, MSRL_multi, the out-of-GPU-memory fallback, and the ``--analyze --export --quit`` path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox

import msrl_app.state
from msrl_app.analysis import CPU_BATCH, AnalysisRequest, analysis_job, read_expression
from msrl_app.applog import setup_logging
from msrl_app.results_view import CaseSortProxy, LinkedCasesModel
from msrl_app.window import MainWindow
from msrl_model.errors import MSRLError
from msrl_model.infer.results import LinkedCase, PredictionResult, TaskResult
from msrl_model.progress import Progress

ANALYSIS_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The bundle engineer's random-weight bundle, for the built-in H&E encoder's features."""
    from msrl_model.encoders import build_encoder
    from msrl_model.infer.random_bundle import make_random_bundle

    enc = build_encoder("builtin-he")
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", patch_dim=enc.dim,
                              encoder={"name": enc.name, "version": enc.version, "dim": enc.dim})


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slides") / "synth-analyze.svs", 2048, 1536, seed=11)


@pytest.fixture
def dialogs(monkeypatch):
    shown: list[tuple[str, str, str]] = []
    for kind in ("critical", "information"):
        monkeypatch.setattr(QMessageBox, kind, lambda parent, title, text, *a, k=kind, **kw:
                            shown.append((k, title, text)))
    return shown


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch, dialogs):
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "user"))
    monkeypatch.setenv("MSRL_STUDIO_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MSRL_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings, log_path=setup_logging())
    w.set_device("cpu")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def load(qtbot, window, bundle, slide) -> None:
    with qtbot.waitSignal(window.bundleLoaded, timeout=ANALYSIS_TIMEOUT_MS):
        window.set_bundle(bundle)
    assert window.open_slide(slide)


def analyze(qtbot, window) -> str:
    with qtbot.waitSignal(window.analysisFinished, timeout=ANALYSIS_TIMEOUT_MS) as blocker:
        assert window.start_analysis()
    return blocker.args[0]


def test_analyze_fills_every_panel(qtbot, window, tiny_bundle, slide):
    load(qtbot, window, tiny_bundle, slide)
    assert [window.project_combo.itemText(i) for i in range(window.project_combo.count())] == [
        "Not specified", "TCGA-BRCA", "TCGA-LUAD"]
    window.set_project("TCGA-LUAD")
    assert analyze(qtbot, window) == "done", window.last_error
    result = window.result
    assert isinstance(result, PredictionResult) and result.project == "TCGA-LUAD"
    panel = window.results
    assert panel.title.text() == slide.stem and "MSRL (slide only)" in panel.mode_label.text()
    assert panel.research_label.text().startswith("Research use only")
    assert panel.synthetic_label.isVisibleTo(panel)  # the random bundle says synthetic
    # survival: risk text, histogram of the cohort, three curves
    survival = panel.survival_sections["survival"]
    assert survival.group_label.text().endswith("risk") and "Risk score" in survival.risk_label.text()
    assert panel.risk_text()
    assert survival.histogram.bars is not None and survival.histogram.marker.value() == pytest.approx(
        result.tasks["survival"].survival.risk)
    assert set(survival.plot.curves) == {"slide", "cohort", "neighbours"}
    assert all(len(c.getData()[0]) > 1 for c in survival.plot.curves.values())
    # probabilities: one bar per class
    bars = panel.class_sections["EGFR_mut"].plot
    classes = result.tasks["EGFR_mut"].classification.classes
    assert len(bars.values) == 1 and len(bars.values[0]) == len(classes)
    np.testing.assert_allclose(bars.values[0], result.tasks["EGFR_mut"].classification.probabilities)
    # linked cases: one row per linked case, first row selected with its detail
    linked = panel.linked
    task = linked.current_task()
    assert linked.proxy.rowCount() == len(task.linked_cases) > 0
    assert task.linked_cases[0].case["case_id"] in linked.detail_title.text()
    # the influence column (sortable, its tooltip names what it moves) and the case's prediction without it
    headers = [linked.model.headerData(c, Qt.Orientation.Horizontal) for c in range(linked.model.columnCount())]
    col = headers.index("Influence")
    assert linked.model.headerData(col, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole).startswith(
        "Influence on risk.")
    shown = [linked.proxy.index(r, col).data() for r in range(linked.proxy.rowCount())]
    assert shown == [f"{c.influence_risk:+.3f}" for c in task.linked_cases]  # by weight, as linked
    first = task.linked_cases[0]
    assert f"{task.survival.risk - first.influence_risk:.3f} instead of" in linked.influence_label.text()
    assert "Graph contribution to the risk" in linked.summary_label.text()
    assert "edge-weighted event rate" in survival.neighbours_label.text()
    assert "the 3 largest sum to" in survival.graph_label.text()
    assert "Graph contribution to P(" in panel.class_sections["EGFR_mut"].graph_label.text()
    linked.task_combo.setCurrentIndex(1)  # the classification task: influence on P(predicted)
    egfr = result.tasks["EGFR_mut"]
    c = egfr.classification
    tip = linked.model.headerData(2, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith(f"Influence on P({c.predicted}).")
    i = c.classes.index(c.predicted)
    assert linked.proxy.index(0, 2).data() == f"{100 * egfr.linked_cases[0].influence_probabilities[i]:+.1f} pp"
    assert "without" in linked.influence_label.text() and "pp" in linked.influence_label.text()
    linked.task_combo.setCurrentIndex(0)
    assert linked.pathway_plot.isVisibleTo(linked) and len(linked.pathway_plot.values) == 2
    assert linked.thumbnail.pixmap() is not None and not linked.thumbnail.pixmap().isNull()
    # heat-map and patches on the slide
    viewer = window.viewer
    assert viewer.overlay_available("heatmap") and viewer.overlay_visible("heatmap")
    assert viewer.overlay_available("patches")
    assert window.overlay_actions["heatmap"].isChecked() and window.overlays.checks["heatmap"].isChecked()
    assert window.export_pdf_action.isEnabled() and window.analyze_action.isEnabled()
    # a second Analyze of the same slide reuses the cached features
    assert analyze(qtbot, window) == "done"
    assert "cached" in window.progress.stages_seen and "read+encode" not in window.progress.stages_seen


def test_toggling_overlays_after_a_result(qtbot, window, tiny_bundle, slide):
    load(qtbot, window, tiny_bundle, slide)
    assert analyze(qtbot, window) == "done"
    window.overlay_actions["heatmap"].setChecked(False)
    assert not window.viewer.overlay_visible("heatmap") and not window.overlays.checks["heatmap"].isChecked()
    window.overlays.checks["patches"].setChecked(False)
    assert not window.viewer.overlay_visible("patches") and not window.overlay_actions["patches"].isChecked()
    window.overlays.checks["heatmap"].setChecked(True)
    assert window.viewer.overlay_visible("heatmap") and window.overlay_actions["heatmap"].isChecked()
    assert window.overlays.legend.isVisibleTo(window.overlays)


def test_suggested_project_rerun(qtbot, window, tiny_bundle, slide):
    load(qtbot, window, tiny_bundle, slide)
    assert analyze(qtbot, window) == "done"  # cancer type not specified
    suggested = window.result.suggested_project
    assert suggested in ("TCGA-BRCA", "TCGA-LUAD")
    assert window.results.suggest_frame.isVisibleTo(window.results)
    with qtbot.waitSignal(window.analysisFinished, timeout=ANALYSIS_TIMEOUT_MS):
        window.results.suggest_button.click()
    assert window.project() == suggested and window.result.project == suggested


def test_cancel_on_first_event_leaves_the_app_usable(qtbot, window, tiny_bundle, slide, dialogs, monkeypatch):
    gate = threading.Event()
    real_job = analysis_job

    def gated_job(request, predictors):
        """The real job, held after its first event until the test has cancelled."""
        job = real_job(request, predictors)
        yield next(job)
        assert gate.wait(30)
        return (yield from job)

    monkeypatch.setattr(msrl_app.state, "analysis_job", gated_job)
    load(qtbot, window, tiny_bundle, slide)
    events: list[Progress] = []

    def cancel_on_first(event):
        events.append(event)
        if len(events) == 1:
            window.cancel_analysis()
            gate.set()

    window.analysisProgress.connect(cancel_on_first)
    assert window.progress.isVisible() is False
    assert analyze(qtbot, window) == "cancelled"
    assert len(events) <= 2  # stopped at the job's next yield after the cancel
    assert not any(e.stage in ("read+encode", "predict") for e in events)
    assert window.result is None and not window.viewer.overlay_available("heatmap")
    assert window.viewer.slide is not None and window.viewer.slide.path == slide
    assert window.analyze_action.isEnabled() and not window.cancel_action.isEnabled()
    assert not window.progress.isVisible()
    assert dialogs[-1][0] == "information" and "cancelled" in dialogs[-1][2]
    monkeypatch.setattr(msrl_app.state, "analysis_job", real_job)
    assert analyze(qtbot, window) == "done"  # usable again


def test_cancel_during_encoding_keeps_the_patches_and_analyze_continues_from_them(qtbot, window, tiny_bundle,
                                                                                   slide, dialogs, monkeypatch):
    """Cancel after the first encoded batch: the job stops at its next yield; the next
    Analyze starts its encoding bar where the first stopped (the kept patches are not encoded again),
    and the message says so, once."""
    gate = threading.Event()
    real_job = analysis_job

    def gated_job(request, predictors):
        """The real job, held after its first encoded batch until the test has cancelled."""
        job = real_job(request, predictors)
        try:
            while True:
                try:
                    event = next(job)
                except StopIteration as stop:
                    return stop.value
                yield event
                if event.stage == "read+encode" and event.done > 0 and not gate.is_set():
                    assert gate.wait(30)
                    yield event  # the worker meets the cancel request here, before the real job's next batch
        finally:
            job.close()  # a cancel closes this job: the real one stops (and keeps its patches) too

    load(qtbot, window, tiny_bundle, slide)
    monkeypatch.setattr(msrl_app.state, "analysis_job", gated_job)
    first: list[Progress] = []

    def cancel_after_first_batch(event):
        first.append(event)
        if event.stage == "read+encode" and event.done > 0 and not gate.is_set():  # the first batch is in
            window.cancel_analysis()
            gate.set()

    window.analysisProgress.connect(cancel_after_first_batch)
    assert analyze(qtbot, window) == "cancelled"
    window.analysisProgress.disconnect(cancel_after_first_batch)
    monkeypatch.setattr(msrl_app.state, "analysis_job", real_job)
    stopped = max(e.done for e in first if e.stage == "read+encode")
    assert 0 < stopped < next(e.total for e in first if e.stage == "read+encode")
    assert dialogs[-1][0] == "information" and dialogs[-1][2] == msrl_app.window.CANCELLED_TEXT
    again: list[Progress] = []
    window.analysisProgress.connect(again.append)
    assert analyze(qtbot, window) == "done", window.last_error
    encoding = [e for e in again if e.stage == "read+encode"]
    assert encoding[0].done >= stopped > 0 and encoding[-1].done == encoding[-1].total


def test_linked_cases_sort_numerically(qtbot):
    def case(i, weight, months, stage, influence):
        return LinkedCase(i, weight, {"case_id": f"C{i}", "project": "P", "survival_months": months,
                                      "censorship": i % 2, "stage": stage, "TP53_mut": i % 2}, [0.0], influence, None)

    model = LinkedCasesModel()
    cases = [case(0, 0.25, 9.0, "II", 0.02), case(1, 0.05, 100.0, None, -0.1), case(2, 0.125, 10.0, "I", 0.003),
             case(3, 0.5, None, "IV", -0.0004)]
    model.set_task(TaskResult("survival", "survival", "msrl", "msrl", None, None, cases, 0.3, [], None, None))
    proxy = CaseSortProxy()
    proxy.setSourceModel(model)
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers[:7] == ["Case", "Weight", "Influence", "Months", "Status", "Stage", "Project"]
    assert "TP53_mut" in headers
    tip = model.headerData(2, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("Influence on risk.") and "minus the risk with this case removed" in tip and "exactly" in tip

    def column(name):
        c = headers.index(name)
        return [proxy.index(r, c).data() for r in range(proxy.rowCount())]

    proxy.sort(headers.index("Weight"), Qt.SortOrder.DescendingOrder)
    assert column("Case") == ["C3", "C0", "C2", "C1"]
    proxy.sort(headers.index("Influence"), Qt.SortOrder.DescendingOrder)  # signed, numeric
    assert column("Influence") == ["+0.020", "+0.003", "-0.000", "-0.100"]
    proxy.sort(headers.index("Months"), Qt.SortOrder.AscendingOrder)
    assert column("Months") == ["9.0", "10.0", "100.0", "—"]  # numeric, not text; missing last
    assert column("Case") == ["C0", "C2", "C1", "C3"]
    assert column("Status") == ["event", "event", "censored", "censored"]  # censorship 0 = event
    proxy.setFilterFixedString("C2")
    assert proxy.rowCount() == 1


def test_export_pdf_and_results(qtbot, window, tiny_bundle, slide, tmp_path):
    load(qtbot, window, tiny_bundle, slide)
    assert analyze(qtbot, window) == "done"
    pdf = tmp_path / "out" / "report.pdf"
    pdf.parent.mkdir()
    assert window.export_pdf(pdf), window.last_error
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2
    assert slide.stem.encode() in data  # the title (XMP metadata) names the slide
    assert list(pdf.parent.iterdir()) == [pdf]  # no temporary file left
    out = tmp_path / "out" / "results.json"
    assert window.export_results(out)
    again = PredictionResult.from_json(out.read_text())
    assert again == window.result
    keys = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert keys[0] == "slide_id,mode,task,key,value" and any(",survival,risk_group," in k for k in keys)
    linked = (tmp_path / "out" / "results-linked-cases.csv").read_text().splitlines()
    assert len(linked) == 1 + sum(len(t.linked_cases) for t in again.tasks.values())


def test_expression_runs_msrl_multi(qtbot, window, tiny_bundle, slide, tmp_path):
    load(qtbot, window, tiny_bundle, slide)
    csv = tmp_path / "expr.csv"
    csv.write_text("case_id,GENE0,GENE1,GENE2,GENE5\nX,1.5,0.2,-0.3,2.0\n")
    with qtbot.waitSignal(window.analysisFinished, timeout=ANALYSIS_TIMEOUT_MS) as blocker:
        assert window.load_expression(csv)  # starts the analysis
    assert blocker.args[0] == "done", window.last_error
    assert window.result.mode == "msrl_multi"
    assert window.results.mode_label.text() == "MSRL_multi (with this case's expression)"
    assert any("genes missing" in w for w in window.result.warnings)
    assert "MSRL_multi" in window.mode_badge.text()
    window.clear_expression()
    assert analyze(qtbot, window) == "done" and window.result.mode == "msrl"


def test_read_expression_shapes(tmp_path):
    long = tmp_path / "long.csv"
    long.write_text("gene,value\nTP53,1.25\nEGFR,-0.5\n")
    assert read_expression(long) == {"TP53": 1.25, "EGFR": -0.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n4,5,6\n")
    with pytest.raises(MSRLError, match="one-row table"):
        read_expression(bad)


def test_errors_are_dialogs_and_keep_the_slide(qtbot, window, tiny_bundle, slide, dialogs, tmp_path):
    assert window.open_slide(slide)
    assert not window.start_analysis()  # no bundle yet
    assert "no model bundle" in dialogs[-1][2].lower() and "Open model bundle" in dialogs[-1][2]
    # a tampered bundle: refused with a clear message, nothing changes
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bad)
    card = (bad / "model_card.md").read_bytes()
    (bad / "model_card.md").write_bytes(card.replace(b"Random", b"Trusty"))  # same size, other hash
    window.set_bundle(bad)
    qtbot.waitUntil(lambda: len(dialogs) == 2, timeout=ANALYSIS_TIMEOUT_MS)
    assert "SHA-256" in dialogs[-1][2] and window.bundle_path is None
    # a slide without tissue: the analysis fails with a dialog; the slide stays open
    from msrl_model.synth.slides import make_slide

    blank = make_slide(tmp_path / "blank.svs", 1024, 768, seed=1, kind="blank")
    load(qtbot, window, tiny_bundle, blank)
    assert analyze(qtbot, window) == "error"
    assert "blank.svs" in dialogs[-1][1] and "tissue" in dialogs[-1][2].lower()
    assert window.viewer.slide.path == blank and window.analyze_action.isEnabled()
    # a non-slide file: a dialog, the blank slide stays open
    notes = tmp_path / "notes.svs"
    notes.write_text("not a slide")
    assert not window.open_slide(notes)
    assert "not a whole-slide image" in dialogs[-1][2] and window.viewer.slide.path == blank


def test_model_card_and_device_setting(qtbot, window, tiny_bundle, slide):
    load(qtbot, window, tiny_bundle, slide)
    window.model_card_action.trigger()
    dialog = window.model_card_dialog
    assert "SYNTHETIC" in dialog.summary.toPlainText() and "c_index" in dialog.summary.toPlainText()
    assert "Random test bundle" in dialog.card.toPlainText()
    dialog.close()
    window.device_actions["auto"].trigger()
    assert window.settings.value("analysis/device") == "auto" and window.device() == "auto"
    assert window.settings.value("bundle/path") == str(tiny_bundle)


class _FakePredictor:
    def __init__(self, device, failures):
        self.device, self.failures = device, failures

    def predict_slide(self, slide, cache, project=None, expression=None, batch_size=64, regions=None):
        import torch

        self.failures.append((self.device, batch_size))
        yield Progress("read+encode", 0, 1)
        if self.device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "result"

    def cohort_risks(self):
        return {"survival": np.zeros(3)}


def test_out_of_gpu_memory_falls_back_to_the_cpu(tmp_path):
    calls: list = []

    class Cache:
        def get(self, bundle, device):
            return _FakePredictor(device, calls)

    request = AnalysisRequest(slide=tmp_path / "s.svs", bundle=tmp_path / "b", device="cuda", cache=tmp_path)
    job = analysis_job(request, Cache())
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            assert stop.value.result == "result" and list(stop.value.cohort_risks) == ["survival"]
            break
    # the GPU's batch planned from its free memory (None; the pipeline halves it on out-of-memory itself), then
    # the CPU in small batches (Cancel acts sooner)
    assert calls == [("cuda", None), ("cpu", CPU_BATCH)]
    retries = [e.message for e in events if e.stage == "retry"]
    assert retries == ["Out of GPU memory: running on the CPU instead (slower)"]


@pytest.mark.parametrize("encoder, expected", [({"name": "builtin-he"}, CPU_BATCH), ({"name": "uni_v1"}, 2), ({}, CPU_BATCH)])
def test_cpu_batches_are_small_for_a_foundation_model(tmp_path, encoder, expected):
    """Cancel acts between batches: on the CPU a ViT (~1 s a tile) encodes 2 tiles a batch, the built-in 16."""
    calls: list = []

    class Cache:
        def get(self, bundle, device):
            predictor = _FakePredictor(device, calls)
            predictor.bundle = SimpleNamespace(encoder=encoder)
            return predictor

    job = analysis_job(AnalysisRequest(slide=tmp_path / "s.svs", bundle=tmp_path / "b", device="cpu",
                                       cache=tmp_path), Cache())
    while True:
        try:
            next(job)
        except StopIteration:
            break
    assert calls == [("cpu", expected)]


def _run_app(args, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MSRL_STUDIO_LOG_DIR=str(tmp_path / "logs"),
               MSRL_STUDIO_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "msrl_app", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_command_line_analyze_export_quit(tmp_path, tiny_bundle, slide):
    out = tmp_path / "report.pdf"
    run = _run_app([str(slide), "--bundle", str(tiny_bundle), "--device", "cpu", "--analyze",
                    "--export", str(out), "--quit"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes().startswith(b"%PDF") and slide.stem.encode() in out.read_bytes()
    log = (tmp_path / "logs" / "msrl-studio.log").read_text()
    assert "analysis done" in log and "report written" in log


@pytest.mark.heavy
def test_command_line_bad_bundle_exits_non_zero(tmp_path, slide):
    bad = _run_app([str(slide), "--bundle", str(tmp_path / "missing.msrl"), "--analyze", "--export",
                    str(tmp_path / "x.pdf"), "--quit"], tmp_path)
    assert bad.returncode == 1 and "error:" in bad.stderr and not (tmp_path / "x.pdf").exists()


@pytest.mark.heavy
def test_json_export_from_the_command_line(tmp_path, tiny_bundle, slide):
    out = tmp_path / "r.json"
    run = _run_app([str(slide), "--bundle", str(tiny_bundle), "--device", "cpu", "--project", "TCGA-BRCA",
                    "--analyze", "--export", str(out), "--quit"], tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    assert data["project"] == "TCGA-BRCA" and data["research_use_only"]


def test_demo_slide_is_rendered_once_and_opened(qtbot, window, monkeypatch, tmp_path):
    import msrl_app.analysis

    monkeypatch.setattr(msrl_app.analysis, "DEMO_SLIDE", dict(width=1024, height=768, seed=5))
    window.open_demo_slide()
    qtbot.waitUntil(lambda: window.viewer.slide is not None, timeout=60_000)
    demo = tmp_path / "cache" / "demo" / "msrl-demo-slide.svs"
    assert window.viewer.slide.path == demo and demo.is_file()
    assert [p.name for p in demo.parent.iterdir()] == [demo.name]  # nothing temporary left
    stamp = demo.stat().st_mtime_ns
    window.close_slide()
    window.open_demo_slide()  # exists: opened at once, not rendered again
    assert window.viewer.slide.path == demo and demo.stat().st_mtime_ns == stamp
