"""Per-slide morphology and directly sampled patch-feature bags of synthetic cases (SYNTHETIC data).

:func:`slide_morphology` maps a case's latents onto :class:`~msrl_model.synth.render.SlideMorphology`
parameters (what a rendered slide shows); :func:`sample_feature_bag` is the fast mode's stand-in for
rendering and encoding: a bag of patch features laid out like tissue, following the same parameters.
"""

from __future__ import annotations

import numpy as np

from msrl_model.synth.latents import Latents, project_params, sigmoid

# Prototype patch-type vectors do not depend on the cohort seed: all synthetic cohorts of one
# feature dimension share one "encoder space".
_FEATURE_SPACE_SEED = 7_2024
PATCH_TYPES = ("tumour", "stroma", "lumen", "immune")


def slide_morphology(lat: Latents, i: int, seed: int, n_projects: int, slide_k: int) -> dict[str, float]:
    """Parameters of :class:`msrl_model.synth.slides.SlideMorphology` for case ``i``'s slide
    ``slide_k`` (stain and tissue amount vary per slide, biology per case)."""
    pp = project_params(n_projects, seed)
    rng = np.random.default_rng([seed, 8, i, slide_k])
    p, s, a = lat.project[i], lat.subtype[i], lat.aggressiveness[i]
    return {
        "nuclear_density": float(np.clip(1.0 + 0.35 * a + pp["density"][p], 0.3, 3.0)),
        "nuclear_size": float(np.clip(1.0 + 0.15 * a, 0.6, 1.8)),
        "atypia": float(sigmoid(0.9 * a - 0.5)),
        "stroma_fraction": float(np.clip(sigmoid(lat.stroma[i]), 0.05, 0.9)),
        "lumen_fraction": float(0.4 * sigmoid(pp["lumen"][p] + pp["subtype_lumen"][p, s] - 0.6 * a)),
        "tissue_fraction": float(rng.uniform(0.4, 0.6)),
        "stain_hematoxylin": float(np.clip(1 + rng.normal(0, 0.12), 0.6, 1.4)),
        "stain_eosin": float(np.clip(1 + rng.normal(0, 0.12), 0.6, 1.4)),
        "hue_shift": float(np.clip(rng.normal(0, 0.25), -1, 1)),
        "clear_cell_fraction": clear_cell_fraction(float(lat.hypoxia[i])),
    }


def clear_cell_fraction(hypoxia: float) -> float:
    """Share of the tumour in clear-cell foci for a hypoxia latent x: 0.5·σ(1.5x − 1) (0.03–0.45 for
    x in ±2; about 0.13 at x = 0), the only trace of x in a slide."""
    return float(0.5 * sigmoid(1.5 * hypoxia - 1.0))


def patch_type_fractions(morph: dict[str, float], immune: float) -> np.ndarray:
    """(4,) shares of tumour/stroma/lumen/immune patches from morphology and immune latent."""
    lumen = morph["lumen_fraction"]
    imm = 0.03 + 0.12 * float(sigmoid(immune))
    stroma = morph["stroma_fraction"] * (1 - lumen - imm)
    return np.array([1 - lumen - imm - stroma, stroma, lumen, imm])


def _feature_space(dim: int) -> dict[str, np.ndarray]:
    """Fixed prototypes per patch type and unit directions for morphology and stain effects."""
    rng = np.random.default_rng([_FEATURE_SPACE_SEED, dim])

    def unit(k: int) -> np.ndarray:
        v = rng.normal(size=(k, dim))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return {
        "proto": 3.0 * unit(len(PATCH_TYPES)),  # (4, dim) type centres
        "morph": unit(3),  # (3, dim) nuclear density, size, atypia
        "stain": unit(3),  # (3, dim) haematoxylin, eosin, hue
        "clear": unit(1)[0],  # (dim,) clear-cell change of a tumour patch
    }


def grid_coords(n: int, rng: np.random.Generator, patch: int = 256) -> np.ndarray:
    """(n, 2) int64 level-0 top-left pixels of a compact blob of n grid cells."""
    side = int(np.ceil(np.sqrt(n / 0.5))) + 2
    yy, xx = np.mgrid[0:side, 0:side]
    cells = np.column_stack([xx.ravel(), yy.ravel()])  # (side², 2) as (x, y)
    centre = (side - 1) / 2
    stretch = rng.uniform(0.7, 1.3)
    dist = np.hypot((cells[:, 0] - centre) * stretch, (cells[:, 1] - centre) / stretch)
    dist = dist + rng.normal(0, 0.8, len(cells))  # ragged edge
    chosen = cells[np.sort(np.argsort(dist)[:n])]
    return (chosen * patch).astype(np.int64)


def sample_feature_bag(lat: Latents, i: int, slide_k: int, morph: dict[str, float], dim: int,
                       seed: int, patches: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One slide's patch features (M, dim) float32 and coords (M, 2) int64.

    Patch types are laid out in spatially coherent regions (a smooth random field, split at the
    type shares). Feature = type prototype + per-patch morphology (tumour/immune patches: nuclear
    density, size and atypia with intra-tumour heterogeneity N(0, 0.7²) on the aggressiveness) +
    per-slide stain shift + N(0, 1) noise; a share ``clear_cell_fraction`` of the tumour patches
    (one smooth region) gets the clear-cell direction. The genomic factor ``u`` has no effect at all.
    """
    rng = np.random.default_rng([seed, 9, i, slide_k])
    space = _feature_space(dim)
    m = int(rng.integers(patches[0], patches[1] + 1))
    coords = grid_coords(m, rng)
    shares = patch_type_fractions(morph, lat.immune[i])
    # smooth field over the blob: a few gaussian bumps
    xy = coords / 256.0
    centres = xy[rng.integers(0, m, 4)]
    field_ = sum(rng.normal() * np.exp(-((xy - c) ** 2).sum(1) / (2 * rng.uniform(2, 6) ** 2))
                 for c in centres) + rng.normal(0, 0.05, m)
    counts = np.floor(shares * m).astype(int)
    counts[0] += m - counts.sum()
    types = np.empty(m, dtype=np.int64)
    types[np.argsort(field_)] = np.repeat([2, 0, 3, 1], counts[[2, 0, 3, 1]])  # lumen|tumour|immune|stroma
    feats = space["proto"][types] + rng.normal(0, 1.0, (m, dim))
    local_a = lat.aggressiveness[i] + rng.normal(0, 0.7, m)  # intra-tumour heterogeneity
    nuclear = np.column_stack([0.35 * local_a, 0.15 * local_a, sigmoid(0.9 * local_a - 0.5) - 0.5])
    cellular = np.isin(types, (0, 3))[:, None]
    feats += cellular * 0.8 * (nuclear @ space["morph"])
    tumour = np.flatnonzero(types == 0)
    n_clear = int(round(morph["clear_cell_fraction"] * tumour.size))
    feats[tumour[np.argsort(field_[tumour])[:n_clear]]] += 1.5 * space["clear"]  # one focus
    stain = np.array([morph["stain_hematoxylin"] - 1, morph["stain_eosin"] - 1, morph["hue_shift"]])
    feats += 2.0 * stain @ space["stain"]
    return feats.astype(np.float32), coords
