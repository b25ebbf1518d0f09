"""What Analyze needs besides widgets (Qt-free): folders, the default bundle, the device setting, the demo
slide, a case's expression file, the model's warm-up jobs (the bundle, then its patch encoder) and the
analysis job (with its out-of-GPU-memory fallback).

Nothing here imports torch at module level: the model (``msrl_model.infer``) is imported inside the
jobs, which run on worker threads, so the window shows before torch has loaded.

Folders:
    cache   ``$MSRL_STUDIO_CACHE_DIR`` if set (tests, portable installs), else the per-user cache
            (Linux ``~/.cache/msrl-studio``, macOS ``~/Library/Caches/msrl-studio``, Windows
            ``%LOCALAPPDATA%/cache/msrl-studio``); features go to ``<cache>/features`` (a second
            Analyze of the same slide reuses them), the demo slide to ``<cache>/demo``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.cohort.expression import read_expression  # noqa: F401 - re-exported for the app's state
from msrl_model.errors import MSRLError
from msrl_model.progress import Progress, Stage
from msrl_model.synth import DEMO_SLIDE

log = logging.getLogger(__name__)

CACHE_ENV = "MSRL_STUDIO_CACHE_DIR"
DEVICES = ("auto", "cpu", "cuda")  # the Settings ▸ Device choices
DEMO_NAME = "msrl-demo-slide.svs"
NO_BUNDLE = ("No model bundle is loaded: open one with File ▸ Open model bundle… (a bundle directory "
             "or a .msrl file), or start msrl-app with --bundle PATH")


def cache_dir() -> Path:
    """The app's cache folder (created on first use by whoever writes into it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return user_cache_base() / "msrl-studio"


def user_cache_base() -> Path:
    """The per-user cache folder, as Qt's ``GenericCacheLocation`` names it, without Qt (this module
    is imported by the Qt-free :mod:`msrl_app.state`)."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) / "cache" if local else Path.home() / "AppData" / "Local" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def features_dir() -> Path:
    return cache_dir() / "features"


def default_bundle() -> Path | None:
    """The bundle shipped with the app (:func:`msrl_model.resources.shipped_bundle`, torch-free)."""
    from msrl_model.resources import shipped_bundle

    return shipped_bundle()


def demo_slide_path() -> Path:
    return cache_dir() / "demo" / DEMO_NAME


def demo_slide_job() -> Generator[Progress, None, Path]:
    """Render the demo slide once (``DEMO_SLIDE``, a synthetic H&E-like Aperio SVS) into the cache;
    later calls return the existing file at once."""
    path = demo_slide_path()
    if path.is_file():
        return path
    yield Progress(Stage.DEMO_SLIDE, 0, 1, "rendering a synthetic demo slide (once)")
    from msrl_model.files import atomic_path
    from msrl_model.synth.slides import make_slide

    with atomic_path(path) as tmp:  # render aside, then rename: never a half-written demo slide
        make_slide(tmp, DEMO_SLIDE["width"], DEMO_SLIDE["height"], seed=DEMO_SLIDE["seed"])
    yield Progress(Stage.DEMO_SLIDE, 1, 1, path.name)
    return path


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (``torch.cuda.OutOfMemoryError`` and the older RuntimeError)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


@dataclass
class AnalysisRequest:
    """One click of Analyze."""

    slide: Path  # the slide file
    bundle: Path  # the model bundle (directory or .msrl)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    project: str | None = None  # cancer type of the slide; None = the bundle's default
    expression: dict[str, float] | None = None  # this case's expression: runs MSRL_multi
    coverage: float = 0.9  # of the conformal prediction sets (classes, survival time bins)
    batch_size: int | None = None  # patch-encoder batch on a GPU (None: from its free memory; halved on
    # out-of-memory by the pipeline); on the CPU cpu_batch(the bundle's encoder)
    cache: Path = field(default_factory=features_dir)  # feature cache folder
    regions: Any = None  # msrl_model.slide.regions.RegionSet choosing the patches; None: the whole tissue


class PredictorCache:
    """Keeps one loaded :class:`msrl_model.infer.predictor.Predictor` (per bundle and device)
    between runs. ``get`` runs on worker threads (the bundle warm-up and Analyze may overlap), so
    loading is serialised by a lock; ``current`` is for the GUI thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._predictor: Any = None

    def get(self, bundle: Path, device: str) -> Any:
        key = (str(Path(bundle).resolve()), device)
        with self._lock:
            if self._key != key:
                from msrl_model.infer.predictor import Predictor

                self._key, self._predictor = None, None  # one model in memory at a time
                self._predictor = Predictor.from_bundle(bundle, device=device)
                self._key = key
            return self._predictor

    def current(self) -> Any:
        """The loaded predictor, or None."""
        return self._predictor

    def clear(self) -> None:
        with self._lock:
            self._key, self._predictor = None, None


@dataclass
class AnalysisOutcome:
    """What one analysis returns to the window."""

    result: Any  # msrl_model.infer.results.PredictionResult
    cohort_risks: dict[str, np.ndarray]  # survival task -> (N,) training cohort risks (the histogram)


CPU_BATCH = 16
"""Tiles per encoder batch of the built-in encoder on the CPU. Cancel acts between batches: 16 builtin-he
tiles take well under a second, on a busy core too."""
FOUNDATION_CPU_BATCH = 2
"""Tiles per encoder batch of a foundation model on the CPU: a ViT-L takes ~0.3–1 s per tile on 2 cores,
so Cancel acts within about a second (larger batches gain nothing on the CPU)."""


def cpu_batch(encoder: dict[str, Any]) -> int:
    """Tiles per CPU batch for a bundle's encoder spec: :data:`FOUNDATION_CPU_BATCH` for a named encoder other
    than the weight-free ``builtin-he``, else :data:`CPU_BATCH`."""
    name = encoder.get("name")
    return FOUNDATION_CPU_BATCH if name and name != "builtin-he" else CPU_BATCH


def bundle_job(bundle: Path, device: str, predictors: PredictorCache) -> Generator[Progress, None, tuple]:
    """Load the model in the background: a warm-up for Analyze that also validates the bundle."""
    yield Progress(Stage.LOAD_MODEL, 0, 1, bundle.name)
    predictor = predictors.get(bundle, device)
    return predictor.bundle.manifest, predictor.bundle.model_card


def encoder_job(bundle: Path, device: str, predictors: PredictorCache) -> Generator[Progress, None, None]:
    """Build the bundle's patch encoder in the background once the model is ready (builtin-he: load its
    compiled CPU kernel; a foundation model: its weights), so that Analyze does not wait for it. Quiet:
    a failure is logged and left to Analyze, which builds the encoder again and reports it."""
    predictor = predictors.get(bundle, device)
    notice = predictor.encoder_notice()
    yield Progress(Stage.NOTICE, 0, None, notice) if notice else Progress(Stage.LOAD_MODEL, 0, 1, "patch encoder")
    predictor.encoder()


def analysis_job(request: AnalysisRequest, predictors: PredictorCache) -> Generator[Progress, None, AnalysisOutcome]:
    """Load the predictor (cached) and run ``predict_slide``; returns the result with the cohort's
    risks (computed here, on the worker thread).

    Out of GPU memory: the extraction halves its batch by itself (down to one tile); a run that still
    fails is retried once on the CPU, logged and yielded as a ``"retry"`` event (the window puts its
    message in the status line)."""
    if not request.bundle:
        raise MSRLError(NO_BUNDLE)
    attempts = [(request.device, request.batch_size)]
    if request.device != "cpu":
        attempts.append(("cpu", CPU_BATCH))
    for i, (device, batch) in enumerate(attempts):
        yield Progress(Stage.LOAD_MODEL, 0, 1, Path(request.bundle).name)
        predictor = predictors.get(request.bundle, device)
        yield Progress(Stage.LOAD_MODEL, 1, 1, Path(request.bundle).name)
        predictor.coverage = request.coverage
        if not str(getattr(predictor, "device_name", device)).startswith("cuda"):
            small = cpu_batch(getattr(getattr(predictor, "bundle", None), "encoder", None) or {})
            batch = small if batch is None else min(batch, small)
        try:
            result = yield from predictor.predict_slide(
                request.slide, request.cache, project=request.project, expression=request.expression,
                batch_size=batch, regions=request.regions)
            return AnalysisOutcome(result, predictor.cohort_risks())
        except Exception as exc:
            if not is_out_of_memory(exc) or i == len(attempts) - 1:
                raise
            _release_gpu_memory()
            text = "Out of GPU memory: running on the CPU instead (slower)"
            log.warning("%s (%s)", text, exc)
            yield Progress(Stage.RETRY, i + 1, len(attempts) - 1, text)
    raise AssertionError("unreachable")


def _release_gpu_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
