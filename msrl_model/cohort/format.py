"""The cohort directory format (architecture §3), its configuration, the loaded :class:`Cohort`, and the
collector that turns every problem found while loading into one :class:`CohortValidationError`.

A cohort directory holds::

    clinical.csv         case_id, slide_id, project, survival_months, censorship (1 = censored),
                         optional stage, label columns (EGFR_mut, HER2_status, ...); one row per slide
    expression.csv       case_id + one column per gene; raw (counts/TPM, log1p-transformed here) or
                         already log-normalised
    <name>.gmt           gene groups (MSigDB Hallmark or any GMT)
    features/<slide_id>.h5 and/or slides/<slide_id>.<svs|tif|ndpi|...>
    cohort.json | cohort.toml   optional: expression_scale, labels and their classes, file names

Feature files may also stay where TRIDENT or CLAM wrote them (read in place, never copied): the
config's ``features`` entry (relative to the cohort directory or absolute) names this tool's
``features/``, a TRIDENT ``features_<encoder>/`` folder, a TRIDENT job directory (its single
``<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/`` folder; several must be chosen between by naming
one) or a CLAM directory (``h5_files/<slide_id>.h5``, else ``pt_files/<slide_id>.pt``). Without
``features`` and without ``features/``, a TRIDENT or CLAM tree in the cohort directory itself is
used. fp16 features are read as float32. A ``.pt`` (a bare N×D tensor) has no coordinates: it trains,
but the heat-map and the tiling check need the coords of ``h5_files/``. Resolution:
:mod:`msrl_model.cohort.featuresource`.

:func:`~msrl_model.cohort.load.load_cohort` checks everything at once and raises a single
:class:`CohortValidationError` listing every problem (with spreadsheet row numbers: the header is
row 1). Things that can be repaired automatically (gene-set genes missing from the expression
table, gene sets left empty) are :class:`CohortWarning` warnings and are kept in ``Cohort.warnings``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.errors import CohortError

REQUIRED_COLUMNS = ("case_id", "slide_id", "project", "survival_months", "censorship")
# Slide file suffixes looked for in slides/ (formats OpenSlide or tiffslide read).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm")
# Per kind of problem, at most this many rows are listed one per line; more are summarised.
_MAX_LINES_PER_KIND = 8


class CohortWarning(UserWarning):
    """Something in a cohort was repaired automatically (e.g. genes dropped from a gene group)."""


class CohortValidationError(CohortError):
    """A cohort directory failed validation; ``problems`` lists every problem found.

    ``str(err)`` is a one-line summary followed by one indented line per problem, readable in a
    terminal and in a dialog.
    """

    def __init__(self, root: Path, problems: Sequence[str]):
        self.root = Path(root)
        self.problems = list(problems)
        n = len(self.problems)
        self.summary = (f"cohort {self.root} has {n} problem{'s' if n != 1 else ''}; "
                        "fix them and load it again:")
        super().__init__(self.summary + "\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class CohortConfig:
    """Optional ``cohort.json`` / ``cohort.toml``; every field has a default."""

    name: str = ""  # display name (default: the directory name)
    description: str = ""  # free text shown in model cards
    synthetic: bool = False  # True for cohorts made by ``msrl synth cohort``
    clinical: str = "clinical.csv"  # clinical table, relative to the cohort directory
    expression: str = "expression.csv"  # expression table, relative to the cohort directory
    expression_scale: str | None = None  # "raw" (log1p applied here) | "log"; None = infer
    gene_sets: str | None = None  # .gmt file; None = the only *.gmt in the directory
    features_dir: str = "features"  # where <slide_id>.h5 feature files are
    features: str | None = None  # features source: features/, TRIDENT job or features_<enc>/, CLAM dir
    slides_dir: str = "slides"  # where slide files are (matched by file stem = slide_id)
    labels: dict[str, list[str] | None] | None = None  # column -> class order (None: sorted); None = infer
    generator: dict[str, Any] = field(default_factory=dict)  # provenance of synthetic cohorts


@dataclass
class Cohort:
    """A validated cohort; ``cases`` rows, ``expression`` rows and fold indices share one order."""

    root: Path  # the cohort directory
    config: CohortConfig  # the (possibly defaulted) configuration
    cases: pd.DataFrame  # one row per case: case_id, project, survival_months, censorship, event, n_slides, labels
    slides: dict[str, list[str]]  # case_id -> slide ids in clinical.csv order
    feature_paths: dict[str, Path | None]  # slide_id -> its feature file (.h5 or .pt) if present
    slide_paths: dict[str, Path | None]  # slide_id -> slide file if present
    genes: list[str]  # expression columns used by at least one gene group
    expression: np.ndarray  # (n_cases, n_genes) float32, log scale (log1p of raw values)
    group_names: list[str]  # gene-group names, in .gmt order (empty groups removed)
    gene_groups: list[np.ndarray]  # per group: int64 indices into ``genes``
    labels: dict[str, list[str]]  # label column (incl. stage) -> class names; codes index this list
    projects: list[str]  # distinct projects, sorted
    warnings: list[str] = field(default_factory=list)  # repairs made while loading (also warned)
    notes: list[str] = field(default_factory=list)  # informational: inferred settings, unused columns

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return self.cases["case_id"].tolist()

    @property
    def times(self) -> np.ndarray:
        """(n_cases,) float64 survival months."""
        return self.cases["survival_months"].to_numpy(np.float64)

    @property
    def censorship(self) -> np.ndarray:
        """(n_cases,) int64, 1 = censored."""
        return self.cases["censorship"].to_numpy(np.int64)

    @property
    def events(self) -> np.ndarray:
        """(n_cases,) int64, 1 = event observed (= 1 − censorship)."""
        return 1 - self.censorship

    def label_codes(self, name: str) -> np.ndarray:
        """(n_cases,) int64 class index into ``labels[name]``, −1 where the label is missing."""
        if name not in self.labels:
            raise KeyError(f"no label column {name!r}; this cohort has {sorted(self.labels)}")
        index = {c: i for i, c in enumerate(self.labels[name])}
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in self.cases[name]],
                        dtype=np.int64)

    def case_feature_paths(self, case_id: str) -> list[Path]:
        """Feature files of one case's slides (those that have one)."""
        return [p for s in self.slides[case_id] if (p := self.feature_paths.get(s)) is not None]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for manifests and model cards."""
        return {
            "name": self.config.name or self.root.name,
            "synthetic": self.config.synthetic,
            "cases": self.n_cases,
            "slides": sum(len(v) for v in self.slides.values()),
            "projects": {p: int(n) for p, n in self.cases["project"].value_counts().sort_index().items()},
            "censored_fraction": float(self.censorship.mean()) if self.n_cases else 0.0,
            "genes": len(self.genes),
            "gene_groups": len(self.group_names),
            "labels": {name: {c: int((self.label_codes(name) == i).sum()) for i, c in enumerate(cls)}
                       for name, cls in self.labels.items()},
        }


# --------------------------------------------------------------------------------------------
# problem collection


def _rows_text(rows: Sequence[int]) -> str:
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:10])
    return f"rows {shown}" + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")


class Problems:
    """Collects problems; per-row ones are grouped by kind so the list stays readable."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        self.items.append(text)

    def per_row(self, source: str, entries: list[tuple[int, str]], summary: str) -> None:
        """``entries``: (row, full sentence); many entries collapse into one line with ``summary``."""
        if not entries:
            return
        if len(entries) <= _MAX_LINES_PER_KIND:
            self.items.extend(f"{source} row {row}: {text}" for row, text in entries)
        else:
            rows = [row for row, _ in entries]
            self.items.append(f"{source} {_rows_text(rows)} ({len(rows)} rows): {summary}")

    def per_file(self, entries: list[tuple[str, str]], summary: str) -> None:
        """``entries``: (file name, sentence; an empty name for a sentence about several files); many
        entries collapse into one line naming the files with ``summary``."""
        if not entries:
            return
        if len(entries) <= _MAX_LINES_PER_KIND:
            self.items.extend(f"{name} {text}" if name else text for name, text in entries)
        else:
            names = [name for name, _ in entries if name]
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            self.items.append(f"{len(names)} feature files ({shown}): {summary}")


def read_csv(path: Path, problems: Problems, **kwargs: Any) -> pd.DataFrame | None:
    """``pd.read_csv`` with stripped column names; None (and a problem) when the file is missing or
    not CSV."""
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", **kwargs)
    except FileNotFoundError:
        problems.add(f"{path.name} is missing from {path.parent}")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        problems.add(f"{path.name} cannot be read as CSV ({str(exc).strip().splitlines()[0]})")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def parse_number(text: str) -> float | None:
    """The finite number ``text`` spells, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def spreadsheet_rows(n: int) -> np.ndarray:
    """(n,) spreadsheet row numbers of n data rows: the header is row 1."""
    return np.arange(n) + 2
