"""Run ``msrl_model`` generator jobs off the GUI thread with superqt's workers (as napari does).

A job is a generator that yields :class:`msrl_model.progress.Progress` events and ``return``s its
result (see ``msrl_model.progress``). :class:`GeneratorWorker` (superqt's, see below) drives one on
a ``QThreadPool`` thread and reports through Qt signals, delivered on the GUI thread (its signal
object lives there, so the connections are queued)::

    worker = GeneratorWorker(extract_slide, path, out_dir)   # a generator function and its arguments
    worker.yielded.connect(progress_bar.on_progress)
    worker.returned.connect(show_result)
    worker.errored.connect(show_error)
    worker.start()
    ...
    worker.quit()   # cancel: honoured at the job's next yield; its finally blocks run

Signals: started, yielded(Progress), returned(object), errored(Exception), aborted, finished
(always last). The Qt-free counterpart, for the state model without a GUI, is
:class:`msrl_app.state.InlineJob`. The progress bar's wording is in :mod:`msrl_app.presenter`.
The class itself is in :mod:`msrl_app.qtworker`, imported on first use (superqt is slow to import).
"""

from __future__ import annotations

from typing import Any

from msrl_app.presenter import ProgressPresenter, ProgressView, format_eta
from msrl_model.progress import Progress, Stage

__all__ = ["GeneratorWorker", "ProgressPresenter", "ProgressView", "call_job", "format_eta", "new_worker"]


def new_worker(func, *args: Any, **kwargs: Any):
    """``GeneratorWorker(func, *args, **kwargs)``; superqt is imported on the first call, so start-up
    does not pay for it (the job factory of the window's state, and the viewer's)."""
    from msrl_app.qtworker import GeneratorWorker

    return GeneratorWorker(func, *args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "GeneratorWorker":  # imported on first use, as by ``from msrl_app.worker import GeneratorWorker``
        from msrl_app.qtworker import GeneratorWorker

        return GeneratorWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def call_job(fn, *args):
    """A one-step generator job calling ``fn(*args)`` (cancellable before it starts)."""
    yield Progress(Stage.START, 0, 1)
    return fn(*args)
