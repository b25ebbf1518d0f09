"""The app's state model without Qt: events, transitions, the job driver (fake predictor, no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from msrl_app.state import AppState, ErrorReport, EventSignal, JobState, primary_task
from msrl_model.errors import BundleError, MSRLError
from msrl_model.progress import Progress, Stage


@pytest.mark.parametrize("module", ["msrl_app.state", "msrl_app.worklist_model"])
def test_app_models_never_import_qt_or_torch(module):
    """The app's Qt-free models (the window's state, the worklist's) import neither Qt nor torch."""
    code = (f"import {module}, sys\n"
            "qt = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'superqt', 'qtpy', 'torch'))\n"
            "assert not qt, qt\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


class Recorder:
    """Every event of a state, in order, as (name, value)."""

    def __init__(self, state: AppState) -> None:
        self.seen: list[tuple[str, object]] = []
        for name in state.events.NAMES:
            getattr(state.events, name).connect(lambda *args, n=name: self.seen.append((n, args[0] if args else None)))

    def values(self, name: str) -> list:
        return [value for n, value in self.seen if n == name]


class FakeResult:
    def __init__(self, slide: Path, project: str | None) -> None:
        self.slide_id, self.project = slide.stem, project
        self.tasks = {"stage": SimpleNamespace(kind="classification", name="stage"),
                      "survival": SimpleNamespace(kind="survival", name="survival")}

    def summary(self) -> str:
        return f"{self.slide_id}: fake"


class FakePredictor:
    """predict_slide's generator protocol without torch; ``fail`` raises at the second step."""

    def __init__(self, log: list, fail: Exception | None = None, encoder_error: Exception | None = None,
                 notice: str | None = None) -> None:
        self.log, self.fail, self.encoder_error, self.encoder_builds = log, fail, encoder_error, 0
        self.notice = notice  # what encoder_notice() says (numba compiling builtin-he's kernel)
        self.bundle = SimpleNamespace(manifest={"cohort": {"projects": ["TCGA-BRCA", "TCGA-LUAD"]}, "tasks": []},
                                      model_card="# Fake card")

    def predict_slide(self, slide, cache, project=None, expression=None, batch_size=64, regions=None):
        try:
            yield Progress(Stage.READ_ENCODE, 1, 2)
            if self.fail is not None:
                raise self.fail
            yield Progress(Stage.PREDICT, 1, 1)
            return FakeResult(Path(slide), project)
        finally:
            self.log.append("finally")

    def cohort_risks(self):
        return {"survival": np.zeros(3)}

    def encoder_notice(self):
        return self.notice

    def encoder(self):
        self.encoder_builds += 1
        if self.encoder_error is not None:
            raise self.encoder_error


class FakeCache:
    def __init__(self, predictor=None, error: Exception | None = None) -> None:
        self.predictor, self.error, self.calls = predictor, error, []

    def get(self, bundle, device):
        self.calls.append((Path(bundle).name, device))
        if self.error is not None:
            raise self.error
        return self.predictor

    def current(self):
        return self.predictor

    def clear(self) -> None:
        pass


class ManualJob:
    """A job the test drives by hand: ``start()`` does nothing, the test emits the signals."""

    made: list[ManualJob] = []

    def __init__(self, func, *args) -> None:
        self.func, self.args, self.quit_requested = func, args, False
        for name in ("started", "yielded", "returned", "errored", "aborted", "finished"):
            setattr(self, name, EventSignal(name))
        ManualJob.made.append(self)

    def start(self) -> None:
        pass

    def quit(self) -> None:
        self.quit_requested = True

    def wait(self, msecs: int = -1) -> bool:
        return True


@pytest.fixture
def state(tmp_path):
    log: list = []
    s = AppState(predictors=FakeCache(FakePredictor(log)), cache=tmp_path / "features")
    s.predictor_log = log
    return s


def test_event_signal_connects_emits_disconnects():
    signal, got = EventSignal("x"), []
    callback = signal.connect(got.append)
    signal.connect(got.append)  # once only
    signal.emit(1)
    signal.disconnect(callback)
    signal.emit(2)
    assert got == [1] and len(signal) == 0


def test_setting_a_slide_clears_the_result_of_another(state, tmp_path):
    events = Recorder(state)
    state.set_slide(tmp_path / "a.svs")
    state.set_result(FakeResult(tmp_path / "a.svs", None), tmp_path / "a.svs", {"survival": np.ones(2)})
    assert state.result is not None and state.result_slide == tmp_path / "a.svs"
    state.set_slide(tmp_path / "b.svs")
    assert state.slide == tmp_path / "b.svs" and state.result is None and state.result_slide is None
    assert state.cohort_risks == {}
    assert events.values("slide") == [tmp_path / "a.svs", tmp_path / "b.svs"]
    assert [r is None for r in events.values("result")] == [False, True]


def test_set_project_emits_once_per_change(state):
    events = Recorder(state)
    state.set_project("TCGA-LUAD")
    state.set_project("TCGA-LUAD")
    state.set_project("")
    assert events.values("project") == ["TCGA-LUAD", None] and state.project is None
    state.set_project("TCGA-XYZ")  # not (yet) a project of the bundle: still a choice
    assert state.project_choices() == ["TCGA-XYZ"]


def test_bundle_load_fills_projects(state, tmp_path):
    events = Recorder(state)
    state.set_bundle(tmp_path / "bundle")
    assert state.bundle_manifest["cohort"]["projects"] == ["TCGA-BRCA", "TCGA-LUAD"]
    assert state.bundle_card == "# Fake card" and state.job is JobState.IDLE
    assert events.values("bundle_loaded") == [tmp_path / "bundle"]
    assert events.values("projects")[-1] == ["TCGA-BRCA", "TCGA-LUAD"]
    assert events.values("job") == [JobState.LOADING_MODEL, JobState.IDLE]


@pytest.mark.parametrize("encoder_error", [None, MSRLError("no weights file at /data/uni.bin")])
def test_the_patch_encoder_is_built_once_the_model_is_ready_and_quietly(tmp_path, encoder_error):
    """After the bundle loads, the encoder is built in the background (builtin-he's kernel, a foundation
    model's weights) so Analyze does not wait for it; it neither shows as loading nor reports a failure
    (Analyze builds it again and says why)."""
    predictor = FakePredictor([], encoder_error=encoder_error)
    state = AppState(predictors=FakeCache(predictor))
    events = Recorder(state)
    state.set_bundle(tmp_path / "bundle")
    assert predictor.encoder_builds == 1
    assert events.values("job") == [JobState.LOADING_MODEL, JobState.IDLE]
    assert events.values("error") == [] and state.last_error is None


@pytest.mark.parametrize("encoder_error", [None, MSRLError("no weights file at /data/uni.bin")])
def test_a_first_compile_of_the_encoder_is_on_the_status_line_until_it_ends(tmp_path, encoder_error):
    """When building the encoder compiles builtin-he's kernel (once after installing), the status line
    says so while it runs, then that the encoder is ready (or nothing, when it failed: Analyze says why)."""
    notice = "Preparing the built-in encoder for this computer: numba compiles its CPU kernel once"
    predictor = FakePredictor([], encoder_error=encoder_error, notice=notice)
    state = AppState(predictors=FakeCache(predictor))
    events = Recorder(state)
    state.set_bundle(tmp_path / "bundle")
    texts = [m.text for m in events.values("message")]
    assert texts[-2] == notice
    assert texts[-1] == ("The patch encoder is ready" if encoder_error is None else "")
    assert events.values("error") == []


def test_a_bad_bundle_is_rejected_and_recorded(tmp_path):
    state = AppState(predictors=FakeCache(error=BundleError("manifest.json: SHA-256 mismatch")))
    events = Recorder(state)
    state.set_bundle(tmp_path / "bad")
    assert state.bundle_path is None and events.values("bundle_rejected") == [tmp_path / "bad"]
    assert isinstance(state.last_error, ErrorReport) and "SHA-256" in state.last_error.text
    assert events.values("error") == [state.last_error]


def test_analysis_through_the_inline_job_driver_produces_a_result(state, tmp_path):
    state.set_bundle(tmp_path / "bundle")
    state.set_slide(tmp_path / "s.svs")
    state.set_project("TCGA-LUAD")
    events = Recorder(state)
    assert state.start_analysis()
    assert [e.stage for e in events.values("progress")] == [Stage.LOAD_MODEL, Stage.LOAD_MODEL,
                                                           Stage.READ_ENCODE, Stage.PREDICT]
    (result,) = events.values("result")
    assert result is state.result and result.slide_id == "s" and result.project == "TCGA-LUAD"
    assert state.result_slide == tmp_path / "s.svs" and list(state.cohort_risks) == ["survival"]
    assert events.values("job") == [JobState.ANALYSING, JobState.IDLE]
    assert events.values("finished") == ["done"] and not state.analysis_running
    assert state.predictor_log == ["finally"]


def test_cancel_at_a_progress_event_closes_the_job(state, tmp_path):
    state.set_bundle(tmp_path / "bundle")
    state.set_slide(tmp_path / "s.svs")
    events = Recorder(state)
    state.events.progress.connect(lambda e: e.stage == Stage.READ_ENCODE and state.cancel_analysis())
    assert state.start_analysis()
    assert events.values("job") == [JobState.ANALYSING, JobState.CANCELLING, JobState.IDLE]
    assert events.values("finished") == ["cancelled"] and state.result is None
    assert state.predictor_log == ["finally"]  # the job's finally ran


def test_analysis_errors_are_recorded(tmp_path):
    log: list = []
    state = AppState(predictors=FakeCache(FakePredictor(log, fail=ValueError("no tissue"))), cache=tmp_path)
    events = Recorder(state)
    assert not state.start_analysis()  # no slide
    assert state.last_error.title == "Nothing to analyze" and events.values("finished") == ["error"]
    state.set_slide(tmp_path / "s.svs")
    assert not state.start_analysis()  # no bundle
    assert "No model bundle" in state.last_error.text
    state.set_bundle(tmp_path / "bundle")
    assert state.start_analysis()
    assert state.last_error.title == "Analysis of s.svs failed" and "ValueError: no tissue" in state.last_error.text
    assert "s.svs is still open" in state.last_error.text
    assert events.values("finished") == ["error", "error", "error"] and state.job is JobState.IDLE
    assert log == ["finally"]


def test_job_states_and_a_result_for_a_slide_no_longer_open(state, tmp_path):
    state.job_factory = ManualJob
    state.set_slide(tmp_path / "a.svs")
    state.bundle_path = tmp_path / "bundle"
    events = Recorder(state)
    assert state.job is JobState.IDLE and state.start_analysis()
    job = ManualJob.made[-1]
    assert state.job is JobState.ANALYSING and state.analysis_running and not state.start_analysis()
    job.yielded.emit(Progress(Stage.RETRY, 1, 2, "Out of GPU memory: running on the CPU instead (slower)"))
    assert events.values("message")[-1].text.startswith("Out of GPU memory")
    steps = len(events.values("progress"))
    job.yielded.emit(Progress(Stage.NOTICE, 1, 1, "a.svs: uni_v1 runs 1.9 tiles/s on the CPU: ... about 40 min"))
    assert events.values("message")[-1].text.endswith("about 40 min")  # in the status line, long enough to read
    assert len(events.values("progress")) == steps  # a notice is not a step of the progress bar
    state.set_slide(tmp_path / "b.svs")  # another slide: the analysis is cancelled
    assert job.quit_requested and state.job is JobState.CANCELLING
    job.returned.emit(SimpleNamespace(result=FakeResult(tmp_path / "a.svs", None), cohort_risks={}))  # arrived anyway
    job.finished.emit()
    assert state.result is None and events.values("result") == []
    assert events.values("finished") == ["ignored"] and state.job is JobState.IDLE
    assert events.values("job") == [JobState.ANALYSING, JobState.CANCELLING, JobState.IDLE]


def test_expression_and_export_without_a_result(state, tmp_path):
    events = Recorder(state)
    csv = tmp_path / "expr.csv"
    csv.write_text("gene,value\nTP53,1.25\nEGFR,-0.5\n")
    assert state.load_expression(csv) and state.expression == {"TP53": 1.25, "EGFR": -0.5}
    assert state.expression_name == "expr.csv" and events.values("expression") == [csv]
    assert not state.load_expression(tmp_path / "missing.csv") and "missing.csv" in state.last_error.title
    state.clear_expression()
    assert state.expression is None and events.values("expression")[-1] is None
    assert not state.export(tmp_path / "out.json") and "click Analyze first" in state.last_error.text
    assert not state.export(tmp_path / "out.pdf") and events.values("exported") == []


def test_primary_task_prefers_survival(tmp_path):
    result = FakeResult(tmp_path / "s.svs", None)
    assert primary_task(result).name == "survival"
    del result.tasks["survival"]
    assert primary_task(result).name == "stage"
