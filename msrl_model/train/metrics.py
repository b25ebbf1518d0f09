"""Evaluation metrics as the field reports them (DESIGN §4 "Metrics").

* :func:`c_index` — Harrell's concordance index, identical to scikit-survival's
  ``concordance_index_censored(event = 1 - censorship, time, risk)[0]`` (ties in risk count 0.5).
* :func:`auc_macro_ovr`, :func:`f1_macro` — classification, via scikit-learn.
* :func:`kaplan_meier`, :func:`logrank_test` — survival curves and the k-group log-rank test,
  written with numpy (lifelines is not a dependency).

Survival inputs follow the cohort convention: ``censorship`` 1 = censored, 0 = event observed.
"""

from __future__ import annotations

import numpy as np

# Risks closer than this count as tied (scikit-survival's default ``tied_tol``).
TIED_TOL = 1e-8


def _survival_arrays(times, flags, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=np.float64).ravel()
    f = np.asarray(flags).ravel()
    if t.shape != f.shape:
        raise ValueError(f"times and {name} must have the same length; got {t.shape} and {f.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("survival times must be finite numbers")
    if not np.all(np.isin(f, (0, 1))):
        raise ValueError(f"{name} must be 0 or 1")
    return t, f.astype(bool)


def c_index(risk, times, censorship, block: int = 1024) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event) against right-censored times.

    A pair (i, j) is comparable when i had an event and ``t_i < t_j``, or ``t_i == t_j`` and j is
    censored. It is concordant when ``risk_i > risk_j`` and counts 0.5 when the risks tie
    (``|risk_i - risk_j| <= 1e-8``):

        C = (Σ_comparable [risk_i > risk_j] + 0.5 [risk_i ≈ risk_j]) / #comparable

    Same value as scikit-survival's ``concordance_index_censored``. Returns NaN when no pair is
    comparable (e.g. every case censored). Memory is O(block · n).

    Args:
        risk: (n,) predicted risk scores.
        times: (n,) survival or follow-up times.
        censorship: (n,) 1 = censored, 0 = event observed.
    """
    r = np.asarray(risk, dtype=np.float64).ravel()
    t, censored = _survival_arrays(times, censorship, "censorship")
    if r.shape != t.shape:
        raise ValueError(f"risk and times must have the same length; got {r.shape} and {t.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("risk scores must be finite numbers (got NaN or inf)")
    events = np.flatnonzero(~censored)
    numerator = 0.0
    denominator = 0
    for start in range(0, len(events), block):
        i = events[start:start + block]
        ti, ri = t[i, None], r[i, None]  # (b, 1) against (n,) rows
        comparable = (t[None, :] > ti) | ((t[None, :] == ti) & censored[None, :])
        diff = ri - r[None, :]
        tied = np.abs(diff) <= TIED_TOL
        numerator += np.count_nonzero(comparable & (diff > 0) & ~tied)
        numerator += 0.5 * np.count_nonzero(comparable & tied)
        denominator += np.count_nonzero(comparable)
    return float(numerator / denominator) if denominator else float("nan")


def auc_macro_ovr(y, probs, n_classes: int | None = None) -> float:
    """Macro one-vs-rest ROC AUC.

    For each class c present in ``y`` alongside other classes, the binary AUC of ``probs[:, c]``
    for ``y == c``; the mean over those classes. Equals scikit-learn's
    ``roc_auc_score(y, probs, multi_class="ovr", average="macro")`` when every class occurs, and
    ``roc_auc_score(y, probs[:, 1])`` for two classes; classes absent from a test fold are skipped
    rather than failing. NaN when ``y`` holds a single class.

    Args:
        y: (n,) integer class codes in [0, n_classes).
        probs: (n, n_classes) class probabilities (or any scores, one column per class).
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).ravel().astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be (n, n_classes) with n = len(y); got {p.shape} for n={len(y)}")
    k = n_classes or p.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"class codes must lie in [0, {k}); got {y.min()}..{y.max()}")
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if k == 2:
        return float(roc_auc_score(y == 1, p[:, 1]))
    return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))


def f1_macro(y, pred) -> float:
    """Macro F1 over the classes that occur in ``y`` or ``pred`` (scikit-learn, zero_division=0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(y).ravel(), np.asarray(pred).ravel(), average="macro",
                          zero_division=0))


def kaplan_meier(times, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate of the survival function.

        S(t) = Π_{t_k ≤ t} (1 − d_k / n_k)

    with d_k events at time t_k and n_k cases still at risk just before t_k.

    Args:
        times: (n,) follow-up times.
        events: (n,) 1 = event observed, 0 = censored (note: the opposite of ``censorship``).

    Returns:
        ``(t, S)``: ``t`` = 0 followed by every distinct observed time (events and censorings) in
        increasing order; ``S[k]`` = survival on ``[t[k], t[k+1])`` (right-continuous step), with
        ``S[0] = 1`` unless events happen at time 0.
    """
    t, ev = _survival_arrays(times, events, "events")
    if t.size == 0:
        return np.zeros(1), np.ones(1)
    grid, inverse = np.unique(t, return_inverse=True)
    deaths = np.bincount(inverse, weights=ev.astype(np.float64), minlength=len(grid))
    leaving = np.bincount(inverse, minlength=len(grid)).astype(np.float64)
    at_risk = len(t) - np.concatenate([[0.0], np.cumsum(leaving)[:-1]])
    surv = np.cumprod(1.0 - deaths / at_risk)
    if grid[0] > 0:
        grid = np.concatenate([[0.0], grid])
        surv = np.concatenate([[1.0], surv])
    return grid, surv


def logrank_test(times, events, groups) -> tuple[float, float]:
    """k-group log-rank test of equal survival functions.

    At each distinct event time, with n_gk at risk and d_gk events in group g (n_k, d_k in all),
    E_g = Σ_k d_k n_gk / n_k and the hypergeometric covariance
    V_gh = Σ_k d_k (n_k − d_k) / (n_k − 1) · n_gk / n_k · (δ_gh − n_hk / n_k).
    The statistic is (O − E)ᵀ V⁻ (O − E) over the first k − 1 groups, χ² with k − 1 degrees of
    freedom (the same value as lifelines' ``multivariate_logrank_test``).

    Args:
        times: (n,) follow-up times.
        events: (n,) 1 = event observed, 0 = censored.
        groups: (n,) group labels (any hashable values), at least two distinct.

    Returns:
        ``(statistic, p_value)``.
    """
    from scipy.stats import chi2

    t, ev = _survival_arrays(times, events, "events")
    labels, g = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if len(g) != len(t):
        raise ValueError("groups must have one entry per case")
    k = len(labels)
    if k < 2:
        raise ValueError("the log-rank test needs at least two groups")
    grid, inverse = np.unique(t, return_inverse=True)
    # per (time, group) counts: (T, k)
    deaths = np.zeros((len(grid), k))
    leaving = np.zeros((len(grid), k))
    np.add.at(deaths, (inverse, g), ev.astype(np.float64))
    np.add.at(leaving, (inverse, g), 1.0)
    at_risk = leaving.sum(0, keepdims=True) - np.vstack([np.zeros((1, k)), np.cumsum(leaving, 0)[:-1]])
    keep = deaths.sum(1) > 0
    d, n_g = deaths[keep], at_risk[keep]  # (T', k)
    n = n_g.sum(1)  # (T',)
    d_tot = d.sum(1)
    expected = (d_tot / n)[:, None] * n_g
    o_minus_e = (d - expected).sum(0)
    scale = np.where(n > 1, d_tot * (n - d_tot) / np.maximum(n - 1, 1), 0.0) / n  # (T',)
    frac = n_g / n[:, None]
    cov = np.diag((scale[:, None] * n_g).sum(0)) - np.einsum("t,tg,th->gh", scale, n_g, frac)
    x = o_minus_e[:-1]
    v = cov[:-1, :-1]
    stat = float(x @ np.linalg.pinv(v) @ x) if np.any(v) else 0.0
    return stat, float(chi2.sf(stat, k - 1))
