"""Run ``msrl_model`` generator jobs off the GUI thread (napari/superqt style).

A job is a generator that yields :class:`msrl_model.progress.Progress` events and ``return``s its
result (see ``msrl_model.progress``). :class:`GeneratorWorker` drives one on a ``QThreadPool``
thread and reports through Qt signals, which are delivered on the GUI thread (the worker object
lives there, so the connections are queued)::

    worker = GeneratorWorker(lambda: extract_slide(path, out_dir))
    worker.yielded.connect(progress_bar.on_progress)
    worker.returned.connect(show_result)
    worker.errored.connect(show_error)
    worker.start()
    ...
    worker.quit()   # cancel: honoured at the job's next yield; its finally blocks run

:class:`ProgressPresenter` turns the event stream into a percentage, a stage label and an ETA.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from msrl_model.progress import Progress

log = logging.getLogger(__name__)

JobFactory = Callable[[], Generator[Progress, None, Any]]


class GeneratorWorker(QObject):
    """Drives one generator job on a worker thread.

    Signals (all delivered on the thread the worker was created on, normally the GUI thread):
        started: the job began running.
        yielded(Progress): one progress event.
        returned(object): the job's return value (not emitted when aborted or errored).
        errored(Exception): the job raised; the exception object.
        aborted: the job stopped early after :meth:`quit`; it was closed, so its finally blocks ran.
        finished: always last, after returned / errored / aborted.
    """

    started = Signal()
    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)
    aborted = Signal()
    finished = Signal()

    # Workers in flight; keeps each Python object alive until its thread is done with it.
    _running: set[GeneratorWorker] = set()

    def __init__(self, job: JobFactory, pool: QThreadPool | None = None,
                 parent: QObject | None = None) -> None:
        """``job`` is called on the worker thread to create the generator, so even its set-up
        code (before the first yield) stays off the GUI thread."""
        super().__init__(parent)
        self._job = job
        self._pool = pool if pool is not None else QThreadPool.globalInstance()
        self._quit = threading.Event()
        self._done = threading.Event()
        self._is_running = False
        self.finished.connect(self._on_finished)

    @property
    def abort_requested(self) -> bool:
        return self._quit.is_set()

    @property
    def is_running(self) -> bool:
        return self._is_running

    def start(self) -> None:
        """Queue the job on the thread pool (once)."""
        if self._is_running:
            raise RuntimeError("this worker is already running")
        self._is_running = True
        GeneratorWorker._running.add(self)
        self._pool.start(self._run)

    def quit(self) -> None:
        """Ask the job to stop; it is closed at its next yield (or before it starts)."""
        self._quit.set()

    def wait(self, msecs: int = -1) -> bool:
        """Block until the job's thread is done (shutdown and tests); False on timeout."""
        if not self._is_running and not self._done.is_set():
            return True  # never started
        return self._done.wait(None if msecs < 0 else msecs / 1000)

    def _emit(self, signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:  # the Qt side is gone (application shutting down): nobody listens
            log.debug("worker signal dropped: its QObject was deleted")

    def _run(self) -> None:
        self._emit(self.started)
        try:
            if self._quit.is_set():
                self._emit(self.aborted)
                return
            gen = self._job()
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                self._emit(self.yielded, event)
                if self._quit.is_set():
                    gen.close()  # raises GeneratorExit inside the job: its finally blocks run
                    self._emit(self.aborted)
                    return
        except Exception as exc:  # noqa: BLE001 - every failure is reported, never swallowed
            log.debug("worker job raised", exc_info=True)
            self._emit(self.errored, exc)
        else:
            self._emit(self.returned, result)
        finally:
            self._emit(self.finished)
            self._done.set()

    def _on_finished(self) -> None:
        self._is_running = False
        GeneratorWorker._running.discard(self)


@dataclass(frozen=True)
class ProgressView:
    """What a progress bar shows for one event."""

    stage: str  # the current stage's name
    percent: int | None  # 0..100 within the stage, None when the total is unknown (busy bar)
    eta_seconds: float | None  # estimated seconds left in the stage, None until it can be estimated
    text: str  # e.g. "read+encode 1,200 / 4,000 · about 2 min left"


def format_eta(seconds: float | None) -> str:
    """Human wording of a remaining time: 'about 40 s left', 'about 3 min left', ''."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 60:
        return f"about {round(seconds / 5) * 5} s left"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


class ProgressPresenter:
    """Percentage, label and ETA from a stream of :class:`Progress` events.

    The ETA of a stage is ``(total - done) / rate`` with ``rate`` the units per second measured
    since the stage's first event, smoothed exponentially (weight ``smoothing`` on the newest
    measurement) so a single slow batch does not make it jump. It stays None until the stage has
    progressed for ``min_elapsed`` seconds.
    """

    def __init__(self, smoothing: float = 0.3, min_elapsed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.smoothing = smoothing
        self.min_elapsed = min_elapsed
        self._clock = clock
        self._stage: str | None = None
        self._t0 = 0.0
        self._done0 = 0
        self._rate: float | None = None

    def update(self, event: Progress) -> ProgressView:
        now = self._clock()
        if event.stage != self._stage:
            self._stage, self._t0, self._done0, self._rate = event.stage, now, event.done, None
        elapsed = now - self._t0
        units = event.done - self._done0
        eta = None
        if event.total and units > 0 and elapsed >= self.min_elapsed:
            measured = units / elapsed
            self._rate = measured if self._rate is None else (
                self.smoothing * measured + (1 - self.smoothing) * self._rate)
            eta = max(0.0, (event.total - event.done) / self._rate)
        fraction = event.fraction
        percent = None if fraction is None else int(round(100 * fraction))
        count = f"{event.done:,} / {event.total:,}" if event.total else f"{event.done:,}"
        parts = [f"{event.stage} {count}"]
        if event.message:
            parts.append(event.message)
        if eta is not None:
            parts.append(format_eta(eta))
        return ProgressView(event.stage, percent, eta, " · ".join(parts))
