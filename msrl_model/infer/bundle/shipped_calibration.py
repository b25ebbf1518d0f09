"""The applicability calibration of the shipped bundle, which was written before bundles kept one.

``resources/shipped_slide_profiles.npy`` (next to ``resources/bundle``; (350, 264) float32) holds the
profile (:mod:`msrl_model.infer.applicability`) of each of the shipped bundle's 350 training slides,
against the bundle's own training-patch μ, σ. The slides were regenerated from the cohort's recipe,
``msrl synth cohort OUT --cases 300 --projects 3 --seed 0 --render-slides`` (deterministic; its case
ids are the buffer's, and the patch mean and standard deviation of its 10,036 patches equal the
bundle's ``patch_mean`` / ``patch_std`` to within 5·10⁻⁶ σ), one profile per slide in slide-id order::

    z̄_t = mean over slide t's patches of (x − patch_mean) / patch_std

The file is pinned by its SHA-256 (:data:`PROFILES_SHA256`) and used only for the bundle whose
manifest has the shipped fingerprint; an edited file is refused, so no check is silently weakened.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from msrl_model.errors import BundleError
from msrl_model.infer.bundle.shipped import SHIPPED_MANIFEST_SHA256, resource_dirs

PROFILES = "shipped_slide_profiles.npy"
PROFILES_SHA256 = "5cacb6640f66114fc42baef209ef0c02b9a8b07e1fceced4f70862de8adbc75d"
PROFILES_SHAPE = (350, 264)


def shipped_calibration(fingerprint: str) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """(the ``applicability`` entry, the (350, 264) profiles) for the shipped bundle (``fingerprint`` =
    its manifest's pinned SHA-256); (None, None) for any other bundle or when the file is not installed.
    BundleError when the file is there but modified."""
    from msrl_model.infer.applicability import DEFAULT_K, DEFAULT_LEVEL, STATISTIC, loo_scores

    if fingerprint != SHIPPED_MANIFEST_SHA256:
        return None, None
    path = next((d / PROFILES for d in resource_dirs() if (d / PROFILES).is_file()), None)
    if path is None:
        return None, None
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != PROFILES_SHA256:
        raise BundleError(f"{path} (the shipped model's training-slide profiles) was modified; "
                          "reinstall MSRL Studio")
    profiles = np.load(path, allow_pickle=False)
    if profiles.shape != PROFILES_SHAPE:
        raise BundleError(f"{path} has shape {profiles.shape}, expected {PROFILES_SHAPE}; reinstall MSRL Studio")
    block = {"statistic": STATISTIC, "level": DEFAULT_LEVEL, "k": DEFAULT_K,
             "scores": [float(s) for s in loo_scores(profiles, DEFAULT_K)]}
    return block, profiles


__all__ = ["PROFILES", "PROFILES_SHA256", "shipped_calibration"]
