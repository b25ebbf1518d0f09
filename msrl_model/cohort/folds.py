"""Cross-validation folds over the cases of a cohort, stratified by project, event and labels."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msrl_model.cohort.format import Cohort
from msrl_model.errors import CohortError


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
