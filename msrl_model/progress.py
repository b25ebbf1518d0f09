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
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO, TypeVar

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
    NOTICE = "notice"  # a message to read now, not a step (e.g. how long a foundation model will take on the CPU)
    SLIDES = "slides"  # a batch run over slides, one unit per slide
    READ_FEATURES = "read features"  # loading a cohort's feature bags
    LATENTS = "latents"  # synthetic cohort: sampling the latent factors
    FEATURE_BAGS = "feature bags"  # synthetic cohort: sampling feature bags without slides
    PRETRAIN = "pre-train"  # stage-1 pre-training, one unit per epoch
    FINETUNE = "fine-tune"  # stage-2 fine-tuning of one task, one unit per epoch
    BASELINE = "baseline"  # training a comparison model, one unit per epoch
    CROSS_VALIDATION = "cross-validation"  # folds × tasks × variants
    EMBED = "embed"  # running the slide encoder over many cases' bags, one unit per case (training)


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


# Plain progress lines (``show`` on a stream that is not a terminal): at most one line per
# ``PLAIN_INTERVAL_S`` seconds or per ``PLAIN_STEP`` of a stage, plus its first and last event.
PLAIN_INTERVAL_S = 10.0
PLAIN_STEP = 0.05

# What one unit of a stage is, for the rate of a plain progress line ("310 tiles/s").
_UNITS: dict[str, str] = {
    Stage.READ_ENCODE: "tiles", Stage.SLIDES: "slides", Stage.READ_FEATURES: "cases", Stage.EMBED: "cases",
    Stage.PRETRAIN: "epochs", Stage.FINETUNE: "epochs", Stage.BASELINE: "epochs",
}


@dataclass
class _Run:
    """One run of a stage: from its first event until its last (``done == total``) or a restart."""

    t0: float  # clock at the first event
    done0: int  # units done at the first event
    done: int  # units done at the latest event
    printed_at: float  # clock of the latest line
    printed_step: int  # ``floor(fraction / PLAIN_STEP)`` of the latest line
    ended: bool = False  # the latest event was the last (done == total)


@dataclass
class PlainLines:
    """The view of :func:`drive` on a stream that is not a terminal (a log file, a batch job).

    One line per event worth telling: the first and the last event of every run of a stage, and in
    between whenever ``interval_s`` seconds passed or the stage advanced by ``step`` since its last
    line. ``clock`` gives seconds (wall-clock time: it also stamps the lines); inject a fake one in tests.

        [12:03:04] read+encode 1840/9000 (20%) slide_07 · 310 tiles/s · ETA 23 s
    """

    stream: TextIO
    clock: Callable[[], float] = time.time
    interval_s: float = PLAIN_INTERVAL_S
    step: float = PLAIN_STEP
    _runs: dict[str, _Run] = field(default_factory=dict)
    _last_at: float | None = None

    def __call__(self, event: Progress) -> None:
        now = self.clock()
        key = str(event.stage)
        run = self._runs.get(key)
        frac = event.fraction
        bucket = int(frac / self.step + 1e-9) if frac is not None else 0
        last = event.total is not None and event.done >= event.total
        if run is None or run.ended or event.done < run.done:  # a new run of this stage
            run = _Run(now, event.done, event.done, now, bucket)
            self._runs[key] = run
            tell = True
        else:
            run.done = event.done
            due = self._last_at is None or now - self._last_at >= self.interval_s
            tell = last or due or bucket > run.printed_step
        run.ended = last
        if tell:
            self.stream.write(self.line(event, run, now) + "\n")
            self.stream.flush()
            run.printed_at, run.printed_step = now, bucket
            self._last_at = now

    @staticmethod
    def line(event: Progress, run: _Run, now: float) -> str:
        """The text of one progress line (no newline)."""
        parts = [f"[{time.strftime('%H:%M:%S', time.localtime(now))}] {event.stage} {event.done}"]
        if event.total is not None:
            parts[0] += f"/{event.total}"
            if event.total:
                parts[0] += f" ({100 * event.done // event.total}%)"
        if event.message:
            parts[0] += f" {event.message}"
        elapsed, units = now - run.t0, event.done - run.done0
        if elapsed > 0 and units > 0:
            rate = units / elapsed
            unit = _UNITS.get(str(event.stage), "units")
            if rate >= 10:
                parts.append(f"{rate:.0f} {unit}/s")
            elif rate >= 1:
                parts.append(f"{rate:.1f} {unit}/s")
            else:  # slow units (epochs, folds): the time per unit reads better
                parts.append(f"{format_duration(1 / rate)}/{unit[:-1]}")
            if event.total is not None and event.done < event.total:
                parts.append(f"ETA {format_duration((event.total - event.done) / rate)}")
        return " · ".join(parts)


def format_duration(seconds: float) -> str:
    """``23 s``, ``4 min 05 s``, ``2 h 03 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def drive(
    job: Job[T],
    *,
    show: bool = True,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[Progress], Any] | None = None,
    stream: TextIO | None = None,
    clock: Callable[[], float] | None = None,
) -> T:
    """Run ``job`` to completion and return its result.

    Args:
        job: the generator to drive.
        show: report progress on ``stream``: a tqdm bar per stage when it is a terminal, else
            :class:`PlainLines` (one line every ~10 s or 5 % of a stage, and its first and last
            event). False: nothing (``--quiet``).
        should_stop: polled at every event; when it returns True the job is closed and
            :class:`CancelledError` raised.
        on_event: called with every event (logging, tests).
        stream: where progress goes; None = ``sys.stderr`` (looked up at the call).
        clock: seconds for the plain lines (default ``time.time``); a fake one makes tests exact.
    """
    stream = sys.stderr if stream is None else stream
    plain = PlainLines(stream, clock or time.time) if show and not _is_tty(stream) else None
    if show and plain is None:
        from tqdm import tqdm
    bar = None
    stage = None
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
            if event.stage == Stage.NOTICE:
                if show:
                    _write_line(f"note: {event.message}", stream, bar)
            elif plain is not None:
                plain(event)
            elif show:
                if event.stage != stage:
                    if bar is not None:
                        bar.close()
                    stage = event.stage
                    bar = tqdm(total=event.total, desc=event.stage, file=stream, leave=False,
                               dynamic_ncols=True)
                if event.total is not None and bar.total != event.total:
                    bar.total = event.total
                bar.n = event.done
                if event.message:
                    bar.set_postfix_str(event.message, refresh=False)
                bar.refresh()
            if should_stop is not None and should_stop():
                job.close()
                raise CancelledError("cancelled by the user; finished files stay, an interrupted extraction resumes where it stopped")
    finally:
        if bar is not None:
            bar.close()


def _write_line(text: str, stream: TextIO, bar: Any) -> None:
    """One line on ``stream``, above the tqdm ``bar`` when one is drawn."""
    if bar is not None:
        bar.write(text, file=stream)
    else:
        stream.write(text + "\n")
        stream.flush()


def exhaust(job: Job[T]) -> T:
    """The result of ``job``, its events dropped (a plain function built on a job)."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value
