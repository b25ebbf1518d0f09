r"""Applicability domain: is a slide like the slides the model was trained on?

**Slide profile** (patch-feature space). The slide encoder standardises every patch feature with the
mean μ and standard deviation σ of all training patches (buffers ``patch_mean`` / ``patch_std`` of φ_H,
in every bundle). A slide with patch features :math:`x_1 … x_n \in \mathbb R^P` has the profile

.. math::
    \bar z = \frac1n \sum_i (x_i - μ) / σ \quad \in \mathbb R^P

its average patch, in training standard deviations.

**Score**: the mean RMS distance of the profile to the profiles of its k nearest training slides,

.. math::
    s(\bar z) = \frac1k \sum_{j=1}^{k} d_{(j)}, \qquad d_t = \lVert \bar z - \bar z_t \rVert / \sqrt P

(:math:`d_{(j)}` the j-th smallest over the training slides t; k = :data:`DEFAULT_K`).

**Calibration** (conformal, leave-one-out). Each training slide t gets the same score against the
other training slides, :math:`s_t`; a new slide's p-value is

.. math::
    p = \frac{1 + \#\{t : s_t \ge s(\bar z)\}}{m + 1}

— under exchangeability of the new slide with the m training slides :math:`P(p \le α) \le α` (up to
the one slide fewer each leave-one-out score sees), so a slide of the training distribution is flagged
(p < level, default 0.05) at most about 5 % of the time. The training slides helped fit μ and σ; with
hundreds of slides that is negligible. Slides much smaller than the training slides have a noisier
profile, so they sit a little farther from everyone.

**Stored**: a bundle written since keeps the training slides' profiles in ``buffer.h5``
(``/applicability/slide_means`` (m, P) float32, at most :data:`MAX_SLIDES` of them) and, in its manifest,
``applicability`` ``{statistic, level, k, scores}`` (the leave-one-out :math:`s_t`); the shipped bundle
does too. A bundle without them (written before they were kept) gets no p-value and a note saying so.

Measured on the shipped bundle (350 training slides of 2048 × 1536 px): training scores 0.16–0.55
(95 % below 0.38); the CMU skin slide 0.94 (p = 1/351, the smallest possible); 20 fresh synthetic
slides (``msrl synth slide`` 2048 × 1536, unseen seeds) p ≥ 0.35 and 10 small ones (1024 × 1024, ≈ 10
patches) p ≥ 0.15: none flagged.

**Not used: the node embedding.** The cosine distance of the slide embedding h to its nearest buffer
cases, calibrated leave-one-out within the buffer, flagged 9 of those 20 synthetic slides at p < 0.05
and not the CMU slide (p = 0.16): the buffer embeddings come from slides φ_H was trained on, so they sit
closer to each other than any new slide does, and φ_H maps foreign tissue into the cohort's region.
Scalar summaries of the profile (its squared norm, the patches' mean squared z) flagged the CMU slide
only at p ≈ 0.01–0.02: the training slides vary in many directions, and only the distance to the
nearest ones tells a new direction from a known one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from msrl_model.infer.results import Applicability

STATISTIC = "slide_profile_knn"  # the score above; the manifest names it so that no other is mixed in
DEFAULT_LEVEL = 0.05
DEFAULT_K = 3
MAX_SLIDES = 2000  # profiles kept in a bundle (a seeded subset beyond): 2000 × 1536 float32 = 12 MB
UNLIKE = "This slide is unlike the training cohort, so its predictions are unreliable"


def slide_profile(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """z̄ = mean_i (x_i − μ)/σ (P,) float64 of patch features ``features`` (n, P)."""
    z = (np.asarray(features, dtype=np.float64) - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return z.mean(axis=0)


def _rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) ‖a_i − b_j‖ / √P, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0) / a.shape[1])


def knn_score(profile: np.ndarray, profiles: np.ndarray, k: int = DEFAULT_K) -> float:
    """s(z̄): the mean distance of ``profile`` (P,) to its ``k`` nearest rows of ``profiles`` (m, P)."""
    d = np.sort(_rms_distances(profile[None], profiles)[0])
    return float(d[:min(k, len(d))].mean())


def loo_scores(profiles: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """s_t of every training slide t against the others (m,); m ≥ 2."""
    d = _rms_distances(profiles, profiles)
    np.fill_diagonal(d, np.inf)
    kk = min(k, len(profiles) - 1)
    return np.sort(d, axis=1)[:, :kk].mean(axis=1)


def conformal_p(score: float, scores: np.ndarray) -> float:
    """(1 + #{t : s_t ≥ s}) / (m + 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float((1 + np.count_nonzero(scores >= score)) / (len(scores) + 1))


def calibration(bags: Iterable[np.ndarray], mean: np.ndarray, std: np.ndarray, *, k: int = DEFAULT_K,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> tuple[dict[str, Any], np.ndarray] | None:
    """(the manifest's ``applicability`` entry, the profiles (m, P) float32 for ``buffer.h5``) of the
    training slides' patch features ``bags`` (one array per slide); at most :data:`MAX_SLIDES` profiles
    (a subset drawn with ``seed``). None with fewer than two slides."""
    profiles = np.array([slide_profile(x, mean, std) for x in bags if len(x)])
    if len(profiles) < 2:
        return None
    if len(profiles) > MAX_SLIDES:
        keep = np.sort(np.random.default_rng(seed).choice(len(profiles), MAX_SLIDES, replace=False))
        profiles = profiles[keep]
    profiles = profiles.astype(np.float32)
    block = {"statistic": STATISTIC, "level": float(level), "k": int(k),
             "scores": [float(s) for s in loo_scores(profiles, k)]}
    return block, profiles


class ApplicabilityCheck:
    """The check of one bundle: its training-patch μ, σ and the training slides' profiles and
    leave-one-out scores (or none).

    Args:
        mean, std: (P,) the slide encoder's ``patch_mean`` / ``patch_std``.
        block: the ``applicability`` entry ({statistic, level, k, scores}); None when the bundle has none.
        profiles: (m, P) the training slides' profiles, row t scored ``block["scores"][t]``.
        source: where they come from ("bundle").
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, block: dict[str, Any] | None,
                 profiles: np.ndarray | None, source: str) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        usable = (block is not None and profiles is not None and block.get("statistic") == STATISTIC
                  and len(block.get("scores") or []) == len(profiles) >= 2)
        self.scores = np.asarray(block["scores"], dtype=np.float64) if usable else np.zeros(0)
        self.profiles = np.asarray(profiles, dtype=np.float64) if usable else np.zeros((0, len(self.mean)))
        self.level = float(block.get("level", DEFAULT_LEVEL)) if usable else DEFAULT_LEVEL
        self.k = int(block.get("k", DEFAULT_K)) if usable else DEFAULT_K
        self.source = source if usable else "none"

    def check(self, features: np.ndarray) -> Applicability:
        """The applicability of a slide with patch features ``features`` (n, P)."""
        if not len(self.scores):
            return Applicability(None, self.level, False, None, "none", 0,
                                 "This model bundle does not describe its training slides (it was written "
                                 "before MSRL Studio kept them), so it cannot tell whether this slide is like "
                                 "them; rebuild the bundle to get this check")
        s = knn_score(slide_profile(features, self.mean, self.std), self.profiles, self.k)
        p = conformal_p(s, self.scores)
        flagged = p < self.level
        if flagged:
            closer = float(np.mean(self.scores < s))  # share of training slides nearer to their neighbours
            than = "any training slide is" if closer == 1.0 else f"{closer:.0%} of the training slides are"
            message = (f"{UNLIKE}: its tissue, staining or scanning differs — its patches are farther from the "
                       f"most similar training slides than {than} from the others (p = {p:.3f})")
        else:
            message = f"The slide's patches resemble those of the training slides (p = {p:.2f})"
        return Applicability(p, self.level, flagged, s, self.source, int(len(self.scores)), message)


def bundle_check(bundle: Any, mean: np.ndarray, std: np.ndarray) -> ApplicabilityCheck:
    """The check of a loaded bundle: its own calibration, or none (a bundle written before they were kept)."""
    block = bundle.manifest.get("applicability")
    return ApplicabilityCheck(mean, std, block if isinstance(block, dict) else None, bundle.slide_profiles, "bundle")


__all__ = ["ApplicabilityCheck", "DEFAULT_K", "DEFAULT_LEVEL", "MAX_SLIDES", "STATISTIC", "UNLIKE", "bundle_check",
           "calibration", "conformal_p", "knn_score", "loo_scores", "slide_profile"]
