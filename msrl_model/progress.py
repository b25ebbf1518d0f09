"""Progress as a generator of events: one protocol for the CLI (tqdm) and the app (progress bar).

Long jobs in ``msrl_model`` are generators. Each ``yield`` hands a :class:`Progress` event to whoever
drives the job and is a cancellation point: the driver stops iterating (``gen.close()``) and the
job's ``finally`` blocks release its resources. The job's result is the generator's return value
(``StopIteration.value``), which :func:`drive` returns.

    >>> def job():
    ...     for i in range(3):
    ...         yield Progress("count", i + 1, 3)
    ...     return "done"
    >>> drive(job(), show=False)
    'done'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from msrl_model.errors import CancelledError

T = TypeVar("T")


class Stage(StrEnum):
    """The stages a job reports: the contract between ``msrl_model`` jobs and their views.

    A :class:`StrEnum`, so ``Stage.TISSUE == "tissue"`` and the value is what a tqdm bar and a log
    line print. The app maps each member to a title for the user (``msrl_app.controls``).
    """

    START = "start"  # a background job of the viewer began
    LOAD_MODEL = "load model"  # reading a bundle and building its networks
    DEMO_SLIDE = "demo slide"  # rendering the synthetic demo slide (once)
    OPEN = "open"  # opening a slide
    CACHED = "cached"  # features of this slide are already in the cache
    TISSUE = "tissue"  # tissue detection and tiling
    READ_ENCODE = "read+encode"  # reading tiles and running the patch encoder
    WRITE = "write"  # saving a feature file
    PREDICT = "predict"  # MSRL inference, one unit per task
    RETRY = "retry"  # an analysis restarted with a smaller batch or on the CPU
    SLIDES = "slides"  # a batch run over slides, one unit per slide
    READ_FEATURES = "read features"  # loading a cohort's feature bags
    LATENTS = "latents"  # synthetic cohort: sampling the latent factors
    FEATURE_BAGS = "feature bags"  # synthetic cohort: sampling feature bags without slides
    PRETRAIN = "pre-train"  # stage-1 pre-training, one unit per epoch
    FINETUNE = "fine-tune"  # stage-2 fine-tuning of one task, one unit per epoch
    BASELINE = "baseline"  # training a comparison model, one unit per epoch
    CROSS_VALIDATION = "cross-validation"  # folds × tasks × variants


@dataclass(frozen=True)
class Progress:
    """One progress tick of a long job."""

    stage: Stage | str  # what is being done now (a :class:`Stage`; plain strings in doctests)
    done: int  # units finished in this stage
    total: int | None  # units in this stage, None when unknown
    message: str = ""  # free text for logs and status bars, e.g. the slide id

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None when the total is unknown or zero."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


Job = Generator[Progress, None, T]


def drive(
    job: Job[T],
    *,
    show: bool = True,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[Progress], Any] | None = None,
) -> T:
    """Run ``job`` to completion and return its result.

    Args:
        job: the generator to drive.
        show: draw a tqdm bar per stage on stderr (the CLI's view of the same events).
        should_stop: polled at every event; when it returns True the job is closed and
            :class:`CancelledError` raised.
        on_event: called with every event (logging, tests).
    """
    from tqdm import tqdm

    bar: tqdm | None = None
    stage = None
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
            if show:
                if event.stage != stage:
                    if bar is not None:
                        bar.close()
                    stage = event.stage
                    bar = tqdm(total=event.total, desc=event.stage, file=sys.stderr, leave=False,
                               dynamic_ncols=True)
                if event.total is not None and bar.total != event.total:
                    bar.total = event.total
                bar.n = event.done
                if event.message:
                    bar.set_postfix_str(event.message, refresh=False)
                bar.refresh()
            if should_stop is not None and should_stop():
                job.close()
                raise CancelledError("cancelled by the user; nothing partial was kept")
    finally:
        if bar is not None:
            bar.close()

