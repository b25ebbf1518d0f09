"""Expression files for prediction, and per-gene expression scaling (architecture §3).

One reader serves the app (File ▸ Load expression, one case) and ``msrl analyze --expression``
(one or many cases): a CSV (comma-separated, ``.`` as decimal point) in one of three layouts,

* a table with a ``case_id`` column (optionally ``slide_id``), one row per case and one column per
  gene — the layout of a cohort's ``expression.csv``;
* a one-row table with a column per gene (the case being analysed; no ``case_id`` needed);
* two columns ``gene,value``, one row per gene (a header row is optional).

Columns named ``case``, ``sample`` or nothing are ignored. Cells that are not finite numbers count as
missing (the predictor sets missing genes to the training mean). Values are on the scale the bundle
names (raw or log). A cohort's own ``expression.csv`` is validated by :mod:`msrl_model.cohort.genomics`.

:class:`ExpressionScaler` z-scores log-scale expression per gene with statistics of a training fold.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.errors import MSRLError

CASE_ID, SLIDE_ID = "case_id", "slide_id"
_IGNORED_COLUMNS = frozenset({"case", "sample", ""})  # compared lower-case


def _number(text: str) -> float:
    """The finite number ``text`` spells, else NaN (missing)."""
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _read_rows(path: Path) -> list[list[str]]:
    """The file's non-blank CSV rows, cells stripped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [[c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    except FileNotFoundError:
        raise MSRLError(f"expression file {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MSRLError(f"cannot read expression file {path} ({exc}); choose a CSV text file") from None


class ExpressionTable:
    """An expression file (layouts in the module docstring) as rows = cases, columns = genes.

    ``case_ids`` / ``slide_ids`` are None when the file has no such column; ``values`` is
    (n_rows, n_genes) float64 with NaN where a value is missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        rows = _read_rows(self.path)
        header = [c.lower() for c in rows[0]] if rows else []
        self.case_ids: list[str] | None = None
        self.slide_ids: list[str] | None = None
        if CASE_ID in header or len(rows) == 2 and len(header) > 2:  # wide: a column per gene
            self._read_wide(header, rows)
        elif rows and all(len(r) == 2 for r in rows):  # long: gene,value
            self._read_long(rows)
        elif len(rows) >= 2:
            raise MSRLError(f"expression file {self.path} is neither a table with a case_id column (one row "
                            "per case), a one-row table with a column per gene nor two columns gene,value; "
                            "save the expression in one of these shapes")
        else:
            self.genes, self.values = [], np.zeros((0, 0))
        if not self.genes or len(self.values) == 0:
            raise MSRLError(f"expression file {self.path} has no gene columns or no rows; save a header "
                            "of gene symbols and one row of values per case")
        if not np.isfinite(self.values).any():
            raise MSRLError(f"expression file {self.path} has no numeric expression values; check the "
                            "file's separator (comma) and decimal point (.)")

    def _read_wide(self, header: list[str], rows: list[list[str]]) -> None:
        """A header of genes (and id columns) over one row per case."""
        width = len(header)
        for n, row in enumerate(rows[1:], start=2):
            if len(row) > width:
                raise MSRLError(f"expression file {self.path} row {n} has {len(row)} cells but the header "
                                f"only {width}; give every row one value per header column")
        body = [row + [""] * (width - len(row)) for row in rows[1:]]
        if CASE_ID in header:
            self.case_ids = [row[header.index(CASE_ID)] for row in body]
        if SLIDE_ID in header:
            self.slide_ids = [row[header.index(SLIDE_ID)] for row in body]
        columns = [j for j, name in enumerate(header)
                   if name not in (CASE_ID, SLIDE_ID) and name not in _IGNORED_COLUMNS]
        self.genes = [rows[0][j] for j in columns]
        self.values = np.array([[_number(row[j]) for j in columns] for row in body],
                               dtype=np.float64).reshape(len(body), len(columns))

    def _read_long(self, rows: list[list[str]]) -> None:
        """One row per gene: ``gene,value``, under an optional header row."""
        if math.isnan(_number(rows[0][1])):
            rows = rows[1:]  # the header
        kept = [(gene, _number(text)) for gene, text in rows if gene]
        self.genes = [gene for gene, _ in kept]
        self.values = np.array([[value for _, value in kept]], dtype=np.float64).reshape(1, len(kept))

    def __len__(self) -> int:
        return len(self.values)

    def row(self, index: int) -> dict[str, float]:
        """Gene -> value of one row, missing values left out."""
        return {g: float(v) for g, v in zip(self.genes, self.values[index]) if math.isfinite(v)}

    def for_slide(self, slide_id: str, single: bool) -> dict[str, float] | None:
        """The row for a slide: its ``slide_id``, else the longest ``case_id`` the slide id equals or
        starts with (TCGA slide ids start with the case id), else the only row when ``single`` (one
        slide analysed); None when nothing matches."""
        if self.slide_ids is not None and slide_id in self.slide_ids:
            return self.row(self.slide_ids.index(slide_id))
        matches = [(len(c), i) for i, c in enumerate(self.case_ids or []) if c and slide_id.startswith(c)]
        if matches:
            return self.row(max(matches)[1])
        if single and len(self) == 1:
            return self.row(0)
        return None


def read_expression(path: str | os.PathLike) -> dict[str, float]:
    """One case's expression, gene -> value, from a file in any layout of the module docstring.

    Raises MSRLError with what to fix when the file cannot be read, has none of the layouts, no
    numeric value, or the rows of several cases."""
    table = ExpressionTable(path)
    if len(table) != 1:
        raise MSRLError(f"expression file {table.path} holds {len(table)} cases; keep only this case's "
                        "row (a one-row table with a column per gene)")
    return table.row(0)


@dataclass
class ExpressionScaler:
    """Per-gene z-scoring fitted on training cases: ``x' = (x − mean) / std``."""

    mean: np.ndarray | None = None  # (n_genes,) float32, per-gene mean of the training fold
    std: np.ndarray | None = None  # (n_genes,) float32, per-gene std (ddof 0; 1 where ~constant)

    # genes whose training std is below this are only centred (std set to 1)
    MIN_STD = 1e-6

    def fit(self, x: np.ndarray) -> ExpressionScaler:
        """Fit on (n_train, n_genes) log-scale expression; returns self."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"expected a non-empty (cases, genes) matrix, got shape {x.shape}")
        self.mean = x.mean(0).astype(np.float32)
        std = x.std(0)
        self.std = np.where(std < self.MIN_STD, 1.0, std).astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, n_genes) -> (n, n_genes) float32 z-scores."""
        if self.mean is None or self.std is None:
            raise RuntimeError("ExpressionScaler.transform called before fit")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"expression has {x.shape[-1]} genes, the scaler was fitted on "
                             f"{self.mean.shape[0]}")
        return (x - self.mean) / self.std

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def to_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Arrays for safetensors: ``{prefix+'mean': (G,), prefix+'std': (G,)}``."""
        if self.mean is None or self.std is None:
            raise RuntimeError("ExpressionScaler.to_dict called before fit")
        return {f"{prefix}mean": self.mean.copy(), f"{prefix}std": self.std.copy()}

    @classmethod
    def from_dict(cls, arrays: dict[str, Any], prefix: str = "") -> ExpressionScaler:
        """Inverse of :meth:`to_dict` (accepts numpy arrays or torch tensors)."""
        mean = np.asarray(arrays[f"{prefix}mean"], dtype=np.float32)
        std = np.asarray(arrays[f"{prefix}std"], dtype=np.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"scaler arrays must be two (G,) vectors; got {mean.shape}, {std.shape}")
        return cls(mean=mean, std=std)
