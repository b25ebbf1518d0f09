"""Model bundles (DESIGN §3): everything the app needs to predict, in one directory or ``.msrl`` zip.

Layout (no pickle anywhere: JSON, safetensors, HDF5, Markdown)::

    manifest.json        format/software version, encoder + tiling/tissue params, model config,
                         tasks (classes or survival bin edges in months, variant, CV metrics),
                         training-cohort summary, genomics summary, size + SHA-256 of every other file
    weights.safetensors  every task's MSRLNet state dict, keys "<task>/<parameter>"
    buffer.h5            /tasks/<task>/nodes (N, node_dim) float32   buffer node features
                         /tasks/<task>/pathways (N, n_groups) float32 authentic Hallmark scores
                         /tasks/<task>/cases/c<i> one dataset per case-table column (attrs list the
                                              names and kinds; strings UTF-8 variable length,
                                              c<i>_na = NA mask where the column has NAs)
                         /tasks/<task>/thumbnails  optional, variable-length uint8 (JPEG bytes)
                         /genomics/{genes, group_names, group_index, group_offsets, scaler_mean,
                                    scaler_std}  the MSRL_multi input pipeline
    model_card.md        the model card (Markdown)

A ``.msrl`` file is a zip of exactly these files (stored, no sub-directory). In the manifest JSON an
infinite survival bin edge (the open last bin) is written as ``null``; NaN metrics as ``null``.

:func:`load_bundle` checks, in this order, and raises :class:`~msrl_model.errors.BundleError` with a
one-line message saying which problem and what to do: readable (a directory or an intact zip),
manifest present and valid JSON, format version not newer than :data:`FORMAT_VERSION`, every listed
file present, not truncated (size) and unmodified (SHA-256), the config valid, the weights matching
the networks the config builds (names and shapes), the buffer datasets' shapes, and, when the caller
says which encoder produced its features, the encoder.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from msrl_model import __version__
from msrl_model.errors import BundleError
from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.nn.msrl import MSRLNet, TaskSpec

# Version of the layout written here. Readers refuse newer versions; bump on any incompatible change.
FORMAT_VERSION = 1
FORMAT_NAME = "msrl-bundle"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
BUFFER = "buffer.h5"
MODEL_CARD = "model_card.md"
# Case-table columns every task needs; survival tasks also need survival_months and censorship.
REQUIRED_COLUMNS = ("case_id",)
SURVIVAL_COLUMNS = ("survival_months", "censorship")


@dataclass
class TaskBundle:
    """One task's fine-tuned network and its buffer of authentic training cases."""

    spec: TaskSpec  # what the head predicts (classes or survival bin edges in months)
    variant: str  # "msrl" | "msrl_h"
    state_dict: dict[str, Tensor]  # MSRLNet(config, spec, variant) weights
    buffer_nodes: np.ndarray  # (N, node_dim) float32 target node features of the buffer cases
    cases: pd.DataFrame  # N rows: case_id, slide_id, project, survival_months, censorship, stage, labels...
    pathways: np.ndarray  # (N, n_groups) float32 authentic pathway scores (mean z-scored expression per group)
    metrics: dict = field(default_factory=dict)  # cross-validated metrics, e.g. {"c_index": {"mean", "std"}}
    thumbnails: list[bytes] | None = None  # N small JPEGs (b"" where missing), or None


@dataclass
class GenomicsBlock:
    """How raw expression becomes the genomics encoder's input (MSRL_multi)."""

    genes: list[str]  # G gene symbols, the scaler's column order
    group_names: list[str]  # n gene-group (pathway) names
    groups: list[list[int]]  # n index lists into genes (groups may overlap)
    scaler_mean: np.ndarray  # (G,) float32 per-gene mean of the log-scale training expression
    scaler_std: np.ndarray  # (G,) float32 per-gene std (1 where constant)
    expression_scale: str  # "log": values are already log-normalised | "raw": log1p is applied first

    def to_dict(self) -> dict[str, Any]:
        return {"genes": list(self.genes), "group_names": list(self.group_names),
                "groups": [list(map(int, g)) for g in self.groups], "scaler_mean": self.scaler_mean,
                "scaler_std": self.scaler_std, "expression_scale": self.expression_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenomicsBlock:
        return cls(list(d["genes"]), list(d["group_names"]), [list(map(int, g)) for g in d["groups"]],
                   np.asarray(d["scaler_mean"], dtype=np.float32), np.asarray(d["scaler_std"], dtype=np.float32),
                   str(d["expression_scale"]))


@dataclass
class Bundle:
    """A loaded, validated bundle."""

    path: Path  # where it was loaded from (directory or .msrl file)
    manifest: dict[str, Any]  # the parsed manifest.json
    fingerprint: str  # SHA-256 of manifest.json (which holds every other file's hash): the bundle's identity
    config: MSRLConfig  # model configuration shared by every task
    tasks: dict[str, TaskBundle]  # by task name, in manifest order
    encoder: dict[str, Any]  # patch encoder {name, version, dim[, spec]} the features must come from
    tiling: dict[str, Any]  # TilingParams fields used for the training features
    tissue: dict[str, Any]  # TissueParams fields
    genomics: GenomicsBlock | None  # None for bundles without genomics (MSRL_H only)
    cohort_summary: dict[str, Any]  # n_cases, projects, synthetic, source, ...
    model_card: str  # Markdown

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def software_version(self) -> str:
        return str(self.manifest["software"]["version"])

    @property
    def synthetic(self) -> bool:
        """True when the training cohort was synthetic (the app and every report say so)."""
        return bool(self.cohort_summary.get("synthetic", False))


# ---- JSON helpers -------------------------------------------------------------------------------


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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---- case tables in HDF5 ------------------------------------------------------------------------


def _column_kind(series: pd.Series) -> str:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) and not series.isna().any():
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "Int64" if isinstance(dtype, pd.api.extensions.ExtensionDtype) else "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "str"


def _write_cases(group: Any, cases: pd.DataFrame) -> None:
    import h5py

    names = [str(c) for c in cases.columns]
    kinds = []
    for i, name in enumerate(names):
        col = cases.iloc[:, i]
        kind = _column_kind(col)
        na = col.isna().to_numpy(dtype=bool)
        if kind == "bool":
            data = col.to_numpy(dtype=bool)
        elif kind in ("int", "Int64"):
            data = col.to_numpy(dtype=np.int64, na_value=0)
        elif kind == "float":
            data = col.to_numpy(dtype=np.float64)
            na = np.zeros_like(na)  # NaN is its own NA marker
        else:
            data = np.array(["" if m else str(v) for v, m in zip(col.tolist(), na)], dtype=object)
        dtype = h5py.string_dtype("utf-8") if kind == "str" else None
        group.create_dataset(f"c{i}", data=data, dtype=dtype)
        if na.any():
            group.create_dataset(f"c{i}_na", data=na)
        kinds.append(kind)
    group.attrs["columns"] = json.dumps(names)
    group.attrs["kinds"] = json.dumps(kinds)
    group.attrs["n_rows"] = len(cases)


def _read_cases(group: Any) -> pd.DataFrame:
    names = json.loads(group.attrs["columns"])
    kinds = json.loads(group.attrs["kinds"])
    n = int(group.attrs["n_rows"])
    data: dict[str, Any] = {}
    for i, (name, kind) in enumerate(zip(names, kinds)):
        raw = group[f"c{i}"]
        na = np.asarray(group[f"c{i}_na"][()], dtype=bool) if f"c{i}_na" in group else np.zeros(n, dtype=bool)
        if kind == "str":
            values = [None if m else v for v, m in zip(raw.asstr()[()].tolist(), na)]
            data[name] = pd.Series(values, dtype="str") if len(values) else pd.Series([], dtype="str")
        elif kind == "Int64":
            data[name] = pd.array(np.asarray(raw[()], dtype=np.int64), dtype="Int64")
            data[name][na] = pd.NA
        elif kind == "int":
            data[name] = np.asarray(raw[()], dtype=np.int64)
        elif kind == "bool":
            data[name] = np.asarray(raw[()], dtype=bool)
        else:
            data[name] = np.asarray(raw[()], dtype=np.float64)
        if len(data[name]) != n:
            raise ValueError(f"case-table column {name!r} has {len(data[name])} rows, expected {n}")
    return pd.DataFrame(data, columns=names)


# ---- writing ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _expected_shapes(config: MSRLConfig, spec: TaskSpec, variant: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of MSRLNet(config, spec, variant), built without memory (meta).

    Cached: :func:`load_bundle` builds them before it opens ``buffer.h5``, so that a failure of the
    model code itself is never reported as a damaged buffer file."""
    with torch.device("meta"):
        net = MSRLNet(config, spec, variant)  # type: ignore[arg-type]
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _node_dim(config: MSRLConfig, variant: str) -> int:
    return config.fused_dim if variant == "msrl" else config.d


def _check_task(config: MSRLConfig, task: TaskBundle, genomics: GenomicsBlock | None) -> None:
    name = task.spec.name
    problems = []
    if not name or "/" in name:
        problems.append(f"task name {name!r} must be non-empty without '/'")
    try:
        want = _expected_shapes(config, task.spec, task.variant)
    except ValueError as err:
        raise BundleError(f"task {name!r}: {err}") from None
    got = {k: tuple(v.shape) for k, v in task.state_dict.items()}
    if got != want:
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        problems.append(f"state dict does not match MSRLNet(config, {task.variant!r}) ({diff[:3]}...)")
    n = len(task.cases)
    nodes = np.asarray(task.buffer_nodes)
    if nodes.shape != (n, _node_dim(config, task.variant)):
        problems.append(f"buffer_nodes {nodes.shape} must be ({n}, {_node_dim(config, task.variant)})")
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
    if problems:
        raise BundleError(f"cannot write task {name!r}: " + "; ".join(problems))


def write_bundle(out: str | Path, *, config: MSRLConfig, tasks: list[TaskBundle], encoder: dict,
                 tiling: dict, tissue: dict, genomics: dict | GenomicsBlock | None,
                 cohort_summary: dict, model_card: str, slide_encoder: dict | None = None) -> Path:
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

    Returns the path written.
    """
    out = Path(out)
    if not tasks:
        raise BundleError("a bundle needs at least one task")
    names = [t.spec.name for t in tasks]
    if len(set(names)) != len(names):
        raise BundleError(f"task names must be unique, got {names}")
    block = GenomicsBlock.from_dict(genomics) if isinstance(genomics, dict) else genomics
    if block is not None:
        if block.expression_scale not in ("raw", "log"):
            raise BundleError(f"genomics expression_scale must be 'raw' or 'log', not {block.expression_scale!r}")
        sizes = tuple(len(g) for g in block.groups)
        if sizes != config.group_sizes or len(block.group_names) != len(sizes):
            raise BundleError(f"genomics groups {sizes} do not match config.group_sizes {config.group_sizes}")
        if block.scaler_mean.shape != (len(block.genes),) or block.scaler_std.shape != (len(block.genes),):
            raise BundleError("genomics scaler_mean/std must have one value per gene")
    for t in tasks:
        _check_task(config, t, block)
    for key in ("name", "version", "dim"):
        if key not in encoder:
            raise BundleError(f"encoder description lacks {key!r}")

    zipped = out.suffix.lower() == ".msrl"
    if not zipped and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty directory; choose a new output path")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        _write_files(stage, config, tasks, block)
        (stage / MODEL_CARD).write_text(model_card, encoding="utf-8")
        files = {name: {"sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
                 for name in (WEIGHTS, BUFFER, MODEL_CARD)}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "software": {"name": "MSRL Studio", "version": __version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"spec": encoder.get("spec", encoder["name"]), **json_safe(encoder)},
            "slide_encoder": json_safe(slide_encoder) if slide_encoder is not None else {
                "name": "builtin-transformer", "layers": config.slide_layers, "heads": config.slide_heads,
                "d": config.d},
            "tiling": json_safe(tiling),
            "tissue": json_safe(tissue),
            "config": config.to_dict(),
            "tasks": [{
                "name": t.spec.name, "kind": t.spec.kind, "variant": t.variant,
                "classes": list(t.spec.classes), "bin_edges_months": _edges_to_json(t.spec.bin_edges),
                "n_buffer": len(t.cases), "label_columns": [str(c) for c in t.cases.columns],
                "thumbnails": t.thumbnails is not None, "metrics": json_safe(t.metrics),
            } for t in tasks],
            "cohort": json_safe(cohort_summary),
            "genomics": None if block is None else {
                "expression_scale": block.expression_scale, "n_genes": len(block.genes),
                "group_names": list(block.group_names)},
            "files": files,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for child in stage.iterdir():
            child.chmod(0o666 & ~umask)  # mkstemp-style 0600 files would hide the bundle from other users
        stage.chmod(0o777 & ~umask)
        if zipped:
            tmp = parent / f".{out.name}.tmp"
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                for name in (MANIFEST, WEIGHTS, BUFFER, MODEL_CARD):
                    zf.write(stage / name, name)
            os.replace(tmp, out)
        else:
            if out.exists():
                out.rmdir()
            os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out


def _write_files(stage: Path, config: MSRLConfig, tasks: list[TaskBundle], block: GenomicsBlock | None) -> None:
    import h5py
    from safetensors.torch import save_file

    tensors = {f"{t.spec.name}/{k}": v.detach().cpu().contiguous() for t in tasks for k, v in t.state_dict.items()}
    save_file(tensors, str(stage / WEIGHTS), metadata={"format": FORMAT_NAME})
    with h5py.File(stage / BUFFER, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        root = f.create_group("tasks")
        for t in tasks:
            g = root.create_group(t.spec.name)
            g.create_dataset("nodes", data=np.asarray(t.buffer_nodes, dtype=np.float32))
            g.create_dataset("pathways", data=np.asarray(t.pathways, dtype=np.float32).reshape(len(t.cases), -1))
            _write_cases(g.create_group("cases"), t.cases.reset_index(drop=True))
            if t.thumbnails is not None:
                ds = g.create_dataset("thumbnails", (len(t.thumbnails),), dtype=h5py.vlen_dtype(np.uint8))
                for i, jpeg in enumerate(t.thumbnails):
                    ds[i] = np.frombuffer(jpeg, dtype=np.uint8)
        if block is not None:
            gg = f.create_group("genomics")
            text = h5py.string_dtype("utf-8")
            gg.create_dataset("genes", data=np.array(block.genes, dtype=object), dtype=text)
            gg.create_dataset("group_names", data=np.array(block.group_names, dtype=object), dtype=text)
            gg.create_dataset("group_index", data=np.concatenate([np.asarray(g, np.int64) for g in block.groups]))
            gg.create_dataset("group_offsets", data=np.cumsum([0] + [len(g) for g in block.groups]).astype(np.int64))
            gg.create_dataset("scaler_mean", data=np.asarray(block.scaler_mean, np.float32))
            gg.create_dataset("scaler_std", data=np.asarray(block.scaler_std, np.float32))


# ---- reading ------------------------------------------------------------------------------------


class _Source:
    """The bundle's files, from a directory or a zip, as bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            return
        if not path.is_file():
            raise BundleError(f"model bundle {path} not found; check the path or reinstall the bundle")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise BundleError(f"model bundle {path} is truncated or not a bundle ({err}); "
                              "copy or download the bundle again") from None

    def exists(self, name: str) -> bool:
        if self.zip is None:
            return (self.path / name).is_file()
        return name in self.zip.namelist()

    def size(self, name: str) -> int:
        if self.zip is None:
            return (self.path / name).stat().st_size
        return self.zip.getinfo(name).file_size

    def read(self, name: str) -> bytes:
        try:
            if self.zip is None:
                return (self.path / name).read_bytes()
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
            raise BundleError(f"model bundle {self.path}: {name} is truncated or unreadable ({err}); "
                              "copy or download the bundle again") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _bad(path: Path, what: str) -> BundleError:
    return BundleError(f"model bundle {path}: {what}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed manifest of a bundle (no other check); BundleError when it cannot be read."""
    src = _Source(Path(path))
    try:
        return _parse_manifest(src)[0]
    finally:
        src.close()


def _parse_manifest(src: _Source) -> tuple[dict[str, Any], bytes]:
    if not src.exists(MANIFEST):
        raise _bad(src.path, f"{MANIFEST} is missing; this is not an MSRL Studio bundle")
    raw = src.read(MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(src.path, f"{MANIFEST} is damaged ({err}); copy or download the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _bad(src.path, f"{MANIFEST} is not an MSRL Studio bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(src.path, f"{MANIFEST} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _bad(src.path, f"bundle format {version} is newer than this MSRL Studio supports "
                             f"({FORMAT_VERSION}); update MSRL Studio")
    return manifest, raw


def _verify_files(src: _Source, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or BUFFER not in files:
        raise _bad(src.path, f"{MANIFEST} does not list {WEIGHTS} and {BUFFER}; the bundle is incomplete")
    for name, info in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise _bad(src.path, f"{MANIFEST} lists an invalid file name {name!r}")
        if not src.exists(name):
            raise _bad(src.path, f"{name} is missing; copy or download the bundle again")
        size = src.size(name)
        if size < int(info["bytes"]):
            raise _bad(src.path, f"{name} is truncated ({size} of {info['bytes']} bytes); "
                                 "copy or download the bundle again")
        digest = hashlib.sha256(src.read(name)).hexdigest() if src.zip is not None else sha256_file(src.path / name)
        if size != int(info["bytes"]) or digest != info["sha256"]:
            raise _bad(src.path, f"{name} does not match its SHA-256 in {MANIFEST} (modified or corrupted); "
                                 "do not use it, copy or download the bundle again")


def load_bundle(path: str | Path, expected_encoder: dict | None = None) -> Bundle:
    """Load and validate a bundle (directory or ``.msrl`` zip).

    Args:
        path: the bundle.
        expected_encoder: {name, version[, dim]} of the encoder that produced the caller's features
            (e.g. a feature file's attrs); any difference raises BundleError.

    Raises:
        BundleError: missing, truncated, tampered, newer-format, invalid or encoder-mismatched bundle.
    """
    import h5py
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    src = _Source(path)
    try:
        manifest, raw_manifest = _parse_manifest(src)
        _verify_files(src, manifest)
        try:
            config = MSRLConfig.from_dict(manifest["config"])
            specs = [(TaskSpec(t["name"], t["kind"], tuple(t["classes"]), _edges_from_json(t["bin_edges_months"])),
                      t["variant"], t) for t in manifest["tasks"]]
            encoder = dict(manifest["encoder"])
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            raise _bad(path, f"{MANIFEST} is invalid ({err}); the bundle was written by an incompatible tool") from None
        if expected_encoder is not None:
            check_encoder(encoder, expected_encoder, path)
        for spec, variant, _ in specs:
            try:
                _expected_shapes(config, spec, variant)
            except ValueError as err:
                raise _bad(path, f"task {spec.name!r} is invalid ({err})") from None
        try:
            weights = load_safetensors(src.read(WEIGHTS))
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise _bad(path, f"{WEIGHTS} is truncated or unreadable ({err}); "
                             "copy or download the bundle again") from None
        try:
            h5_source = io.BytesIO(src.read(BUFFER)) if src.zip is not None else path / BUFFER
            with h5py.File(h5_source, "r") as f:
                tasks = {spec.name: _read_task(f, spec, variant, entry, weights, config, path)
                         for spec, variant, entry in specs}
                genomics = _read_genomics(f) if "genomics" in f else None
        except BundleError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise _bad(path, f"{BUFFER} is truncated or unreadable ({err}); "
                             "copy or download the bundle again") from None
        if genomics is not None and tuple(len(g) for g in genomics.groups) != config.group_sizes:
            raise _bad(path, f"{BUFFER} gene groups do not match the model configuration; the bundle is inconsistent")
        if genomics is not None:
            genomics.expression_scale = str(manifest["genomics"]["expression_scale"])
        model_card = src.read(MODEL_CARD).decode("utf-8", "replace") if MODEL_CARD in manifest["files"] else ""
    finally:
        src.close()
    return Bundle(path=path, manifest=manifest, fingerprint=hashlib.sha256(raw_manifest).hexdigest(),
                  config=config, tasks=tasks, encoder=encoder, tiling=dict(manifest.get("tiling", {})),
                  tissue=dict(manifest.get("tissue", {})), genomics=genomics,
                  cohort_summary=dict(manifest.get("cohort", {})), model_card=model_card)


def check_encoder(bundle_encoder: dict, features_encoder: dict, path: str | Path = "") -> None:
    """Raise BundleError when features from ``features_encoder`` cannot be used with the bundle."""
    for key in ("name", "version", "dim"):
        want, got = bundle_encoder.get(key), features_encoder.get(key)
        if got is not None and want is not None and str(got) != str(want):
            name = bundle_encoder.get("name")
            raise BundleError(
                f"model bundle {path}: trained on features from encoder {name} {bundle_encoder.get('version')} "
                f"(dim {bundle_encoder.get('dim')}) but these features come from {features_encoder.get('name')} "
                f"{features_encoder.get('version')} (dim {features_encoder.get('dim')}); "
                f"re-extract the features with --encoder {bundle_encoder.get('spec', name)} or use a matching bundle")


def _task_weights(weights: dict[str, Tensor], name: str) -> Iterator[tuple[str, Tensor]]:
    prefix = f"{name}/"
    for key, value in weights.items():
        if key.startswith(prefix):
            yield key[len(prefix):], value


def _read_task(f: Any, spec: TaskSpec, variant: str, entry: dict[str, Any], weights: dict[str, Tensor],
               config: MSRLConfig, path: Path) -> TaskBundle:
    name = spec.name
    state = dict(_task_weights(weights, name))
    try:
        want = _expected_shapes(config, spec, variant)
    except ValueError as err:
        raise _bad(path, f"task {name!r} is invalid ({err})") from None
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        raise _bad(path, f"{WEIGHTS} does not match the networks of task {name!r} (names or shapes differ); "
                         "the bundle is inconsistent, rebuild it")
    g = f["tasks"][name]
    nodes = np.asarray(g["nodes"][()], dtype=np.float32)
    pathways = np.asarray(g["pathways"][()], dtype=np.float32)
    cases = _read_cases(g["cases"])
    n = int(entry.get("n_buffer", len(cases)))
    thumbs = [bytes(np.asarray(t, dtype=np.uint8).tobytes()) for t in g["thumbnails"][()]] \
        if "thumbnails" in g else None
    if (len(cases) != n or nodes.shape != (n, _node_dim(config, variant))
            or pathways.shape != (n, config.n_groups) or (thumbs is not None and len(thumbs) != n)):
        raise _bad(path, f"{BUFFER} task {name!r} has inconsistent shapes (nodes {nodes.shape}, pathways "
                         f"{pathways.shape}, {len(cases)} cases, manifest {n}); the bundle is truncated or corrupt")
    return TaskBundle(spec=spec, variant=variant, state_dict=state, buffer_nodes=nodes, cases=cases,
                      pathways=pathways, metrics=dict(entry.get("metrics") or {}), thumbnails=thumbs)


def _read_genomics(f: Any) -> GenomicsBlock:
    g = f["genomics"]
    index = np.asarray(g["group_index"][()], dtype=np.int64)
    offsets = np.asarray(g["group_offsets"][()], dtype=np.int64)
    genes = list(g["genes"].asstr()[()].tolist())
    groups = [index[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    if any(not grp for grp in groups) or (index.size and (index.min() < 0 or index.max() >= len(genes))):
        raise ValueError("gene-group indices out of range")
    return GenomicsBlock(genes=genes, group_names=list(g["group_names"].asstr()[()].tolist()), groups=groups,
                         scaler_mean=np.asarray(g["scaler_mean"][()], np.float32),
                         scaler_std=np.asarray(g["scaler_std"][()], np.float32), expression_scale="log")


__all__ = ["BUFFER", "Bundle", "FORMAT_VERSION", "GenomicsBlock", "MANIFEST", "MODEL_CARD", "TaskBundle",
           "WEIGHTS", "check_encoder", "json_safe", "load_bundle", "read_manifest", "sha256_file", "write_bundle"]
