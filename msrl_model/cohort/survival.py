"""Discrete-time survival bins (architecture §4 "Tasks"): edges from quartiles of the uncensored times
of the training cases, and each case's bin."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from msrl_model.errors import CohortError


def survival_bins(times: ArrayLike, censorship: ArrayLike, n_bins: int = 4) -> np.ndarray:
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


def assign_bins(times: ArrayLike, edges: ArrayLike) -> np.ndarray:
    """Bin index of each time: bin j holds ``edges[j] <= t < edges[j+1]`` (left-closed, as the
    mahmoodlab ``pd.cut(right=False)``); returns (n,) int64 in [0, len(edges) − 2]."""
    t = np.asarray(times, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64).ravel()
    idx = np.searchsorted(e, t, side="right") - 1
    return np.clip(idx, 0, len(e) - 2).astype(np.int64)
