"""superqt's ``GeneratorWorker`` as the app uses it (see :mod:`msrl_app.worker`, which imports this
module on first use: importing superqt takes most of a second, after the window is shown)."""

from __future__ import annotations

import logging
import os
import threading

os.environ.setdefault("QT_API", "pyside6")  # superqt goes through qtpy: the app's binding, whatever else is installed
from superqt.utils import GeneratorWorker as _SuperqtGeneratorWorker  # noqa: E402

log = logging.getLogger(__name__)


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
