"""Classification metrics as the field reports them (architecture §4 "Metrics"), via scikit-learn:
macro one-vs-rest ROC AUC and macro F1."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def auc_macro_ovr(y: ArrayLike, probs: ArrayLike, n_classes: int | None = None) -> float:
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


def f1_macro(y: ArrayLike, pred: ArrayLike) -> float:
    """Macro F1 over the classes that occur in ``y`` or ``pred`` (scikit-learn, zero_division=0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(y).ravel(), np.asarray(pred).ravel(), average="macro",
                          zero_division=0))
