"""Cohort directories (DESIGN §3): loading, validation, survival bins, folds, expression scaling.

A cohort directory holds::

    clinical.csv         case_id, slide_id, project, survival_months, censorship (1 = censored),
                         optional stage, label columns (EGFR_mut, HER2_status, ...); one row per slide
    expression.csv       case_id + one column per gene; raw (counts/TPM, log1p-transformed here) or
                         already log-normalised
    <name>.gmt           gene groups (MSigDB Hallmark or any GMT)
    features/<slide_id>.h5 and/or slides/<slide_id>.<svs|tif|ndpi|...>
    cohort.json | cohort.toml   optional: expression_scale, labels and their classes, file names

:func:`load_cohort` checks everything at once and raises a single :class:`CohortValidationError`
listing every problem (with spreadsheet row numbers: the header is row 1). Things that can be
repaired automatically (gene-set genes missing from the expression table, gene sets left empty)
are :class:`CohortWarning` warnings and are kept in ``Cohort.warnings``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.errors import CohortError
from msrl_model.train.gmt import parse_gmt

REQUIRED_COLUMNS = ("case_id", "slide_id", "project", "survival_months", "censorship")
# Slide file suffixes looked for in slides/ (formats OpenSlide or tiffslide read).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm")
# Cell values that mean "not known" in clinical tables (TCGA/cBioPortal spellings), compared lower-case.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "not reported",
                            "[not available]", "[not applicable]", "[unknown]", "[not evaluated]",
                            "[discrepancy]", "not available", "stage x", "x"})
# Clinical columns that are used as labels without being listed in the config.
_LABEL_NAME = re.compile(r"(^stage$|^grade$|_mut$|_mutation$|_status$|_subtype$)", re.IGNORECASE)
STAGE_CLASSES = ("I", "II", "III", "IV")
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
    feature_paths: dict[str, Path | None]  # slide_id -> features/<slide_id>.h5 if present
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


class _Problems:
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


# --------------------------------------------------------------------------------------------
# config


def _read_config(root: Path, problems: _Problems) -> CohortConfig:
    json_path, toml_path = root / "cohort.json", root / "cohort.toml"
    if json_path.exists() and toml_path.exists():
        problems.add("both cohort.json and cohort.toml exist: keep one of them")
        return CohortConfig()
    raw: dict[str, Any] = {}
    try:
        if json_path.exists():
            raw = json.loads(json_path.read_text(encoding="utf-8"))
        elif toml_path.exists():
            import tomllib

            raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        name = json_path.name if json_path.exists() else toml_path.name
        problems.add(f"{name} cannot be parsed ({exc}); fix the syntax or delete the file")
        return CohortConfig()
    if not isinstance(raw, dict):
        problems.add("cohort.json must hold an object of settings")
        return CohortConfig()
    known = {f.name for f in fields(CohortConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        problems.add(f"cohort config has unknown setting(s) {', '.join(unknown)}; "
                     f"known settings: {', '.join(sorted(known))}")
    config = CohortConfig(**{k: v for k, v in raw.items() if k in known})
    if config.expression_scale not in (None, "raw", "log"):
        problems.add(f"cohort config: expression_scale must be \"raw\" or \"log\", "
                     f"not {config.expression_scale!r}")
        config.expression_scale = None
    if isinstance(config.labels, list):  # a plain list of label columns: classes inferred
        config.labels = {str(name): None for name in config.labels}
    if config.labels is not None and not isinstance(config.labels, dict):
        problems.add("cohort config: labels must map column names to class lists (or be a list of names)")
        config.labels = None
    return config


# --------------------------------------------------------------------------------------------
# clinical table


def _is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def _normalise_value(value: str) -> str:
    """'1.0' -> '1' so that integer-coded labels compare equal; other text stripped."""
    v = value.strip()
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if math.isfinite(f) and f.is_integer() else v


_ROMAN = {"I": "I", "II": "II", "III": "III", "IV": "IV", "1": "I", "2": "II", "3": "III", "4": "IV"}


def _normalise_stage(value: str) -> str | None:
    """'Stage IIA' / 'stage 2' / 'II' -> 'II'; None when not a stage I–IV."""
    v = value.strip().upper()
    v = re.sub(r"^STAGE\s*", "", v)
    m = re.fullmatch(r"(IV|III|II|I|[1-4])[ABC]?[0-9]?", v)
    return _ROMAN[m.group(1)] if m else None


def _read_csv(path: Path, problems: _Problems, **kwargs: Any) -> pd.DataFrame | None:
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


def _parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class _Clinical:
    cases: pd.DataFrame  # one row per valid case
    slides: dict[str, list[str]]
    first_row: dict[str, int]  # case_id -> first spreadsheet row
    label_columns: list[str]
    slide_rows: dict[str, int]  # slide_id -> spreadsheet row


def _check_clinical(df: pd.DataFrame, config: CohortConfig, problems: _Problems,
                    notes: list[str]) -> _Clinical | None:
    src = config.clinical
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.add(f"{src}: missing required column{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})")
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    rows = np.arange(len(df)) + 2  # spreadsheet rows: header is row 1

    def col(name: str) -> list[str] | None:
        return df[name].tolist() if name in df.columns else None

    case_col, slide_col, proj_col = col("case_id"), col("slide_id"), col("project")
    surv_col, cens_col = col("survival_months"), col("censorship")
    bad_row = np.zeros(len(df), dtype=bool)  # rows excluded from per-case consistency checks

    for name, values in (("case_id", case_col), ("slide_id", slide_col), ("project", proj_col)):
        if values is None:
            continue
        empty = [(int(r), f"{name} is empty") for r, v in zip(rows, values) if v == ""]
        problems.per_row(src, empty, f"{name} is empty")
        bad_row |= np.array([v == "" for v in values])

    survival = np.full(len(df), np.nan)
    if surv_col is not None:
        entries = []
        for i, (r, v) in enumerate(zip(rows, surv_col)):
            value = _parse_number(v)
            if v == "":
                entries.append((int(r), "survival_months is empty"))
            elif value is None:
                entries.append((int(r), f"survival_months {v!r} is not a number"))
            elif value < 0:
                entries.append((int(r), f"survival_months {v} is negative"))
            else:
                survival[i] = value
                continue
            bad_row[i] = True
        problems.per_row(src, entries, "survival_months must be a non-negative number of months")

    censorship = np.full(len(df), -1, dtype=np.int64)
    if cens_col is not None:
        entries = []
        for i, (r, v) in enumerate(zip(rows, cens_col)):
            value = _parse_number(v)
            if value in (0.0, 1.0):
                censorship[i] = int(value)
                continue
            entries.append((int(r), f"censorship {v!r} is not 0 or 1 (1 = censored, 0 = event observed)"
                            if v else "censorship is empty (1 = censored, 0 = event observed)"))
            bad_row[i] = True
        problems.per_row(src, entries, "censorship must be 0 (event observed) or 1 (censored)")

    if case_col is None or slide_col is None:
        return None

    # duplicate (case_id, slide_id) and slides claimed by two cases
    seen: dict[tuple[str, str], int] = {}
    dup_entries = []
    slide_case: dict[str, tuple[str, int]] = {}
    moved_entries = []
    for i, (r, c, s) in enumerate(zip(rows, case_col, slide_col)):
        if not c or not s:
            continue
        if (c, s) in seen:
            dup_entries.append((int(r), f"duplicate of row {seen[(c, s)]} (case_id {c}, slide_id {s})"))
            bad_row[i] = True
            continue
        seen[(c, s)] = int(r)
        if s in slide_case and slide_case[s][0] != c:
            moved_entries.append((int(r), f"slide_id {s} belongs to case {c} here but to case "
                                          f"{slide_case[s][0]} in row {slide_case[s][1]}"))
            bad_row[i] = True
            continue
        slide_case.setdefault(s, (c, int(r)))
    problems.per_row(src, dup_entries, "duplicate (case_id, slide_id) rows; keep one row per slide")
    problems.per_row(src, moved_entries, "a slide_id appears under two different cases")

    # label columns
    label_columns, label_classes = _label_columns(df, config, problems, notes)

    # per-case consistency
    case_rows: dict[str, list[int]] = {}
    for i, c in enumerate(case_col):
        if c:
            case_rows.setdefault(c, []).append(i)
    consistent_cols = [n for n in ("project", "survival_months", "censorship") if n in df.columns]
    conflict_entries = []
    records = []
    slides: dict[str, list[str]] = {}
    first_row: dict[str, int] = {}
    slide_rows: dict[str, int] = {}
    for case, idx in case_rows.items():
        good = [i for i in idx if not bad_row[i]]
        first_row[case] = int(rows[idx[0]])
        conflicts = []
        for name in consistent_cols + label_columns:
            if name == "survival_months":
                values = {f"{survival[i]:g}" for i in good}
            elif name == "censorship":
                values = {str(censorship[i]) for i in good}
            elif name == "project":
                values = {df["project"].iat[i] for i in good}
            else:
                values = {v for i in good if (v := label_classes[name][i]) is not None}
            if len(values) > 1:
                shown = ", ".join(sorted(str(v) for v in values))
                conflicts.append(f"{name} ({shown})")
        if conflicts:
            rows_text = ", ".join(str(int(rows[i])) for i in idx)
            conflict_entries.append((int(rows[idx[0]]), f"case {case} has conflicting "
                                     f"{'; '.join(conflicts)} across its rows {rows_text}"))
            continue
        if not good:
            continue
        i0 = good[0]
        record = {"case_id": case, "project": df["project"].iat[i0] if "project" in df.columns else "",
                  "survival_months": survival[i0], "censorship": int(censorship[i0])}
        for name in label_columns:
            record[name] = next((v for i in good if (v := label_classes[name][i]) is not None), None)
        records.append(record)
        slides[case] = [slide_col[i] for i in good]
        for i in good:
            slide_rows[slide_col[i]] = int(rows[i])
    problems.per_row(src, conflict_entries, "cases with conflicting values across their slide rows")

    cases = pd.DataFrame.from_records(
        records, columns=["case_id", "project", "survival_months", "censorship", *label_columns])
    cases["event"] = 1 - cases["censorship"].astype(np.int64)
    cases["n_slides"] = [len(slides[c]) for c in cases["case_id"]]
    return _Clinical(cases, slides, first_row, label_columns, slide_rows)


def _label_columns(df: pd.DataFrame, config: CohortConfig, problems: _Problems,
                   notes: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """Pick label columns and normalise their values (None = missing); stores classes in config."""
    src = config.clinical
    extra = [c for c in df.columns if c not in REQUIRED_COLUMNS]
    if config.labels is not None:
        wanted = list(config.labels)
        for name in wanted:
            if name not in df.columns:
                problems.add(f"{src}: label column {name} named in the cohort config is missing")
        names = [n for n in wanted if n in df.columns]
    else:
        names = [c for c in extra if _LABEL_NAME.search(c)]
        unused = [c for c in extra if c not in names]
        if unused:
            notes.append(f"{src}: column(s) {', '.join(unused)} not used as labels; list them under "
                         "\"labels\" in cohort.json to use them")
    values: dict[str, list[Any]] = {}
    rows = np.arange(len(df)) + 2
    for name in names:
        declared = (config.labels or {}).get(name)
        out: list[Any] = []
        bad = []
        for r, v in zip(rows, df[name].tolist()):
            v = v if isinstance(v, str) else str(v)
            if _is_missing(v):
                out.append(None)
            elif name.lower() == "stage" and declared is None:
                stage = _normalise_stage(v)
                if stage is None:
                    bad.append((int(r), f"stage {v!r} is not a stage I-IV (e.g. 'Stage IIA', 'III')"))
                out.append(stage)
            else:
                value = _normalise_value(v)
                if name.lower() == "stage" and declared and (stage := _normalise_stage(v)) in declared:
                    value = stage  # 'Stage IIA' counts as a declared class 'II'
                if declared is not None and value not in [str(c) for c in declared]:
                    bad.append((int(r), f"{name} {v!r} is not one of the declared classes "
                                        f"{', '.join(map(str, declared))}"))
                    out.append(None)
                else:
                    out.append(value)
        problems.per_row(src, bad, f"{name} has values outside its classes")
        values[name] = out
    return names, values


def _classes_for(name: str, values: Iterable[Any], config: CohortConfig) -> list[str]:
    declared = (config.labels or {}).get(name)
    if declared is not None:
        return [str(c) for c in declared]
    present = {v for v in values if isinstance(v, str)}
    if name.lower() == "stage":
        return [s for s in STAGE_CLASSES if s in present]

    def key(v: str) -> tuple[int, float, str]:
        number = _parse_number(v)
        return (0, number, "") if number is not None else (1, 0.0, v)

    return sorted(present, key=key)


# --------------------------------------------------------------------------------------------
# files, expression, gene sets


def _find_slide_files(slides_dir: Path) -> dict[str, Path]:
    if not slides_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(slides_dir.iterdir()):
        if p.suffix.lower() in SLIDE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def _check_files(root: Path, clinical: _Clinical, config: CohortConfig,
                 problems: _Problems) -> tuple[dict[str, Path | None], dict[str, Path | None]]:
    features_dir, slides_dir = root / config.features_dir, root / config.slides_dir
    slide_files = _find_slide_files(slides_dir)
    feature_paths: dict[str, Path | None] = {}
    slide_paths: dict[str, Path | None] = {}
    entries = []
    if not features_dir.is_dir() and not slides_dir.is_dir():
        problems.add(f"neither {config.features_dir}/ nor {config.slides_dir}/ exists in {root}: put "
                     f"feature files ({config.features_dir}/<slide_id>.h5) or slides there")
        return feature_paths, slide_paths
    for case, slide_ids in clinical.slides.items():
        for s in slide_ids:
            h5 = features_dir / f"{s}.h5"
            feature_paths[s] = h5 if h5.is_file() else None
            slide_paths[s] = slide_files.get(s)
            if feature_paths[s] is None and slide_paths[s] is None:
                entries.append((clinical.slide_rows[s],
                                f"case {case}: slide {s} has neither {config.features_dir}/{s}.h5 "
                                f"nor a slide file {config.slides_dir}/{s}.<svs|tif|ndpi|...>"))
    problems.per_row(config.clinical, entries,
                     "slides without a feature file or a slide file (cases without features or slides)")
    return feature_paths, slide_paths


def _read_expression(root: Path, clinical: _Clinical | None, config: CohortConfig,
                     problems: _Problems, notes: list[str]) -> tuple[list[str], np.ndarray] | None:
    src = config.expression
    df = _read_csv(root / src, problems, dtype={"case_id": str}, keep_default_na=True)
    if df is None:
        return None
    if "case_id" not in df.columns:
        problems.add(f"{src}: missing the case_id column (rows = cases, columns = genes)")
        return None
    df["case_id"] = df["case_id"].astype(str).str.strip()
    rows = np.arange(len(df)) + 2
    dups = df["case_id"].duplicated(keep="first").to_numpy()
    problems.per_row(src, [(int(r), f"case {c} is listed twice") for r, c, d in
                           zip(rows, df["case_id"], dups) if d], "case_id listed twice")
    genes = [c for c in df.columns if c != "case_id"]
    if not genes:
        problems.add(f"{src}: no gene columns besides case_id")
        return None
    dup_genes = sorted({g for g in genes if genes.count(g) > 1 or re.search(r"\.\d+$", g) and
                        g.rsplit(".", 1)[0] in genes})
    if dup_genes:
        problems.add(f"{src}: gene column(s) repeated: {', '.join(dup_genes[:10])}")
    values = df[genes]
    numeric = values.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        entries = []
        for i, j in zip(*np.nonzero(bad)):
            raw = values.iat[i, j]
            what = "is empty" if raw is None or (isinstance(raw, float) and math.isnan(raw)) \
                else f"{raw!r} is not a number"
            entries.append((int(rows[i]), f"gene {genes[j]} (case {df['case_id'].iat[i]}) {what}"))
        problems.per_row(src, entries, "non-numeric or empty expression values")
    matrix = numeric.to_numpy(np.float64)
    finite = matrix[np.isfinite(matrix)]
    scale = config.expression_scale
    if scale is None:
        integer_like = finite.size > 0 and np.all(finite == np.round(finite))
        scale = "raw" if finite.size and (finite.max() > 50 or (integer_like and finite.max() > 20)) \
            else "log"
        notes.append(f"{src}: expression scale inferred as {scale!r} (max value {finite.max():.3g}); "
                     "set expression_scale in cohort.json to be explicit" if finite.size else
                     f"{src}: no numeric values")
    if scale == "raw":
        negative = np.argwhere(matrix < 0)
        problems.per_row(src, [(int(rows[i]), f"gene {genes[j]} is negative ({matrix[i, j]:g}) but the "
                                              "scale is raw") for i, j in negative],
                         "negative values in raw expression; set expression_scale to \"log\" if "
                         "the table is already log-normalised")
        with np.errstate(invalid="ignore"):
            matrix = np.log1p(np.maximum(matrix, 0))
    if clinical is None:
        return None
    position = {c: i for i, c in zip(range(len(df)), df["case_id"]) if not dups[i]}
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


def _resolve_gmt(root: Path, config: CohortConfig, problems: _Problems) -> Path | None:
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


# --------------------------------------------------------------------------------------------
# loading


def load_cohort(root: str | Path) -> Cohort:
    """Load and validate a cohort directory (format in the module docstring).

    Raises:
        CohortValidationError: listing every problem found (missing columns, duplicates, bad
            survival or censorship values, conflicting case rows, slides without features or slide
            files, cases missing from the expression table, non-numeric expression values, ...).
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"cohort directory {root} does not exist; give the folder that holds "
                          "clinical.csv, expression.csv and a .gmt file")
    problems = _Problems()
    notes: list[str] = []
    config = _read_config(root, problems)

    clinical: _Clinical | None = None
    df = _read_csv(root / config.clinical, problems, dtype=str, keep_default_na=False)
    if df is not None:
        clinical = _check_clinical(df, config, problems, notes)
    feature_paths: dict[str, Path | None] = {}
    slide_paths: dict[str, Path | None] = {}
    if clinical is not None:
        feature_paths, slide_paths = _check_files(root, clinical, config, problems)
    expression = _read_expression(root, clinical, config, problems, notes)

    gmt_path = _resolve_gmt(root, config, problems)
    gene_sets = []
    if gmt_path is not None:
        try:
            text = gmt_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(f"{gmt_path.name} cannot be read ({exc})")
        else:
            gene_sets, gmt_problems = parse_gmt(text, source=gmt_path.name)
            for p in gmt_problems:
                problems.add(p)

    cohort_warnings: list[str] = []
    group_names: list[str] = []
    group_genes: list[list[str]] = []
    if expression is not None and gene_sets:
        group_names, group_genes, cohort_warnings = restrict_gene_groups(
            [(s.name, s.genes) for s in gene_sets], expression[0], source=gmt_path.name)
        if not group_names:
            problems.add(f"no gene of {gmt_path.name} occurs in {config.expression}: check that both "
                         "use the same gene symbols")

    if problems.items:
        raise CohortValidationError(root, problems.items)
    assert clinical is not None and expression is not None  # guaranteed by the empty problem list

    all_genes, matrix = expression
    used = set().union(*map(set, group_genes))
    genes = [g for g in all_genes if g in used]
    column = {g: i for i, g in enumerate(all_genes)}
    matrix = matrix[:, [column[g] for g in genes]].astype(np.float32)
    gene_index = {g: i for i, g in enumerate(genes)}
    groups = [np.array([gene_index[g] for g in members], dtype=np.int64) for members in group_genes]

    cases = clinical.cases.reset_index(drop=True)
    labels = {name: _classes_for(name, cases[name], config) for name in clinical.label_columns}
    for name, classes in labels.items():
        if len(classes) < 2:
            notes.append(f"label {name} has fewer than two classes ({', '.join(classes) or 'none'}); "
                         "it cannot be used as a task")
    return Cohort(
        root=root, config=config, cases=cases, slides=clinical.slides,
        feature_paths=feature_paths, slide_paths=slide_paths, genes=genes, expression=matrix,
        group_names=group_names, gene_groups=groups, labels=labels,
        projects=sorted(cases["project"].unique().tolist()), warnings=cohort_warnings, notes=notes)


# --------------------------------------------------------------------------------------------
# survival bins


def survival_bins(times, censorship, n_bins: int = 4) -> np.ndarray:
    """Discrete-time bin edges from quantiles of the *uncensored* survival times.

    Inner edges are the 1/n, ..., (n−1)/n quantiles (linear interpolation, as ``pd.qcut``) of the
    times with ``censorship == 0``; outer edges are 0 and ∞. Compute on training folds only.

    Args:
        times: (n,) survival months.
        censorship: (n,) 1 = censored, 0 = event observed.
        n_bins: number of bins.

    Returns:
        (n_bins + 1,) float64 increasing edges ``[0, q1, ..., q_{n-1}, inf]``.
    """
    t = np.asarray(times, dtype=np.float64).ravel()
    c = np.asarray(censorship).ravel()
    if t.shape != c.shape:
        raise ValueError(f"times and censorship differ in length: {t.shape} vs {c.shape}")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    uncensored = t[c == 0]
    if uncensored.size == 0:
        raise CohortError("no uncensored survival time (every case censored) in the training cases; "
                          "survival bins need observed events")
    inner = np.quantile(uncensored, np.arange(1, n_bins) / n_bins)
    return np.concatenate([[0.0], inner, [np.inf]])


def assign_bins(times, edges) -> np.ndarray:
    """Bin index of each time: bin j holds ``edges[j] <= t < edges[j+1]`` (left-closed, as the
    mahmoodlab ``pd.cut(right=False)``); returns (n,) int64 in [0, len(edges) − 2]."""
    t = np.asarray(times, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64).ravel()
    idx = np.searchsorted(e, t, side="right") - 1
    return np.clip(idx, 0, len(e) - 2).astype(np.int64)


# --------------------------------------------------------------------------------------------
# expression scaling


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


# --------------------------------------------------------------------------------------------
# folds


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold; indices are rows of ``Cohort.cases``."""

    index: int  # 0-based fold number
    train: np.ndarray  # (n_train,) int64 case indices
    test: np.ndarray  # (n_test,) int64 case indices


def _strata(cohort: Cohort, cases: np.ndarray, keys: Sequence[str]) -> list[tuple[str, ...]]:
    columns = []
    for key in keys:
        if key == "event":
            columns.append([str(v) for v in cohort.events[cases]])
        elif key == "project":
            columns.append(cohort.cases["project"].to_numpy()[cases].astype(str).tolist())
        elif key in cohort.labels:
            columns.append([str(v) for v in cohort.label_codes(key)[cases]])
        elif key in cohort.cases.columns:
            columns.append(cohort.cases[key].to_numpy()[cases].astype(str).tolist())
        else:
            raise KeyError(f"cannot stratify by {key!r}: not project, event or a cohort column")
    return list(zip(*columns)) if columns else [()] * len(cases)


def stratified_folds(cohort: Cohort, n_folds: int = 5, seed: int = 0,
                     stratify_by: Sequence[str] = ("project", "event"),
                     cases: Sequence[int] | np.ndarray | None = None) -> list[Fold]:
    """Split cases (never slides: a case's slides stay together) into ``n_folds`` folds.

    Strata are the combinations of ``stratify_by`` (``project``, ``event``, any label column);
    strata with fewer than ``n_folds`` cases are merged into coarser ones (dropping the last keys)
    so every stratum can be spread over the folds. Uses scikit-learn's ``StratifiedKFold`` with
    shuffling, deterministic for ``seed``.

    Args:
        cohort: the loaded cohort.
        n_folds: number of folds (≥ 2).
        seed: shuffling seed.
        stratify_by: stratification keys.
        cases: the case indices to split (e.g. those with a label); default all cases.

    Returns:
        ``n_folds`` folds whose test sets partition ``cases``.
    """
    from sklearn.model_selection import StratifiedKFold

    idx = np.arange(cohort.n_cases) if cases is None else np.asarray(cases, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise ValueError("cases must not repeat")
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    if len(idx) < n_folds:
        raise CohortError(f"{len(idx)} case(s) cannot be split into {n_folds} folds; "
                          "use fewer folds or a larger cohort")
    strata = _strata(cohort, idx, stratify_by)
    for depth in range(len(stratify_by), -1, -1):  # merge rare strata into coarser ones
        counts: dict[tuple[str, ...], int] = {}
        for s in strata:
            counts[s] = counts.get(s, 0) + 1
        if all(n >= n_folds for n in counts.values()) or depth == 0:
            break
        strata = [s if counts[s] >= n_folds else s[:depth - 1] for s in strata]
    labels = np.unique(np.array(["\x1f".join(s) for s in strata]), return_inverse=True)[1]
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a residual small stratum is fine
        splits = list(splitter.split(np.zeros(len(idx)), labels))
    return [Fold(k, np.sort(idx[train]), np.sort(idx[test])) for k, (train, test) in enumerate(splits)]
