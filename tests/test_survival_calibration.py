"""Survival calibration on held-out folds (stats/survival_calibration.py): S(t) from bin-end
survival, Brier scores through scikit-survival against the Kaplan–Meier reference, and predicted
against observed survival by risk group."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msrl_model.stats.survival_calibration import (
    calibration_by_group, evaluation_times, fold_brier, km_at, survival_at)

EDGES = (0.0, 5.0, 10.0, 20.0, math.inf)


@pytest.mark.parametrize("t, expected", [(0.0, 1.0), (4.9, 1.0), (5.0, 0.9), (7.5, 0.9), (20.0, 0.5), (99.0, 0.5)])
def test_survival_at_steps_at_the_bin_ends_as_the_app_draws_it(t, expected):
    survival = np.array([[0.9, 0.7, 0.5, 0.0]])  # S_j at the bin ends; the open last bin's 0 is never read
    assert survival_at(survival, EDGES, np.array([t]))[0, 0] == pytest.approx(expected)


def _cohort(n: int, seed: int):
    """Two risk groups with exponential event times (rates 0.02 and 0.12 per month), uniform censoring."""
    rng = np.random.default_rng(seed)
    rate = np.where(rng.uniform(size=n) < 0.5, 0.02, 0.12)
    event = rng.exponential(1 / rate)
    censor = rng.uniform(0, 60, n)
    return np.minimum(event, censor), (censor < event).astype(np.int64), rate


def _true_curves(rate: np.ndarray) -> np.ndarray:
    ends = np.array([5.0, 10.0, 20.0, 1e9])
    return np.exp(-rate[:, None] * ends[None, :])  # (Q, 4) the true S at each bin end


def test_a_model_that_knows_the_risk_beats_the_kaplan_meier_reference():
    train_t, train_c, _ = _cohort(400, 0)
    test_t, test_c, rate = _cohort(300, 1)
    good = fold_brier(_true_curves(rate), EDGES, test_t, test_c, train_t, train_c)
    assert good is not None and good.times.tolist() == [5.0, 10.0, 20.0]
    assert good.integrated_model < good.integrated_reference
    assert np.all(good.model <= good.reference + 1e-9)
    flipped = fold_brier(_true_curves(np.where(rate > 0.05, 0.02, 0.12)), EDGES, test_t, test_c, train_t, train_c)
    assert flipped.integrated_model > good.integrated_reference  # the wrong way round: worse than knowing nothing


def test_calibrated_predictions_match_the_groups_kaplan_meier():
    times, cens, rate = _cohort(3000, 2)
    at = evaluation_times(EDGES, times, times)
    groups = calibration_by_group(_true_curves(rate), EDGES, rate, times, cens, at)
    assert len(groups) == 3
    for predicted, observed in groups:
        np.testing.assert_allclose(predicted, observed, atol=0.06)
    assert groups[0][1][-1] > groups[2][1][-1]  # the low-risk tertile survives longer


def test_km_at_reads_the_right_continuous_step():
    times, cens = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 0])
    np.testing.assert_allclose(km_at(times, cens, np.array([0.5, 1.0, 2.5, 4.0])), [1.0, 0.75, 0.5, 0.0])


def test_test_cases_followed_beyond_every_training_case_keep_their_weight():
    train_t, train_c, _ = _cohort(300, 3)
    test_t, test_c, rate = _cohort(200, 4)
    longer = test_t.copy()
    longer[np.argmax(test_t)] = train_t.max() + 50  # alive far beyond the training follow-up
    a = fold_brier(_true_curves(rate), EDGES, test_t, test_c, train_t, train_c)
    b = fold_brier(_true_curves(rate), EDGES, longer, test_c, train_t, train_c)
    if test_c[np.argmax(test_t)] == 0 and test_t.max() > train_t.max():
        pytest.skip("the longest test case is an event beyond the training range")
    np.testing.assert_allclose(a.model, b.model, rtol=1e-9)


# survival conformal sets of time bins (infer/conformal.py) --------------------------------------

def test_bin_masses_sum_to_one_and_equal_weights_give_the_plain_quantile():
    from msrl_model.infer.conformal import bin_masses, quantile, weighted_quantile

    masses = bin_masses(np.array([[0.9, 0.7, 0.5, 0.0], [1.0, 1.0, 0.8, 0.3]]))
    np.testing.assert_allclose(masses.sum(1), 1.0)
    np.testing.assert_allclose(masses[0], [0.1, 0.2, 0.2, 0.5])
    scores = np.random.default_rng(0).uniform(size=37)
    for coverage in (0.5, 0.8, 0.9, 0.99):
        assert weighted_quantile(scores, np.ones_like(scores), coverage) == quantile(scores, coverage)


@pytest.mark.parametrize("censoring", [0.0, 0.4])
def test_survival_sets_cover_about_ninety_percent_on_held_out_folds(censoring):
    """A model that knows each case's hazard: its 90 % time-bin sets cover ~90 % of event times on
    held-out folds, with and without censoring (the censoring weights stand for the censored)."""
    from msrl_model.infer.conformal import censoring_weights, survival_cross_coverage

    rng = np.random.default_rng(7)
    n = 2400
    rate = np.exp(rng.normal(-3.0, 0.8, n))
    event = rng.exponential(1 / rate)
    censor = rng.exponential(np.quantile(event, 0.5) / max(censoring, 1e-9), n) if censoring else np.full(n, np.inf)
    times = np.minimum(event, censor)
    cens = (censor < event).astype(np.int64)
    edges = np.array([0.0, *np.quantile(event, [0.25, 0.5, 0.75]), np.inf])
    surv = np.exp(-rate[:, None] * edges[None, 1:])  # (n, 4) true S at each bin end
    folds = rng.integers(0, 5, n)
    covered, size = survival_cross_coverage(surv, [edges] * n, times, cens, censoring_weights(times, cens), folds)
    assert 0.86 <= covered <= 0.94 and 1 < size < 4


def test_describe_bins_reads_as_times():
    from msrl_model.infer.conformal import describe_bins

    edges = [0.0, 14.2, 31.0, 52.4, None]
    assert describe_bins([1, 3], edges) == "between 14 and 31 months, or after 52 months"
    assert describe_bins([0, 1], edges) == "before 31 months"
    assert describe_bins([0, 1, 2, 3], edges) == "at any time"


def test_evaluation_times_stay_inside_the_test_follow_up():
    train = np.array([1.0, 30.0, 50.0])
    assert evaluation_times(EDGES, train, np.array([6.0, 12.0, 40.0])).tolist() == [10.0, 20.0]  # not 5: before 6
    assert evaluation_times(EDGES, train, np.array([16.87, 16.87])).tolist() == []  # no range: no time
    assert fold_brier(np.array([[0.9, 0.7, 0.5, 0.0]] * 2), EDGES, np.array([16.87, 16.87]), np.array([0, 1]),
                      train, np.array([0, 0, 1])) is None
