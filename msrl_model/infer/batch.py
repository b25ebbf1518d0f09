"""One slide of a batch: what ``msrl analyze`` and the app's worklist run for every slide.

:func:`analyze_slide` is a job (a generator of :class:`~msrl_model.progress.Progress`) that returns
a :class:`SlideAnalysis`:

1. the slide is **skipped** when ``OUT/<slide_id>.json`` and its two CSVs exist and the JSON was made
   from the same slide bytes (``slide_sha256_head``) with the same bundle (``bundle_sha256``);
2. else the :class:`~msrl_model.infer.predictor.Predictor` extracts the patch features (cached in
   ``cache_dir``; an extraction stopped part-way resumes from its ``<slide_id>.partial.h5``) and
   predicts, and the result is written with :func:`~msrl_model.infer.export.write_results`;
3. a bad slide (not a slide, no tissue, damaged, too large) becomes an ``error`` outcome with its
   one-line reason instead of an exception, so a batch goes on with the next slide.

An :class:`~msrl_model.errors.OutputError` (read-only folder, full disk) is raised, not recorded: it
is no fault of the slide and would fail every later one. Stopping the job (``close()``) at a yield
stops the extraction there; the tiles encoded so far are kept for the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msrl_model.errors import MSRLError, OutputError
from msrl_model.infer.export import result_paths, write_results
from msrl_model.infer.results import PredictionResult
from msrl_model.progress import Job, Progress, Stage
from msrl_model.slide.paths import slide_id_of


@dataclass
class SlideOutcome:
    """One slide of an analyze run."""

    slide: str  # the slide file
    slide_id: str  # its id (slide_id_of: a file's stem, a DICOM series' folder name)
    status: str  # "ok" | "skipped" | "error"
    message: str = ""  # one-line error, or warnings joined by "; "
    output: str | None = None  # the result JSON
    seconds: float = 0.0  # wall time for this slide
    summary: dict[str, Any] = field(default_factory=dict)  # headline numbers per task (ok / skipped)


@dataclass
class SlideAnalysis:
    """What :func:`analyze_slide` returns: the outcome and, unless it failed, the result it stands for."""

    outcome: SlideOutcome  # status, message, output file, timing
    result: PredictionResult | None  # the new result ("ok"), the one on disk ("skipped"), None ("error")


def result_file(out_dir: Path, slide: Path) -> Path:
    """Where the result of ``slide`` goes: ``OUT/<slide_id>.json`` (its CSVs beside it)."""
    return Path(out_dir) / f"{slide_id_of(slide)}.json"


def clashing_ids(slides: list[Path]) -> dict[Path, str]:
    """The slides whose id (:func:`~msrl_model.slide.paths.slide_id_of`) an earlier slide of the list already
    has, each with the message saying so: both would write the same result files."""
    seen: dict[str, Path] = {}
    clashes: dict[Path, str] = {}
    for path in slides:
        slide_id = slide_id_of(path)
        if slide_id in seen:
            clashes[path] = f"same slide id as {seen[slide_id]}; rename one of them"
        else:
            seen[slide_id] = path
    return clashes


def up_to_date(out: Path, slide: Path, bundle_sha: str, regions_sha: str | None = None) -> PredictionResult | None:
    """The existing result when it matches the slide's bytes, the bundle and the regions (their fingerprint;
    None: the whole tissue), else None."""
    from msrl_model.slide import open_slide

    if not all(path.is_file() for path in result_paths(out)):
        return None  # the JSON and both CSVs make a result; anything less is analysed again
    try:
        previous = PredictionResult.from_json(out.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, OSError):
        return None  # damaged or old result: analyse again
    if previous.bundle_sha256 != bundle_sha or (previous.regions or {}).get("sha256") != regions_sha:
        return None
    with open_slide(slide) as s:
        if previous.slide_sha256_head != s.sha256_head():
            return None
    return previous


def analyze_slide(predictor: Any, path: Path, out_dir: Path, cache_dir: Path, project: str | None = None,
                  expression: Any = None, *, position: tuple[int, int] = (0, 1), single: bool = False,
                  workers: int | None = None, batch_size: int = 64,
                  max_patches: int | None = None, regions: Any = None, geojson: bool = False) -> Job[SlideAnalysis]:
    """Analyse one slide into ``out_dir`` (see the module docstring); yields ``Progress("slides", k, n,
    "<slide>: <its own stage> done/total")`` with ``(k, n) = position`` in the batch.

    ``expression``: an :class:`~msrl_model.cohort.expression.ExpressionTable` (its row for this slide,
    ``single``: the only slide of the run, runs MSRL_multi) or None. ``regions``: the slide's
    :class:`~msrl_model.slide.regions.RegionSet` (only the patches they select are analysed; saved as
    ``<slide_id>.regions.geojson``); ``geojson``: also write the QuPath export ``<slide_id>.geojson``
    (:func:`~msrl_model.infer.geojson.write_beside_result`)."""
    from msrl_model.infer.geojson import write_beside_result

    k, n = position
    slide_id = slide_id_of(path)
    t0 = time.perf_counter()
    out = result_file(out_dir, path)
    result: PredictionResult | None = None
    try:
        result = up_to_date(out, path, predictor.bundle.fingerprint, regions.fingerprint() if regions else None)
        if result is not None:
            write_beside_result(out, result, regions=regions, tissue_params=predictor.bundle.tissue,
                                geojson=geojson and not out.with_suffix(".geojson").is_file())
            outcome = SlideOutcome(str(path), slide_id, "skipped", "result is up to date", str(out),
                                   summary=result.summary())
        else:
            expr = expression.for_slide(slide_id, single=single) if expression is not None else None
            job = predictor.predict_slide(path, cache_dir, project, expr, workers=workers, batch_size=batch_size,
                                          max_patches=max_patches, regions=regions)
            try:
                while True:
                    ev = next(job)  # a notice (e.g. the CPU time of a foundation model) passes through as it is
                    yield ev if ev.stage == Stage.NOTICE else Progress(
                        Stage.SLIDES, k, n, f"{path.name}: {ev.stage} {ev.done}/{ev.total or '?'}")
            except StopIteration as stop:
                result = stop.value
            finally:
                job.close()
            if expression is not None and expr is None:
                result.warnings.append(f"no expression row matches {slide_id}; analysed from the slide only")
            _write(out, result)
            write_beside_result(out, result, regions=regions, geojson=geojson, tissue_params=predictor.bundle.tissue)
            outcome = SlideOutcome(str(path), result.slide_id, "ok", "; ".join(result.warnings), str(out),
                                   summary=result.summary())
    except OutputError:
        raise
    except MSRLError as err:
        result, outcome = None, SlideOutcome(str(path), slide_id, "error", str(err))
    except (OSError, ValueError, RuntimeError) as err:
        result, outcome = None, SlideOutcome(str(path), slide_id, "error", f"{type(err).__name__}: {err}")
    outcome.seconds = round(time.perf_counter() - t0, 3)
    return SlideAnalysis(outcome, result)


def _write(out: Path, result: PredictionResult) -> None:
    """Write the result's JSON and CSVs; on a failed write none of the new files stays (older ones do)."""
    before = {q: q.stat().st_mtime_ns for q in result_paths(out) if q.is_file()}
    try:
        write_results(out, result)
    except OutputError:
        for q in result_paths(out):  # never a new JSON without its CSVs; older files stay as they were
            if q.is_file() and before.get(q) != q.stat().st_mtime_ns:
                q.unlink(missing_ok=True)
        raise


__all__ = ["SlideAnalysis", "SlideOutcome", "analyze_slide", "clashing_ids", "result_file", "up_to_date"]
