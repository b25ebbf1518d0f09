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
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from msrl_model.errors import CancelledError

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress tick of a long job."""

    stage: str  # what is being done now, e.g. "tissue", "read+encode", "write"
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


class RateMeter:
    """Counts units over wall time; used by benchmarks and the ETA in the app."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.units = 0

    def add(self, n: int) -> None:
        self.units += n

    @property
    def per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.units / elapsed if elapsed > 0 else 0.0
