r"""Applicability domain: is a slide like the slides the model was trained on?

**Statistic** (patch-feature space). The slide encoder standardises every patch feature with the mean
μ and standard deviation σ of all training patches (buffers ``patch_mean`` / ``patch_std`` of φ_H, in
every bundle). For a slide with patch features :math:`x_1 … x_n \in \mathbb R^P`

.. math::
    z_i = (x_i - μ) / σ, \qquad \bar z = \frac1n \sum_i z_i, \qquad M = \frac1P \lVert \bar z \rVert^2

the mean squared shift of the slide's average patch, in training standard deviations. Summed over the
training slides (weighted by their patches) :math:`\bar z` averages to 0 and M to the share of the
feature variance that lies between slides (≈ 0.05 in the shipped cohort); a slide of another tissue,
stain or scanner moves :math:`\bar z` (the CMU skin slide: M ≈ 1.6, the shipped cohort's slides
0.03–0.08).

**Calibration** (split conformal). With :math:`M_1 … M_m` the statistic of the m training slides,
computed at training time (:func:`calibration_scores`) and stored in the bundle's manifest
(``applicability``: ``{"statistic", "level", "scores"}``), the conformal p-value of a new slide is

.. math::
    p = \frac{1 + \#\{s : M_s \ge M\}}{m + 1}

— under exchangeability of the new slide with the training slides, :math:`P(p \le α) \le α`: a slide
of the training distribution is flagged (p < level, default 0.05) at most 5 % of the time. The
training slides helped fit μ, σ, so their M is very slightly smaller than a fresh slide's (m ≈ 350:
negligible). Slides much larger or smaller than the training slides have a less or more noisy
:math:`\bar z`; the shipped bundle was trained on 2048 × 1536 px slides (≈ 25–60 patches).

The shipped bundle was written before the scores were kept: its calibration scores are those of its
training slides regenerated from the cohort's recipe (:mod:`~msrl_model.infer.bundle.shipped_calibration`,
pinned to its manifest fingerprint). Any other bundle without scores gets no p-value and a note.

**Not used: the node embedding.** The distance of the slide embedding h to its nearest buffer cases,
calibrated leave-one-out within the buffer, was measured on the shipped bundle: it flagged 9 of 20 fresh
synthetic slides at p < 0.05 and not the CMU skin slide (p = 0.16) — the buffer embeddings come from
slides φ_H was trained on, so they sit closer to each other than any new slide does, and φ_H maps
foreign tissue into the cohort's region. The patch statistic has neither problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from msrl_model.infer.results import Applicability

STATISTIC = "patch_mean_shift"  # the M above; the manifest names it so a later statistic is not mixed in
DEFAULT_LEVEL = 0.05
UNLIKE = ("This slide is unlike the training cohort (its tissue, stain or scanning differs from every "
          "training slide); predictions are unreliable")


def patch_shift(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """M = ‖mean_i (x_i − μ)/σ‖² / P of patch features ``features`` (n, P) (module docstring)."""
    z = (np.asarray(features, dtype=np.float64) - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    zbar = z.mean(axis=0)
    return float(zbar @ zbar / zbar.size)


def calibration_scores(bags: Iterable[np.ndarray], mean: np.ndarray, std: np.ndarray) -> list[float]:
    """M of every training slide's patch features (the calibration set stored in the bundle)."""
    return [patch_shift(x, mean, std) for x in bags if len(x)]


def conformal_p(score: float, scores: np.ndarray) -> float:
    """(1 + #{s : M_s ≥ M}) / (m + 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float((1 + np.count_nonzero(scores >= score)) / (len(scores) + 1))


def manifest_block(scores: list[float], level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """The manifest's ``applicability`` entry."""
    return {"statistic": STATISTIC, "level": float(level), "scores": [float(s) for s in scores]}


class ApplicabilityCheck:
    """The check of one bundle: its training-patch μ, σ and its calibration scores (or none).

    Args:
        mean, std: (P,) the slide encoder's ``patch_mean`` / ``patch_std``.
        block: the manifest's ``applicability`` entry, or the shipped calibration; None when the bundle has none.
        source: where ``block`` comes from ("bundle", "shipped calibration").
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, block: dict[str, Any] | None, source: str) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        usable = block is not None and block.get("statistic") == STATISTIC and len(block.get("scores") or []) > 0
        self.scores = np.asarray(block["scores"], dtype=np.float64) if usable else np.zeros(0)
        self.level = float(block.get("level", DEFAULT_LEVEL)) if usable else DEFAULT_LEVEL
        self.source = source if usable else "none"

    def check(self, features: np.ndarray) -> Applicability:
        """The applicability of a slide with patch features ``features`` (n, P)."""
        m = patch_shift(features, self.mean, self.std)
        if not len(self.scores):
            return Applicability(None, self.level, False, m, "none", 0,
                                 "This model bundle carries no calibration of the training cohort's slides "
                                 "(written before MSRL Studio kept one), so it cannot tell whether this slide "
                                 "is like them; rebuild the bundle to get this check")
        p = conformal_p(m, self.scores)
        flagged = p < self.level
        typical = float(np.quantile(self.scores, 0.95))
        if flagged:
            message = (f"{UNLIKE}: its patch features are shifted by {m:.2f} (training slides: 95 % below "
                       f"{typical:.2f}; p = {p:.3f} < {self.level:g})")
        else:
            message = (f"The slide's patch features are within the range of the training slides "
                       f"(shift {m:.2f}, p = {p:.2f})")
        return Applicability(p, self.level, flagged, m, self.source, int(len(self.scores)), message)


def bundle_check(bundle: Any, mean: np.ndarray, std: np.ndarray) -> ApplicabilityCheck:
    """The check of a loaded bundle: the manifest's ``applicability`` entry, else the shipped bundle's
    pinned calibration, else none."""
    from msrl_model.infer.bundle.shipped_calibration import shipped_calibration

    block = bundle.manifest.get("applicability")
    if isinstance(block, dict):
        return ApplicabilityCheck(mean, std, block, "bundle")
    return ApplicabilityCheck(mean, std, shipped_calibration(bundle.fingerprint), "shipped calibration")


__all__ = ["ApplicabilityCheck", "DEFAULT_LEVEL", "STATISTIC", "UNLIKE", "bundle_check", "calibration_scores",
           "conformal_p", "manifest_block", "patch_shift"]
