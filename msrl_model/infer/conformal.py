r"""Split-conformal prediction sets for classification tasks, calibrated on out-of-fold predictions.

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


__all__ = ["DEFAULT_COVERAGE", "cross_coverage", "prediction_set", "quantile", "scores_of"]
