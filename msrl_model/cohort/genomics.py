"""A cohort's genomics (architecture §3): ``expression.csv`` validated, put on the log scale and aligned
with the clinical cases, and the ``.gmt`` gene groups restricted to the genes it measures.

One case's expression file for prediction (the app, ``msrl analyze``) is read by
:mod:`msrl_model.cohort.expression`."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from msrl_model.cohort.clinical import Clinical
from msrl_model.cohort.format import CohortConfig, CohortWarning, Problems, read_csv, spreadsheet_rows
from msrl_model.cohort.gmt import GeneSet, parse_gmt


def _numeric_matrix(df: pd.DataFrame, src: str, problems: Problems) -> tuple[list[str], np.ndarray] | None:
    """``(genes, (rows, genes) float64 values)``; repeated genes and non-numeric cells are problems
    (NaN in the matrix)."""
    rows = spreadsheet_rows(len(df))
    genes = [c for c in df.columns if c != "case_id"]
    if not genes:
        problems.add(f"{src}: no gene columns besides case_id")
        return None
    dup_genes = sorted({g for g in genes if genes.count(g) > 1 or re.search(r"\.\d+$", g) and
                        g.rsplit(".", 1)[0] in genes})  # pandas renames a repeated column G to G.1
    if dup_genes:
        problems.add(f"{src}: gene column(s) repeated: {', '.join(dup_genes[:10])}")
    values = df[genes]
    numeric = values.apply(pd.to_numeric, errors="coerce")
    entries = []
    for i, j in zip(*np.nonzero(numeric.isna().to_numpy())):
        raw = values.iat[i, j]
        what = "is empty" if raw is None or (isinstance(raw, float) and math.isnan(raw)) \
            else f"{raw!r} is not a number"
        entries.append((int(rows[i]), f"gene {genes[j]} (case {df['case_id'].iat[i]}) {what}"))
    problems.per_row(src, entries, "non-numeric or empty expression values")
    return genes, numeric.to_numpy(np.float64)


def _log_scale(matrix: np.ndarray, genes: list[str], scale: str | None, src: str, problems: Problems,
               notes: list[str]) -> np.ndarray:
    """The matrix on the log scale: log1p of raw values. ``scale`` None is inferred: raw when the
    values exceed 50, or are integers above 20 (counts), else already log-normalised."""
    finite = matrix[np.isfinite(matrix)]
    if scale is None:
        integer_like = finite.size > 0 and np.all(finite == np.round(finite))
        scale = "raw" if finite.size and (finite.max() > 50 or (integer_like and finite.max() > 20)) \
            else "log"
        notes.append(f"{src}: expression scale inferred as {scale!r} (max value {finite.max():.3g}); "
                     "set expression_scale in cohort.json to be explicit" if finite.size else
                     f"{src}: no numeric values")
    if scale != "raw":
        return matrix
    rows = spreadsheet_rows(len(matrix))
    negative = np.argwhere(matrix < 0)
    problems.per_row(src, [(int(rows[i]), f"gene {genes[j]} is negative ({matrix[i, j]:g}) but the "
                                          "scale is raw") for i, j in negative],
                     "negative values in raw expression; set expression_scale to \"log\" if "
                     "the table is already log-normalised")
    with np.errstate(invalid="ignore"):
        return np.log1p(np.maximum(matrix, 0))


def check_expression(root: Path, clinical: Clinical | None, config: CohortConfig, problems: Problems,
                     notes: list[str]) -> tuple[list[str], np.ndarray] | None:
    """Read and validate ``expression.csv``; returns ``(genes, (n_cases, n_genes) log-scale values)``
    with rows in ``clinical.cases`` order (file order while cases are missing), or None when it
    cannot be read or there is no valid clinical table to align it with."""
    src = config.expression
    df = read_csv(root / src, problems, dtype={"case_id": str}, keep_default_na=True)
    if df is None:
        return None
    if "case_id" not in df.columns:
        problems.add(f"{src}: missing the case_id column (rows = cases, columns = genes)")
        return None
    df["case_id"] = df["case_id"].astype(str).str.strip()
    dups = df["case_id"].duplicated(keep="first").to_numpy()
    problems.per_row(src, [(int(r), f"case {c} is listed twice") for r, c, d in
                           zip(spreadsheet_rows(len(df)), df["case_id"], dups) if d], "case_id listed twice")
    read = _numeric_matrix(df, src, problems)
    if read is None:
        return None
    genes, matrix = read
    matrix = _log_scale(matrix, genes, config.expression_scale, src, problems, notes)
    if clinical is None:
        return None
    position = {c: i for i, c in enumerate(df["case_id"]) if not dups[i]}
    absent = [c for c in clinical.cases["case_id"] if c not in position]
    problems.per_row(config.clinical, [(clinical.first_row[c], f"case {c} has no row in {src}")
                                       for c in absent],
                     f"clinical cases missing from {src}")
    extra = len(set(position) - set(clinical.cases["case_id"]))
    if extra:
        notes.append(f"{src}: {extra} case(s) not in {config.clinical} are ignored")
    if absent:
        return genes, matrix
    order = np.array([position[c] for c in clinical.cases["case_id"]], dtype=np.int64)
    return genes, matrix[order]


def resolve_gmt(root: Path, config: CohortConfig, problems: Problems) -> Path | None:
    """The cohort's ``.gmt`` file: the config's ``gene_sets``, else the only ``*.gmt`` in ``root``."""
    if config.gene_sets:
        path = root / config.gene_sets
        if not path.is_file():
            problems.add(f"gene-set file {config.gene_sets} named in the cohort config is missing")
            return None
        return path
    found = sorted(root.glob("*.gmt"))
    if not found:
        problems.add(f"no .gmt gene-set file in {root} (e.g. MSigDB h.all.v2023.2.Hs.symbols.gmt)")
        return None
    if len(found) > 1:
        problems.add(f"several .gmt files in {root} ({', '.join(p.name for p in found)}); "
                     "name one as gene_sets in cohort.json")
        return None
    return found[0]


def read_gene_sets(path: Path, problems: Problems) -> list[GeneSet]:
    """The gene sets of a ``.gmt`` file; unreadable files and malformed lines are problems."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(f"{path.name} cannot be read ({exc})")
        return []
    sets, gmt_problems = parse_gmt(text, source=path.name)
    for p in gmt_problems:
        problems.add(p)
    return sets


def restrict_gene_groups(sets: Sequence[tuple[str, Sequence[str]]], genes: Sequence[str],
                         source: str = "gene sets") -> tuple[list[str], list[list[str]], list[str]]:
    """Drop genes absent from ``genes`` per group, then groups left empty.

    Returns ``(names, kept genes per group, warning messages)``; the messages are also issued as
    :class:`CohortWarning`.
    """
    available = set(genes)
    names: list[str] = []
    kept: list[list[str]] = []
    partial: list[str] = []
    empty: list[str] = []
    absent_total: set[str] = set()
    for name, members in sets:
        present = [g for g in members if g in available]
        absent = [g for g in members if g not in available]
        absent_total.update(absent)
        if not present:
            empty.append(name)
            continue
        if absent:
            partial.append(f"{name} ({len(absent)} of {len(members)})")
        names.append(name)
        kept.append(present)
    messages = []
    if partial:
        messages.append(f"{source}: {len(absent_total)} gene(s) absent from the expression table were "
                        f"dropped from {len(partial)} group(s): {', '.join(partial[:8])}"
                        + (", ..." if len(partial) > 8 else ""))
    if empty:
        messages.append(f"{source}: group(s) {', '.join(empty)} have no gene in the expression table "
                        "and were dropped")
    for m in messages:
        warnings.warn(m, CohortWarning, stacklevel=3)
    return names, kept, messages
