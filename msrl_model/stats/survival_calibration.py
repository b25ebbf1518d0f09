r"""Survival calibration on held-out folds: time-dependent Brier score, integrated Brier score and
predicted-vs-Kaplan–Meier survival by risk group.

A discrete-time survival head gives each case :math:`S_j` = P(alive at the end of bin j) for the
bins :math:`[e_{j-1}, e_j)` of its fold (edges in months, :math:`e_0 = 0`, last edge ∞). Its
survival function at a time t is read as the app draws it (:func:`survival_at`): 1 before
:math:`e_1`, :math:`S_j` from :math:`e_j` on. Every evaluation time here is a bin end, where
:math:`S(e_j) = S_j` under any reading of the curve between the ends.

The Brier score at t (inverse-probability-of-censoring weighted, censoring distribution from the
fold's *training* cases by Kaplan–Meier) and its integral over the evaluation times come from
scikit-survival (:func:`sksurv.metrics.brier_score`, :func:`sksurv.metrics.integrated_brier_score`);
the reference is the same score of the training cases' Kaplan–Meier curve given to every test case
(a model that knows nothing of the slide). Lower is better; a useful model scores below its reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from msrl_model.stats.survival import kaplan_meier


def survival_at(survival: np.ndarray, edges: Sequence[float], times: np.ndarray) -> np.ndarray:
    """S(t) (Q, T) of cases with bin-end survival ``survival`` (Q, J) on bins ``edges`` (J + 1,)
    at ``times`` (T,): 1 before e_1, S_j on [e_j, e_{j+1}) — the step the app draws.

    The last bin is open ([e_{J-1}, ∞)): its end value S_J (0 for a proper model) is never reached.
    """
    ends = np.asarray(edges, np.float64)[1:-1]  # (J - 1,) finite bin ends
    values = np.concatenate([np.ones((survival.shape[0], 1)), survival[:, : len(ends)]], axis=1)  # (Q, J)
    return values[:, np.searchsorted(ends, np.asarray(times, np.float64), side="right")]


def km_at(times: np.ndarray, censorship: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The Kaplan–Meier survival of ``times``/``censorship`` at the times ``at`` (right-continuous)."""
    grid, surv = kaplan_meier(times, censorship)
    return surv[np.searchsorted(grid, at, side="right") - 1]


def _structured(times: np.ndarray, censorship: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(censorship) == 0, time=np.asarray(times, np.float64))


@dataclass(frozen=True)
class FoldBrier:
    """Brier scores of one held-out fold."""

    times: np.ndarray  # (T,) evaluation times in months
    model: np.ndarray  # (T,) Brier score of the model's S(t)
    reference: np.ndarray  # (T,) Brier score of the training cases' Kaplan–Meier curve
    integrated_model: float  # integrated Brier score over ``times`` (NaN with fewer than 2 times)
    integrated_reference: float


def _below_train_max(train_times: np.ndarray) -> float:
    """Just below the largest training follow-up: the last time the censoring curve is known at."""
    top = float(np.max(train_times))
    return top - 1e-6 * max(1.0, top)


def evaluation_times(edges: Sequence[float], train_times: np.ndarray, test_times: np.ndarray) -> np.ndarray:
    """The finite interior bin edges inside the test cases' follow-up range [shortest, longest) —
    with the longest clipped to where the training cases' censoring curve is known — as
    scikit-survival requires."""
    ends = np.asarray(edges, np.float64)[1:-1]
    test = np.minimum(np.asarray(test_times, np.float64), _below_train_max(train_times))
    return ends[(ends > 0) & (ends >= float(test.min())) & (ends < float(test.max()))]


def fold_brier(survival: np.ndarray, edges: Sequence[float], test_times: np.ndarray, test_censorship: np.ndarray,
               train_times: np.ndarray, train_censorship: np.ndarray) -> FoldBrier | None:
    """Brier scores of one fold's test cases at its interior bin edges (:func:`evaluation_times`);
    None when no edge is usable or no test event is observed."""
    from sksurv.metrics import brier_score, integrated_brier_score

    times = evaluation_times(edges, train_times, test_times)
    if times.size == 0 or np.all(np.asarray(test_censorship) == 1):
        return None
    train = _structured(train_times, train_censorship)
    # a test case followed beyond every training case is alive at every evaluation time: only the
    # censoring curve at those times weighs it, so its time is clipped to where that curve is known
    test = _structured(np.minimum(test_times, _below_train_max(train_times)), test_censorship)
    model = survival_at(survival, edges, times)  # (Q, T)
    reference = np.broadcast_to(km_at(train_times, train_censorship, times), model.shape)
    _, b_model = brier_score(train, test, model, times)
    _, b_ref = brier_score(train, test, reference, times)
    if times.size >= 2:
        ib_model = float(integrated_brier_score(train, test, model, times))
        ib_ref = float(integrated_brier_score(train, test, reference, times))
    else:
        ib_model = ib_ref = math.nan
    return FoldBrier(times, np.asarray(b_model), np.asarray(b_ref), ib_model, ib_ref)


def calibration_by_group(survival: np.ndarray, edges: Sequence[float], risk: np.ndarray, times: np.ndarray,
                         censorship: np.ndarray, at: np.ndarray, groups: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per risk group (tertiles of ``risk``, low to high): (mean predicted S at ``at``, Kaplan–Meier
    of the group's observed outcomes at ``at``). All arrays over the same Q cases of one fold."""
    order = np.argsort(np.argsort(risk, kind="stable"), kind="stable")
    group = order * groups // len(risk)
    predicted = survival_at(survival, edges, at)
    return [(predicted[group == g].mean(0), km_at(times[group == g], censorship[group == g], at))
            for g in range(groups) if np.any(group == g)]


__all__ = ["FoldBrier", "calibration_by_group", "evaluation_times", "fold_brier", "km_at", "survival_at"]
