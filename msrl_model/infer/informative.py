r"""Tasks that know nothing say so: is a task's cross-validated metric above chance with confidence?

A task's ranking metric (C-index for survival, macro AUC for classification; chance = 0.5 for both)
was measured on n held-out folds; the bundle keeps its mean :math:`\bar m` and the standard deviation
σ over the folds (``numpy.std``, ddof 0) and, in bundles written since, ``n_folds``. With the sample
standard deviation :math:`s = σ \sqrt{n / (n - 1)}` the two-sided 95 % Student-t interval of the mean is

.. math::
    \bar m \pm t_{0.975,\,n-1}\, s / \sqrt{n}

and the task is **informative** iff its lower bound exceeds 0.5. A bundle without ``n_folds`` (written
before it was kept) is read with n = :data:`DEFAULT_FOLDS`, the folds of ``msrl train``. Folds share
most of their training cases, so the interval is if anything too narrow: a task flagged here is surely
at chance; one that passes may still be weak. Shipped bundle: HER2_status AUC 0.485 ± 0.136 over 5
folds → lower bound 0.297 → not informative; TP53_mut 0.643 ± 0.031 → 0.600 → informative.
"""

from __future__ import annotations

import math
from typing import Any

CHANCE = 0.5  # C-index and AUC of a random ranking
RANKING_METRICS = {"survival": ("c_index", "C-index"), "classification": ("auc", "AUC")}
DEFAULT_FOLDS = 5  # msrl train's --folds default, for bundles that do not record n_folds
NOT_INFORMATIVE = "not informative in cross-validation"


def lower_bound(mean: float, std: float, n: int) -> float:
    """Lower end of the two-sided 95 % t-interval of the mean of ``n`` folds (``std`` with ddof 0)."""
    from scipy.stats import t

    if n < 2:
        return -math.inf
    s = std * math.sqrt(n / (n - 1))
    return mean - float(t.ppf(0.975, n - 1)) * s / math.sqrt(n)


def informative(kind: str, metrics: dict[str, Any]) -> tuple[bool | None, str]:
    """(informative, the evidence in words) for a task of ``kind`` with the bundle's ``metrics``;
    (None, "") when the bundle has no finite ranking metric for it."""
    key, title = RANKING_METRICS.get(kind, ("", ""))
    entry = metrics.get(key)
    if not isinstance(entry, dict):
        return None, ""
    mean, std = entry.get("mean"), entry.get("std")
    if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) \
            or not math.isfinite(mean) or not math.isfinite(std):
        return None, ""
    n = entry.get("n_folds")
    n = int(n) if isinstance(n, (int, float)) and math.isfinite(n) else DEFAULT_FOLDS
    low = lower_bound(float(mean), float(std), n)
    ok = low > CHANCE
    evidence = (f"cross-validated {title} {mean:.3f} ± {std:.3f} over {n} folds, 95 % interval from "
                f"{max(low, 0.0):.2f}")
    if ok:
        return True, f"{evidence} (above chance, {CHANCE})"
    return False, f"{NOT_INFORMATIVE}: {evidence} — no better than chance ({CHANCE}); do not rely on this prediction"


__all__ = ["CHANCE", "DEFAULT_FOLDS", "NOT_INFORMATIVE", "informative", "lower_bound"]
