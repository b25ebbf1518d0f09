"""Macro one-vs-rest AUC and macro F1 against scikit-learn and hand examples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from msrl_model.stats import auc_macro_ovr, f1_macro


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_multiclass(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 100)
    logits = rng.normal(size=(100, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert auc_macro_ovr(y, probs) == pytest.approx(expected, abs=1e-12)
    assert 0.7 < expected < 1.0


def test_auc_binary_and_perfect():
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    probs = np.column_stack([1 - p1, p1])
    assert auc_macro_ovr(y, probs) == pytest.approx(roc_auc_score(y, p1))
    assert auc_macro_ovr(y, np.eye(2)[y]) == 1.0


def test_auc_skips_absent_classes_and_single_class():
    y = np.array([0, 0, 2, 2, 2])  # class 1 absent from this fold
    probs = np.array([[.8, .1, .1], [.6, .2, .2], [.1, .2, .7], [.3, .3, .4], [.5, .1, .4]])
    expected = np.mean([roc_auc_score(y == 0, probs[:, 0]), roc_auc_score(y == 2, probs[:, 2])])
    assert auc_macro_ovr(y, probs) == pytest.approx(expected)
    assert np.isnan(auc_macro_ovr(np.zeros(3, int), np.full((3, 2), 0.5)))
    with pytest.raises(ValueError, match="class codes"):
        auc_macro_ovr([0, 3], np.full((2, 3), 1 / 3))


def test_f1_macro():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    # per class F1: 0 -> P 1/2 R 1/2 = .5; 1 -> P 2/3 R 1 = .8; 2 -> P 1 R 1/2 = 2/3
    assert f1_macro(y, pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert f1_macro(y, pred) == pytest.approx(f1_score(y, pred, average="macro"))
    assert f1_macro(y, y) == 1.0
