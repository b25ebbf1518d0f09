"""C-index against a brute-force reference, Kaplan–Meier by hand, log-rank test (scipy for two
groups, the k-group statistic checked against it). Survival inputs are ``censorship`` (1 = censored)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from msrl_model.stats import c_index, kaplan_meier, logrank_test
from msrl_model.stats.survival import _k_group_logrank


def brute_force_c_index(risk, times, censorship) -> float:
    """O(n²) transcription of scikit-survival's definition (ties in risk count 0.5; an event is
    comparable with a censored case at the same time)."""
    num = den = 0.0
    n = len(risk)
    for i in range(n):
        if censorship[i]:
            continue
        for j in range(n):
            if i == j:
                continue
            if times[j] > times[i] or (times[j] == times[i] and censorship[j]):
                den += 1
                if abs(risk[i] - risk[j]) <= 1e-8:
                    num += 0.5
                elif risk[i] > risk[j]:
                    num += 1
    return num / den


@pytest.mark.parametrize("seed", range(6))
def test_c_index_matches_brute_force_with_ties_and_censoring(seed):
    rng = np.random.default_rng(seed)
    n = 80
    times = rng.integers(1, 25, n).astype(float)  # many tied times
    censorship = (rng.uniform(size=n) < 0.4).astype(int)
    risk = rng.integers(0, 6, n).astype(float)  # many tied risks
    expected = brute_force_c_index(risk, times, censorship)
    assert c_index(risk, times, censorship) == pytest.approx(expected, abs=1e-12)
    assert c_index(risk, times, censorship, block=7) == pytest.approx(expected, abs=1e-12)


def test_c_index_perfect_reversed_and_constant():
    times = np.array([1.0, 2, 3, 4, 5, 6])
    cens = np.array([0, 1, 0, 0, 1, 0])
    assert c_index(-times, times, cens) == 1.0
    assert c_index(times, times, cens) == 0.0
    assert c_index(np.zeros(6), times, cens) == 0.5
    assert np.isnan(c_index([1.0, 2.0], [1.0, 2.0], [1, 1]))  # nothing comparable


def test_c_index_hand_example():
    # events at t=2 (risk 3) and t=4 (risk 1); censored at t=2 (risk 5) and t=5 (risk 2)
    # comparable pairs: (t2 ev, t2 cens): 3<5 discordant; (t2, t4): 3>1 concordant;
    # (t2, t5): 3>2 concordant; (t4, t5): 1<2 discordant  -> 2/4
    assert c_index([3, 5, 1, 2], [2, 2, 4, 5], [0, 1, 0, 1]) == 0.5


def test_c_index_rejects_bad_input():
    with pytest.raises(ValueError, match="censorship"):
        c_index([1, 2], [1, 2], [0, 2])
    with pytest.raises(ValueError, match="finite"):
        c_index([np.nan, 2], [1, 2], [0, 0])


def test_kaplan_meier_hand_computed():
    # times 1(event) 2(event) 2(censored) 3(event) 5(censored)
    # S(1) = 4/5; S(2) = 0.8 * 3/4 = 0.6; S(3) = 0.6 * 1/2 = 0.3; S(5) = 0.3
    t, s = kaplan_meier([3, 2, 1, 2, 5], [0, 1, 0, 0, 1])
    np.testing.assert_allclose(t, [0, 1, 2, 3, 5])
    np.testing.assert_allclose(s, [1, 0.8, 0.6, 0.3, 0.3])


def test_kaplan_meier_without_censoring_is_the_empirical_survival():
    rng = np.random.default_rng(0)
    times = rng.exponential(10, 50)
    t, s = kaplan_meier(times, np.zeros(50))
    np.testing.assert_allclose(s[1:], 1 - np.arange(1, 51) / 50)
    assert np.all(np.diff(s) <= 0)


def test_logrank_separated_and_identical_groups():
    rng = np.random.default_rng(1)
    short, long_ = rng.exponential(5, 60), rng.exponential(30, 60)
    times = np.r_[short, long_]
    censorship = (rng.uniform(size=120) >= 0.8).astype(int)
    groups = np.r_[np.zeros(60), np.ones(60)]
    stat, p = logrank_test(times, censorship, groups)
    assert p < 1e-4 and stat > 15
    same = rng.exponential(10, 120)
    _, p_same = logrank_test(same, censorship, rng.permutation(groups))
    assert p_same > 0.05
    # identical groups: statistic exactly 0
    stat0, p0 = logrank_test(np.r_[short, short], np.r_[censorship[:60], censorship[:60]], groups)
    assert stat0 == pytest.approx(0, abs=1e-12) and p0 == pytest.approx(1)


def test_logrank_two_groups_matches_scipy():
    rng = np.random.default_rng(2)
    times = np.round(rng.exponential(10, 90))  # with ties
    events = rng.uniform(size=90) < 0.7
    groups = rng.integers(0, 2, 90)
    stat, p = logrank_test(times, (~events).astype(int), groups)
    sides = [stats.CensoredData(uncensored=times[(groups == g) & events],
                                right=times[(groups == g) & ~events]) for g in (0, 1)]
    ref = stats.logrank(*sides)
    assert stat == pytest.approx(ref.statistic ** 2, rel=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_logrank_three_groups_degrees_of_freedom():
    rng = np.random.default_rng(3)
    times = np.r_[rng.exponential(5, 40), rng.exponential(10, 40), rng.exponential(40, 40)]
    groups = np.repeat(["low", "mid", "high"], 40)
    stat, p = logrank_test(times, np.zeros(120, int), groups)
    assert p == pytest.approx(stats.chi2.sf(stat, 2))
    assert p < 1e-4
    with pytest.raises(ValueError, match="two groups"):
        logrank_test(times, np.zeros(120, int), np.zeros(120))


def test_k_group_statistic_with_two_groups_equals_scipy():
    rng = np.random.default_rng(4)
    times = np.round(rng.exponential(10, 70))  # with ties
    censorship = (rng.uniform(size=70) < 0.3).astype(int)
    groups = rng.integers(0, 2, 70)
    stat, _ = logrank_test(times, censorship, groups)
    assert _k_group_logrank(times, censorship == 0, groups, 2) == pytest.approx(stat, rel=1e-9)
