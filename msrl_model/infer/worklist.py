"""A worklist: the slides of a folder (or of a list file) as a case list, each with its status and its
headline findings, kept as ``worklist.json`` beside the results. Qt-free; the app's evented model
(:mod:`msrl_app.worklist_model`) and its dock are built on it.

**Sources** (:func:`scan_source`):

* a folder: its slides (:func:`msrl_model.slide.paths.slide_paths_in`: slide files by suffix, and each
  sub-folder holding ``.dcm`` files, a DICOM series, as one slide; a folder that is itself a series is
  one slide) and its plain images (``.png``, ``.jpg``…: listed so that a picture put there by mistake
  shows why it cannot be analysed). Hidden files and anything else are left out; not recursive.
* a list file: one slide path per line (relative paths from the list file's folder; a ``.dcm`` file
  stands for its series); blank lines and lines starting with ``#`` are ignored.

**Results** go where ``msrl analyze SOURCE --out OUT`` puts them, with the same engine
(:func:`msrl_model.infer.batch.analyze_slide`): ``OUT/<slide_id>.json`` and its two CSVs, so either
resumes the other's run. OUT is ``<folder>/msrl-results`` or ``<list stem>-msrl-results`` beside a
list file (:func:`default_results_dir`; the app falls back to its cache when that is not writable).
``OUT/worklist.json`` keeps the list::

    {"format_version": 1, "source": str, "out_dir": str, "bundle_sha256": str (the last run's),
     "entries": [{"path", "slide_id", "status", "message", "result", "risk_group", "risk_percentile",
                  "findings": [{"task", "call", "probability", "informative"}], "seconds"}]}

**Statuses**: not analysed → queued → running → done | failed (``message``: the reason). Reopening
keeps what is known: an entry left running or queued by a closed or killed app reads "not analysed"
(the next run resumes its patch features), a done entry whose result file is gone too.

**Analyze all** (:func:`analyze_worklist`) runs every entry: an up-to-date result is skipped at the cost
of hashing the slide's first MiB, a partial extraction resumes, a bad file fails with its reason and
the run goes on. The job never changes the entries it is given: each yield is a :class:`WorklistTick`
(a Progress over the slides) that, when an entry's state changed, carries its new state for the
owner to apply on its own thread. Closing the job at a yield is the cancel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from msrl_model.errors import MSRLError
from msrl_model.files import atomic_write
from msrl_model.infer.batch import SlideAnalysis, SlideOutcome, analyze_slide, clashing_ids
from msrl_model.progress import Job, Progress, Stage
from msrl_model.slide.paths import is_dicom_series, slide_id_of, slide_location, slide_paths_in

WORKLIST_NAME = "worklist.json"
WORKLIST_FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # listed, to say why they are no slides
RESUME_NOTE = "interrupted; Analyze all resumes it from the patch features already computed"


class SlideStatus(StrEnum):
    """Where a worklist entry stands."""

    NOT_ANALYSED = "not analysed"
    QUEUED = "queued"  # waiting in the running Analyze all
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # the entry's message says why


@dataclass
class Finding:
    """A classification task's call for the slide: its most probable class."""

    task: str  # task name (e.g. "stage", "EGFR_mut")
    call: str  # the readable name of the most probable class ("II", "mutant")
    probability: float  # its probability
    informative: bool | None  # False: the task is not better than chance in cross-validation; None: unknown


@dataclass
class WorklistEntry:
    """One slide of the worklist."""

    path: str  # the slide file (or DICOM folder), absolute
    slide_id: str  # its id (a file's stem, a DICOM series' folder name): the result is OUT/<slide_id>.json
    status: str = SlideStatus.NOT_ANALYSED  # a SlideStatus value
    message: str = ""  # failed: the reason; done: the result's warnings; else a note ("" when none)
    result: str = ""  # the result JSON (done)
    risk_group: str | None = None  # the first survival task's risk group ("low" | "intermediate" | "high")
    risk_percentile: float | None = None  # its percentile among the training cases
    findings: list[Finding] = field(default_factory=list)  # the classification calls, task order
    seconds: float | None = None  # the last run's wall time for this slide
    unlike_training: bool = False  # the applicability check flagged the slide: its predictions are unreliable

    @property
    def name(self) -> str:
        return Path(self.path).name

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorklistEntry:
        return cls(**{**d, "findings": [Finding(**f) for f in d.get("findings") or []]})


def findings_of(result: Any) -> tuple[str | None, float | None, list[Finding]]:
    """(risk group, percentile, findings) of a :class:`~msrl_model.infer.results.PredictionResult`:
    the first survival task's group and percentile, and each classification task's most probable class."""
    survival = next((t.survival for t in result.tasks.values() if t.survival is not None), None)
    findings = []
    for name, task in result.tasks.items():
        c = task.classification
        if c is not None:
            p = float(c.probabilities[c.classes.index(c.predicted)])
            findings.append(Finding(name, c.predicted_name, p, task.informative))
    if survival is None:
        return None, None, findings
    return survival.risk_group, survival.percentile, findings


def entry_after(entry: WorklistEntry, analysis: SlideAnalysis) -> WorklistEntry:
    """The entry's state once :func:`~msrl_model.infer.batch.analyze_slide` has run on it."""
    outcome, result = analysis.outcome, analysis.result
    if outcome.status == "error" or result is None:
        reason = outcome.message.replace(entry.path, entry.name)  # the row names the slide already
        return replace(entry, status=SlideStatus.FAILED, message=reason, result="", risk_group=None,
                       risk_percentile=None, findings=[], seconds=outcome.seconds, unlike_training=False)
    group, percentile, findings = findings_of(result)
    flagged = result.applicability is not None and bool(result.applicability.flagged)
    return replace(entry, status=SlideStatus.DONE, message="; ".join(result.warnings), result=outcome.output or "",
                   risk_group=group, risk_percentile=percentile, findings=findings, seconds=outcome.seconds,
                   unlike_training=flagged)


# ---- sources --------------------------------------------------------------------------------------


def scan_source(source: str | Path) -> list[Path]:
    """The slides of a folder or a list file (see the module docstring), absolute, in name order for a
    folder and in line order for a list. Raises MSRLError when ``source`` is neither."""
    source = Path(source).expanduser().absolute()
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise MSRLError(f"cannot read the list file {source} ({err}); a list is a text file with one "
                            "slide path per line") from None
        paths = [Path(line.strip()).expanduser() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return [slide_location(p if p.is_absolute() else source.parent / p) for p in paths]  # a .dcm: its series
    if not source.is_dir():
        raise MSRLError(f"{source} does not exist; choose a folder of slides or a list file")
    if is_dicom_series(source):
        return [source]
    pictures = [p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    found = [p for p in [*slide_paths_in(source), *pictures] if not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.name.lower())


def default_results_dir(source: str | Path) -> Path:
    """``<folder>/msrl-results`` for a folder, ``<list stem>-msrl-results`` beside a list file."""
    source = Path(source).expanduser().absolute()
    return source / "msrl-results" if source.is_dir() else source.with_name(f"{source.stem}-msrl-results")


# ---- the list ---------------------------------------------------------------------------------------


@dataclass
class Worklist:
    """The slides of a source with their statuses; ``save`` writes ``out_dir/worklist.json``."""

    source: str  # the folder or list file, absolute
    out_dir: str  # where the results and worklist.json are
    entries: list[WorklistEntry] = field(default_factory=list)  # scan order
    bundle_sha256: str = ""  # the bundle of the last Analyze all ("" before one)

    @property
    def file(self) -> Path:
        return Path(self.out_dir) / WORKLIST_NAME

    @classmethod
    def open(cls, source: str | Path, out_dir: str | Path) -> Worklist:
        """The slides of ``source`` now, with what ``out_dir/worklist.json`` knew about them (matched by
        file name; a slide that left the source is dropped, a new one is "not analysed")."""
        source, out_dir = Path(source).expanduser().absolute(), Path(out_dir)
        known: dict[str, WorklistEntry] = {}
        bundle = ""
        saved = out_dir / WORKLIST_NAME
        if saved.is_file():
            try:
                data = json.loads(saved.read_text(encoding="utf-8"))
                known = {Path(e["path"]).name: WorklistEntry.from_dict(e) for e in data["entries"]}
                bundle = str(data.get("bundle_sha256") or "")
            except (ValueError, KeyError, TypeError, OSError):
                known = {}  # unreadable: start afresh, the result files still make a rerun skip done slides
        entries = [_reopened(known.get(path.name), path) for path in scan_source(source)]
        return cls(str(source), str(out_dir), entries, bundle)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": WORKLIST_FORMAT_VERSION, "source": self.source, "out_dir": self.out_dir,
                "bundle_sha256": self.bundle_sha256, "entries": [asdict(e) for e in self.entries]}

    def save(self) -> Path:
        """Write ``worklist.json`` atomically (raises OutputError when the folder cannot take it)."""
        return atomic_write(self.file, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def counts(self) -> dict[str, int]:
        """Entries per status (every SlideStatus, zeros included)."""
        return {s.value: sum(e.status == s for e in self.entries) for s in SlideStatus}


def _reopened(saved: WorklistEntry | None, path: Path) -> WorklistEntry:
    """The entry for ``path`` on opening: the saved one when it is still true, else a fresh one."""
    if saved is None:
        return WorklistEntry(str(path), slide_id_of(path))
    entry = replace(saved, path=str(path), slide_id=slide_id_of(path))
    if entry.status in (SlideStatus.RUNNING, SlideStatus.QUEUED):
        return replace(entry, status=SlideStatus.NOT_ANALYSED, message=RESUME_NOTE)
    if entry.status == SlideStatus.DONE and not Path(entry.result).is_file():
        return WorklistEntry(str(path), slide_id_of(path))
    return entry


# ---- the job ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistTick(Progress):
    """A progress tick of Analyze all; ``entry`` (when not None) is the new state of entry ``index``."""

    index: int = -1  # the entry this tick is about (-1: none)
    entry: WorklistEntry | None = None  # its new state: running, then done or failed


def analyze_worklist(predictor: Any, entries: list[WorklistEntry], out_dir: Path, cache_dir: Path,
                     project: str | None = None, *, workers: int | None = None, batch_size: int | None = None,
                     regions_for: Callable[[Path], Any] | None = None) -> Job[int]:
    """Analyse every entry with :func:`~msrl_model.infer.batch.analyze_slide` (results in ``out_dir``,
    features cached in ``cache_dir``, ``batch_size`` tiles per encoder batch, None: the pipeline's choice;
    ``regions_for(slide)``: the slide's :class:`~msrl_model.slide.regions.RegionSet`, None: the whole tissue);
    returns how many entries failed. Yields a :class:`WorklistTick` with the entry's new state when a slide
    starts and when it ends, and the slide's own progress between (Progress "slides" k/n, its stage in the
    message)."""
    paths = [Path(e.path) for e in entries]
    clashes = clashing_ids(paths)
    n, failed = len(entries), 0
    for k, (entry, path) in enumerate(zip(entries, paths)):
        yield WorklistTick(Stage.SLIDES, k, n, path.name, k, replace(entry, status=SlideStatus.RUNNING, message=""))
        if path in clashes:
            analysis = SlideAnalysis(SlideOutcome(str(path), slide_id_of(path), "error", clashes[path]), None)
        else:
            regions = regions_for(path) if regions_for is not None else None
            analysis = yield from analyze_slide(predictor, path, out_dir, cache_dir, project, position=(k, n),
                                                workers=workers, batch_size=batch_size, regions=regions)
        done = entry_after(entry, analysis)
        failed += done.status == SlideStatus.FAILED
        yield WorklistTick(Stage.SLIDES, k + 1, n, path.name, k, done)
    return failed


__all__ = ["Finding", "SlideStatus", "Worklist", "WorklistEntry", "WorklistTick", "analyze_worklist",
           "default_results_dir", "entry_after", "findings_of", "scan_source"]
