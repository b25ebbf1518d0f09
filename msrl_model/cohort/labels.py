"""Label columns of ``clinical.csv`` (architecture §3): which columns are labels, their values normalised
(missing-value spellings, integer codes, stage I–IV) and their class order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pandas as pd

from msrl_model.cohort.format import REQUIRED_COLUMNS, CohortConfig, Problems, parse_number, spreadsheet_rows

# Cell values that mean "not known" in clinical tables (TCGA/cBioPortal spellings), compared lower-case.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown", "not reported",
                            "[not available]", "[not applicable]", "[unknown]", "[not evaluated]",
                            "[discrepancy]", "not available", "stage x", "x"})
# Clinical columns that are used as labels without being listed in the config.
_LABEL_NAME = re.compile(r"(^stage$|^grade$|_mut$|_mutation$|_status$|_subtype$)", re.IGNORECASE)
STAGE_CLASSES = ("I", "II", "III", "IV")
_ROMAN = {"I": "I", "II": "II", "III": "III", "IV": "IV", "1": "I", "2": "II", "3": "III", "4": "IV"}


def is_missing(value: str) -> bool:
    return value.strip().lower() in MISSING_TOKENS


def normalise_value(value: str) -> str:
    """'1.0' -> '1' so that integer-coded labels compare equal; other text stripped."""
    v = value.strip()
    number = parse_number(v)
    return str(int(number)) if number is not None and number.is_integer() else v


def normalise_stage(value: str) -> str | None:
    """'Stage IIA' / 'stage 2' / 'II' -> 'II'; None when not a stage I–IV."""
    v = value.strip().upper()
    v = re.sub(r"^STAGE\s*", "", v)
    m = re.fullmatch(r"(IV|III|II|I|[1-4])[ABC]?[0-9]?", v)
    return _ROMAN[m.group(1)] if m else None


def _pick_label_columns(df: pd.DataFrame, config: CohortConfig, problems: Problems,
                        notes: list[str]) -> list[str]:
    """The columns named in the config, else those whose name looks like a label (``_LABEL_NAME``)."""
    src = config.clinical
    if config.labels is not None:
        for name in config.labels:
            if name not in df.columns:
                problems.add(f"{src}: label column {name} named in the cohort config is missing")
        return [n for n in config.labels if n in df.columns]
    extra = [c for c in df.columns if c not in REQUIRED_COLUMNS]
    names = [c for c in extra if _LABEL_NAME.search(c)]
    unused = [c for c in extra if c not in names]
    if unused:
        notes.append(f"{src}: column(s) {', '.join(unused)} not used as labels; list them under "
                     "\"labels\" in cohort.json to use them")
    return names


def _label_value(name: str, value: str, declared: list[str] | None) -> tuple[str | None, str | None]:
    """``(normalised value or None, problem or None)`` of one cell of label column ``name``."""
    if is_missing(value):
        return None, None
    if name.lower() == "stage" and declared is None:
        stage = normalise_stage(value)
        return stage, None if stage is not None else \
            f"stage {value!r} is not a stage I-IV (e.g. 'Stage IIA', 'III')"
    normalised = normalise_value(value)
    if name.lower() == "stage" and declared and (stage := normalise_stage(value)) in declared:
        normalised = stage  # 'Stage IIA' counts as a declared class 'II'
    if declared is not None and normalised not in [str(c) for c in declared]:
        return None, f"{name} {value!r} is not one of the declared classes {', '.join(map(str, declared))}"
    return normalised, None


def label_columns(df: pd.DataFrame, config: CohortConfig, problems: Problems,
                  notes: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """Pick label columns and normalise their values per row (None = missing)."""
    names = _pick_label_columns(df, config, problems, notes)
    values: dict[str, list[Any]] = {}
    rows = spreadsheet_rows(len(df))
    for name in names:
        declared = (config.labels or {}).get(name)
        out: list[Any] = []
        bad = []
        for r, v in zip(rows, df[name].tolist()):
            value, problem = _label_value(name, v if isinstance(v, str) else str(v), declared)
            out.append(value)
            if problem is not None:
                bad.append((int(r), problem))
        problems.per_row(config.clinical, bad, f"{name} has values outside its classes")
        values[name] = out
    return names, values


def classes_for(name: str, values: Iterable[Any], config: CohortConfig) -> list[str]:
    """Class order of a label: as declared in the config, stages I–IV in order, else numbers first
    (numerically), then text (alphabetically)."""
    declared = (config.labels or {}).get(name)
    if declared is not None:
        return [str(c) for c in declared]
    present = {v for v in values if isinstance(v, str)}
    if name.lower() == "stage":
        return [s for s in STAGE_CLASSES if s in present]

    def key(v: str) -> tuple[int, float, str]:
        number = parse_number(v)
        return (0, number, "") if number is not None else (1, 0.0, v)

    return sorted(present, key=key)
