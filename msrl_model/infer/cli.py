"""``msrl analyze SLIDE_OR_DIR… --bundle PATH --out DIR``: the whole pipeline for one slide or many.

For each slide: tissue → tiling → patch features (cached in ``--cache``, default ``OUT/features``)
→ MSRL prediction with every task of the bundle → ``OUT/<slide_id>.json`` (a
:class:`~msrl_model.infer.results.PredictionResult`). A slide whose result exists for the same slide
bytes (``slide_sha256_head``) and the same bundle (``bundle_sha256``) is skipped, so an interrupted
run resumes. Bad slides are reported and the run goes on; ``OUT/analyze_report.json`` lists every
slide with its status (ok / skipped / error) and one-line error. A read-only output folder or a
full disk is checked before any work and stops the run with one line (exit 4): it would fail every
slide. Orphaned temporaries of killed runs are removed from OUT and the cache when a run starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msrl_model.cohort.expression import ExpressionTable
from msrl_model.features.cli import add_encoding_arguments, check_positive
from msrl_model.errors import MSRLError, OutputError
from msrl_model.files import atomic_write, check_writable, remove_orphaned_temporaries
from msrl_model.infer.batch import SlideOutcome, analyze_slide, clashing_ids
from msrl_model.slide.paths import slide_id_of
from msrl_model.progress import Job, Progress, Stage
from msrl_model.slide.regions import parse_class_modes, regions_for_slides

REPORT_NAME = "analyze_report.json"

EPILOG = """\
exit codes:
  0  every slide was analysed (or skipped because its result is up to date)
  2  usage error, or the bundle / expression file could not be used (nothing analysed)
  3  some slides failed (the others are done; see OUT/analyze_report.json)
  4  an output could not be written: read-only folder or disk full (nothing partial is left)
  130  interrupted (Ctrl-C); finished results are kept and a rerun resumes

outputs:
  OUT/<slide_id>.json        the full result (survival curve, risk, probabilities, linked training
                             cases, attention per patch, pathway activity); research use only
  OUT/<slide_id>.csv         the headline numbers, one row per task and quantity
  OUT/<slide_id>-linked-cases.csv   every task's linked training cases
                             (the same three files as the app's File > Export results)
  OUT/analyze_report.json    one entry per slide: status ok | skipped | error, message, seconds
  OUT/<slide_id>.regions.geojson   with --regions: the regions that chose the patches (QuPath GeoJSON;
                             a result made with other regions is analysed again)
  OUT/<slide_id>.geojson     with --geojson: QuPath GeoJSON (File > Import objects): one tile per analysed
                             patch with "<task>: attention" and "<task>: attention percentile", the tissue
                             outline and the regions as annotations, level-0 pixel coordinates
  --json                     one JSON line per slide on stdout: slide, slide_id, status, output,
                             message and the headline numbers (summary)
  warnings                   printed on stderr as "warning: SLIDE: …", first of all a slide unlike
                             the training cohort ("This slide is unlike the training cohort …")
"""


@dataclass
class AnalyzeReport:
    """What an analyze run did (written as OUT/analyze_report.json after every slide)."""

    out_dir: str  # the output directory
    bundle: str  # the bundle path
    bundle_sha256: str  # its fingerprint
    slides: list[SlideOutcome] = field(default_factory=list)  # in processing order

    @property
    def failed(self) -> list[SlideOutcome]:
        return [s for s in self.slides if s.status == "error"]

    def to_json(self) -> dict[str, Any]:
        counts = {k: sum(s.status == k for s in self.slides) for k in ("ok", "skipped", "error")}
        return {"out_dir": self.out_dir, "bundle": self.bundle, "bundle_sha256": self.bundle_sha256,
                "counts": counts, "slides": [asdict(s) for s in self.slides]}

    def write(self) -> None:
        atomic_write(Path(self.out_dir) / REPORT_NAME, json.dumps(self.to_json(), indent=2) + "\n")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="predict survival, stage/mutations and linked training cases for slides (resumable)",
        description="Tissue detection, tiling and patch features with the bundle's encoder, then MSRL "
                    "inference against the bundle's training cases. Research use only.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or directories of slides")
    p.add_argument("--bundle", required=True, metavar="PATH", help="model bundle (directory or .msrl file)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for the result JSON files")
    p.add_argument("--project", default=None, metavar="P",
                   help="the slides' project (e.g. TCGA-LUAD): adds the percentile within that project")
    p.add_argument("--expression", default=None, metavar="CSV",
                   help="expression table (case_id column [+ optional slide_id], one column per gene; raw or "
                        "log as the bundle says): runs MSRL_multi for slides whose id starts with a case_id "
                        "(or equals a slide_id); a one-row table or a two-column gene,value file applies to a "
                        "single slide")
    p.add_argument("--cache", default=None, metavar="DIR", help="feature cache (default: OUT/features)")
    p.add_argument("--json", action="store_true", help="print one JSON line per slide on stdout")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--coverage", type=float, default=0.9,
                   help="coverage of the conformal prediction sets (classes; survival time bins) (default 0.9 = 90 %%; "
                        "needs a bundle with out-of-fold calibration scores)")
    add_encoding_arguments(p)
    p.add_argument("--regions", default=None, metavar="GEOJSON_OR_DIR",
                   help="regions of interest as QuPath GeoJSON annotations: a file (one slide) or a folder of "
                        "<slide_id>.geojson; only the patches whose centre is inside the include regions and "
                        "outside the exclude ones are analysed (QuPath classes Ignore*, Exclude, Artefact*... "
                        "exclude, others include; saved as OUT/<slide_id>.regions.geojson)")
    p.add_argument("--region-class", action="append", default=[], metavar="CLASS=MODE",
                   help="how a QuPath class of --regions is used: include, exclude or skip (repeatable)")
    p.add_argument("--geojson", action="store_true",
                   help="also write OUT/<slide_id>.geojson for QuPath (File > Import objects): a tile per analysed "
                        "patch with its attention per task, the tissue outline and the regions")
    p.add_argument("--max-patches", type=int, default=None, metavar="N",
                   help="refuse slides (and feature files) with more than N patches (default 100000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_analyze)


# ---- the run --------------------------------------------------------------------------------------


def analyze_many(predictor: Any, slides: list[Path], out_dir: Path, cache_dir: Path, project: str | None,
                 expression: ExpressionTable | None, *, workers: int | None = None, batch_size: int | None = None,
                 on_slide: Callable[[SlideOutcome], Any] | None = None,
                 max_patches: int | None = None, regions: dict[Path, Any] | None = None,
                 geojson: bool = False) -> Job[AnalyzeReport]:
    """Analyse ``slides`` into ``out_dir``; yields one "slides" stage (message = the slide's own stage).

    An :class:`OutputError` (read-only folder, disk full) is raised, not recorded: it is no fault of
    the slide. ``max_patches`` (None: the default cap) bounds the patches per slide; ``regions`` (slide ->
    RegionSet or None) and ``geojson`` as in :func:`~msrl_model.infer.batch.analyze_slide`."""
    from msrl_model.slide.tiling import DEFAULT_MAX_PATCHES

    max_patches = DEFAULT_MAX_PATCHES if max_patches is None else max_patches
    report = AnalyzeReport(str(out_dir), str(predictor.bundle.path), predictor.bundle.fingerprint)
    clashes = clashing_ids(slides)
    for k, path in enumerate(slides):
        yield Progress(Stage.SLIDES, k, len(slides), path.name)
        if path in clashes:
            outcome = SlideOutcome(str(path), slide_id_of(path), "error", clashes[path])
        else:
            outcome = (yield from analyze_slide(
                predictor, path, out_dir, cache_dir, project, expression, position=(k, len(slides)),
                single=len(slides) == 1, workers=workers, batch_size=batch_size, max_patches=max_patches,
                regions=(regions or {}).get(path), geojson=geojson)).outcome
        report.slides.append(outcome)
        report.write()
        if on_slide is not None:
            on_slide(outcome)
    yield Progress(Stage.SLIDES, len(slides), len(slides), "done")
    return report


def run_analyze(args: argparse.Namespace) -> int:
    """The ``msrl analyze`` command; returns the exit code documented in :data:`EPILOG`."""
    from msrl_model.weights import parse_weights_args, use_weights
    from msrl_model.features.cli import thread_plan
    from msrl_model.features.pipeline import collect_slides
    from msrl_model.infer.predictor import Predictor
    from msrl_model.progress import drive

    try:
        check_positive(args)
        if args.max_patches is not None and args.max_patches < 1:
            raise MSRLError("--max-patches must be at least 1")
        if not 0.0 < args.coverage < 1.0:
            raise MSRLError(f"--coverage {args.coverage} must be between 0 and 1, e.g. 0.9 for 90 %")
        args.workers = thread_plan(args).readers
        slides = collect_slides(args.inputs)
        if not slides:
            raise MSRLError(f"no slide files found in {' '.join(args.inputs)}")
        expression = ExpressionTable(Path(args.expression)) if args.expression else None
        regions = regions_for_slides(slides, args.regions, parse_class_modes(args.region_class))
        use_weights(parse_weights_args(args.weights))  # the bundle's foundation-model checkpoint, if any
        predictor = Predictor.from_bundle(args.bundle, device=args.device)
        predictor.coverage = args.coverage
        notice = predictor.encoder_notice()
        if notice and not args.quiet:
            print(f"note: {notice}", file=sys.stderr)
        predictor.encoder()  # refuse a bundle whose encoder this installation cannot reproduce, before any work
        out_dir = Path(args.out)
        check_writable(out_dir)  # before any work: the results and the report go here
        cache_dir = Path(args.cache) if args.cache else out_dir / "features"
        for folder in (out_dir, cache_dir):
            remove_orphaned_temporaries(folder)
    except MSRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code if isinstance(err, OutputError) else 2

    def on_slide(o: SlideOutcome) -> None:
        if args.json:
            print(json.dumps({"slide": o.slide, "slide_id": o.slide_id, "status": o.status, "output": o.output,
                              "message": o.message, "summary": o.summary}, allow_nan=False), flush=True)
        elif o.status == "error":
            print(f"error: {o.slide}: {o.message}", file=sys.stderr)
        else:
            print(f"{o.status}: {o.slide} -> {o.output}", flush=True)
            if o.status == "ok" and o.message:  # e.g. "This slide is unlike the training cohort …"
                print(f"warning: {o.slide}: {o.message}", file=sys.stderr, flush=True)

    show = not args.quiet  # tqdm bars on a terminal, plain lines otherwise (progress.drive)
    try:
        report = drive(analyze_many(predictor, slides, out_dir, cache_dir, args.project, expression,
                                    workers=args.workers, batch_size=args.batch_size, on_slide=on_slide,
                                    max_patches=args.max_patches, regions=regions, geojson=args.geojson), show=show)
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    counts = report.to_json()["counts"]
    print(f"{counts['ok']} analysed, {counts['skipped']} up to date, {counts['error']} failed; "
          f"report: {out_dir / REPORT_NAME}", file=sys.stderr)
    return 3 if report.failed else 0


__all__ = ["AnalyzeReport", "SlideOutcome", "analyze_many", "register", "run_analyze"]
