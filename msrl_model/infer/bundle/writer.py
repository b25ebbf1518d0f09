"""Writing a bundle: check every part, stage the files beside the destination, then publish at once.

A ``.msrl`` zip is written through :func:`msrl_model.files.atomic_path`. A directory bundle is staged
in a temporary directory beside ``out`` and renamed onto it: a directory cannot be written through
``atomic_path`` (a single-file writer), and one rename keeps a half-written bundle from ever being
seen. Its files get the mode policy of :func:`msrl_model.files.output_mode`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from msrl_model.errors import BundleError
from msrl_model.files import atomic_path, output_mode
from msrl_model.infer.bundle.buffer import write_buffer
from msrl_model.infer.bundle.contents import (BUFFER, FORMAT_NAME, MANIFEST, MODEL_CARD, RECORD_KEY,
                                              REQUIRED_COLUMNS, SURVIVAL_COLUMNS, WEIGHTS, GenomicsBlock, TaskBundle,
                                              expected_shapes, node_dim)
from msrl_model.infer.bundle.manifest import build_manifest, json_safe, manifest_text, sha256_file
from msrl_model.infer.bundle.schema import manifest_problem
from msrl_model.infer.bundle.signing import SIGNATURE, SigningKey, signature_text
from msrl_model.nn.config import MSRLConfig

# ---- checks -------------------------------------------------------------------------------------


def _task_problems(config: MSRLConfig, task: TaskBundle, genomics: GenomicsBlock | None) -> list[str]:
    """What is wrong with one task (empty when it can be written)."""
    name = task.spec.name
    problems = []
    if not name or "/" in name:
        problems.append(f"task name {name!r} must be non-empty without '/'")
    try:
        want = expected_shapes(config, task.spec, task.variant)
    except ValueError as err:
        raise BundleError(f"task {name!r}: {err}") from None
    got = {k: tuple(v.shape) for k, v in task.state_dict.items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        problems.append(f"state dict does not match MSRLNet(config, {task.variant!r}) ({diff[:3]}...)")
    n = len(task.cases)
    nodes = np.asarray(task.buffer_nodes)
    if nodes.shape != (n, node_dim(config, task.variant)):
        problems.append(f"buffer_nodes {nodes.shape} must be ({n}, {node_dim(config, task.variant)})")
    if np.asarray(task.pathways).shape != (n, config.n_groups):
        problems.append(f"pathways {np.asarray(task.pathways).shape} must be ({n}, {config.n_groups})")
    missing = [c for c in REQUIRED_COLUMNS + (SURVIVAL_COLUMNS if task.spec.kind == "survival" else ())
               if c not in task.cases.columns]
    if missing:
        problems.append(f"case table lacks columns {missing}")
    if task.thumbnails is not None and len(task.thumbnails) != n:
        problems.append(f"{len(task.thumbnails)} thumbnails for {n} cases")
    if task.variant == "msrl" and genomics is None:
        problems.append("the 'msrl' variant needs the genomics block")
    if n < 1:
        problems.append("the buffer is empty")
    return problems


def _check_genomics(config: MSRLConfig, block: GenomicsBlock) -> None:
    if block.expression_scale not in ("raw", "log"):
        raise BundleError(f"genomics expression_scale must be 'raw' or 'log', not {block.expression_scale!r}")
    sizes = tuple(len(g) for g in block.groups)
    if sizes != config.group_sizes or len(block.group_names) != len(sizes):
        raise BundleError(f"genomics groups {sizes} do not match config.group_sizes {config.group_sizes}")
    if block.scaler_mean.shape != (len(block.genes),) or block.scaler_std.shape != (len(block.genes),):
        raise BundleError("genomics scaler_mean/std must have one value per gene")


def _checked_parts(config: MSRLConfig, tasks: list[TaskBundle], encoder: dict,
                   genomics: dict | GenomicsBlock | None) -> GenomicsBlock | None:
    """The genomics block of valid parts; BundleError saying what is wrong when they cannot make a bundle."""
    if not tasks:
        raise BundleError("a bundle needs at least one task")
    names = [t.spec.name for t in tasks]
    if len(set(names)) != len(names):
        raise BundleError(f"task names must be unique, got {names}")
    block = GenomicsBlock.from_dict(genomics) if isinstance(genomics, dict) else genomics
    if block is not None:
        _check_genomics(config, block)
    for t in tasks:
        problems = _task_problems(config, t, block)
        if problems:
            raise BundleError(f"cannot write task {t.spec.name!r}: " + "; ".join(problems))
    for key in ("name", "version", "dim"):
        if key not in encoder:
            raise BundleError(f"encoder description lacks {key!r}")
    return block


# ---- files --------------------------------------------------------------------------------------


def _record(tasks: list[TaskBundle], cohort_summary: dict) -> str:
    """The integrity record stored inside the hashed weights and buffer files (contents.RECORD_KEY):
    the synthetic flag, the cohort summary and the metrics exactly as the manifest holds them."""
    cohort = json_safe(cohort_summary)
    return json.dumps({"synthetic": bool(cohort.get("synthetic", False)), "cohort": cohort,
                       "metrics": {t.spec.name: json_safe(t.metrics) for t in tasks}},
                      sort_keys=True, allow_nan=False)


def _write_weights(path: Path, tasks: list[TaskBundle], record: str) -> None:
    """Every task's state dict in one safetensors file, keys ``<task>/<parameter>``."""
    from safetensors.torch import save_file

    tensors = {f"{t.spec.name}/{k}": v.detach().cpu().contiguous() for t in tasks for k, v in t.state_dict.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT_NAME, RECORD_KEY: record})


def _publish_zip(stage: Path, out: Path) -> None:
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in (MANIFEST, WEIGHTS, BUFFER, MODEL_CARD, SIGNATURE):
            if (stage / name).exists():
                zf.write(stage / name, name)


def _apply_output_modes(stage: Path) -> None:
    """Every staged file gets :func:`~msrl_model.files.output_mode`, the directory the same plus x
    wherever r (``mkdtemp`` made it 0700, which would hide the bundle from other users)."""
    mode = output_mode()
    for child in stage.iterdir():
        child.chmod(mode)
    stage.chmod(mode | (mode & 0o444) >> 2)


def _publish_directory(stage: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # checked empty by write_bundle
    # A directory cannot go through files.atomic_path; one rename of the staged directory is as atomic.
    os.replace(stage, out)


def write_bundle(out: str | Path, *, config: MSRLConfig, tasks: list[TaskBundle], encoder: dict,
                 tiling: dict, tissue: dict, genomics: dict | GenomicsBlock | None,
                 cohort_summary: dict, model_card: str, slide_encoder: dict | None = None,
                 sign_key: SigningKey | None = None, features_made: dict | None = None,
                 applicability: dict | None = None, slide_profiles: np.ndarray | None = None) -> Path:
    """Write a bundle to ``out``: a directory, or a single zip file when ``out`` ends in ``.msrl``.

    Args:
        out: destination directory (created; must be empty or absent) or ``*.msrl`` file (replaced atomically).
        config: the model configuration every task's network was built with.
        tasks: one :class:`TaskBundle` per task (names unique).
        encoder: patch encoder {"name", "version", "dim"} (optional "spec" for build_encoder; default name).
        tiling: ``TilingParams.to_dict()`` of the training features.
        tissue: ``TissueParams.to_dict()``.
        genomics: {genes, group_names, groups, scaler_mean, scaler_std, expression_scale} or a
            :class:`GenomicsBlock`; None only when every task is "msrl_h".
        cohort_summary: {n_cases, projects, synthetic: bool, source, ...} (JSON values).
        model_card: Markdown text.
        slide_encoder: description of φ_H (default: the built-in transformer with its config).
        sign_key: sign the manifest (``signature.json``, :mod:`~msrl_model.infer.bundle.signing`).
        features_made: where ``tiling``/``tissue``/``encoder`` come from ({tiling_from, tissue_from,
            encoder_from: "feature files" | "defaults", files: n}); recorded as the manifest's
            ``features_made`` (absent when None).
        applicability, slide_profiles: the calibration of the out-of-distribution check, both or
            neither (:func:`msrl_model.infer.applicability.calibration`): the manifest's ``applicability``
            {statistic, level, k, scores} and the (m, patch_dim) training slides' profiles, one per score
            (``buffer.h5`` /applicability/slide_means).

    Returns the path written.
    """
    out = Path(out)
    block = _checked_parts(config, tasks, encoder, genomics)
    if (applicability is None) != (slide_profiles is None) or (slide_profiles is not None and (
            np.shape(slide_profiles) != (len(applicability.get("scores") or []), config.patch_dim))):
        raise BundleError("the applicability calibration needs one training-slide profile of "
                          f"{config.patch_dim} values per score")
    zipped = out.suffix.lower() == ".msrl"
    if not zipped and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty directory; choose a new output path")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        record = _record(tasks, cohort_summary)
        _write_weights(stage / WEIGHTS, tasks, record)
        write_buffer(stage / BUFFER, tasks, block, record, slide_profiles)
        (stage / MODEL_CARD).write_text(model_card, encoding="utf-8")
        files = {name: {"sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
                 for name in (WEIGHTS, BUFFER, MODEL_CARD)}
        manifest = build_manifest(config=config, tasks=tasks, encoder=encoder, tiling=tiling, tissue=tissue,
                                  genomics=block, cohort_summary=cohort_summary, slide_encoder=slide_encoder,
                                  files=files, features_made=features_made, applicability=applicability)
        problem = manifest_problem(manifest)
        if problem is not None:  # what the reader would refuse is never written
            raise BundleError(f"cannot write the bundle {out}: its manifest {problem}")
        text = manifest_text(manifest).encode("utf-8")
        (stage / MANIFEST).write_bytes(text)
        if sign_key is not None:
            (stage / SIGNATURE).write_text(signature_text(sign_key, text), encoding="utf-8")
        _apply_output_modes(stage)
        if zipped:
            _publish_zip(stage, out)
        else:
            _publish_directory(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out
