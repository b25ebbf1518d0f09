"""Progress bars' wording, Qt-free: a percentage, a stage label and an ETA from a stream of
:class:`msrl_model.progress.Progress` events (the app's status strip shows them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from msrl_model.progress import Progress


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
