"""Label columns of ``clinical.csv`` (architecture §3): which columns are labels, their values normalised
(missing-value spellings, integer codes, stage I–IV), their class order and their readable names.

**Readable class names.** A class is stored as its code (``"0"``, ``"1"``, ``"II"``); what a
pathologist reads is :func:`class_names`:

* a class declared in ``cohort.json`` as ``"code:name"`` reads ``name``, e.g.
  ``"labels": {"TP53_mut": ["0:wild-type", "1:mutant"], "MSI_status": ["MSS:stable", "MSI-H:unstable"]}``
  (the code is what the clinical table holds; everything after the first ``:`` is the name);
* otherwise a binary 0/1 column gets the usual wording by its name: ``*_mut`` / ``*_mutation``
  0/1 → wild-type/mutant, ``*_status`` 0/1 → negative/positive (HER2, ER, PR …);
* any other class reads as its code ("I" … "IV", "negative", "LumA").
"""

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


# Wording of the two classes of a binary 0/1 label column, by the column's name (see the module docstring).
_BINARY_NAMES = ((re.compile(r"(_mut|_mutation)$", re.IGNORECASE), ("wild-type", "mutant")),
                 (re.compile(r"_status$", re.IGNORECASE), ("negative", "positive")))


def split_class(entry: str) -> tuple[str, str | None]:
    """A declared class ``"code:name"`` as ``(code, name)``; ``(entry, None)`` without a ``:``."""
    code, sep, name = str(entry).partition(":")
    return (code.strip(), name.strip() or None) if sep else (str(entry).strip(), None)


def class_names(label: str, classes: Iterable[str], declared: Iterable[str] | None = None) -> list[str]:
    """The readable name of each class code of label column ``label`` (module docstring): the name
    declared as ``code:name``, else the binary wording for a 0/1 column named ``*_mut``/``*_status``,
    else the code itself."""
    codes = [str(c) for c in classes]
    named = {code: name for code, name in map(split_class, declared or []) if name}
    if not named and sorted(codes) == ["0", "1"]:
        for pattern, (zero, one) in _BINARY_NAMES:
            if pattern.search(label):
                named = {"0": zero, "1": one}
                break
    return [named.get(c, c) for c in codes]


def _declared_codes(declared: list[str] | None) -> list[str] | None:
    """The codes of a declared class list (``code:name`` entries stripped of their names)."""
    return None if declared is None else [split_class(c)[0] for c in declared]


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
        declared = _declared_codes((config.labels or {}).get(name))
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
    declared = _declared_codes((config.labels or {}).get(name))
    if declared is not None:
        return declared
    present = {v for v in values if isinstance(v, str)}
    if name.lower() == "stage":
        return [s for s in STAGE_CLASSES if s in present]

    def key(v: str) -> tuple[int, float, str]:
        number = parse_number(v)
        return (0, number, "") if number is not None else (1, 0.0, v)

    return sorted(present, key=key)
