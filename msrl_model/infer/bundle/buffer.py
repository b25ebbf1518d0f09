"""``buffer.h5``: every task's buffer of authentic training cases and the genomics input pipeline.

Layout::

    /tasks/<task>/nodes (N, node_dim) float32   buffer node features
    /tasks/<task>/pathways (N, n_groups) float32 authentic Hallmark scores
    /tasks/<task>/cases/c<i> one dataset per case-table column (attrs list the names and kinds;
                         strings UTF-8 variable length, c<i>_na = NA mask where the column has NAs)
    /tasks/<task>/thumbnails  optional, variable-length uint8 (JPEG bytes)
    /genomics/{genes, group_names, group_index, group_offsets, scaler_mean, scaler_std}
    /applicability/slide_means (m, P) float32  optional: the training slides' profiles (infer/applicability.py)

A gene group g is ``group_index[group_offsets[g]:group_offsets[g + 1]]`` (indices into ``genes``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.infer.bundle.contents import (BUFFER, FORMAT_VERSION, RECORD_KEY, GenomicsBlock, TaskBundle,
                                              node_dim)
from msrl_model.infer.bundle.manifest import bundle_error
from msrl_model.nn.config import MSRLConfig

# ---- case tables --------------------------------------------------------------------------------


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


def _write_task(group: Any, task: TaskBundle) -> None:
    import h5py

    group.create_dataset("nodes", data=np.asarray(task.buffer_nodes, dtype=np.float32))
    group.create_dataset("pathways", data=np.asarray(task.pathways, dtype=np.float32).reshape(len(task.cases), -1))
    _write_cases(group.create_group("cases"), task.cases.reset_index(drop=True))
    if task.thumbnails is not None:
        ds = group.create_dataset("thumbnails", (len(task.thumbnails),), dtype=h5py.vlen_dtype(np.uint8))
        for i, jpeg in enumerate(task.thumbnails):
            ds[i] = np.frombuffer(jpeg, dtype=np.uint8)


def _write_genomics(group: Any, block: GenomicsBlock) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    group.create_dataset("genes", data=np.array(block.genes, dtype=object), dtype=text)
    group.create_dataset("group_names", data=np.array(block.group_names, dtype=object), dtype=text)
    group.create_dataset("group_index", data=np.concatenate([np.asarray(g, np.int64) for g in block.groups]))
    group.create_dataset("group_offsets", data=np.cumsum([0] + [len(g) for g in block.groups]).astype(np.int64))
    group.create_dataset("scaler_mean", data=np.asarray(block.scaler_mean, np.float32))
    group.create_dataset("scaler_std", data=np.asarray(block.scaler_std, np.float32))


def write_buffer(path: Path, tasks: list[TaskBundle], genomics: GenomicsBlock | None,
                 record: str | None = None, slide_profiles: np.ndarray | None = None) -> None:
    """Write ``buffer.h5`` at ``path``: every task's buffer and, when given, the genomics block, the
    integrity ``record`` (JSON text, root attribute :data:`~msrl_model.infer.bundle.contents.RECORD_KEY`)
    and the training slides' profiles of the applicability check."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        if record is not None:
            f.attrs[RECORD_KEY] = record
        root = f.create_group("tasks")
        for task in tasks:
            _write_task(root.create_group(task.spec.name), task)
        if genomics is not None:
            _write_genomics(f.create_group("genomics"), genomics)
        if slide_profiles is not None:
            f.create_group("applicability").create_dataset("slide_means",
                                                           data=np.asarray(slide_profiles, dtype=np.float32))


def read_slide_profiles(f: Any, n: int, patch_dim: int) -> np.ndarray:
    """The (n, patch_dim) training slides' profiles of an open ``buffer.h5``; ValueError when absent or,
    checked before reading, of another shape than the manifest's ``n`` scores and the config declare."""
    if "applicability" not in f or "slide_means" not in f["applicability"]:
        raise ValueError("the applicability profiles the manifest lists are missing")
    ds = f["applicability"]["slide_means"]
    if tuple(ds.shape) != (n, patch_dim):
        raise ValueError(f"applicability profiles have shape {tuple(ds.shape)}, expected {(n, patch_dim)}")
    return np.asarray(ds[()], dtype=np.float32)


# ---- reading ------------------------------------------------------------------------------------


def read_task_buffer(f: Any, name: str, variant: str, entry: dict[str, Any], config: MSRLConfig, path: Path
                     ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, list[bytes] | None]:
    """(nodes (N, node_dim), pathways (N, n_groups), cases, thumbnails or None) of task ``name``.

    ``entry`` is the task's manifest entry (its ``n_buffer``, when present, is N). BundleError when
    the datasets' shapes disagree with each other, with the manifest or with the configuration."""
    g = f["tasks"][name]
    n = int(entry["n_buffer"])
    # Shapes first, from the file's metadata: a dataset is read only at the size the manifest and the
    # config declare (a compressed dataset could otherwise expand far beyond the file's size).
    want = {"nodes": (n, node_dim(config, variant)), "pathways": (n, config.n_groups)}
    if "thumbnails" in g:
        want["thumbnails"] = (n,)
    got = {key: tuple(g[key].shape) for key in want}
    columns = g["cases"]
    n_rows = int(columns.attrs["n_rows"])
    wrong_column = next((k for k in columns if tuple(columns[k].shape) != (n_rows,)), None)
    if got != want or n_rows != n or wrong_column is not None:
        raise bundle_error(path, f"{BUFFER} task {name!r} has inconsistent shapes (nodes {got['nodes']}, pathways "
                                 f"{got['pathways']}, {n_rows} cases, manifest {n}); the bundle is truncated "
                                 "or corrupt")
    nodes = np.asarray(g["nodes"][()], dtype=np.float32)
    pathways = np.asarray(g["pathways"][()], dtype=np.float32)
    cases = _read_cases(columns)
    thumbs = [bytes(np.asarray(t, dtype=np.uint8).tobytes()) for t in g["thumbnails"][()]] \
        if "thumbnails" in g else None
    if (len(cases) != n or nodes.shape != (n, node_dim(config, variant))
            or pathways.shape != (n, config.n_groups) or (thumbs is not None and len(thumbs) != n)):
        raise bundle_error(path, f"{BUFFER} task {name!r} has inconsistent shapes (nodes {nodes.shape}, pathways "
                                 f"{pathways.shape}, {len(cases)} cases, manifest {n}); the bundle is truncated "
                                 "or corrupt")
    return nodes, pathways, cases, thumbs


def read_genomics(f: Any, expression_scale: str, n_genes: int | None = None,
                  group_sizes: tuple[int, ...] | None = None) -> GenomicsBlock:
    """The genomics block of an open ``buffer.h5``; ValueError when its gene groups index out of range
    or, checked before anything is read, its datasets' shapes differ from ``n_genes`` genes (the
    manifest) and ``group_sizes`` (the config)."""
    g = f["genomics"]
    if n_genes is not None and group_sizes is not None:
        want = {"genes": (n_genes,), "scaler_mean": (n_genes,), "scaler_std": (n_genes,),
                "group_names": (len(group_sizes),), "group_offsets": (len(group_sizes) + 1,),
                "group_index": (int(sum(group_sizes)),)}
        got = {key: tuple(g[key].shape) for key in want}
        if got != want:
            raise ValueError(f"genomics datasets have shapes {got}, expected {want}")
    index = np.asarray(g["group_index"][()], dtype=np.int64)
    offsets = np.asarray(g["group_offsets"][()], dtype=np.int64)
    genes = list(g["genes"].asstr()[()].tolist())
    groups = [index[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    if any(not grp for grp in groups) or (index.size and (index.min() < 0 or index.max() >= len(genes))):
        raise ValueError("gene-group indices out of range")
    return GenomicsBlock(genes=genes, group_names=list(g["group_names"].asstr()[()].tolist()), groups=groups,
                         scaler_mean=np.asarray(g["scaler_mean"][()], np.float32),
                         scaler_std=np.asarray(g["scaler_std"][()], np.float32), expression_scale=expression_scale)
