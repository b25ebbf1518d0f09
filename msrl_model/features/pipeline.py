"""Batched patch-feature extraction: slide → tissue → tile grid → (parallel read ∥ encode) → h5.

:func:`extract_slide` is a job (a generator of :class:`~msrl_model.progress.Progress` that returns
the feature file's path). Reading runs in :class:`~msrl_model.features.reader.ParallelTileReader`
threads, ``prefetch`` batches ahead, while this thread moves each batch to the device and encodes
it. On CUDA a batch is copied into pinned memory and sent with ``non_blocking=True``, and the
encoder runs under autocast with its own precision.

Cache: the output is ``out_dir/<slide_id>.h5``; its ``cache_key`` attribute hashes the slide's
``sha256_head``, the encoder name and version and the tissue/tiling parameters. When the file
exists with the same key the job yields one ``"cached"`` event and returns at once; any change of
key recomputes. A cached file is trusted on its content, not on its key alone
(:func:`~msrl_model.features.h5io.cache_problem`: encoder attributes, N×D features with D the
encoder's dimension, N×2 coords); a bad one is recomputed and replaced. The feature file is written
atomically at the very end, so it is never partial. **Resume after a cancel**: cancelling (closing
the generator), Ctrl+C or an error part-way stops the reader threads and keeps the tiles already
encoded in ``out_dir/<slide_id>.partial.h5`` (the first k rows of the grid, with the cache key); the
next run with the same key reads them back and encodes only tiles k…N−1 — the same features as an
uninterrupted run — then writes the feature file and removes the partial one. A partial file
of another key or another grid is ignored and replaced. Orphaned temporaries of killed runs are removed
when a run starts; the output folder's writability and free space (against the expected file size)
are checked before the long work, so a read-only folder or a full disk is one
:class:`~msrl_model.errors.OutputError` line, early. At most ``max_patches`` patches per slide
(:data:`~msrl_model.slide.tiling.DEFAULT_MAX_PATCHES`).

:func:`extract_many` runs many slides (files or directories), resumes by skipping cached slides,
continues past bad slides and writes ``extract_report.json`` with one entry per slide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.device import resolve_device
from msrl_model.errors import EncoderError, MSRLError, OutputError
from msrl_model.features.batching import AdaptiveBatch, auto_batch_size, cpu_estimate_note
from msrl_model.features.h5io import FORMAT_VERSION, cache_problem, expected_size, write_features
from msrl_model.features.partial import partial_path, read_partial, write_partial
from msrl_model.features.reader import ParallelTileReader, ReaderConfig
from msrl_model.files import atomic_write, check_writable, remove_orphaned_temporaries
from msrl_model.slide.paths import slide_id_of, slide_location, slide_paths_in
from msrl_model.slide.tiling import DEFAULT_MAX_PATCHES
from msrl_model.progress import Job, Progress, Stage

CPU_BATCH = 64  # tiles per encoder batch on the CPU when none is given (the app uses 16: Cancel acts sooner)


@dataclass
class ExtractStats:
    """Timings of one extraction, filled in by :func:`extract_slide` (benchmarks, logs)."""

    slide_id: str = ""  # the slide's file stem
    cached: bool = False  # True when the job returned an existing, matching feature file
    tiles: int = 0  # tiles encoded
    read_wait_s: float = 0.0  # time the encoder waited on the reader (reader-bound time)
    transfer_s: float = 0.0  # host→device copy (pinned, non_blocking; synchronised when timed)
    encode_s: float = 0.0  # encoder forward incl. transform, and copy of the features back
    tissue_s: float = 0.0  # tissue mask and tile grid
    write_s: float = 0.0  # atomic h5 write
    total_s: float = 0.0  # whole job, wall clock
    device: str = ""  # device actually used
    warnings: list[str] = field(default_factory=list)  # the slide's and the grid's (e.g. assumed mpp)
    sync_timing: bool = False  # True: synchronise CUDA after each stage so the split is exact
    resumed: int = 0  # tiles read back from an interrupted run's partial file (not encoded again)
    batch_size: int = 0  # tiles per encoder batch used (given, or planned from free GPU memory)
    batch_note: str = ""  # how the batch size was chosen
    oom_backoffs: int = 0  # times a CUDA out-of-memory halved the batch during the run


def _params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(vars(params))


def cache_key(sha256_head: str, encoder_name: str, encoder_version: str, tissue: Any, tiling: Any) -> str:
    """Hex digest identifying one extraction: same key, same features."""
    payload = {
        "format_version": FORMAT_VERSION,
        "slide_sha256_head": sha256_head,
        "encoder": encoder_name,
        "encoder_version": encoder_version,
        "tissue": _params_dict(tissue),
        "tiling": _params_dict(tiling),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _cache_hit(path: Path, key: str, encoder: Any, stats: ExtractStats, max_patches: int | None = None) -> bool:
    """True when ``path`` is a valid feature file for ``key`` from ``encoder`` (checked on its content).

    A file with this key whose content is wrong (missing encoder attributes, wrong shapes) is
    recomputed and replaced, with a warning in ``stats``.
    """
    problem = cache_problem(path, key, encoder.name, encoder.version, int(encoder.dim), max_rows=max_patches)
    if problem is None:
        return True
    if problem not in ("missing", "another cache key"):
        stats.warnings.append(f"the cached feature file {path.name} was not valid ({problem}); recomputed it")
    return False


def _stored_warnings(path: Path, default: list[str]) -> list[str]:
    """The warnings recorded in a feature file when it was extracted (the slide's and the grid's)."""
    from msrl_model.features.h5io import read_features

    try:
        stored = read_features(path, load_features=False).attrs.get("warnings")
    except MSRLError:
        return list(default)
    return [str(w) for w in stored] if isinstance(stored, list) else list(default)


def _build(encoder: Any, device: str) -> Job[Any]:
    """The encoder (a spec is built on ``device``); a job, so that a first build that takes long (numba
    compiling builtin-he's CPU kernel) is announced first (``Stage.NOTICE``)."""
    if isinstance(encoder, str):
        from msrl_model.encoders import build_encoder, build_notice

        notice = build_notice(encoder, device)
        if notice:
            yield Progress(Stage.NOTICE, 0, None, notice)
        return build_encoder(encoder, device=device)
    return encoder


def _grid(slide: Any, tissue: Any, tiling: Any, stats: ExtractStats,
          max_patches: int | None = DEFAULT_MAX_PATCHES) -> Any:
    """The tissue mask and the tile grid over it; records their time and warnings in ``stats``."""
    from msrl_model.slide import tile_grid, tissue_mask

    t0 = time.perf_counter()
    grid = tile_grid(slide, tissue_mask(slide, tissue), tiling, max_patches=max_patches)
    stats.tissue_s = time.perf_counter() - t0
    stats.warnings = [*stats.warnings, *getattr(slide, "warnings", []), *getattr(grid, "warnings", [])]
    return grid


def _encode_tiles(reader: ParallelTileReader, encoder: Any, n: int, patch_size: int, device: str,
                  batch_size: int, stats: ExtractStats, slide_id: str, done: np.ndarray | None = None,
                  keep_partial: Callable[[np.ndarray], None] | None = None) -> Job[np.ndarray]:
    """Encode every tile the reader yields; returns the (n, D) float32 features, grid order.

    Yields ``read+encode`` progress after each batch and adds the transfer and encode times to
    ``stats``. No torch context manager stays open across a yield: it would leak into the consumer.
    ``done``: the features (k, D) of the grid's first k tiles, kept from an interrupted run (the
    reader then starts at tile k). ``keep_partial(features)``: called with the first rows finished
    when the job is stopped (cancelled, closed, failed) part-way, so that the next run resumes there.
    """
    import torch

    cuda = device.startswith("cuda")
    sync = cuda and stats.sync_timing
    features = np.empty((n, encoder.dim), dtype=np.float32)
    finished = 0 if done is None else len(done)  # rows 0..finished-1 hold their features
    if done is not None:
        features[:finished] = done
    # One pinned staging buffer, reused: the features' copy back to the host below synchronises,
    # so the previous batch's non_blocking upload has finished before the buffer is refilled.
    pinned = (torch.empty((batch_size, patch_size, patch_size, 3), dtype=torch.uint8).pin_memory()
              if cuda else None)
    batches = AdaptiveBatch(batch_size)  # halves (and keeps halving) on CUDA out-of-memory
    estimate_pending = not cuda and _has_weights(encoder)
    try:
        yield Progress(Stage.READ_ENCODE, finished, n, slide_id)
        for first, batch in reader:
            encode_s = stats.encode_s
            _encode_into(batches, encoder, batch, first, features, pinned, device, sync, stats)
            finished = first + len(batch)  # the reader delivers batches in grid order
            if estimate_pending:  # a foundation model on the CPU: say how long the rest will take, once
                estimate_pending = False
                note = cpu_estimate_note(encoder.name, len(batch), stats.encode_s - encode_s, n - finished)
                if note is not None:
                    yield Progress(Stage.NOTICE, 1, 1, f"{slide_id}: {note}")
            yield Progress(Stage.READ_ENCODE, finished, n, slide_id)
    except BaseException:  # GeneratorExit (cancel), KeyboardInterrupt, a failure: keep what is done
        if keep_partial is not None and finished > 0:  # all n too: stopped before the write
            keep_partial(features[:finished])
        raise
    stats.read_wait_s = reader.read_wait_s
    stats.oom_backoffs = batches.backoffs
    issues = getattr(reader, "decoder_issues", 0)
    if issues:
        stats.warnings.append(
            f"{slide_id}: {issues} tile region(s) could not be decoded directly (JPEG decoder error) and were "
            "read through the slide library instead; those patches may be damaged - check the slide")
    return features


def _has_weights(encoder: Any) -> bool:
    """True for an encoder with a checkpoint (a foundation model), not the weight-free built-in one."""
    return bool(getattr(encoder, "checkpoint_sha256", None) or getattr(encoder, "checkpoint_file", None))


def _encode_into(batches: AdaptiveBatch, encoder: Any, batch: np.ndarray, first: int, features: np.ndarray,
                 pinned: Any, device: str, sync: bool, stats: ExtractStats) -> None:
    """Encode one batch of tiles (B, P, P, 3) uint8 into ``features[first:first + B]``; adds its
    transfer and encode times and tile count to ``stats``."""
    import torch

    t0 = time.perf_counter()
    tensor = torch.from_numpy(batch)  # (B, P, P, 3) uint8
    if pinned is not None:
        staging = pinned[:len(batch)]
        staging.copy_(tensor)
        tensor = staging.to(device, non_blocking=True)
        if sync:
            torch.cuda.synchronize()
    t1 = time.perf_counter()
    with torch.inference_mode():
        out_feats = batches.encode(encoder, tensor)  # (B, D)
        features[first:first + len(batch)] = out_feats.float().cpu().numpy()
    t2 = time.perf_counter()
    stats.transfer_s += t1 - t0
    stats.encode_s += t2 - t1
    stats.tiles += len(batch)


def _feature_attrs(slide: Any, grid: Any, encoder: Any, encoder_spec: Any, sha: str, key: str, tissue: Any,
                   tiling: Any, warnings: list[str]) -> dict[str, Any]:
    """The feature file's root attributes (architecture §3)."""
    return {
        "patch_size": int(grid.patch_size),
        "patch_size_level0": int(grid.patch_size_level0),
        "target_mpp": float(grid.target_mpp),
        "level0_mpp": float(grid.level0_mpp),
        "read_level": int(grid.read_level),
        "encoder": encoder.name,
        "encoder_version": encoder.version,
        "encoder_spec": encoder_spec.partition("@")[0] if isinstance(encoder_spec, str) else encoder.name,
        "encoder_details": json.dumps(encoder.spec()) if hasattr(encoder, "spec") else "",
        "slide_sha256_head": sha,
        "slide_id": slide.slide_id,
        "mpp_source": getattr(slide, "mpp_source", ""),
        "tissue_params": _params_dict(tissue),
        "tiling_params": _params_dict(tiling),
        "cache_key": key,
        "warnings": warnings,
    }


def extract_slide(slide_path: str | Path, out_dir: str | Path, encoder_spec: Any = "builtin-he",
                  device: str = "auto", workers: int | None = None, batch_size: int | None = None,
                  tissue: Any = None, tiling: Any = None, stats: ExtractStats | None = None,
                  prefetch: int = 3, max_patches: int | None = DEFAULT_MAX_PATCHES) -> Job[Path]:
    """Extract patch features of one slide into ``out_dir/<slide_id>.h5`` (architecture §3 layout).

    Args:
        slide_path: the slide file.
        out_dir: directory of feature files (created if needed).
        encoder_spec: a spec for :func:`msrl_model.encoders.build_encoder`, or a built PatchEncoder
            (reuse one across slides).
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        workers: reader threads (default ``os.cpu_count()``).
        batch_size: tiles per encoder batch; None: planned from the free GPU memory on CUDA
            (:func:`~msrl_model.features.batching.auto_batch_size`), :data:`CPU_BATCH` on the CPU. Halved
            on CUDA out-of-memory either way.
        tissue: :class:`~msrl_model.slide.TissueParams` (default: its defaults).
        tiling: :class:`~msrl_model.slide.TilingParams` (default: its defaults).
        stats: filled in with the timings and the cache flag.
        prefetch: batches the reader keeps ready ahead of the encoder.
        max_patches: refuse (SlideError) a slide with more tissue patches than this (None: no cap).

    Raises OutputError before the tissue stage when ``out_dir`` is not writable or lacks the space
    for the feature file. Yields Progress stages ``open``, then ``cached`` (and returns) or ``tissue``, ``read+encode``,
    ``write``. Returns the feature file's path.
    """
    from msrl_model.slide import TilingParams, TissueParams, open_slide

    tissue = tissue if tissue is not None else TissueParams()
    tiling = tiling if tiling is not None else TilingParams()
    stats = stats if stats is not None else ExtractStats()
    t_start = time.perf_counter()
    device = str(resolve_device(device))
    stats.device = device
    slide = open_slide(Path(slide_path))
    reader: ParallelTileReader | None = None
    try:
        stats.slide_id = slide.slide_id
        yield Progress(Stage.OPEN, 1, 1, slide.slide_id)
        sha = slide.sha256_head()
        encoder = yield from _build(encoder_spec, device)
        key = cache_key(sha, encoder.name, encoder.version, tissue, tiling)
        out = Path(out_dir) / f"{slide.slide_id}.h5"
        remove_orphaned_temporaries(out_dir)
        if _cache_hit(out, key, encoder, stats, max_patches):
            stats.cached = True
            stats.warnings = [*stats.warnings, *_stored_warnings(out, getattr(slide, "warnings", []))]
            stats.total_s = time.perf_counter() - t_start
            yield Progress(Stage.CACHED, 1, 1, slide.slide_id)
            return out
        check_writable(out_dir)  # a read-only folder fails now, not after the encoding

        yield Progress(Stage.TISSUE, 0, 1, slide.slide_id)
        grid = _grid(slide, tissue, tiling, stats, max_patches)
        n = len(grid.coords)
        check_writable(out_dir, expected_size(n, int(encoder.dim)))  # free space for the feature file
        yield Progress(Stage.TISSUE, 1, 1, f"{slide.slide_id}: {n} tiles")

        stats.batch_size, stats.batch_note = (
            (batch_size, f"{batch_size} tiles per batch (given)") if batch_size is not None
            else auto_batch_size(encoder, grid.patch_size, device, CPU_BATCH))
        batch_size = stats.batch_size
        partial = partial_path(out)
        done = read_partial(partial, key, grid.coords, int(encoder.dim))  # tiles kept by a cancelled run
        stats.resumed = 0 if done is None else len(done)
        reader = ParallelTileReader(slide.path, grid, ReaderConfig(
            workers=workers or os.cpu_count() or 1, batch_size=batch_size, prefetch=prefetch),
            indices=(stats.resumed, n))

        features = yield from _encode_tiles(
            reader, encoder, n, grid.patch_size, device, batch_size, stats, slide.slide_id, done=done,
            keep_partial=lambda finished: write_partial(partial, finished, grid.coords, key))

        t0 = time.perf_counter()
        yield Progress(Stage.WRITE, 0, 1, slide.slide_id)
        write_features(out, features, grid.coords,
                       _feature_attrs(slide, grid, encoder, encoder_spec, sha, key, tissue, tiling, stats.warnings))
        partial.unlink(missing_ok=True)
        stats.write_s = time.perf_counter() - t0
        stats.total_s = time.perf_counter() - t_start
        yield Progress(Stage.WRITE, 1, 1, slide.slide_id)
        return out
    finally:
        if reader is not None:
            reader.close()
        slide.close()


# ---- many slides -------------------------------------------------------------------------------


@dataclass
class SlideResult:
    """Outcome of one slide in :func:`extract_many`."""

    slide: str  # the slide's path
    slide_id: str  # file stem (the feature file's name)
    status: str  # "ok" | "cached" | "error"
    message: str = ""  # the one-line error, empty on success
    output: str = ""  # the feature file, empty on error
    tiles: int = 0  # tiles encoded (0 when cached or failed)
    seconds: float = 0.0  # wall time for this slide
    warnings: list[str] = field(default_factory=list)  # e.g. "mpp assumed", "upsampled patches"


@dataclass
class ExtractReport:
    """Per-slide outcome of a batch run; written as JSON next to the features."""

    out_dir: str  # the feature directory
    shard: tuple[int, int]  # (index, count) of this process's share of the slide list
    slides: list[SlideResult] = field(default_factory=list)  # one entry per slide of the shard

    def count(self, status: str) -> int:
        return sum(1 for s in self.slides if s.status == status)

    @property
    def failed(self) -> list[SlideResult]:
        return [s for s in self.slides if s.status == "error"]

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "shard": list(self.shard),
                "counts": {k: self.count(k) for k in ("ok", "cached", "error")},
                "slides": [dataclasses.asdict(s) for s in self.slides]}

    def summary(self) -> str:
        return (f"{len(self.slides)} slides: {self.count('ok')} extracted, {self.count('cached')} cached, "
                f"{self.count('error')} failed (report: {report_path(Path(self.out_dir), self.shard)})")


def report_path(out_dir: Path, shard: tuple[int, int]) -> Path:
    """``extract_report.json``, or ``extract_report.shard<i>of<n>.json`` when sharded."""
    i, n = shard
    return out_dir / ("extract_report.json" if n == 1 else f"extract_report.shard{i}of{n}.json")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n``."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise MSRLError(f"bad shard '{text}'; write it as i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise MSRLError(f"bad shard '{text}'; need 0 <= i < n")
    return i, n


def resolve_shard(shard: tuple[int, int] | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """The explicit shard, else torchrun's ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    if shard is not None:
        return shard
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    return 0, 1


def collect_slides(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (a DICOM ``.dcm`` file: its series' folder), directories expanded to their slides
    (:func:`~msrl_model.slide.paths.slide_paths_in`: slide files and DICOM-series folders, or the folder
    itself when it is a DICOM series; non-recursive); sorted, unique."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(slide_paths_in(p))
        elif p.exists():
            found.add(slide_location(p))
        else:
            raise MSRLError(f"{p}: no such file or directory")
    return sorted(found, key=lambda q: (q.name, str(q)))


def shard_slides(slides: list[Path], shard: tuple[int, int]) -> list[Path]:
    """Deterministic partition: slide ``k`` of the sorted list goes to shard ``k mod n``."""
    i, n = shard
    return slides[i::n]


def _write_report(report: ExtractReport) -> None:
    atomic_write(report_path(Path(report.out_dir), report.shard), json.dumps(report.to_json(), indent=2))


def extract_many(paths: Iterable[str | Path], out_dir: str | Path, encoder_spec: Any = "builtin-he",
                 device: str = "auto", workers: int | None = None, batch_size: int | None = None,
                 tissue: Any = None, tiling: Any = None,
                 shard: tuple[int, int] | None = None,
                 max_patches: int | None = DEFAULT_MAX_PATCHES) -> Job[ExtractReport]:
    """Extract every slide of ``paths`` (files and/or directories) into ``out_dir``.

    Already extracted slides are cache hits (resume after an interruption); a bad slide is recorded
    with its one-line error and the run goes on. ``shard=(i, n)`` (or torchrun's RANK/WORLD_SIZE)
    keeps every n-th slide of the sorted list. The report is rewritten after every slide.
    A read-only output folder or a full disk (:class:`OutputError`) stops the run: it is no fault
    of the slide and would fail every later one. Yields one ``"slides"`` stage whose message
    carries the current slide's own stage.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir)
    remove_orphaned_temporaries(out_dir)
    shard = resolve_shard(shard)
    slides = shard_slides(collect_slides(paths), shard)
    report = ExtractReport(out_dir=str(out_dir), shard=shard)
    device = str(resolve_device(device))
    encoder = (yield from _build(encoder_spec, device)) if slides else None
    seen: dict[str, Path] = {}
    for k, path in enumerate(slides):
        yield Progress(Stage.SLIDES, k, len(slides), path.name)
        t0 = time.perf_counter()
        slide_id = slide_id_of(path)
        if slide_id in seen:
            result = SlideResult(str(path), slide_id, "error",
                                 f"same slide id as {seen[slide_id]}; rename one of them")
        else:
            seen[slide_id] = path
            stats = ExtractStats()
            try:
                job = extract_slide(path, out_dir, encoder, device, workers, batch_size, tissue, tiling, stats,
                                    max_patches=max_patches)
                try:
                    while True:
                        ev = next(job)  # a notice passes through as it is
                        yield ev if ev.stage == Stage.NOTICE else Progress(
                            Stage.SLIDES, k, len(slides), f"{path.name}: {ev.stage} {ev.done}/{ev.total or '?'}")
                except StopIteration as stop:
                    output = stop.value
                finally:
                    job.close()
                result = SlideResult(str(path), stats.slide_id or slide_id,
                                     "cached" if stats.cached else "ok", output=str(output), tiles=stats.tiles,
                                     warnings=stats.warnings)
            except OutputError:
                raise  # the output folder, not the slide: stop here (one line from the CLI)
            except MSRLError as err:
                result = SlideResult(str(path), slide_id, "error", str(err))
            except (OSError, ValueError, RuntimeError) as err:
                result = SlideResult(str(path), slide_id, "error", f"{type(err).__name__}: {err}")
        result.seconds = time.perf_counter() - t0
        report.slides.append(result)
        _write_report(report)
    yield Progress(Stage.SLIDES, len(slides), len(slides), "done")
    _write_report(report)
    return report
