"""``clinical.csv`` validation (architecture §3), one function per column family: ids and project,
survival, censorship, duplicate rows, labels (``cohort/labels.py``), then the per-case consistency
of a case's slide rows. Every problem goes to the :class:`~msrl_model.cohort.format.Problems`
collector with its spreadsheet row; rows with a problem are left out of the per-case checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from msrl_model.cohort.format import REQUIRED_COLUMNS, CohortConfig, Problems, parse_number, spreadsheet_rows
from msrl_model.cohort.labels import label_columns

# Columns that must hold one value per case across its slide rows (labels are compared too).
_PER_CASE_COLUMNS = ("project", "survival_months", "censorship")


@dataclass
class Clinical:
    """The valid cases of ``clinical.csv`` and where they came from."""

    cases: pd.DataFrame  # one row per valid case
    slides: dict[str, list[str]]  # case_id -> slide ids in file order
    first_row: dict[str, int]  # case_id -> first spreadsheet row
    label_columns: list[str]  # label columns (incl. stage), in file or config order
    slide_rows: dict[str, int]  # slide_id -> spreadsheet row


@dataclass
class _ParsedRows:
    """``clinical.csv`` parsed row by row (every sequence has one entry per row)."""

    rows: np.ndarray  # spreadsheet row numbers
    case: list[str]  # case_id
    slide: list[str]  # slide_id
    project: list[str] | None  # None when the column is missing
    survival: np.ndarray  # float64 months, NaN where invalid
    censorship: np.ndarray  # int64 0/1, −1 where invalid
    labels: dict[str, list[str | None]]  # label column -> normalised value (None = missing)
    compared: list[str]  # columns that must agree across a case's rows
    bad: np.ndarray  # bool: rows with a problem, left out of the per-case checks


def _check_ids(df: pd.DataFrame, rows: np.ndarray, src: str, problems: Problems) -> np.ndarray:
    """Empty case_id, slide_id or project cells; returns the rows that have one."""
    bad = np.zeros(len(df), dtype=bool)
    for name in ("case_id", "slide_id", "project"):
        if name not in df.columns:
            continue
        empty = (df[name] == "").to_numpy(dtype=bool)
        problems.per_row(src, [(int(r), f"{name} is empty") for r in rows[empty]], f"{name} is empty")
        bad |= empty
    return bad


def _parse_survival(values: list[str] | None, rows: np.ndarray, src: str,
                    problems: Problems) -> tuple[np.ndarray, np.ndarray]:
    """``(months, bad rows)``: survival_months must be a non-negative number."""
    survival = np.full(len(rows), np.nan)
    bad = np.zeros(len(rows), dtype=bool)
    entries = []
    for i, (r, v) in enumerate(zip(rows, values or [])):
        value = parse_number(v)
        if v == "":
            entries.append((int(r), "survival_months is empty"))
        elif value is None:
            entries.append((int(r), f"survival_months {v!r} is not a number"))
        elif value < 0:
            entries.append((int(r), f"survival_months {v} is negative"))
        else:
            survival[i] = value
            continue
        bad[i] = True
    problems.per_row(src, entries, "survival_months must be a non-negative number of months")
    return survival, bad


def _parse_censorship(values: list[str] | None, rows: np.ndarray, src: str,
                      problems: Problems) -> tuple[np.ndarray, np.ndarray]:
    """``(censorship, bad rows)``: censorship must be 1 (censored) or 0 (event observed)."""
    censorship = np.full(len(rows), -1, dtype=np.int64)
    bad = np.zeros(len(rows), dtype=bool)
    entries = []
    for i, (r, v) in enumerate(zip(rows, values or [])):
        value = parse_number(v)
        if value in (0.0, 1.0):
            censorship[i] = int(value)
            continue
        entries.append((int(r), f"censorship {v!r} is not 0 or 1 (1 = censored, 0 = event observed)"
                        if v else "censorship is empty (1 = censored, 0 = event observed)"))
        bad[i] = True
    problems.per_row(src, entries, "censorship must be 0 (event observed) or 1 (censored)")
    return censorship, bad


def _check_duplicates(case: list[str], slide: list[str], rows: np.ndarray, src: str,
                      problems: Problems) -> np.ndarray:
    """Repeated (case_id, slide_id) rows and slides claimed by two cases; returns those rows."""
    bad = np.zeros(len(rows), dtype=bool)
    seen: dict[tuple[str, str], int] = {}
    slide_case: dict[str, tuple[str, int]] = {}
    duplicates, moved = [], []
    for i, (r, c, s) in enumerate(zip(rows, case, slide)):
        if not c or not s:
            continue
        if (c, s) in seen:
            duplicates.append((int(r), f"duplicate of row {seen[(c, s)]} (case_id {c}, slide_id {s})"))
            bad[i] = True
            continue
        seen[(c, s)] = int(r)
        if s in slide_case and slide_case[s][0] != c:
            moved.append((int(r), f"slide_id {s} belongs to case {c} here but to case "
                                  f"{slide_case[s][0]} in row {slide_case[s][1]}"))
            bad[i] = True
            continue
        slide_case.setdefault(s, (c, int(r)))
    problems.per_row(src, duplicates, "duplicate (case_id, slide_id) rows; keep one row per slide")
    problems.per_row(src, moved, "a slide_id appears under two different cases")
    return bad


def _case_values(p: _ParsedRows, name: str, rows: list[int]) -> set[str]:
    """The distinct values of column ``name`` over some rows (missing labels left out)."""
    if name == "survival_months":
        return {f"{p.survival[i]:g}" for i in rows}
    if name == "censorship":
        return {str(p.censorship[i]) for i in rows}
    if name == "project":
        return {p.project[i] for i in rows}
    return {v for i in rows if (v := p.labels[name][i]) is not None}


def _case_record(p: _ParsedRows, case: str, rows: list[int]) -> dict[str, object]:
    """One row of ``Clinical.cases`` from a case's (consistent, valid) slide rows."""
    i0 = rows[0]
    record: dict[str, object] = {
        "case_id": case, "project": p.project[i0] if p.project is not None else "",
        "survival_months": p.survival[i0], "censorship": int(p.censorship[i0])}
    for name, values in p.labels.items():
        record[name] = next((v for i in rows if (v := values[i]) is not None), None)
    return record


def _collect_cases(p: _ParsedRows, src: str, problems: Problems) -> Clinical:
    """Group the rows by case; a case whose rows disagree (project, survival, labels) is a problem."""
    case_rows: dict[str, list[int]] = {}
    for i, c in enumerate(p.case):
        if c:
            case_rows.setdefault(c, []).append(i)
    conflict_entries = []
    records = []
    slides: dict[str, list[str]] = {}
    first_row: dict[str, int] = {}
    slide_rows: dict[str, int] = {}
    for case, idx in case_rows.items():
        good = [i for i in idx if not p.bad[i]]
        first_row[case] = int(p.rows[idx[0]])
        conflicts = [f"{name} ({', '.join(sorted(values))})" for name in p.compared
                     if len(values := _case_values(p, name, good)) > 1]
        if conflicts:
            rows_text = ", ".join(str(int(p.rows[i])) for i in idx)
            conflict_entries.append((int(p.rows[idx[0]]), f"case {case} has conflicting "
                                     f"{'; '.join(conflicts)} across its rows {rows_text}"))
            continue
        if not good:
            continue
        records.append(_case_record(p, case, good))
        slides[case] = [p.slide[i] for i in good]
        slide_rows.update((p.slide[i], int(p.rows[i])) for i in good)
    problems.per_row(src, conflict_entries, "cases with conflicting values across their slide rows")
    cases = pd.DataFrame.from_records(
        records, columns=["case_id", "project", "survival_months", "censorship", *p.labels])
    cases["event"] = 1 - cases["censorship"].astype(np.int64)
    cases["n_slides"] = [len(slides[c]) for c in cases["case_id"]]
    return Clinical(cases, slides, first_row, list(p.labels), slide_rows)


def check_clinical(df: pd.DataFrame, config: CohortConfig, problems: Problems,
                   notes: list[str]) -> Clinical | None:
    """Validate ``clinical.csv`` (read with ``dtype=str``); None when case_id or slide_id is missing."""
    src = config.clinical
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.add(f"{src}: missing required column{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})")
    df = df.map(lambda v: v.strip() if isinstance(v, str) else v)
    rows = spreadsheet_rows(len(df))

    def col(name: str) -> list[str] | None:
        return df[name].tolist() if name in df.columns else None

    bad = _check_ids(df, rows, src, problems)
    survival, bad_survival = _parse_survival(col("survival_months"), rows, src, problems)
    censorship, bad_censorship = _parse_censorship(col("censorship"), rows, src, problems)
    case, slide = col("case_id"), col("slide_id")
    if case is None or slide is None:
        return None
    bad_duplicate = _check_duplicates(case, slide, rows, src, problems)
    names, labels = label_columns(df, config, problems, notes)
    compared = [n for n in _PER_CASE_COLUMNS if n in df.columns] + names
    parsed = _ParsedRows(rows, case, slide, col("project"), survival, censorship, labels, compared,
                         bad | bad_survival | bad_censorship | bad_duplicate)
    return _collect_cases(parsed, src, problems)
