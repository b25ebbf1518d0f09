"""Survival metrics as the field reports them (architecture §4 "Metrics").

One event convention for every function, the cohort's: ``censorship`` 1 = censored, 0 = event
observed (as in ``clinical.csv`` and ``Cohort.censorship``).

* :func:`c_index` — Harrell's concordance index, vectorised numpy, identical to scikit-survival's
  ``concordance_index_censored(event = 1 - censorship, time, risk)[0]`` (ties in risk count 0.5;
  scikit-survival is not a dependency).
* :func:`kaplan_meier` — the survival function, by ``scipy.stats.ecdf`` of ``scipy.stats.CensoredData``.
* :func:`logrank_test` — the log-rank test, by ``scipy.stats.logrank`` for two groups; scipy has no
  k-sample test, so three or more groups use the k-group statistic written out below.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from scipy.stats import CensoredData

# Risks closer than this count as tied (scikit-survival's default ``tied_tol``).
TIED_TOL = 1e-8


def _survival_arrays(times: ArrayLike, censorship: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(times float64, censored bool)`` after checking lengths, finiteness and 0/1 flags."""
    t = np.asarray(times, dtype=np.float64).ravel()
    c = np.asarray(censorship).ravel()
    if t.shape != c.shape:
        raise ValueError(f"times and censorship must have the same length; got {t.shape} and {c.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("survival times must be finite numbers")
    if not np.all(np.isin(c, (0, 1))):
        raise ValueError("censorship must be 0 (event observed) or 1 (censored)")
    return t, c.astype(bool)


def _censored_data(times: np.ndarray, censored: np.ndarray) -> CensoredData:
    from scipy.stats import CensoredData

    return CensoredData(uncensored=times[~censored], right=times[censored])


def c_index(risk: ArrayLike, times: ArrayLike, censorship: ArrayLike, block: int = 1024) -> float:
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
    t, censored = _survival_arrays(times, censorship)
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


def kaplan_meier(times: ArrayLike, censorship: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate of the survival function.

        S(t) = Π_{t_k ≤ t} (1 − d_k / n_k)

    with d_k events at time t_k and n_k cases still at risk just before t_k.

    Args:
        times: (n,) follow-up times.
        censorship: (n,) 1 = censored, 0 = event observed.

    Returns:
        ``(t, S)``: ``t`` = 0 followed by every distinct observed time (events and censorings) in
        increasing order; ``S[k]`` = survival on ``[t[k], t[k+1])`` (right-continuous step), with
        ``S[0] = 1`` unless events happen at time 0.
    """
    from scipy.stats import ecdf

    t, censored = _survival_arrays(times, censorship)
    if t.size == 0:
        return np.zeros(1), np.ones(1)
    sf = ecdf(_censored_data(t, censored)).sf
    grid, surv = np.asarray(sf.quantiles, np.float64), np.asarray(sf.probabilities, np.float64)
    if grid[0] > 0:
        grid = np.concatenate([[0.0], grid])
        surv = np.concatenate([[1.0], surv])
    return grid, surv


def _k_group_logrank(t: np.ndarray, event: np.ndarray, g: np.ndarray, k: int) -> float:
    """The k-group log-rank statistic (O − E)ᵀ V⁻ (O − E) over the first k − 1 groups."""
    grid, inverse = np.unique(t, return_inverse=True)
    deaths = np.zeros((len(grid), k))  # per (time, group) counts: (T, k)
    leaving = np.zeros((len(grid), k))
    np.add.at(deaths, (inverse, g), event.astype(np.float64))
    np.add.at(leaving, (inverse, g), 1.0)
    at_risk = leaving.sum(0, keepdims=True) - np.vstack([np.zeros((1, k)), np.cumsum(leaving, 0)[:-1]])
    keep = deaths.sum(1) > 0
    d, n_g = deaths[keep], at_risk[keep]  # (T', k)
    n = n_g.sum(1)  # (T',)
    d_tot = d.sum(1)
    o_minus_e = (d - (d_tot / n)[:, None] * n_g).sum(0)
    scale = np.where(n > 1, d_tot * (n - d_tot) / np.maximum(n - 1, 1), 0.0) / n  # (T',)
    cov = np.diag((scale[:, None] * n_g).sum(0)) - np.einsum("t,tg,th->gh", scale, n_g, n_g / n[:, None])
    x, v = o_minus_e[:-1], cov[:-1, :-1]
    return float(x @ np.linalg.pinv(v) @ x) if np.any(v) else 0.0


def logrank_test(times: ArrayLike, censorship: ArrayLike, groups: ArrayLike) -> tuple[float, float]:
    """k-group log-rank test of equal survival functions.

    At each distinct event time, with n_gk at risk and d_gk events in group g (n_k, d_k in all),
    E_g = Σ_k d_k n_gk / n_k and the hypergeometric covariance
    V_gh = Σ_k d_k (n_k − d_k) / (n_k − 1) · n_gk / n_k · (δ_gh − n_hk / n_k).
    The statistic is (O − E)ᵀ V⁻ (O − E) over the first k − 1 groups, χ² with k − 1 degrees of
    freedom (the same value as lifelines' ``multivariate_logrank_test``). Two groups: the square of
    ``scipy.stats.logrank``'s statistic and its two-sided p-value. Statistic 0 and p = 1 when the
    data cannot tell the groups apart (no event with two or more cases at risk).

    Args:
        times: (n,) follow-up times.
        censorship: (n,) 1 = censored, 0 = event observed.
        groups: (n,) group labels (any hashable values), at least two distinct.

    Returns:
        ``(statistic, p_value)``.
    """
    from scipy.stats import chi2, logrank

    t, censored = _survival_arrays(times, censorship)
    labels, g = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if len(g) != len(t):
        raise ValueError("groups must have one entry per case")
    k = len(labels)
    if k < 2:
        raise ValueError("the log-rank test needs at least two groups")
    if k > 2:
        stat = _k_group_logrank(t, ~censored, g, k)
        return stat, float(chi2.sf(stat, k - 1))
    with np.errstate(divide="ignore", invalid="ignore"):  # no variance: NaN, reported as (0, 1)
        result = logrank(*(_censored_data(t[g == j], censored[g == j]) for j in (0, 1)))
    z = float(result.statistic)
    return (z * z, float(result.pvalue)) if math.isfinite(z) else (0.0, 1.0)
