r"""Split-conformal prediction sets, calibrated on out-of-fold predictions: classes for classification
tasks, survival-time bins for survival tasks.

**Calibration scores** (written at training time, ``train/export.py``): for every out-of-fold
prediction of the shipped method (MSRL) on a labelled case i, :math:`s_i = 1 - \hat p_i(y_i)`, one minus
the probability the held-out model gave the case's true class. Kept in the manifest's task entry as
``conformal_scores``.

**Set** at coverage 1 − α (default :data:`DEFAULT_COVERAGE` = 90 %): with n scores and
:math:`k = \lceil (n + 1)(1 - α) \rceil`, :math:`\hat q` is the k-th smallest score (∞ when k > n) and

.. math::
    C(x) = \{c : 1 - \hat p(c \mid x) \le \hat q\}

so that :math:`P(y \in C(x)) \ge 1 - α` for a slide exchangeable with the training cases (Vovk et al.;
Angelopoulos & Bates 2021). The scores come from the fold models, the shipped network was trained on
all cases: its probabilities are, if anything, a little sharper, so the guarantee is approximate.
A slide flagged as unlike the training cohort (:mod:`msrl_model.infer.applicability`) is not
exchangeable with it: its set means nothing.

**Empirical coverage** (the model card, :func:`cross_coverage`): for each fold f, :math:`\hat q` from the
scores of the other folds, and the share of fold f's cases whose true class is in their set.

**Survival: a set of time bins for the event.** The discrete-time head gives the probability that
the event falls in bin j of the task's bins :math:`[e_{j-1}, e_j)`:
:math:`\hat p_j = S_{j-1} - S_j` (:math:`S_0 = 1`), and :math:`\hat p_J = S_{J-1}` for the open last
bin (:func:`bin_masses`). The score of a case whose event was observed at :math:`T_i` in bin
:math:`y_i` is :math:`s_i = 1 - \hat p_{y_i}`, as for classes. A censored case's bin is unknown,
so only observed events calibrate, each with the inverse-probability-of-censoring weight
:math:`w_i = 1 / \hat G(T_i^-)` (:math:`\hat G` the Kaplan–Meier curve of the censoring times of
the cohort: :func:`censoring_weights`); under censoring independent of the slide and of the event
time, the weighted events stand for every case. :math:`\hat q` is the weighted quantile
(:func:`weighted_quantile`): the smallest score whose cumulative weight reaches coverage × (total
weight + one mean weight, the test case's share — with equal weights exactly the ⌈(n + 1)(1 − α)⌉
rule above). The set is :math:`\{j : 1 - \hat p_j \le \hat q\}` ("event between 14 and 31 months,
or after 52"). Its held-out coverage (:func:`survival_cross_coverage`) is the censoring-weighted share
of fold f's observed events whose bin is in their set (each fold's own bins), which estimates
P(T ∈ set) for all cases. The guarantee is approximate: the weights are estimated and the shipped
network's bins are those of all cases, not of each fold.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_COVERAGE = 0.9


def quantile(scores: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """q̂: the ⌈(n + 1) · coverage⌉-th smallest of ``scores`` (∞ when that exceeds n, or without scores)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(s) + 1) * coverage - 1e-12)
    return float(s[k - 1]) if 1 <= k <= len(s) else math.inf


def prediction_set(probabilities: np.ndarray, q: float) -> list[int]:
    """The classes c with 1 − p(c) ≤ q̂ (indices, most probable first); never empty (the argmax joins)."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    chosen = [int(c) for c in order if 1.0 - p[c] <= q]
    return chosen or [int(order[0])]


def scores_of(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 − p̂_i(y_i) of the rows with a label (labels ≥ 0; −1 = unknown, left out)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    keep = y >= 0
    return 1.0 - p[keep][np.arange(int(keep.sum())), y[keep]]


def cross_coverage(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                   coverage: float = DEFAULT_COVERAGE) -> tuple[float, float]:
    """(empirical coverage, mean set size) over held-out folds: fold f's sets from the other folds' q̂."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    folds = np.asarray(folds)
    keep = y >= 0
    p, y, folds = p[keep], y[keep], folds[keep]
    hits, sizes = [], []
    for f in np.unique(folds):
        q = quantile(scores_of(p[folds != f], y[folds != f]), coverage)
        for row, label in zip(p[folds == f], y[folds == f]):
            chosen = prediction_set(row, q)
            hits.append(label in chosen)
            sizes.append(len(chosen))
    return (float(np.mean(hits)), float(np.mean(sizes))) if hits else (math.nan, math.nan)


def bin_masses(bin_survival: np.ndarray) -> np.ndarray:
    """(Q, J) P(event in bin j) from (Q, J) bin-end survival S_j: S_{j-1} − S_j, the open last bin S_{J-1}."""
    s = np.atleast_2d(np.asarray(bin_survival, dtype=np.float64))
    before = np.concatenate([np.ones((s.shape[0], 1)), s[:, :-1]], axis=1)  # S_{j-1}
    masses = before - s
    masses[:, -1] = before[:, -1]  # the open last bin holds everything alive at its start
    return np.clip(masses, 0.0, 1.0)


def event_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin index j (0-based) with e_j <= t < e_{j+1} of each time, for bins ``edges`` (J + 1,)."""
    return np.searchsorted(np.asarray(edges, np.float64)[1:-1], np.asarray(times, np.float64), side="right")


def censoring_weights(times: np.ndarray, censorship: np.ndarray) -> np.ndarray:
    """1 / Ĝ(T_i−) per case: Ĝ the Kaplan–Meier curve of the censoring times (censoring as the
    event), read just before each case's time; inf where Ĝ reaches 0."""
    from msrl_model.stats.survival import kaplan_meier

    t = np.asarray(times, np.float64)
    grid, g = kaplan_meier(t, 1 - np.asarray(censorship, np.int64))  # censorings are the "events"
    before = g[np.clip(np.searchsorted(grid, t, side="left") - 1, 0, None)]
    with np.errstate(divide="ignore"):
        return np.where(before > 0, 1.0 / before, np.inf)


def weighted_quantile(scores: np.ndarray, weights: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """q̂: the smallest score whose cumulative weight reaches ``coverage`` × (Σ w + mean w); ∞ when none does."""
    s = np.asarray(scores, np.float64)
    w = np.asarray(weights, np.float64)
    keep = np.isfinite(w) & (w > 0)
    s, w = s[keep], w[keep]
    if s.size == 0:
        return math.inf
    order = np.argsort(s, kind="stable")
    cumulative = np.cumsum(w[order])
    need = coverage * (cumulative[-1] + w.mean()) - 1e-12 * cumulative[-1]
    hit = np.flatnonzero(cumulative >= need)
    return float(s[order][hit[0]]) if hit.size else math.inf


def survival_scores(bin_survival: np.ndarray, edges: list[np.ndarray], times: np.ndarray, censorship: np.ndarray,
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores 1 − p̂_{y_i}, their weights) of the observed events among Q predictions: bin-end survival
    (Q, J), each case's bin edges ``edges[i]`` (its fold's), its time, censorship and censoring weight."""
    masses = bin_masses(bin_survival)
    event = np.asarray(censorship) == 0
    bins = np.array([int(event_bin(np.array([t]), e)[0]) for t, e in zip(times, edges)], dtype=np.int64)
    scores = 1.0 - masses[np.arange(len(bins)), bins]
    return scores[event], np.asarray(weights, np.float64)[event]


def survival_set(bin_survival: np.ndarray, q: float) -> list[int]:
    """The bins j with 1 − p̂_j ≤ q̂ (ascending); never empty (the most probable bin joins)."""
    p = bin_masses(bin_survival)[0]
    chosen = [int(j) for j in range(len(p)) if 1.0 - p[j] <= q]
    return chosen or [int(np.argmax(p))]


def describe_bins(chosen: list[int], edges: list[float | None]) -> str:
    """"between 14 and 31 months, or after 52 months" for bins ``chosen`` of ``edges`` (None = ∞)."""
    runs: list[list[int]] = []
    for j in sorted(chosen):
        if runs and j == runs[-1][-1] + 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    parts = []
    for run in runs:
        lo, hi = edges[run[0]], edges[run[-1] + 1]
        if hi is None or not math.isfinite(hi):
            parts.append(f"after {lo:.0f} months" if lo else "at any time")
        elif not lo:
            parts.append(f"before {hi:.0f} months")
        else:
            parts.append(f"between {lo:.0f} and {hi:.0f} months")
    return ", or ".join(parts)


def survival_cross_coverage(bin_survival: np.ndarray, edges: list[np.ndarray], times: np.ndarray,
                            censorship: np.ndarray, weights: np.ndarray, folds: np.ndarray,
                            coverage: float = DEFAULT_COVERAGE) -> tuple[float, float]:
    """(censoring-weighted empirical coverage, mean set size in bins) over held-out folds: fold f's
    sets from the other folds' q̂ (module docstring)."""
    folds = np.asarray(folds)
    event = np.asarray(censorship) == 0
    w = np.asarray(weights, np.float64)
    hits, mass, sizes = 0.0, 0.0, []
    for f in np.unique(folds):
        rest, mine = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        scores, sw = survival_scores(bin_survival[rest], [edges[i] for i in rest], times[rest], censorship[rest],
                                     w[rest])
        q = weighted_quantile(scores, sw, coverage)
        for i in mine:
            chosen = survival_set(bin_survival[i:i + 1], q)
            sizes.append(len(chosen))
            if event[i] and np.isfinite(w[i]):
                hits += w[i] * (int(event_bin(np.array([times[i]]), edges[i])[0]) in chosen)
                mass += w[i]
    return (hits / mass if mass else math.nan), (float(np.mean(sizes)) if sizes else math.nan)


__all__ = ["DEFAULT_COVERAGE", "bin_masses", "censoring_weights", "cross_coverage", "describe_bins", "event_bin",
           "prediction_set", "quantile", "scores_of", "survival_cross_coverage", "survival_scores", "survival_set",
           "weighted_quantile"]
