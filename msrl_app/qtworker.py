"""superqt's ``GeneratorWorker`` as the app uses it (see :mod:`msrl_app.worker`, which imports this
module on first use: importing superqt takes most of a second, after the window is shown)."""

from __future__ import annotations

import logging
import os
import sys
import threading

os.environ.setdefault("QT_API", "pyside6")  # superqt goes through qtpy: the app's binding, whatever else is installed
from superqt.utils import GeneratorWorker as _SuperqtGeneratorWorker  # noqa: E402

log = logging.getLogger(__name__)
_thread_plan = None  # the msrl_model thread policy, applied once torch is loaded (see _apply_thread_policy)
_plan_lock = threading.Lock()


def _apply_thread_policy() -> None:
    """Set torch's threads by :func:`msrl_model.device.apply_threads` (logged) once per process, at the first
    job after torch is imported (the model-load job imports it; jobs before that never import it here)."""
    global _thread_plan
    if "torch" not in sys.modules:  # its import has not even begun: nothing to set yet
        return
    with _plan_lock:
        if _thread_plan is None:
            import torch  # waits for another thread's import to finish: a half-built module has no set_num_threads

            from msrl_model.device import apply_threads

            _thread_plan = apply_threads(None, torch)


class GeneratorWorker(_SuperqtGeneratorWorker):
    """:class:`superqt.utils.GeneratorWorker` with what the app relies on besides its signals:

    * ``quit()`` closes the job at its next yield (``GeneratorExit`` inside it), on the worker
      thread, so its ``finally`` blocks run before ``aborted``/``finished`` (superqt only stops
      iterating and leaves the generator to the garbage collector);
    * a job raising ``RuntimeError`` (torch's usual error type) is ``errored`` like any other
      exception (superqt takes it for a deleted worker and then emits nothing, not even
      ``finished``, which would leave the window "analysing" for ever);
    * :meth:`wait` blocks until the job's thread is done: closing the window waits for it.

    ``func`` must be a generator function; it is called here, but its body (set-up code before the
    first yield included) runs on the worker thread.
    """

    def __init__(self, func, *args, **kwargs) -> None:
        super().__init__(func, *args, **kwargs)
        self._done = threading.Event()
        self._queued = False  # start() was called
        self._begun = False  # a pool thread has picked the job up

    def start(self) -> None:
        """Queue the job on the global thread pool (once; a second start raises RuntimeError)."""
        super().start()
        self._queued = True

    def run(self) -> None:  # called by the thread pool
        self._begun = True
        try:
            _apply_thread_policy()
        except Exception as exc:  # noqa: BLE001 - a thread setting must never stop the job (e.g. a bad MSRL_THREADS)
            log.warning("thread policy not applied: %s", exc)
        try:
            super().run()
        except RuntimeError as exc:  # its signal object is gone (the app is shutting down): nobody listens
            log.debug("worker signals dropped: %s", exc)
        finally:
            self._done.set()

    def work(self):
        try:
            outcome = super().work()
        finally:
            self._gen.close()  # after quit(): GeneratorExit at the job's yield, its finally blocks run
        if isinstance(outcome, RuntimeError):
            raise outcome  # the job's own error: errored, then finished
        return outcome

    def wait(self, msecs: int = -1) -> bool:
        """Block until the job's thread is done (shutdown and tests); False on timeout."""
        if not self._queued:
            return True  # never started
        if not self._begun and self.abort_requested:
            # superqt queues the start with a timer when an event loop runs: the job has not begun and
            # will stop before its first step (if the timer ever fires), so there is nothing to wait for
            return True
        return self._done.wait(None if msecs < 0 else msecs / 1000)
