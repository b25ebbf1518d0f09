"""``manifest.json``: building it when writing, and parsing and validating it when reading.

In the manifest JSON an infinite survival bin edge (the open last bin) is written as ``null``; NaN
metrics as ``null`` (:func:`json_safe`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from msrl_model import __version__
from msrl_model.errors import BundleError
from msrl_model.infer.bundle.contents import FORMAT_NAME, FORMAT_VERSION, MANIFEST, GenomicsBlock, TaskBundle
from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.nn.msrl import TaskSpec


def bundle_error(path: Path | str, what: str) -> BundleError:
    """The one-line error for a problem ``what`` with the bundle at ``path``."""
    return BundleError(f"model bundle {path}: {what}")


def json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN/±inf and pandas NA to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, Tensor):
        return json_safe(value.detach().cpu().numpy())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value
    return str(value)


def _edges_to_json(edges: tuple[float, ...]) -> list[float | None]:
    return [float(e) if math.isfinite(e) else None for e in edges]


def _edges_from_json(edges: list[float | None]) -> tuple[float, ...]:
    return tuple(math.inf if e is None else float(e) for e in edges)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---- writing ------------------------------------------------------------------------------------


def _task_entry(task: TaskBundle) -> dict[str, Any]:
    spec = task.spec
    entry = {"name": spec.name, "kind": spec.kind, "variant": task.variant, "classes": list(spec.classes),
             "bin_edges_months": _edges_to_json(spec.bin_edges), "n_buffer": len(task.cases),
             "label_columns": [str(c) for c in task.cases.columns], "thumbnails": task.thumbnails is not None,
             "metrics": json_safe(task.metrics)}
    if task.class_names is not None:  # optional: readers before it show the class codes
        entry["class_names"] = [str(n) for n in task.class_names]
    if task.conformal_scores is not None:  # optional: readers before it give no prediction sets
        entry["conformal_scores"] = json_safe(list(task.conformal_scores))
    if task.conformal_weights is not None:  # survival: the censoring weights of the scores
        entry["conformal_weights"] = json_safe(list(task.conformal_weights))
    return entry


def build_manifest(*, config: MSRLConfig, tasks: list[TaskBundle], encoder: dict, tiling: dict, tissue: dict,
                   genomics: GenomicsBlock | None, cohort_summary: dict, slide_encoder: dict | None,
                   files: dict[str, dict[str, Any]], features_made: dict | None = None,
                   applicability: dict | None = None) -> dict[str, Any]:
    """The manifest of a bundle whose other files are described by ``files`` ({name: {sha256, bytes}});
    ``features_made`` (optional) says where the tiling, tissue and encoder entries come from;
    ``applicability`` (optional) calibrates the out-of-distribution check (infer/applicability.py)."""
    default_slide_encoder = {"name": "builtin-transformer", "layers": config.slide_layers,
                             "heads": config.slide_heads, "d": config.d}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "software": {"name": "MSRL Studio", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": {"spec": encoder.get("spec", encoder["name"]), **json_safe(encoder)},
        "slide_encoder": json_safe(slide_encoder) if slide_encoder is not None else default_slide_encoder,
        "tiling": json_safe(tiling),
        "tissue": json_safe(tissue),
        "config": config.to_dict(),
        "tasks": [_task_entry(t) for t in tasks],
        "cohort": json_safe(cohort_summary),
        "genomics": None if genomics is None else {
            "expression_scale": genomics.expression_scale, "n_genes": len(genomics.genes),
            "group_names": list(genomics.group_names)},
        "files": files,
    }
    if features_made is not None:  # optional: readers that do not know it ignore it
        manifest["features_made"] = json_safe(features_made)
    if applicability is not None:  # optional, likewise
        manifest["applicability"] = json_safe(applicability)
    return manifest


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as written: indented JSON (no NaN: :func:`json_safe` made them null), one final newline."""
    return json.dumps(manifest, indent=2, allow_nan=False) + "\n"


# ---- reading ------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    """Strict JSON: the manifest never holds NaN or Infinity (json_safe writes null)."""
    raise ValueError(f"non-JSON constant {name}")


def parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest dict from ``manifest.json``'s bytes; BundleError unless it is a bundle manifest
    of a format version this software reads."""
    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise bundle_error(path, f"{MANIFEST} is damaged ({err}); copy or download the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise bundle_error(path, f"{MANIFEST} is not an MSRL Studio bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bundle_error(path, f"{MANIFEST} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise bundle_error(path, f"bundle format {version} is newer than this MSRL Studio supports "
                                 f"({FORMAT_VERSION}); update MSRL Studio")
    return manifest


@dataclass
class ManifestModel:
    """What a parsed manifest says about the networks and their inputs."""

    config: MSRLConfig  # shared by every task
    tasks: list[tuple[TaskSpec, str, dict[str, Any]]]  # (spec, variant, the task's manifest entry), manifest order
    encoder: dict[str, Any]  # patch encoder {name, version, dim[, spec]}
    expression_scale: str | None  # the genomics block's "raw" | "log"; None without genomics


def manifest_model(manifest: dict[str, Any], path: Path) -> ManifestModel:
    """The config, task specs, encoder and expression scale of a parsed manifest; BundleError when invalid."""
    try:
        config = MSRLConfig.from_dict(manifest["config"])
        tasks = [(TaskSpec(t["name"], t["kind"], tuple(t["classes"]), _edges_from_json(t["bin_edges_months"])),
                  t["variant"], t) for t in manifest["tasks"]]
        genomics = manifest.get("genomics")
        scale = None if genomics is None else str(genomics["expression_scale"])
        return ManifestModel(config, tasks, dict(manifest["encoder"]), scale)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise bundle_error(path, f"{MANIFEST} is invalid ({err}); the bundle was written by an incompatible tool"
                           ) from None


def check_encoder(bundle_encoder: dict, features_encoder: dict, path: str | Path = "") -> None:
    """Raise BundleError when features from ``features_encoder`` cannot be used with the bundle (a value
    one side does not record, None or "" — e.g. TRIDENT's version — is not compared)."""
    for key in ("name", "version", "dim"):
        want, got = bundle_encoder.get(key), features_encoder.get(key)
        if got is not None and want is not None and "" not in (str(got), str(want)) and str(got) != str(want):
            name = bundle_encoder.get("name")
            raise BundleError(
                f"model bundle {path}: trained on features from encoder {name} {bundle_encoder.get('version')} "
                f"(dim {bundle_encoder.get('dim')}) but these features come from {features_encoder.get('name')} "
                f"{features_encoder.get('version')} (dim {features_encoder.get('dim')}); "
                f"re-extract the features with --encoder {bundle_encoder.get('spec', name)} or use a matching bundle")
