"""GeneratorWorker (superqt's, as the app uses it) and ProgressPresenter: results, cancellation, errors, ETA."""

from __future__ import annotations

import threading

import pytest

from msrl_app.worker import GeneratorWorker, ProgressPresenter, format_eta
from msrl_model.progress import Progress


def counting_job(n: int, log: list, gate: threading.Event | None = None):
    """Yields n events; waits on ``gate`` after the first one (so a test can cancel mid-run)."""
    try:
        for i in range(n):
            yield Progress("count", i + 1, n, f"item {i}")
            log.append(i)
            if gate is not None and i == 0:
                assert gate.wait(10), "test gate never opened"
        return sum(range(n))
    finally:
        log.append("finally")


def test_returned_value_and_events_arrive_on_gui_thread(qtbot):
    log: list = []
    events: list[Progress] = []
    threads: set[int] = set()
    worker = GeneratorWorker(counting_job, 5, log)
    worker.yielded.connect(events.append)
    returned: list = []
    worker.returned.connect(lambda value: (threads.add(threading.get_ident()), returned.append(value)))
    with qtbot.waitSignals([worker.returned, worker.finished], order="strict"):
        worker.start()
    assert returned == [10]
    assert [e.done for e in events] == [1, 2, 3, 4, 5]
    assert log[-1] == "finally"
    assert threads == {threading.get_ident()}
    assert not worker.is_running


def test_quit_mid_run_aborts_and_runs_finally(qtbot):
    log: list = []
    gate = threading.Event()
    returned: list = []
    worker = GeneratorWorker(counting_job, 100, log, gate)
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.yielded):
        worker.start()
    with qtbot.waitSignals([worker.aborted, worker.finished]):
        worker.quit()
        gate.set()
    assert returned == []
    assert log[-1] == "finally"
    assert len(log) < 10  # stopped at the next yield, not after 100 items


def test_quit_before_start_never_runs_the_job(qtbot):
    called = []

    def job():
        called.append(1)  # the job's first line: never runs
        yield from counting_job(3, [])

    worker = GeneratorWorker(job)
    worker.quit()
    with qtbot.waitSignal(worker.aborted):
        worker.start()
    assert called == []


def test_exception_arrives_via_errored(qtbot):
    def failing():
        yield Progress("x", 0, 1)
        raise ValueError("broken input")

    returned: list = []
    worker = GeneratorWorker(failing)
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.errored) as blocker:
        worker.start()
    err = blocker.args[0]
    assert isinstance(err, ValueError) and "broken input" in str(err)
    qtbot.waitUntil(lambda: not worker.is_running)
    assert returned == []


def test_start_twice_is_refused(qtbot):
    gate = threading.Event()
    worker = GeneratorWorker(counting_job, 2, [], gate)
    with qtbot.waitSignal(worker.finished):
        worker.start()
        with pytest.raises(RuntimeError):
            worker.start()
        gate.set()


def test_presenter_eta_from_rate():
    now = [0.0]
    presenter = ProgressPresenter(smoothing=1.0, min_elapsed=1.0, clock=lambda: now[0])
    view = presenter.update(Progress("encode", 0, 1000))
    assert view.percent == 0 and view.eta_seconds is None
    now[0] = 10.0
    view = presenter.update(Progress("encode", 250, 1000, "slide-1"))
    assert view.percent == 25
    assert view.eta_seconds == pytest.approx(30.0)  # 25 units/s, 750 left
    assert "slide-1" in view.text and "about 30 s left" in view.text
    # a new stage restarts the estimate
    now[0] = 11.0
    view = presenter.update(Progress("write", 0, None))
    assert view.percent is None and view.eta_seconds is None and view.stage == "write"


def test_format_eta_wording():
    assert format_eta(None) == ""
    assert format_eta(3.2) == "about 3 s left"
    assert format_eta(42) == "about 40 s left"
    assert format_eta(150) == "about 2 min left"
    assert format_eta(7200) == "about 2.0 h left"


def test_runtime_error_is_errored_then_finished(qtbot):
    """superqt takes a RuntimeError for a deleted worker and emits nothing; ours reports it (torch raises them)."""
    def failing():
        yield Progress("x", 0, 1)
        raise RuntimeError("CUDA error: device-side assert triggered")

    worker = GeneratorWorker(failing)
    errors: list = []
    worker.errored.connect(errors.append)
    with qtbot.waitSignals([worker.errored, worker.finished], order="strict"):
        worker.start()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert worker.wait(5000)


def test_wait_blocks_until_the_job_is_done(qtbot):
    log: list = []
    gate = threading.Event()
    worker = GeneratorWorker(counting_job, 100, log, gate)
    assert worker.wait(10)  # never started: nothing to wait for
    with qtbot.waitSignal(worker.yielded):
        worker.start()
    assert not worker.wait(50)  # held at the gate
    worker.quit()
    gate.set()
    assert worker.wait(5000) and log[-1] == "finally"
