"""What the linked training cases say, read off the bundle's case table: Kaplan–Meier curves, the
edge-weighted event rate and class shares of the linked cases, a slide's percentile among the cohort's
risks. Plain numpy/pandas over the case table; the :class:`~msrl_model.infer.predictor.Predictor` puts
them next to the model's own prediction."""

from __future__ import annotations

from typing import Any

import numpy as np

from msrl_model.infer.results import Curve


def km(cases: Any, rows: np.ndarray | None = None) -> Curve:
    """Kaplan–Meier of the case table's rows (all when None), skipping rows without survival data."""
    from msrl_model.stats import kaplan_meier

    if "survival_months" not in cases.columns or "censorship" not in cases.columns:
        return Curve([0.0], [1.0])
    table = cases if rows is None else cases.iloc[rows]
    t = table["survival_months"].to_numpy(dtype=np.float64, na_value=np.nan)
    c = table["censorship"].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(t) & np.isin(c, (0.0, 1.0))
    times, surv = kaplan_meier(t[ok], c[ok].astype(np.int64))
    return Curve([float(x) for x in times], [float(x) for x in surv])


def percentile_of(value: float, reference: np.ndarray) -> float:
    """% of ``reference`` below ``value``, ties counting half: 100 (#{r < v} + ½ #{r = v}) / n."""
    reference = np.asarray(reference, dtype=np.float64)
    below = np.count_nonzero(reference < value) + 0.5 * np.count_nonzero(reference == value)
    return float(100.0 * below / len(reference))


def survival_curve(bin_edges: tuple[float, ...], bin_survival: np.ndarray) -> tuple[Curve, float | None]:
    """Step curve over the finite bin edges and the median survival (first edge with S ≤ 0.5, else None)."""
    inner = [float(e) for e in bin_edges[1:-1]]  # e_1..e_{J-1}: the finite bin ends
    values = [float(s) for s in bin_survival[:len(inner)]]
    median = next((e for e, s in zip(inner, values) if s <= 0.5), None)
    return Curve([float(bin_edges[0])] + inner, [1.0] + values), median


def weighted_majority(labels: list[Any], weights: np.ndarray) -> str | None:
    """The non-empty text label with the largest total weight (ties: alphabetical first); None if none."""
    score: dict[str, float] = {}
    for label, w in zip(labels, weights):
        if isinstance(label, str) and label:
            score[label] = score.get(label, 0.0) + float(w)
    return max(sorted(score), key=lambda k: score[k]) if score else None


def km_median(curve: Curve) -> float | None:
    """The first time a right-continuous step curve reaches S <= 0.5; None when it never does."""
    return next((t for t, v in zip(curve.times, curve.survival) if v <= 0.5), None)


def weighted_event_rate(cases: Any, rows: np.ndarray, weights: np.ndarray) -> tuple[float | None, int]:
    """Σ_j w_j [event_j] / Σ_j w_j over the linked rows with a known status (censorship 0 = event), and
    how many those are; (None, 0) when none is known."""
    if "censorship" not in cases.columns or not len(rows):
        return None, 0
    c = cases["censorship"].iloc[rows].to_numpy(dtype=np.float64, na_value=np.nan)
    known = np.isin(c, (0.0, 1.0))
    if not known.any():
        return None, 0
    return float(weights[known] @ (c[known] == 0.0) / weights[known].sum()), int(known.sum())


def label_text(value: Any) -> str | None:
    """A case-table label as its class text: integer codes (1, 1.0) as '1', text stripped; None when missing."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    text = str(value).strip()
    return text or None


def class_shares(cases: Any, label: str, classes: list[str], rows: np.ndarray,
                  weights: np.ndarray) -> tuple[list[float] | None, int]:
    """Edge-weighted share of each class among the linked rows whose ``label`` is one of ``classes``, and
    how many those are; (None, 0) when none is (or the case table has no such column)."""
    if label not in cases.columns:
        return None, 0
    texts = [label_text(v) for v in cases[label].iloc[rows].tolist()]
    share = np.zeros(len(classes))
    hits = 0
    for text, w in zip(texts, weights):
        if text in classes:
            share[classes.index(text)] += w
            hits += 1
    return ([float(v) for v in share / share.sum()], hits) if hits else (None, 0)


__all__ = ["class_shares", "km", "km_median", "label_text", "percentile_of", "survival_curve",
           "weighted_event_rate", "weighted_majority"]
