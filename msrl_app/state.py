"""MSRL Studio's state, Qt-free: what is open, chosen, running and shown, and the actions on it.

One-way architecture (as napari's ``EventedModel``): widgets never own app state. They call the
actions of :class:`AppState` (open a slide, set the bundle, the project, the expression, start or
cancel the analysis, export) and subscribe to its events (``state.events.result.connect(cb)``);
the window only wires widgets to the state. Nothing here imports Qt (``tests/test_app_state.py``
checks it), so the state is tested, and scripted, without a QApplication.

Background jobs (the bundle warm-up, the analysis, the demo slide) are generator jobs started
through ``job_factory(generator_function, *args)``, which returns an object with superqt's worker
interface (signals ``yielded returned errored aborted finished`` with ``connect``; ``start()``,
``quit()``, ``wait(msecs)``). The window passes :func:`msrl_app.worker.new_worker` (superqt's
``GeneratorWorker``: a thread per job, signals on the GUI thread); the default, :class:`InlineJob`,
runs the job to the end inside ``start()`` — the Qt-free job driver of tests and scripts.

Events (each ``EventSignal``; the value passed is in brackets):
    slide [Path | None]          the open slide changed (``slide_handle`` is the opened file)
    bundle [Path | None]         another bundle was chosen (its manifest is read in the background)
    bundle_loaded [Path]         its manifest and model card are read (``bundle_manifest``)
    bundle_rejected [Path]       it is not a valid bundle: none is set now
    projects [list[str]]         the project choices changed (``project_choices()``)
    project [str | None]         the chosen project (cancer type)
    expression [Path | None]     an expression file was loaded, or cleared
    device [str]                 the analysis device
    result [PredictionResult | None]   the result shown (``result_slide``, ``cohort_risks``)
    job [JobState]               idle / loading model / analysing / cancelling
    progress [Progress]          each event of the running analysis
    finished [str]               an analysis ended: "done" | "error" | "cancelled" | "ignored"
    error [ErrorReport]          something failed (``last_error``); the views show it
    message [StatusMessage]      a line for the status bar
    exported [Path]              a report or results file was written
    regions.changed [RegionSet]  the open slide's regions of interest (``state.regions``, saved per slide)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from msrl_app.analysis import (DEVICES, NO_BUNDLE, AnalysisOutcome, AnalysisRequest, PredictorCache, analysis_job,
                               bundle_job, demo_slide_job, demo_slide_path, encoder_job, features_dir,
                               read_expression)
from msrl_app.events import ErrorReport, EventSignal, InlineJob, StatusMessage, format_error
from msrl_app.region_store import RegionStore
from msrl_model.errors import MSRLError
from msrl_model.progress import Progress, Stage

log = logging.getLogger(__name__)

__all__ = ["AppState", "ErrorReport", "EventSignal", "InlineJob", "JobState", "StateEvents",
           "StatusMessage", "bundle_job", "format_error", "primary_task"]

# closing the app: how long to wait for each kind of job once told to stop (a model load cannot stop
# inside torch's import)
WAIT_MS = {"analysis": 10_000, "demo": 10_000, "bundle": 120_000, "encoder": 30_000, "export": 60_000}


class StateEvents:
    """The events of :class:`AppState` (see the module docstring)."""

    NAMES = ("slide", "bundle", "bundle_loaded", "bundle_rejected", "projects", "project", "expression",
             "device", "result", "job", "progress", "finished", "error", "message", "exported")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, EventSignal(name))


class JobState(StrEnum):
    """What the app is busy with."""

    IDLE = "idle"
    LOADING_MODEL = "loading model"  # a bundle is being read (its warm-up), no analysis
    ANALYSING = "analysing"
    CANCELLING = "cancelling"  # the analysis was asked to stop; it does at its next step


def primary_task(result: Any) -> Any:
    """The task whose attention and linked cases a result is shown with: its first survival task,
    else its first task (``result`` a :class:`msrl_model.infer.results.PredictionResult`)."""
    tasks = list(result.tasks.values())
    return next((t for t in tasks if t.kind == "survival"), tasks[0])


class AppState:
    """The app's state and its actions (see the module docstring for the events)."""

    def __init__(self, job_factory: Callable[..., Any] = InlineJob, predictors: Any = None,
                 log_path: Path | None = None, cache: Path | None = None) -> None:
        self.events = StateEvents()
        self.job_factory = job_factory  # (generator function, *args) -> a worker (see the module docstring)
        self.log_path = log_path  # named in the text of unexpected errors
        self.cache = cache  # the feature cache folder; None: ``analysis.features_dir()`` at each Analyze
        self.slide: Path | None = None  # the open slide
        self.slide_handle: Any = None  # its opened ``msrl_model.slide`` object (the viewer owns and closes it)
        self.bundle_path: Path | None = None  # the model bundle Analyze uses
        self.bundle_manifest: dict[str, Any] | None = None  # its manifest, once read (background)
        self.bundle_card = ""  # its model card (Markdown)
        self.predictors = predictors if predictors is not None else PredictorCache()  # loaded models
        self.projects: list[str] = []  # the bundle's training projects
        self.project: str | None = None  # the slide's cancer type; None = not specified
        self.device = "auto"  # "auto" | "cpu" | "cuda"
        self.coverage = 0.9  # of the conformal prediction sets (Settings ▸ Prediction sets)
        self.expression: dict[str, float] | None = None  # this case's expression (MSRL_multi)
        self.expression_name = ""  # the expression file's name
        self.regions = RegionStore()  # the open slide's regions of interest (msrl_app.region_store): Analyze uses them
        self.result: Any = None  # the PredictionResult shown (msrl_model.infer.results)
        self.result_slide: Path | None = None  # the slide it belongs to
        self.cohort_risks: dict[str, np.ndarray] = {}  # survival task -> training cohort risks
        self.job = JobState.IDLE
        self.last_error: ErrorReport | None = None  # the last error reported
        self.report_writer: Callable[[Path], None] | None = None  # writes the PDF report (the window's)
        self._analysis: Any = None  # the running analysis job
        self._analysis_slide: Path | None = None  # the slide it analyses
        self._outcome: str | None = None  # how it ended, once known
        self._cancelling = False
        self._bundle_job: Any = None  # the warm-up of the current bundle
        self._jobs: dict[Any, str] = {}  # every job in flight -> its kind (a key of WAIT_MS)
        self._encoder_notices: set[Any] = set()  # encoder warm-ups whose notice is on the status line

    # -- errors and messages ------------------------------------------------------------------------
    def report_error(self, title: str, exc: BaseException, hint: str | None = None) -> ErrorReport:
        """Record and announce a failure (``events.error``), with a log line (a traceback if unexpected)."""
        if isinstance(exc, MSRLError):
            log.error("%s: %s", title, exc)
        else:
            log.error("%s: unexpected %s", title, type(exc).__name__, exc_info=exc)
        self.last_error = ErrorReport(title, format_error(title, exc, hint, self.log_path, self.slide), exc)
        self.events.error.emit(self.last_error)
        return self.last_error

    def message(self, text: str, timeout_ms: int = 0) -> None:
        self.events.message.emit(StatusMessage(text, timeout_ms))

    def _notice(self, text: str) -> None:
        """A job's Stage.NOTICE: logged, and on the status line for as long as it applies (2 min at most)."""
        log.info("notice: %s", text)
        self.message(text, 120000)

    # -- jobs ---------------------------------------------------------------------------------------
    def start_job(self, kind: str, func: Callable[..., Generator], *args: Any, **slots: Callable) -> Any:
        """Start ``func(*args)`` through the job factory; ``slots`` (signal name -> callback taking
        the job first) are connected before it starts."""
        job = self.job_factory(func, *args)
        for name, slot in slots.items():
            getattr(job, name).connect(lambda *a, s=slot, j=job: s(j, *a))
        job.finished.connect(lambda j=job: self._job_done(j))
        self._jobs[job] = kind
        return job

    def _job_done(self, job: Any) -> None:
        if self._jobs.pop(job, None) == "bundle":
            self._update_job()

    def _update_job(self) -> None:
        if self._analysis is not None:
            state = JobState.CANCELLING if self._cancelling else JobState.ANALYSING
        else:
            loading = "bundle" in self._jobs.values()
            state = JobState.LOADING_MODEL if loading else JobState.IDLE
        if state != self.job:
            self.job = state
            self.events.job.emit(state)

    @property
    def analysis_running(self) -> bool:
        return self._analysis is not None

    def shutdown(self) -> None:
        """Stop every job and wait (bounded) for its thread: the app is closing. The model load
        cannot be interrupted inside torch's import and exiting the interpreter under it crashes
        (seen: SIGSEGV on ``msrl-app SLIDE --quit`` with a bundle), so that one is waited for longest."""
        jobs = list(self._jobs.items())
        for job, _ in jobs:
            job.quit()
        for job, kind in jobs:
            job.wait(WAIT_MS[kind])

    # -- slide --------------------------------------------------------------------------------------
    def open_slide(self, path: str | os.PathLike) -> Any:
        """Open the slide at ``path`` and make it the open slide; returns its handle, or None on
        failure (an error is reported and the slide already open stays open)."""
        path = Path(path).expanduser().absolute()
        try:
            from msrl_model.slide import open_slide  # imported on first use: keeps start-up fast

            if not path.exists():
                raise MSRLError(f"{path} does not exist; it may have been moved, renamed or deleted - choose it "
                                f"again with File ▸ Open slide… (or File ▸ Open DICOM folder…)")
            slide = open_slide(path)  # a file, or a DICOM series: its folder or one of its .dcm files
        except Exception as exc:  # noqa: BLE001 - every failure becomes a dialog, never a crash
            self.report_error(f"Cannot open {path.name}", exc)
            return None
        log.info("opened %s (%s, %s, %dx%d, %d levels, mpp %.4g %s)", path, slide.vendor, slide.backend,
                 *slide.dimensions, slide.level_count, slide.mpp, slide.mpp_source)
        for warning in slide.warnings:
            log.warning(warning)
        self.set_slide(slide.path, slide)  # a DICOM series is its folder, whichever .dcm file was chosen
        if slide.warnings:
            self.message(slide.warnings[0], 15000)
        else:
            self.message(f"Opened {slide.path.name}", 5000)
        return slide

    def set_slide(self, path: Path | None, handle: Any = None) -> None:
        """Make ``path`` the open slide (None: none); a running analysis is cancelled and the result
        shown (it belongs to the previous slide) is cleared."""
        self.cancel_analysis()
        self.slide = Path(path) if path is not None else None
        self.slide_handle = handle
        self.regions.open_slide(self.slide, handle)
        self.events.slide.emit(self.slide)
        if self.result is not None:
            self.set_result(None)

    def close_slide(self) -> None:
        self.set_slide(None)

    def open_demo_slide(self) -> None:
        """Open the demo slide, rendering it first (once, in the background) when needed."""
        if demo_slide_path().is_file():
            self.open_slide(demo_slide_path())
            return
        self.message("Preparing the demo slide (synthetic H&E, once; a few seconds)…")
        job = self.start_job(
            "demo", demo_slide_job,
            returned=lambda _, path: self.slide is None and self.open_slide(path),
            errored=lambda _, exc: self.report_error("Cannot prepare the demo slide", exc,
                                                     "Open a slide of your own with File ▸ Open slide…"))
        job.start()

    # -- bundle, device, project --------------------------------------------------------------------
    def set_coverage(self, coverage: float) -> None:
        """The coverage of the conformal prediction sets of the next Analyze (e.g. 0.9)."""
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage {coverage} must be between 0 and 1")
        self.coverage = float(coverage)

    def set_device(self, device: str) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}")
        self.device = device
        self.predictors.clear()  # the next Analyze loads the model on the new device
        self.events.device.emit(device)

    def set_bundle(self, path: str | os.PathLike | None) -> None:
        """Use the bundle at ``path`` (directory or .msrl; None: none). Its manifest is read by a
        background job (where torch is first imported); ``bundle_loaded`` follows, or an error."""
        self.bundle_path = Path(path).expanduser().absolute() if path else None
        self.bundle_manifest, self.bundle_card = None, ""
        self.predictors.clear()
        self._bundle_job = None
        self.events.bundle.emit(self.bundle_path)
        self._set_projects([])
        if self.bundle_path is None:
            return
        job = self.start_job("bundle", bundle_job, self.bundle_path, self.device, self.predictors,
                              returned=self._on_bundle, errored=self._on_bundle_error)
        self._bundle_job = job
        self._update_job()
        job.start()

    def _on_bundle(self, job: Any, value: tuple[dict[str, Any], str]) -> None:
        bundle = self.bundle_path
        if job is not self._bundle_job or bundle is None:
            return  # another bundle was chosen meanwhile
        manifest, card = value
        self.bundle_manifest, self.bundle_card = manifest, card
        cohort = manifest.get("cohort") or {}
        self._set_projects([str(p) for p in cohort.get("projects") or []])
        synthetic = " · SYNTHETIC training cohort" if cohort.get("synthetic") else ""
        log.info("model bundle %s (%d tasks%s)", bundle, len(manifest.get("tasks") or []), synthetic)
        self.message(f"Model bundle: {bundle.name}{synthetic}", 8000)
        self.events.bundle_loaded.emit(bundle)
        self.start_job("encoder", encoder_job, bundle, self.device, self.predictors, yielded=self._on_encoder_notice,
                       returned=self._on_encoder_ready, errored=self._on_encoder_error).start()

    def _on_encoder_notice(self, job: Any, event: Progress) -> None:
        if event.stage == Stage.NOTICE:  # numba compiling the built-in encoder once after installing
            self._encoder_notices.add(job)
            self._notice(event.message)

    def _on_encoder_ready(self, job: Any, _value: Any) -> None:
        if job in self._encoder_notices:
            self._encoder_notices.discard(job)
            self.message("The patch encoder is ready", 5000)

    def _on_encoder_error(self, job: Any, exc: Exception) -> None:
        log.info("patch encoder warm-up failed (Analyze builds it again and says why): %s", exc)
        if job in self._encoder_notices:
            self._encoder_notices.discard(job)
            self.message("", 0)

    def _on_bundle_error(self, job: Any, exc: Exception) -> None:
        from msrl_model.errors import BundleError

        if job is not self._bundle_job or self.bundle_path is None:
            return
        if not isinstance(exc, BundleError):  # e.g. the chosen device is missing: keep the bundle
            self.report_error("Cannot load the model", exc, "Check Settings ▸ Device.")
            return
        bundle, self.bundle_path = self.bundle_path, None
        self.events.bundle_rejected.emit(bundle)
        self.report_error("Cannot use this model bundle", exc,
                          "Check that the path is an MSRL Studio bundle (a folder with manifest.json, or a "
                          ".msrl file) and that it was copied completely.")

    def _set_projects(self, projects: list[str]) -> None:
        self.projects = list(projects)
        self.events.projects.emit(self.project_choices())

    def project_choices(self) -> list[str]:
        """The bundle's projects, plus the chosen one if it is not among them (chosen on the
        command line before the bundle loaded)."""
        extra = [self.project] if self.project and self.project not in self.projects else []
        return self.projects + extra

    def set_project(self, project: str | None) -> None:
        project = project or None
        if project != self.project:
            self.project = project
            self.events.project.emit(project)

    # -- expression ---------------------------------------------------------------------------------
    def load_expression(self, path: str | os.PathLike, analyze: bool = False) -> bool:
        """Read one case's expression: the next Analyze (started now when ``analyze`` and a slide is
        open) runs MSRL_multi. False (and an error) when the file cannot be used."""
        path = Path(path)
        try:
            values = read_expression(path)
        except Exception as exc:  # noqa: BLE001 - a dialog, never a crash
            self.report_error(f"Cannot load {path.name}", exc, "Save the expression as a CSV text file.")
            return False
        self.expression, self.expression_name = values, path.name
        log.info("expression %s: %d genes", path, len(values))
        self.message(f"Expression loaded: {len(values):,} genes from {path.name} — Analyze runs MSRL_multi", 10000)
        self.events.expression.emit(path)
        if analyze and self.slide is not None and not self.analysis_running:
            self.start_analysis()
        return True

    def clear_expression(self) -> None:
        self.expression, self.expression_name = None, ""
        self.events.expression.emit(None)
        self.message("Expression cleared — Analyze runs MSRL (slide only)", 6000)

    # -- analysis -----------------------------------------------------------------------------------
    def start_analysis(self) -> bool:
        """Analyze the open slide in the background; False when it cannot start (an error says why,
        and ``finished`` reports "error")."""
        if self.analysis_running:
            return False
        if self.slide is None or self.bundle_path is None:
            if self.slide is None:
                self.report_error("Nothing to analyze",
                                  MSRLError("no slide is open; open one with File ▸ Open slide…"))
            else:
                self.report_error("Cannot analyze", MSRLError(NO_BUNDLE))
            self.events.finished.emit("error")
            return False
        request = AnalysisRequest(slide=self.slide, bundle=self.bundle_path, device=self.device,
                                  project=self.project, expression=self.expression, coverage=self.coverage,
                                  cache=self.cache if self.cache is not None else features_dir(),
                                  regions=self.regions.current())
        log.info("analyze %s with %s (device %s, project %s, %s)", request.slide, request.bundle,
                 request.device, request.project, "with expression" if request.expression else "slide only")
        job = self.start_job("analysis", analysis_job, request, self.predictors,
                              yielded=self._on_progress, returned=self._on_outcome, errored=self._on_error,
                              aborted=self._on_aborted, finished=self._on_finished)
        self._analysis, self._analysis_slide, self._outcome, self._cancelling = job, self.slide, None, False
        self._update_job()
        job.start()
        return True

    def cancel_analysis(self) -> None:
        """Ask the running analysis to stop at its next step (between encoder batches); the patch
        features encoded so far are kept, and the next Analyze continues from them."""
        if self._analysis is not None and not self._cancelling:
            log.info("analysis cancel requested")
            self._analysis.quit()
            self._cancelling = True
            self._update_job()

    def _on_progress(self, job: Any, event: Progress) -> None:
        if job is not self._analysis:
            return
        if event.stage == Stage.NOTICE:  # a message, not a step: the status line, for as long as it applies
            self._notice(event.message)
            return
        self.events.progress.emit(event)
        if event.stage == Stage.RETRY:
            self.message(event.message, 20000)

    def _on_outcome(self, job: Any, outcome: AnalysisOutcome) -> None:
        if job is not self._analysis:
            return
        if self.slide is None or self.slide != self._analysis_slide:
            log.info("analysis result for %s dropped: that slide is no longer open", self._analysis_slide)
            self._outcome = "ignored"
            return
        self.set_result(outcome.result, self.slide, outcome.cohort_risks)
        self._outcome = "done"
        log.info("analysis done: %s", outcome.result.summary())
        self.message(f"Analysis of {self.slide.name} finished", 8000)

    def _on_error(self, job: Any, exc: Exception) -> None:
        if job is not self._analysis:
            return
        self._outcome = "error"
        name = self._analysis_slide.name if self._analysis_slide else "the slide"
        self.report_error(f"Analysis of {name} failed", exc,
                          "The slide and the model bundle may be incompatible, or this is a bug; the slide "
                          "stays open and you can try again.")

    def _on_aborted(self, job: Any) -> None:
        if job is not self._analysis:
            return
        self._outcome = "cancelled"
        log.info("analysis of %s cancelled", self._analysis_slide)
        self.message("Analysis cancelled — nothing was kept; click Analyze to start again", 10000)

    def _on_finished(self, job: Any) -> None:
        if job is not self._analysis:
            return
        outcome = self._outcome or ("cancelled" if self._cancelling else "error")
        self._analysis, self._analysis_slide, self._outcome, self._cancelling = None, None, None, False
        self._update_job()
        self.events.finished.emit(outcome)

    def set_result(self, result: Any, slide: Path | None = None,
                   cohort_risks: dict[str, np.ndarray] | None = None) -> None:
        """Show ``result`` (a PredictionResult of ``slide``; None clears it)."""
        self.result, self.result_slide = result, (slide if result is not None else None)
        self.cohort_risks = dict(cohort_risks or {}) if result is not None else {}
        self.events.result.emit(result)

    # -- export -------------------------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> bool:
        """``.json``: the results (JSON and CSVs); anything else: the PDF report."""
        return self.export_results(path) if Path(path).suffix.lower() == ".json" else self.export_pdf(path)

    def export_pdf(self, path: str | os.PathLike) -> bool:
        """Write the PDF report of the shown result (with ``report_writer``); False (and an error) on failure."""
        def write(target: Path) -> list[Path]:
            if self.report_writer is None:
                raise MSRLError("PDF reports are written by MSRL Studio's window; export .json instead")
            self.report_writer(target)
            return [target]

        return self._export(Path(path), write, "report")

    def export_results(self, path: str | os.PathLike) -> bool:
        """Write ``<path>.json`` (the full result), ``<stem>.csv`` and ``<stem>-linked-cases.csv``."""
        from msrl_model.infer.export import write_results

        return self._export(Path(path), lambda target: list(write_results(target, self.result)), "results")

    def export_qupath(self, path: str | os.PathLike, tissue: Any = None) -> bool:
        """Write the shown result as QuPath GeoJSON (:mod:`msrl_model.infer.geojson`: the patches as tiles with
        their measurements, the ``tissue`` outline (a shapely geometry, or None) and the regions as annotations)
        in a background job (60,000 tiles take seconds): ``exported`` follows, or an error. False when there
        is no result to export."""
        from msrl_model.infer.geojson import write_qupath_job

        path = Path(path)
        if self.result is None:
            return self._export(path, lambda _: [], "QuPath GeoJSON")  # says there is nothing to export
        job = self.start_job(
            "export", write_qupath_job, path, self.result, tissue, self.regions.current(),
            returned=lambda _, written: self._export(path, lambda _: [written], "QuPath GeoJSON"),
            errored=lambda _, exc: self.report_error(f"Cannot write {path.name}", exc, "Choose a folder you can write to."))
        job.start()
        return True

    def _export(self, path: Path, write: Callable[[Path], list[Path]], what: str) -> bool:
        try:
            if self.result is None:
                raise MSRLError("there are no results to export; click Analyze first")
            written = write(path)
        except Exception as exc:  # noqa: BLE001
            self.report_error(f"Cannot write {path.name}", exc, "Choose a folder you can write to.")
            return False
        log.info("%s written: %s", what, ", ".join(map(str, written)))
        names = str(written[0]) if len(written) == 1 else ", ".join(p.name for p in written)
        self.message(f"{what[:1].upper()}{what[1:]} written: {names}", 8000)
        self.events.exported.emit(path)
        return True
