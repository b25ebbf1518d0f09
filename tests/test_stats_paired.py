"""Paired comparisons (stats/paired.py): the pair-sum metrics equal c_index / auc_macro_ovr on any
resample, the corrected t-test reduces to scipy's ttest_rel, and the paired bootstrap finds a real
difference and none between identical methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from msrl_model.stats import auc_macro_ovr, c_index
from msrl_model.stats.paired import (
    PairedFold, auc_terms, c_index_terms, corrected_resampled_ttest, paired_bootstrap)


def _survival(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    times = np.round(rng.exponential(30.0, n), 0)  # rounded: tied times occur
    censorship = (rng.random(n) < 0.4).astype(np.int64)
    risk = np.round(-times / 10 + rng.normal(0, 2.0, n), 1)  # rounded: tied risks occur
    return risk, times, censorship


def test_c_index_terms_equal_c_index_on_materialised_resamples():
    rng = np.random.default_rng(0)
    risk, times, cens = _survival(rng, 40)
    terms = c_index_terms(risk, times, cens)
    assert terms.value() == pytest.approx(c_index(risk, times, cens), abs=1e-12)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=5)
    got = terms.values(counts)
    for w, value in zip(counts, got):
        idx = np.repeat(np.arange(40), w)  # the resample itself, duplicates included
        assert value == pytest.approx(c_index(risk[idx], times[idx], cens[idx]), abs=1e-12)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_auc_terms_equal_auc_macro_ovr_on_materialised_resamples(n_classes):
    rng = np.random.default_rng(n_classes)
    n = 50
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # ties occur
    terms = auc_terms(y, probs, n_classes)
    assert terms.value() == pytest.approx(auc_macro_ovr(y, probs, n_classes), abs=1e-12)
    keep = np.flatnonzero(y != 0)  # a resample without class 0: that class drops out, as in auc_macro_ovr
    w = np.zeros((1, n))
    w[0, keep] = rng.integers(1, 3, len(keep))
    idx = np.repeat(np.arange(n), w[0].astype(int))
    expected = auc_macro_ovr(y[idx], probs[idx], n_classes)
    assert terms.values(w)[0] == pytest.approx(expected, abs=1e-12) if math.isfinite(expected) else \
        math.isnan(terms.values(w)[0])


def test_corrected_ttest_without_correction_is_ttest_rel_and_correction_widens():
    rng = np.random.default_rng(1)
    a = 0.70 + rng.normal(0, 0.02, 10)
    b = a - 0.01 + rng.normal(0, 0.01, 10)
    plain = corrected_resampled_ttest(a, b, 0.0)
    ref = ttest_rel(a, b)
    assert plain.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert plain.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    corrected = corrected_resampled_ttest(a, b, 0.25)
    assert corrected.p_value > plain.p_value  # overlapping training sets: less evidence
    expected = np.mean(a - b) / math.sqrt((1 / 10 + 0.25) * np.var(a - b, ddof=1))
    assert corrected.statistic == pytest.approx(expected, rel=1e-12)
    assert corrected.n_pairs == 10 and corrected.mean_difference == pytest.approx(np.mean(a - b))


def test_corrected_ttest_leaves_out_undefined_folds_and_is_undefined_without_variance():
    res = corrected_resampled_ttest([0.7, np.nan, 0.8, 0.6], [0.6, 0.5, 0.7, 0.55], 0.25)
    assert res.n_pairs == 3 and math.isfinite(res.p_value)
    same = corrected_resampled_ttest([0.7, 0.8, 0.6], [0.6, 0.7, 0.5], 0.25)  # every difference 0.1
    assert math.isnan(same.p_value) and same.mean_difference == pytest.approx(0.1)
    assert math.isnan(corrected_resampled_ttest([0.7], [0.6], 0.25).p_value)


def _folds(rng: np.random.Generator, n_folds: int, size: int, noise_b: float) -> list[PairedFold]:
    folds = []
    for k in range(n_folds):
        cases = np.arange(k * size, (k + 1) * size)
        risk, times, cens = _survival(rng, size)
        worse = risk + rng.normal(0, noise_b, size)
        folds.append(PairedFold(cases, c_index_terms(risk, times, cens), c_index_terms(worse, times, cens)))
    return folds


def test_paired_bootstrap_finds_a_real_difference_and_its_interval():
    folds = _folds(np.random.default_rng(2), 3, 60, noise_b=8.0)
    res = paired_bootstrap(folds, n_resamples=800, seed=0)
    expected = np.mean([f.a.value() - f.b.value() for f in folds])
    assert res.difference == pytest.approx(expected, abs=1e-12)
    assert res.difference > 0.05 and 0 < res.ci_low < res.difference < res.ci_high
    assert res.p_value < 0.01 and res.n_resamples == 800
    again = paired_bootstrap(folds, n_resamples=800, seed=0)
    assert (again.ci_low, again.ci_high, again.p_value) == (res.ci_low, res.ci_high, res.p_value)


def test_paired_bootstrap_of_identical_methods_is_not_significant():
    folds = _folds(np.random.default_rng(3), 2, 40, noise_b=1.0)
    same = [PairedFold(f.cases, f.a, f.a) for f in folds]
    res = paired_bootstrap(same, n_resamples=300, seed=1)
    assert res.difference == 0.0 and res.ci_low == res.ci_high == 0.0 and res.p_value == 1.0


def test_paired_bootstrap_resamples_a_case_once_across_repeats():
    """A case tested in two folds (two repeats) gets one multiplicity: identical folds stay identical."""
    rng = np.random.default_rng(4)
    risk, times, cens = _survival(rng, 30)
    worse = risk + rng.normal(0, 5.0, 30)
    fold = PairedFold(np.arange(30), c_index_terms(risk, times, cens), c_index_terms(worse, times, cens))
    twice = paired_bootstrap([fold, fold], n_resamples=200, seed=5)
    once = paired_bootstrap([fold], n_resamples=200, seed=5)
    assert (twice.difference, twice.ci_low, twice.ci_high, twice.p_value) == pytest.approx(
        (once.difference, once.ci_low, once.ci_high, once.p_value), abs=1e-12)
