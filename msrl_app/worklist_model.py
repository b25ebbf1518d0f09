"""The worklist as the app sees it, Qt-free: the open :class:`~msrl_model.infer.worklist.Worklist`, its
thumbnails, Analyze all (start, progress, cancel) and opening an entry in the main window.

Like :class:`msrl_app.state.AppState` (whose jobs, model cache, bundle and settings it uses), it owns
the state and announces each change as an event; the dock (:mod:`msrl_app.worklist`) only subscribes
and calls the actions. The long work runs as generator jobs through the app state's job factory
(a worker thread in the window, :class:`~msrl_app.events.InlineJob` in Qt-free tests); their ticks
arrive on the thread that owns this model, which alone changes the entries and saves
``worklist.json`` (after every slide).

Events (each an :class:`~msrl_app.events.EventSignal`; the value passed in brackets):
    opened [Worklist]            a worklist was opened (every row changed)
    entry [int]                  entry ``index`` changed (status, findings)
    thumbnail [int]              entry ``index`` has its thumbnail (``thumbnails[index]``, H x W x 3 uint8)
    running [bool]               Analyze all started (True) or ended (False)
    progress [Progress]          each tick of Analyze all (one bar over the slides)
    finished [str]               Analyze all ended: "done" | "cancelled" | "error"

Where the results go: ``default_results_dir(source)`` when it is writable, else
``<cache>/worklists/<hash of the source path>`` (a read-only slide share still gets a worklist).
Features go to the app's feature cache, so opening an analysed slide and clicking Analyze reuses them.
A slide with regions of interest drawn or imported in the main window (saved by
:mod:`msrl_app.region_store`) is analysed inside them, as Analyze would.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrl_app.analysis import NO_BUNDLE, cache_dir, cpu_batch, features_dir
from msrl_app.events import EventSignal
from msrl_model.errors import MSRLError, OutputError
from msrl_model.infer.worklist import (RESUME_NOTE, SlideStatus, Worklist, WorklistEntry, WorklistTick,
                                       analyze_worklist, default_results_dir)
from msrl_model.progress import Progress, Stage

log = logging.getLogger(__name__)

THUMBNAIL_PX = 96  # the longer side of a row's thumbnail
CANCEL_NOTE = "cancelled; Analyze all resumes it from the patch features already computed"


class WorklistEvents:
    """The events of :class:`WorklistModel` (see the module docstring)."""

    NAMES = ("opened", "entry", "thumbnail", "running", "progress", "finished")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, EventSignal(name))


def results_dir_for(source: Path) -> Path:
    """Where a worklist of ``source`` keeps its results (see the module docstring); created."""
    from msrl_model.files import check_writable

    try:
        return check_writable(default_results_dir(source))
    except OutputError:
        digest = hashlib.sha256(str(Path(source).absolute()).encode()).hexdigest()[:16]
        return check_writable(cache_dir() / "worklists" / digest)


@dataclass(frozen=True)
class ThumbnailTick(Progress):
    """A tick of :func:`thumbnails_job`: entry ``index``'s thumbnail (None: the file did not open)."""

    index: int = -1  # the entry
    image: np.ndarray | None = field(default=None, compare=False)  # H x W x 3 uint8 RGB


def thumbnails_job(paths: list[Path], size: int = THUMBNAIL_PX) -> Generator[Progress, None, None]:
    """Each slide's thumbnail (longer side ``size``), one :class:`ThumbnailTick` per slide in list order;
    a file that does not open gets None (its row says why once it is analysed)."""
    from msrl_model.slide import open_slide

    for k, path in enumerate(paths):
        try:
            with open_slide(path) as slide:
                image = slide.thumbnail(size)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: no thumbnail, never a failed list
            log.debug("no thumbnail for %s: %s", path, exc)
            image = None
        yield ThumbnailTick(Stage.OPEN, k + 1, len(paths), path.name, k, image)


def saved_regions(folder: Path) -> Callable[[Path], Any]:
    """``regions(slide)``: the regions of interest the main window saved for ``slide`` in ``folder``
    (:mod:`msrl_app.region_store`), None when it has none or they cannot be read: Analyze all analyses a
    slide as Analyze would."""
    def regions(slide: Path) -> Any:
        from msrl_app.region_store import regions_file
        from msrl_model.slide import open_slide
        from msrl_model.slide.regions import read_regions

        try:
            with open_slide(slide) as handle:
                path = regions_file(folder, slide, handle.sha256_head())
            return (read_regions(path) or None) if path.is_file() else None
        except Exception as exc:  # noqa: BLE001 - no slide, damaged regions: the analysis reports the slide itself
            log.debug("no saved regions for %s: %s", slide, exc)
            return None

    return regions


def worklist_job(predictors: Any, bundle: Path, device: str, coverage: float, entries: list[WorklistEntry],
                 out_dir: Path, cache: Path, project: str | None,
                 regions_folder: Path) -> Generator[Progress, None, tuple[int, str, dict]]:
    """Load the model (cached) and run :func:`~msrl_model.infer.worklist.analyze_worklist` with each slide's
    saved regions (:func:`saved_regions` in ``regions_folder``); returns (failed entries, the bundle's
    fingerprint, the cohort risks per survival task), computed on the worker thread."""
    yield Progress(Stage.LOAD_MODEL, 0, 1, Path(bundle).name)
    predictor = predictors.get(bundle, device)
    predictor.coverage = coverage
    cuda = str(getattr(predictor, "device_name", device)).startswith("cuda")
    failed = yield from analyze_worklist(predictor, entries, out_dir, cache, project,
                                         # None: planned from GPU memory; on the CPU small batches (Cancel)
                                         batch_size=None if cuda else cpu_batch(predictor.bundle.encoder),
                                         regions_for=saved_regions(regions_folder))
    return failed, predictor.bundle.fingerprint, predictor.cohort_risks()


def cohort_risks_job(predictors: Any, bundle: Path, device: str) -> Generator[Progress, None, tuple[str, dict]]:
    """The loaded model's fingerprint and cohort risks (the histogram of a result opened from disk)."""
    yield Progress(Stage.LOAD_MODEL, 0, 1, Path(bundle).name)
    predictor = predictors.get(bundle, device)
    return predictor.bundle.fingerprint, predictor.cohort_risks()


class WorklistModel:
    """The open worklist and its actions (see the module docstring); ``state`` is the app's AppState."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.events = WorklistEvents()
        self.worklist: Worklist | None = None
        self.thumbnails: dict[int, np.ndarray] = {}  # entry index -> RGB thumbnail
        self.cohort_risks: dict[str, np.ndarray] = {}  # of the model with fingerprint risks_bundle
        self.risks_bundle = ""
        self._job: Any = None  # the running Analyze all
        self._thumbnails_job: Any = None  # the open list's thumbnails
        self._cancelling = False
        self._outcome = ""

    @property
    def running(self) -> bool:
        return self._job is not None

    @property
    def entries(self) -> list[WorklistEntry]:
        return self.worklist.entries if self.worklist is not None else []

    @property
    def other_model(self) -> bool:
        """True when the last Analyze all of this list used another model than the one loaded now: its done
        rows are that model's results until Analyze all renews them."""
        predictor = self.state.predictors.current()
        last = self.worklist.bundle_sha256 if self.worklist is not None else ""
        return bool(last) and predictor is not None and predictor.bundle.fingerprint != last

    # -- open ---------------------------------------------------------------------------------------
    def open(self, source: str | os.PathLike) -> bool:
        """Open the slides of a folder or list file as the worklist; False (and an error) when it cannot."""
        source = Path(source).expanduser().absolute()
        if self.running:
            self.state.report_error("Cannot open another worklist", MSRLError(
                "Analyze all is running; cancel it first (Cancel in the worklist)"))
            return False
        try:
            worklist = Worklist.open(source, results_dir_for(source))
        except Exception as exc:  # noqa: BLE001 - a dialog, never a crash
            self.state.report_error(f"Cannot open the worklist {source.name}", exc,
                                    "Choose a folder of slides, or a text file with one slide path per line.")
            return False
        self.worklist, self.thumbnails = worklist, {}
        log.info("worklist %s: %d slides, results in %s", source, len(worklist.entries), worklist.out_dir)
        self.events.opened.emit(worklist)
        counts = worklist.counts()
        self.state.message(f"Worklist {source.name}: {len(worklist.entries)} slides, {counts['done']} done", 8000)
        if self._thumbnails_job is not None:
            self._thumbnails_job.quit()  # the previous list's
        self._thumbnails_job = self.state.start_job(
            "analysis", thumbnails_job, [Path(e.path) for e in worklist.entries], yielded=self._on_thumbnail)
        self._thumbnails_job.start()
        return True

    def _on_thumbnail(self, job: Any, tick: ThumbnailTick) -> None:
        entries = self.entries
        if job is self._thumbnails_job and tick.image is not None and tick.index < len(entries):
            self.thumbnails[tick.index] = tick.image
            self.events.thumbnail.emit(tick.index)

    # -- Analyze all --------------------------------------------------------------------------------
    def analyze_all(self) -> bool:
        """Analyse every entry in the background (done ones are checked and skipped); False when it
        cannot start (an error says why)."""
        state, worklist = self.state, self.worklist
        if self.running:
            return False
        if worklist is None or not worklist.entries:
            state.report_error("Nothing to analyze", MSRLError(
                "the worklist is empty; open a folder of slides with File ▸ Open worklist folder…"))
            return False
        if state.bundle_path is None:
            state.report_error("Cannot analyze", MSRLError(NO_BUNDLE))
            return False
        for i, entry in enumerate(worklist.entries):
            if entry.status != SlideStatus.DONE:
                self._set_entry(i, WorklistEntry(entry.path, entry.slide_id, SlideStatus.QUEUED))
        cache = state.cache if state.cache is not None else features_dir()
        job = state.start_job(
            "analysis", worklist_job, state.predictors, state.bundle_path, state.device, state.coverage,
            list(worklist.entries), Path(worklist.out_dir), cache, state.project, state.regions.results_folder(),
            yielded=self._on_tick, returned=self._on_returned, errored=self._on_error, aborted=self._on_aborted,
            finished=self._on_finished)
        self._job, self._cancelling, self._outcome = job, False, ""
        log.info("worklist: analyze all %d slides of %s", len(worklist.entries), worklist.source)
        self.events.running.emit(True)
        job.start()
        return True

    def cancel(self) -> None:
        """Stop Analyze all at its next step; the finished slides and the running slide's patch features are kept."""
        if self._job is not None and not self._cancelling:
            log.info("worklist: cancel requested")
            self._cancelling = True
            self._job.quit()

    def _on_tick(self, job: Any, tick: Progress) -> None:
        if job is not self._job:
            return
        if isinstance(tick, WorklistTick) and tick.entry is not None:
            self._set_entry(tick.index, tick.entry)
            if tick.entry.status in (SlideStatus.DONE, SlideStatus.FAILED):
                self._save()
        self.events.progress.emit(tick)

    def _on_returned(self, job: Any, value: tuple[int, str, dict]) -> None:
        failed, fingerprint, risks = value
        self.cohort_risks, self.risks_bundle = risks, fingerprint
        if self.worklist is not None:
            self.worklist.bundle_sha256 = fingerprint
            self._save()
        self._outcome = "done"
        total = len(self.entries)
        self.state.message(f"Worklist analysed: {total - failed} of {total} slides done, {failed} failed", 10000)

    def _on_error(self, job: Any, exc: Exception) -> None:
        self._outcome = "error"
        self.state.report_error("Analyze all stopped", exc,
                                "The finished slides are kept; check the model bundle and run Analyze all again.")

    def _on_aborted(self, job: Any) -> None:
        self._outcome = "cancelled"
        self.state.message("Analyze all cancelled — finished slides and computed patch features are kept", 10000)

    def _on_finished(self, job: Any) -> None:
        if job is not self._job:
            return
        outcome = self._outcome or ("cancelled" if self._cancelling else "error")
        note = CANCEL_NOTE if outcome == "cancelled" else RESUME_NOTE
        for i, entry in enumerate(self.entries):  # what the run did not reach goes back to "not analysed"
            if entry.status in (SlideStatus.QUEUED, SlideStatus.RUNNING):
                self._set_entry(i, WorklistEntry(entry.path, entry.slide_id, SlideStatus.NOT_ANALYSED,
                                                 note if entry.status == SlideStatus.RUNNING else ""))
        self._save()
        self._job, self._cancelling, self._outcome = None, False, ""
        self.events.running.emit(False)
        self.events.finished.emit(outcome)

    def _set_entry(self, index: int, entry: WorklistEntry) -> None:
        if self.worklist is not None and 0 <= index < len(self.worklist.entries):
            self.worklist.entries[index] = entry
            self.events.entry.emit(index)

    def _save(self) -> None:
        if self.worklist is None:
            return
        try:
            self.worklist.save()
        except OSError as exc:  # the results are written; only the list's memory of them is not
            log.warning("worklist not saved: %s", exc)

    # -- open an entry in the window -----------------------------------------------------------------
    def open_entry(self, index: int) -> bool:
        """Open entry ``index``'s slide in the main window with its result (when done); False when the
        slide does not open (an error says why)."""
        entry = self.entries[index]
        state = self.state
        if state.open_slide(entry.path) is None:
            return False
        if entry.status != SlideStatus.DONE:
            if entry.message:
                state.message(f"{entry.name}: {entry.status} — {entry.message}", 15000)
            return True
        from msrl_model.infer.results import PredictionResult

        try:
            result = PredictionResult.from_json(Path(entry.result).read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001
            state.report_error(f"Cannot read the result of {entry.name}", exc,
                               "Run Analyze all again (or Analyze) to recompute it.")
            return True
        slide = state.slide
        if result.bundle_sha256 == self.risks_bundle:
            state.set_result(result, slide, self.cohort_risks)
            return True
        state.set_result(result, slide)  # the histogram follows once the model's cohort risks are known
        if state.bundle_path is not None:
            job = state.start_job("analysis", cohort_risks_job, state.predictors, state.bundle_path, state.device,
                                   returned=lambda _, value: self._risks_ready(value, result))
            job.start()
        return True

    def _risks_ready(self, value: tuple[str, dict], result: Any) -> None:
        fingerprint, risks = value
        self.cohort_risks, self.risks_bundle = risks, fingerprint
        if self.state.result is result and result.bundle_sha256 == fingerprint:
            self.state.set_result(result, self.state.result_slide, risks)


__all__ = ["WorklistEvents", "WorklistModel", "cohort_risks_job", "results_dir_for", "thumbnails_job", "worklist_job"]
