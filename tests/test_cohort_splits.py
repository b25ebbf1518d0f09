"""Survival bins, cross-validation folds and the per-fold expression scaler."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from msrl_model.cohort import ExpressionScaler, assign_bins, load_cohort, stratified_folds, survival_bins
from msrl_model.errors import CohortError
from msrl_model.synth.cohort import make_synth_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits") / "syn"
    make_synth_cohort(root, n_cases=150, n_projects=3, seed=11, feature_dim=8, patches=(8, 12))
    return load_cohort(root)


def test_bins_are_quartiles_of_uncensored_times_only():
    times = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 100, 200, 0.5])
    cens = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    edges = survival_bins(times, cens)
    np.testing.assert_allclose(edges, [0, 2.75, 4.5, 6.25, np.inf])
    # censored cases anywhere do not move the edges
    moved = survival_bins(np.r_[times, 1e4, 0.01], np.r_[cens, 1, 1])
    np.testing.assert_array_equal(edges, moved)
    # an extra event does
    assert not np.array_equal(edges, survival_bins(np.r_[times, 50.0], np.r_[cens, 0]))


def test_assign_bins_left_closed_and_covering():
    edges = np.array([0, 2.0, 4.0, 6.0, np.inf])
    np.testing.assert_array_equal(assign_bins([0, 1.9, 2.0, 3.99, 4, 6, 1e6], edges),
                                  [0, 0, 1, 1, 2, 3, 3])
    rng = np.random.default_rng(0)
    t, c = rng.exponential(30, 400), rng.integers(0, 2, 400)
    bins = assign_bins(t, survival_bins(t, c))
    counts = np.bincount(bins[c == 0], minlength=4)
    assert counts.min() >= 0.2 * (c == 0).sum()  # quartiles: ~25 % of events in each bin


def test_bins_need_an_event():
    with pytest.raises(CohortError, match="uncensored"):
        survival_bins([1.0, 2.0], [1, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_folds_partition_cases_and_keep_event_rates(cohort, seed):
    folds = stratified_folds(cohort, n_folds=5, seed=seed)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests) == list(range(cohort.n_cases))  # each case in exactly one test fold
    for f in folds:
        assert np.intersect1d(f.train, f.test).size == 0
        assert sorted(np.r_[f.train, f.test]) == list(range(cohort.n_cases))
    overall = cohort.events.mean()
    for f in folds:
        assert abs(cohort.events[f.test].mean() - overall) < 0.08
        for project in cohort.projects:
            share = (cohort.cases["project"].to_numpy()[f.test] == project).mean()
            assert abs(share - (cohort.cases["project"] == project).mean()) < 0.08
    again = stratified_folds(cohort, n_folds=5, seed=seed)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, again))
    other = stratified_folds(cohort, n_folds=5, seed=seed + 10)
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(folds, other))


def test_folds_split_cases_not_slides(cohort):
    # cases with two slides exist; fold indices address cases, so their slides move together
    assert (cohort.cases["n_slides"] > 1).any()
    slides_in_fold = [{s for i in f.test for s in cohort.slides[cohort.case_ids[i]]}
                      for f in stratified_folds(cohort, n_folds=4, seed=2)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not slides_in_fold[a] & slides_in_fold[b]


def test_folds_on_a_labelled_subset(cohort):
    her2 = cohort.label_codes("HER2_status")
    subset = np.flatnonzero(her2 >= 0)
    folds = stratified_folds(cohort, n_folds=3, seed=0, stratify_by=("HER2_status", "event"),
                             cases=subset)
    assert sorted(np.concatenate([f.test for f in folds])) == sorted(subset)
    rate = (her2[subset] == 1).mean()
    for f in folds:
        assert abs((her2[f.test] == 1).mean() - rate) < 0.15
    with pytest.raises(CohortError, match="cannot be split"):
        stratified_folds(cohort, n_folds=5, cases=subset[:3])


def test_scaler_is_fit_on_training_cases_only(cohort, tmp_path):
    fold = stratified_folds(cohort, n_folds=5, seed=0)[0]
    x = cohort.expression
    scaler = ExpressionScaler().fit(x[fold.train])
    np.testing.assert_allclose(scaler.mean, x[fold.train].mean(0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(scaler.mean, x.mean(0), atol=1e-4)  # the test fold did not leak in
    z_train = scaler.transform(x[fold.train])
    np.testing.assert_allclose(z_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z_train.std(0), 1, atol=1e-3)
    z_test = scaler.transform(x[fold.test])
    np.testing.assert_allclose(z_test, (x[fold.test] - scaler.mean) / scaler.std, rtol=1e-5)
    # constant genes are centred, not divided by zero
    const = ExpressionScaler().fit(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(const.transform(np.full((1, 2), 3.0)), [[2.0, 2.0]])
    # safetensors round trip
    save_file(scaler.to_dict("scaler."), tmp_path / "s.safetensors")
    loaded = ExpressionScaler.from_dict(load_file(tmp_path / "s.safetensors"), "scaler.")
    np.testing.assert_array_equal(loaded.transform(x[fold.test]), z_test)
    with pytest.raises(ValueError, match="genes"):
        scaler.transform(x[:, :5])
