r"""Paired comparisons of two methods evaluated on the same cross-validation folds and cases.

Two complementary tests of "method A differs from method B" (architecture §4 "Metrics"):

* :func:`corrected_resampled_ttest` — across folds: the per-fold metric differences
  :math:`d_j = m_A(j) - m_B(j)`, :math:`j = 1..J` (J = folds × repeats), in the *corrected resampled
  t-test* of Nadeau & Bengio (2003, "Inference for the generalization error"), in the form
  Bouckaert & Frank (2004) give for repeated k-fold cross-validation:

  .. math::
      t = \frac{\bar d}{\sqrt{\left(\frac1J + \frac{n_{test}}{n_{train}}\right) s_d^2}},
      \qquad p = 2\,P(T_{J-1} > |t|)

  *Why this test.* ``scipy.stats.ttest_rel`` over CV folds treats the J differences as independent,
  but every two folds share most of their training cases, so the differences are positively
  correlated and the plain paired t-test's variance is too small: it rejects far too often
  (Dietterich 1998; Nadeau & Bengio 2003). The correction term :math:`n_{test}/n_{train}`
  accounts for that overlap; with it set to 0 the statistic is exactly ``ttest_rel``'s (a test
  checks this). ``scipy.stats.wilcoxon`` is no alternative at the usual 5 folds: its smallest
  two-sided exact p-value with 5 pairs is 2/32 = 0.0625, so it could never reach p < 0.05. The
  t distribution is ``scipy.stats.t``.

* :func:`paired_bootstrap` — over out-of-fold cases: cases are resampled with replacement, and both
  methods' metric is recomputed on the *same* resample (same cases, same multiplicities), per fold,
  then averaged over folds as the CV table does. The 95 % interval of the difference is the
  percentile interval of the bootstrap distribution (as ``scipy.stats.bootstrap(method="percentile")``
  would give it) and the two-sided p-value the matching percentile p-value

  .. math::
      p = \min\Big(1,\ 2 \min\big(\tfrac{1 + \#\{\Delta^* \le 0\}}{B + 1},
          \tfrac{1 + \#\{\Delta^* \ge 0\}}{B + 1}\big)\Big)

  (the smallest α for which the (1 − α) percentile interval reaches 0, with the usual +1 so that
  p > 0). ``scipy.stats.bootstrap`` resamples one statistic at a time and returns no p-value; here one
  set of resampled case counts serves both methods (the pairing) and every fold. Per fold rather
  than pooled, because each fold's model has its own risk scale.

*Exact and fast resampling.* Harrell's C-index and the (one-vs-rest) AUC are ratios of sums over
pairs of cases. With case multiplicities :math:`w` (a bootstrap resample; all ones = the data) both
are :math:`w^\top N w / w^\top D w` for fixed pair matrices (:class:`PairTerms`: D marks the
comparable pairs, N the concordant ones, ties ½) — the *same* value :func:`~msrl_model.stats.c_index`
and :func:`~msrl_model.stats.auc_macro_ovr` give on the materialised resample (a case is never
comparable with its own copy), computed for thousands of resamples at once as matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from msrl_model.stats.survival import TIED_TOL, _survival_arrays

# Resamples evaluated per matrix product (bounds memory at B_CHUNK × n per fold).
_B_CHUNK = 512


@dataclass(frozen=True)
class TTestResult:
    """A paired test across folds."""

    statistic: float  # t (NaN when it is undefined: fewer than 2 pairs or no variance)
    p_value: float  # two-sided (NaN when undefined)
    mean_difference: float  # mean of A − B over the pairs
    n_pairs: int  # folds (× repeats) with both metrics finite


def corrected_resampled_ttest(a: ArrayLike, b: ArrayLike, test_train_ratio: float) -> TTestResult:
    """The corrected resampled paired t-test of per-fold metrics ``a`` against ``b`` (module docstring).

    Args:
        a: (J,) metric of method A per fold (and repeat).
        b: (J,) metric of method B on the same folds, in the same order.
        test_train_ratio: n_test / n_train of the folds (e.g. 1/4 for 5-fold CV); 0 gives the
            uncorrected paired t-test (``scipy.stats.ttest_rel``).

    Pairs where either metric is not finite are left out. Undefined (NaN statistic and p) with
    fewer than two pairs or when every difference is the same (within 1e-12: no variance to test
    against).
    """
    from scipy.stats import t as student_t

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b need one value per fold each; got {a.shape} and {b.shape}")
    if not (test_train_ratio >= 0 and math.isfinite(test_train_ratio)):
        raise ValueError(f"test_train_ratio must be a non-negative number; got {test_train_ratio}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return TTestResult(math.nan, math.nan, mean, n)
    if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):  # every difference the same (up to rounding): no variance
        return TTestResult(math.nan, math.nan, mean, n)
    var = float(d.var(ddof=1))
    stat = mean / math.sqrt((1.0 / n + test_train_ratio) * var)
    return TTestResult(stat, float(2.0 * student_t.sf(abs(stat), n - 1)), mean, n)


@dataclass(frozen=True)
class PairTerms:
    """A metric of n cases as a mean over terms of ratios of pair sums (module docstring).

    For case multiplicities w: ``mean_t (wᵀ num[t] w) / (wᵀ den[t] w)`` over the terms whose
    denominator is positive (NaN when none is). All ones gives the metric of the data.
    """

    num: np.ndarray  # (T, n, n) weighted concordant pairs per term
    den: np.ndarray  # (T, n, n) comparable pairs per term

    @property
    def n_cases(self) -> int:
        return int(self.num.shape[1])

    def values(self, weights: np.ndarray) -> np.ndarray:
        """(B,) metric for each row of ``weights`` (B, n) of case multiplicities."""
        w = np.asarray(weights, np.float64)
        num = np.stack([((w @ m) * w).sum(1) for m in self.num], axis=1)  # (B, T)
        den = np.stack([((w @ m) * w).sum(1) for m in self.den], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        valid = np.isfinite(ratio)
        count = valid.sum(1)
        total = np.where(valid, ratio, 0.0).sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def value(self) -> float:
        """The metric of the data itself (every multiplicity 1)."""
        return float(self.values(np.ones((1, self.n_cases)))[0])


def _order(scores: np.ndarray, tol: float) -> np.ndarray:
    """(n, n) 1 where score_i > score_j, ½ where they tie (within ``tol``), else 0."""
    diff = scores[:, None] - scores[None, :]
    tied = np.abs(diff) <= tol
    return np.where(tied, 0.5, (diff > tol).astype(np.float64))


def c_index_terms(risk: ArrayLike, times: ArrayLike, censorship: ArrayLike) -> PairTerms:
    """Harrell's C-index of ``risk`` as :class:`PairTerms` (one term): the same comparable pairs and
    tie rule (½ within 1e-8) as :func:`~msrl_model.stats.c_index`.

    Args:
        risk: (n,) predicted risk (higher = earlier event).
        times: (n,) survival or follow-up times.
        censorship: (n,) 1 = censored, 0 = event observed.
    """
    r = np.asarray(risk, np.float64).ravel()
    t, censored = _survival_arrays(times, censorship)
    if r.shape != t.shape:
        raise ValueError(f"risk and times must have the same length; got {r.shape} and {t.shape}")
    comparable = (~censored)[:, None] & ((t[None, :] > t[:, None])
                                         | ((t[None, :] == t[:, None]) & censored[None, :]))
    den = comparable.astype(np.float64)
    return PairTerms((den * _order(r, TIED_TOL))[None], den[None])


def auc_terms(y: ArrayLike, probs: ArrayLike, n_classes: int | None = None) -> PairTerms:
    """The macro one-vs-rest AUC of ``probs`` as :class:`PairTerms`: one term per class (class 1
    only for two classes), positives against negatives, ties ½ — the value of
    :func:`~msrl_model.stats.auc_macro_ovr` (classes absent from a resample drop out, as there).

    Args:
        y: (n,) class codes in [0, n_classes).
        probs: (n, n_classes) class probabilities.
    """
    y = np.asarray(y).ravel().astype(np.int64)
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be (n, n_classes) with n = len(y); got {p.shape} for n={len(y)}")
    k = n_classes or p.shape[1]
    classes = [1] if k == 2 else list(range(k))
    num, den = [], []
    for c in classes:
        pairs = np.outer(y == c, y != c).astype(np.float64)
        num.append(pairs * _order(p[:, c], 0.0))
        den.append(pairs)
    return PairTerms(np.stack(num), np.stack(den))


@dataclass(frozen=True)
class BootstrapResult:
    """The paired bootstrap of a metric difference A − B."""

    difference: float  # observed: mean over folds of metric(A) − metric(B)
    ci_low: float  # percentile confidence interval of the difference
    ci_high: float
    p_value: float  # two-sided percentile p-value (module docstring)
    n_resamples: int  # resamples with a defined difference


@dataclass(frozen=True)
class PairedFold:
    """One fold of a paired comparison: its test cases and both methods' metric terms on them."""

    cases: np.ndarray  # (n,) case ids (any integers); the same case in several folds (repeats) is resampled once
    a: PairTerms  # method A on these cases (in this order)
    b: PairTerms  # method B on the same cases


def _fold_means(folds: Sequence[PairedFold], weights: np.ndarray, index: list[np.ndarray]) -> np.ndarray:
    """(B,) mean over folds of metric(A) − metric(B) for multiplicities ``weights`` (B, n_unique)."""
    diffs = np.stack([f.a.values(weights[:, idx]) - f.b.values(weights[:, idx])
                      for f, idx in zip(folds, index)], axis=1)  # (B, n_folds)
    valid = np.isfinite(diffs)
    count = valid.sum(1)
    return np.where(count > 0, np.where(valid, diffs, 0.0).sum(1) / np.maximum(count, 1), np.nan)


def paired_bootstrap(folds: Sequence[PairedFold], *, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> BootstrapResult:
    """Paired bootstrap over cases of the fold-averaged difference of two methods' metric.

    Each resample draws every case (the union of the folds' cases) with replacement — one draw of
    multiplicities shared by both methods and by every fold a case is tested in (a case of a
    repeated CV is in one fold per repeat) — and recomputes metric(A) − metric(B) per fold, then
    their mean over folds (folds where the metric is undefined are left out, as in the CV table).
    CI and p-value: module docstring. Deterministic for ``seed``.

    Args:
        folds: the folds, each with its cases and both methods' :class:`PairTerms`.
        n_resamples: bootstrap resamples B.
        confidence: level of the interval.
        seed: seed of the resampling.
    """
    if not folds:
        raise ValueError("paired_bootstrap needs at least one fold")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("n_resamples must be positive and confidence in (0, 1)")
    for f in folds:
        if not len(f.cases) == f.a.n_cases == f.b.n_cases:
            raise ValueError("each fold's cases and both methods' terms must cover the same cases")
    unique, inverse = np.unique(np.concatenate([np.asarray(f.cases) for f in folds]), return_inverse=True)
    index = np.split(inverse, np.cumsum([len(f.cases) for f in folds])[:-1])
    n = len(unique)
    observed = float(_fold_means(folds, np.ones((1, n)), index)[0])
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_resamples, _B_CHUNK):
        b = min(_B_CHUNK, n_resamples - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # (b, n) multiplicities
        draws.append(_fold_means(folds, weights, index))
    dist = np.concatenate(draws)
    dist = dist[np.isfinite(dist)]
    if not dist.size or not math.isfinite(observed):
        return BootstrapResult(observed, math.nan, math.nan, math.nan, int(dist.size))
    alpha = 1.0 - confidence
    low, high = np.quantile(dist, [alpha / 2, 1 - alpha / 2])
    m = dist.size
    p = min(1.0, 2.0 * min((1 + np.count_nonzero(dist <= 0)) / (m + 1), (1 + np.count_nonzero(dist >= 0)) / (m + 1)))
    return BootstrapResult(observed, float(low), float(high), float(p), int(m))


__all__ = ["BootstrapResult", "PairTerms", "PairedFold", "TTestResult", "auc_terms", "c_index_terms",
           "corrected_resampled_ttest", "paired_bootstrap"]
