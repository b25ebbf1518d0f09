"""Qt-free plumbing of the state model (:mod:`msrl_app.state`): a tiny typed event, the inline
job driver, and how a failure reads to the user. Nothing here imports Qt."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msrl_model.errors import MSRLError


class EventSignal:
    """A tiny event: ``connect(callback)``, ``disconnect(callback)``, ``emit(*args)`` calls each
    callback in connection order (psygnal/Qt-signal style, synchronous, on the emitting thread)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._callbacks: list[Callable[..., Any]] = []

    def connect(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback  # usable as a decorator

    def disconnect(self, callback: Callable[..., Any] | None = None) -> None:
        """Remove ``callback`` (all callbacks when None); unknown callbacks are ignored."""
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args: Any) -> None:
        for callback in list(self._callbacks):
            callback(*args)

    def __len__(self) -> int:
        return len(self._callbacks)


@dataclass(frozen=True)
class ErrorReport:
    """A failure as the user reads it: a title and a text saying what happened and what to do."""

    title: str
    text: str
    exc: BaseException | None = None

    def __str__(self) -> str:
        return f"{self.title}: {self.text}"


@dataclass(frozen=True)
class StatusMessage:
    text: str
    timeout_ms: int = 0  # 0: until the next message


def format_error(title: str, exc: BaseException, hint: str | None, log_path: Path | None,
                 open_slide: Path | None) -> str:
    """The text of an error dialog: the cause, what to do, the log file, and the slide kept open.

    ``hint``: what to try for an unexpected (non-MSRLError) exception; the default is about slides."""
    kept = f"\n\n{open_slide.name} is still open." if open_slide is not None else ""
    if isinstance(exc, MSRLError):
        return f"{exc}{kept}"
    where = f"\n\nDetails are in the log file:\n{log_path}" if log_path else ""
    hint = hint or ("Check that the file is a whole-slide image and readable; if it opens in other "
                    "viewers, please report this with the log file.")
    return f"Unexpected error: {type(exc).__name__}: {exc}\n\n{hint}{where}{kept}"


class InlineJob:
    """The Qt-free job driver: runs a generator job to its end inside :meth:`start`, with the
    interface of superqt's ``GeneratorWorker`` (``quit()`` from a callback stops it at the next
    yield and closes it, so its ``finally`` blocks run)."""

    def __init__(self, func: Callable[..., Generator], *args: Any, **kwargs: Any) -> None:
        for name in ("started", "yielded", "returned", "errored", "aborted", "finished"):
            setattr(self, name, EventSignal(name))
        self._gen = func(*args, **kwargs)
        self._abort = False
        self._running = False

    @property
    def abort_requested(self) -> bool:
        return self._abort

    @property
    def is_running(self) -> bool:
        return self._running

    def quit(self) -> None:
        self._abort = True

    def wait(self, msecs: int = -1) -> bool:
        return True  # it ran within start()

    def start(self) -> None:
        self._running = True
        self.started.emit()
        try:
            while True:
                if self._abort:
                    self._gen.close()
                    self.aborted.emit()
                    return
                try:
                    event = next(self._gen)
                except StopIteration as stop:
                    value = stop.value
                    break
                except Exception as exc:  # noqa: BLE001 - reported, never swallowed
                    self.errored.emit(exc)
                    return
                self.yielded.emit(event)
            self.returned.emit(value)
        finally:
            self._running = False
            self.finished.emit()
