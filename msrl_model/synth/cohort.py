"""Synthetic cohorts (DESIGN §7): SYNTHETIC data in the cohort-directory format of DESIGN §3.

Nothing here is patient data. Each case has latent variables and everything observable is a
function of them plus noise:

==================  ================================  =====================  ==================
latent              drives                            visible in slides      prognostic
==================  ================================  =====================  ==================
project             baselines of everything           yes (stroma, lumina)   baseline hazard
subtype             stroma/lumina, lineage groups,    yes                    via aggressiveness
                    HER2 status (first project)
aggressiveness a    nuclei density/size/atypia,       yes (subtly)           yes (β = 1.0)
                    lumina ↓, proliferation groups,
                    stage, TP53 (partly)
genomic factor u    DNA-repair/OXPHOS/p53-like        NO                     yes (β = 0.8)
                    groups, TP53 (mostly)
hypoxia x           focal clear-cell change (pale,    yes (subtly, focal)    yes (β = 0.8)
                    eosin-poor tumour cytoplasm),
                    hypoxia/glycolysis/mTORC1 groups
immune m            immune patches, immune groups     yes (fast bags only)   mildly (β = −0.25)
stroma s            stroma patches, EMT-like groups   yes                    no
nuisance v1, v2     metabolism-like groups            no                     no
==================  ================================  =====================  ==================

So genomics carries prognostic signal that no slide can show (``u``), slides carry a part that
genomics also measures plainly (``a``, which survival labels alone teach a WSI model well), and a
part the slides show only subtly (``x``: the share of tumour in clear-cell foci) while three gene
groups measure it cleanly. That last part is the paper's premise: genomics supervision (the
Inductor, the buffer of authentic profiles) teaches a slide model morphology that a few hundred
censored survival labels barely reveal. Without it the slide-only ceiling (the true visible
log-hazard) is what a plain attention-MIL model already reaches, and MSRL_multi ≥ MSRL > WSI-only
could not hold in expectation.

Two modes: the fast one samples patch-feature bags directly (a mixture of tumour/stroma/lumen/
immune patch types whose proportions and appearance follow the latents); ``render_slides`` renders
small SVS slides through :func:`msrl_model.synth.slides.make_slide` and extracts their features with
the built-in encoder (slow). The true latents are written to ``synthetic_latents.csv`` for checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.errors import MSRLError
from msrl_model.features.h5io import write_features
from msrl_model.progress import Job, Progress, Stage, drive
from msrl_model.train.gmt import GeneSet, write_gmt

GENERATOR_VERSION = "1"
# Prototype patch-type vectors do not depend on the cohort seed: all synthetic cohorts of one
# feature dimension share one "encoder space".
_FEATURE_SPACE_SEED = 7_2024
PATCH_TYPES = ("tumour", "stroma", "lumen", "immune")
PROJECT_NAMES = ("SYN-BRCA", "SYN-LUAD", "SYN-COAD", "SYN-BLCA", "SYN-HNSC", "SYN-STAD",
                 "SYN-KIRC", "SYN-LGG")
STAGES = ("I", "II", "III", "IV")
GMT_NAME = "hallmark_synthetic.gmt"
# Survival model: log-hazard weights of the latents.
BETA_AGGRESSIVENESS = 1.0
BETA_GENOMIC = 0.8
BETA_HYPOXIA = 0.8
BETA_IMMUNE = -0.25
WEIBULL_SHAPE = 1.2
WEIBULL_SCALE_MONTHS = 45.0

# The 50 MSigDB Hallmark names, reused for synthetic groups of synthetic genes; each is assigned
# the latent it follows (the "role"). The .gmt description says they are synthetic.
GROUP_ROLES: dict[str, str] = {
    **{f"HALLMARK_{n}": "aggressiveness" for n in (
        "E2F_TARGETS", "G2M_CHECKPOINT", "MYC_TARGETS_V1", "MYC_TARGETS_V2", "MITOTIC_SPINDLE",
        "PI3K_AKT_MTOR_SIGNALING")},
    **{f"HALLMARK_{n}": "genomic" for n in (
        "DNA_REPAIR", "OXIDATIVE_PHOSPHORYLATION", "UNFOLDED_PROTEIN_RESPONSE",
        "P53_PATHWAY", "REACTIVE_OXYGEN_SPECIES_PATHWAY")},
    **{f"HALLMARK_{n}": "hypoxia" for n in ("HYPOXIA", "GLYCOLYSIS", "MTORC1_SIGNALING")},
    **{f"HALLMARK_{n}": "immune" for n in (
        "ALLOGRAFT_REJECTION", "INTERFERON_GAMMA_RESPONSE", "INTERFERON_ALPHA_RESPONSE",
        "INFLAMMATORY_RESPONSE", "IL6_JAK_STAT3_SIGNALING", "IL2_STAT5_SIGNALING", "COMPLEMENT",
        "TNFA_SIGNALING_VIA_NFKB")},
    **{f"HALLMARK_{n}": "stroma" for n in (
        "EPITHELIAL_MESENCHYMAL_TRANSITION", "ANGIOGENESIS", "COAGULATION", "MYOGENESIS",
        "TGF_BETA_SIGNALING", "APICAL_JUNCTION")},
    **{f"HALLMARK_{n}": "subtype" for n in (
        "ESTROGEN_RESPONSE_EARLY", "ESTROGEN_RESPONSE_LATE", "ANDROGEN_RESPONSE", "KRAS_SIGNALING_UP",
        "KRAS_SIGNALING_DN", "WNT_BETA_CATENIN_SIGNALING", "NOTCH_SIGNALING", "HEDGEHOG_SIGNALING",
        "APICAL_SURFACE")},
    **{f"HALLMARK_{n}": "nuisance" for n in (
        "ADIPOGENESIS", "APOPTOSIS", "BILE_ACID_METABOLISM", "CHOLESTEROL_HOMEOSTASIS",
        "FATTY_ACID_METABOLISM", "HEME_METABOLISM", "PANCREAS_BETA_CELLS", "PEROXISOME",
        "PROTEIN_SECRETION", "SPERMATOGENESIS", "UV_RESPONSE_DN", "UV_RESPONSE_UP",
        "XENOBIOTIC_METABOLISM")},
}
# Order of the latent columns in the activity model (project and subtype one-hots follow).
_LATENTS = ("aggressiveness", "genomic", "immune", "stroma", "nuisance1", "nuisance2", "hypoxia")


@dataclass
class SynthCohortConfig:
    """Parameters of a synthetic cohort."""

    n_cases: int = 200  # number of cases (patients)
    n_projects: int = 3  # number of tumour types; the first has HER2 status
    seed: int = 0  # everything is a function of this seed
    feature_dim: int | None = None  # patch-feature dim of the fast mode; None = the built-in encoder's
    patches: tuple[int, int] = (64, 400)  # range of patches per slide (fast mode)
    second_slide_fraction: float = 0.15  # share of cases with two slides
    censoring: float = 0.4  # target share of censored cases (random censoring)
    genes_per_group: tuple[int, int] = (20, 80)  # range of genes per gene group
    render_slides: bool = False  # render SVS slides + extract features (slow) instead of bags
    slide_size: tuple[int, int] = (2048, 1536)  # (width, height) of rendered slides
    encoder_spec: str = "builtin-he"  # encoder used to extract features from rendered slides


@dataclass
class SynthCohortResult:
    """What was written."""

    root: Path  # the cohort directory
    n_cases: int  # cases written
    n_slides: int  # slides (feature files) written
    n_genes: int  # genes in expression.csv
    feature_dim: int  # patch-feature dimension
    censored_fraction: float  # realised share of censored cases
    files: list[str] = field(default_factory=list)  # top-level files written


@dataclass
class Latents:
    """Per-case latent variables (all arrays (n_cases,))."""

    project: np.ndarray  # int64 project index
    subtype: np.ndarray  # int64 subtype within project (0..2)
    aggressiveness: np.ndarray  # float, visible in morphology and genomics, prognostic
    genomic: np.ndarray  # float, genomics only (invisible in slides), prognostic
    immune: np.ndarray  # float, immune infiltration (patches and immune groups)
    stroma: np.ndarray  # float, stroma logit (patches and EMT-like groups)
    nuisance1: np.ndarray  # float, genomics-only non-prognostic factor
    nuisance2: np.ndarray  # float, genomics-only non-prognostic factor
    hypoxia: np.ndarray  # float, focal clear-cell change in slides (subtle), hypoxia groups, prognostic


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def builtin_feature_dim() -> int:
    """Feature dimension of the built-in H&E encoder (the default of the fast mode)."""
    from msrl_model.encoders import build_encoder

    return int(build_encoder("builtin-he").dim)


# --------------------------------------------------------------------------------------------
# latents, survival, labels


def _project_params(n_projects: int, seed: int) -> dict[str, np.ndarray]:
    """Per-project constants: baseline hazard, stroma/lumen tendencies, subtype mix and effects."""
    rng = np.random.default_rng([seed, 1])
    return {
        "base_hazard": rng.normal(0.0, 0.3, n_projects),
        "stroma": rng.normal(0.0, 0.6, n_projects),
        "lumen": rng.normal(-1.0, 0.8, n_projects),
        "density": rng.normal(0.0, 0.15, n_projects),
        "subtype_p": rng.dirichlet(np.full(3, 3.0), n_projects),  # (P, 3)
        "subtype_aggr": rng.normal(0.0, 0.4, (n_projects, 3)),
        "subtype_stroma": rng.normal(0.0, 0.5, (n_projects, 3)),
        "subtype_lumen": rng.normal(0.0, 0.5, (n_projects, 3)),
    }


def sample_latents(n_cases: int, n_projects: int, seed: int) -> Latents:
    """Draw the latent variables of ``n_cases`` cases."""
    pp = _project_params(n_projects, seed)
    rng = np.random.default_rng([seed, 2])
    project = rng.integers(0, n_projects, n_cases)
    project[:n_projects] = np.arange(min(n_projects, n_cases))  # every project present
    project = np.sort(project)
    subtype = np.array([rng.choice(3, p=pp["subtype_p"][p]) for p in project], dtype=np.int64)
    return Latents(
        project=project.astype(np.int64),
        subtype=subtype,
        aggressiveness=rng.normal(0, 1, n_cases) + pp["subtype_aggr"][project, subtype],
        genomic=rng.normal(0, 1, n_cases),
        immune=rng.normal(0, 1, n_cases),
        stroma=pp["stroma"][project] + pp["subtype_stroma"][project, subtype]
        + rng.normal(0, 0.5, n_cases),
        nuisance1=rng.normal(0, 1, n_cases),
        nuisance2=rng.normal(0, 1, n_cases),
        hypoxia=rng.normal(0, 1, n_cases),  # drawn last: the other latents keep their values
    )


def log_hazard(lat: Latents, seed: int, n_projects: int) -> np.ndarray:
    """η = project baseline + β_a·a + β_u·u + β_x·x + β_m·m (the true risk of each case)."""
    pp = _project_params(n_projects, seed)
    return (pp["base_hazard"][lat.project] + BETA_AGGRESSIVENESS * lat.aggressiveness
            + BETA_GENOMIC * lat.genomic + BETA_HYPOXIA * lat.hypoxia + BETA_IMMUNE * lat.immune)


def sample_survival(lat: Latents, seed: int, n_projects: int,
                    censoring: float) -> tuple[np.ndarray, np.ndarray]:
    """Weibull event times T = λ (−log U)^{1/k} e^{−η/k} and uniform random censoring
    C ~ U(0, c_max), with c_max set so that about ``censoring`` of the cases are censored.

    Returns ``(months, censorship)`` with months rounded to 0.01 and ≥ 0.1.
    """
    rng = np.random.default_rng([seed, 3])
    eta = log_hazard(lat, seed, n_projects)
    event_t = WEIBULL_SCALE_MONTHS * (-np.log(rng.uniform(size=eta.shape))) ** (1 / WEIBULL_SHAPE) \
        * np.exp(-eta / WEIBULL_SHAPE)
    u = rng.uniform(size=eta.shape)
    lo, hi = 1.0, 10_000.0
    for _ in range(60):  # bisection on c_max for the target censored share
        c_max = (lo * hi) ** 0.5
        share = np.mean(u * c_max < event_t)
        lo, hi = (c_max, hi) if share > censoring else (lo, c_max)
    censor_t = u * (lo * hi) ** 0.5
    censored = (censor_t < event_t).astype(np.int64)
    months = np.maximum(np.round(np.minimum(event_t, censor_t), 2), 0.1)
    return months, censored


def sample_labels(lat: Latents, seed: int) -> dict[str, list[str | None]]:
    """Stage I–IV (aggressiveness + noise), TP53_mut (mostly the genomic factor, partly
    aggressiveness) and HER2_status (first project only; subtype 1 mostly positive)."""
    rng = np.random.default_rng([seed, 4])
    n = len(lat.project)
    score = lat.aggressiveness + rng.normal(0, 0.7, n)
    stage = np.digitize(score, [-0.7, 0.3, 1.1])
    tp53 = rng.uniform(size=n) < _sigmoid(-0.3 + 1.6 * lat.genomic + 0.8 * lat.aggressiveness)
    her2_pos = rng.uniform(size=n) < np.where(lat.subtype == 1, 0.85, 0.08)
    return {
        "stage": [STAGES[s] for s in stage],
        "TP53_mut": [str(int(t)) for t in tp53],
        "HER2_status": [("positive" if h else "negative") if p == 0 else None
                        for h, p in zip(her2_pos, lat.project)],
    }


# --------------------------------------------------------------------------------------------
# expression


def make_gene_sets(seed: int, genes_per_group: tuple[int, int] = (20, 80)) -> list[GeneSet]:
    """50 Hallmark-named groups of synthetic genes (G0001, ...), ~10 % of genes shared with an
    earlier group (real Hallmark sets overlap too)."""
    rng = np.random.default_rng([seed, 5])
    sets: list[GeneSet] = []
    next_gene = 1
    pool: list[str] = []
    for name, role in GROUP_ROLES.items():
        size = int(rng.integers(genes_per_group[0], genes_per_group[1] + 1))
        n_shared = min(len(pool), int(round(0.1 * size)))
        shared = list(rng.choice(pool, n_shared, replace=False)) if n_shared else []
        own = [f"G{next_gene + i:04d}" for i in range(size - n_shared)]
        next_gene += len(own)
        pool.extend(own)
        sets.append(GeneSet(name, f"SYNTHETIC gene set following latent '{role}' "
                                  "(msrl synth cohort; not MSigDB)", tuple(own + shared)))
    return sets


def group_activities(lat: Latents, n_projects: int, seed: int) -> np.ndarray:
    """(n_cases, 50) group activities A = Z W + ε: each group loads on its role's latent
    (|w| ≈ 1), weakly on the others, on project and subtype one-hots; ε ~ N(0, 0.5²)."""
    rng = np.random.default_rng([seed, 6])
    n = len(lat.project)
    onehot_p = np.eye(n_projects)[lat.project]  # (n, P)
    onehot_ps = np.eye(n_projects * 3)[lat.project * 3 + lat.subtype]  # (n, 3P) subtype within project
    z = np.column_stack([getattr(lat, k) for k in _LATENTS] + [onehot_p, onehot_ps])  # (n, 7+4P)
    n_lat, roles = len(_LATENTS), list(GROUP_ROLES.items())
    w = rng.normal(0, 0.1, (z.shape[1], len(roles)))
    w[n_lat:n_lat + n_projects] = rng.normal(0, 0.6, (n_projects, len(roles)))
    for g, (name, role) in enumerate(roles):
        if role == "subtype":
            w[n_lat + n_projects:, g] = rng.normal(0, 1.0, 3 * n_projects)
        elif role == "nuisance":
            w[_LATENTS.index("nuisance1" if g % 2 else "nuisance2"), g] = rng.uniform(0.8, 1.2)
        else:
            sign = -1.0 if name == "HALLMARK_P53_PATHWAY" else 1.0
            w[_LATENTS.index(role), g] = sign * rng.uniform(0.9, 1.2)
    return z @ w + rng.normal(0, 0.5, (n, len(roles)))


def sample_expression(lat: Latents, sets: list[GeneSet], n_projects: int,
                      seed: int) -> tuple[list[str], np.ndarray]:
    """Raw counts-like expression (n_cases, n_genes) int64: Poisson(L · exp(μ)) with
    μ_gene = base + loading · activity(gene's first group) + N(0, 0.3²) and library size L."""
    rng = np.random.default_rng([seed, 7])
    activity = group_activities(lat, n_projects, seed)  # (n, groups)
    genes: list[str] = []
    group_of: list[int] = []
    for g, s in enumerate(sets):
        for gene in s.genes:
            if gene not in genes:
                genes.append(gene)
                group_of.append(g)
    n, n_genes = len(lat.project), len(genes)
    base = rng.uniform(np.log(5), np.log(500), n_genes)
    loading = rng.uniform(0.3, 0.8, n_genes) * np.where(rng.uniform(size=n_genes) < 0.85, 1, -1)
    mu = base + loading * activity[:, group_of] + rng.normal(0, 0.3, (n, n_genes))
    library = np.exp(rng.normal(0, 0.1, (n, 1)))
    return genes, rng.poisson(library * np.exp(mu)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# morphology and feature bags


def slide_morphology(lat: Latents, i: int, seed: int, n_projects: int, slide_k: int) -> dict[str, float]:
    """Parameters of :class:`msrl_model.synth.slides.SlideMorphology` for case ``i``'s slide
    ``slide_k`` (stain and tissue amount vary per slide, biology per case)."""
    pp = _project_params(n_projects, seed)
    rng = np.random.default_rng([seed, 8, i, slide_k])
    p, s, a = lat.project[i], lat.subtype[i], lat.aggressiveness[i]
    return {
        "nuclear_density": float(np.clip(1.0 + 0.35 * a + pp["density"][p], 0.3, 3.0)),
        "nuclear_size": float(np.clip(1.0 + 0.15 * a, 0.6, 1.8)),
        "atypia": float(_sigmoid(0.9 * a - 0.5)),
        "stroma_fraction": float(np.clip(_sigmoid(lat.stroma[i]), 0.05, 0.9)),
        "lumen_fraction": float(0.4 * _sigmoid(pp["lumen"][p] + pp["subtype_lumen"][p, s] - 0.6 * a)),
        "tissue_fraction": float(rng.uniform(0.4, 0.6)),
        "stain_hematoxylin": float(np.clip(1 + rng.normal(0, 0.12), 0.6, 1.4)),
        "stain_eosin": float(np.clip(1 + rng.normal(0, 0.12), 0.6, 1.4)),
        "hue_shift": float(np.clip(rng.normal(0, 0.25), -1, 1)),
        "clear_cell_fraction": clear_cell_fraction(float(lat.hypoxia[i])),
    }


def clear_cell_fraction(hypoxia: float) -> float:
    """Share of the tumour in clear-cell foci for a hypoxia latent x: 0.5·σ(1.5x − 1) (0.03–0.45 for
    x in ±2; about 0.13 at x = 0), the only trace of x in a slide."""
    return float(0.5 * _sigmoid(1.5 * hypoxia - 1.0))


def patch_type_fractions(morph: dict[str, float], immune: float) -> np.ndarray:
    """(4,) shares of tumour/stroma/lumen/immune patches from morphology and immune latent."""
    lumen = morph["lumen_fraction"]
    imm = 0.03 + 0.12 * float(_sigmoid(immune))
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
    nuclear = np.column_stack([0.35 * local_a, 0.15 * local_a, _sigmoid(0.9 * local_a - 0.5) - 0.5])
    cellular = np.isin(types, (0, 3))[:, None]
    feats += cellular * 0.8 * (nuclear @ space["morph"])
    tumour = np.flatnonzero(types == 0)
    n_clear = int(round(morph["clear_cell_fraction"] * tumour.size))
    feats[tumour[np.argsort(field_[tumour])[:n_clear]]] += 1.5 * space["clear"]  # one focus
    stain = np.array([morph["stain_hematoxylin"] - 1, morph["stain_eosin"] - 1, morph["hue_shift"]])
    feats += 2.0 * stain @ space["stain"]
    return feats.astype(np.float32), coords


# --------------------------------------------------------------------------------------------
# writing


def _load_render_tools(encoder_spec: str) -> tuple[Any, Any, Any, Any]:
    """(SlideMorphology, make_slide, extract_slide, built encoder) for ``--render-slides``."""
    try:
        from msrl_model.encoders import build_encoder
        from msrl_model.features.pipeline import extract_slide
        from msrl_model.synth.slides import SlideMorphology, make_slide
    except ImportError as exc:
        raise MSRLError(f"--render-slides needs the slide renderer, the encoders and the feature "
                        f"pipeline ({exc.name} is not available); run without --render-slides to "
                        "sample feature bags directly") from exc
    return SlideMorphology, make_slide, extract_slide, build_encoder(encoder_spec, device="auto")


def _render_and_extract(slide_path: Path, features_dir: Path, morph: dict[str, float], seed: int,
                        config: SynthCohortConfig, tools: tuple[Any, Any, Any, Any]) -> Path:
    """Render one SVS slide with ``morph`` and extract its features to ``features/<slide_id>.h5``."""
    slide_morphology_cls, make_slide, extract_slide, encoder = tools
    known = set(slide_morphology_cls.__dataclass_fields__)
    make_slide(slide_path, config.slide_size[0], config.slide_size[1], seed,
               morphology=slide_morphology_cls(**{k: v for k, v in morph.items() if k in known}))
    out = Path(drive(extract_slide(slide_path, features_dir, encoder_spec=encoder, device="auto"),
                     show=False))
    target = features_dir / f"{slide_path.stem}.h5"
    if out != target:
        shutil.move(str(out), target)
    return target


def _prepare_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise MSRLError(f"{root} exists and is not a directory; choose a new output directory")
    if root.exists() and any(root.iterdir()):
        marker = root / "cohort.json"
        synthetic = False
        if marker.exists():
            try:
                synthetic = bool(json.loads(marker.read_text()).get("synthetic"))
            except (json.JSONDecodeError, OSError, AttributeError):
                synthetic = False
        if not synthetic:
            raise MSRLError(f"{root} is not empty and is not a synthetic cohort; choose a new or "
                            "empty output directory")
        for sub in ("features", "slides"):  # replace a previous synthetic cohort's files
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
    root.mkdir(parents=True, exist_ok=True)


_README = """# SYNTHETIC cohort — not patient data

Written by `msrl synth cohort` (MSRL Studio, generator version {version}) with seed {seed}:
{n_cases} cases, {n_slides} slides, {n_projects} projects ({projects}). Every value in this folder is
simulated from latent variables; nothing comes from a person. Use it to test code paths and to
check the method's behaviour, never to draw clinical conclusions.

* `clinical.csv` — case_id, slide_id, project, survival_months, censorship (1 = censored), stage,
  TP53_mut, HER2_status (first project only).
* `expression.csv` — raw counts-like values (log1p is applied when loading) for synthetic genes
  G0001... in `{gmt}`: 50 groups named after the MSigDB Hallmarks but made of synthetic genes.
* `features/<slide_id>.h5` — {feature_note}
* `synthetic_latents.csv` — the true latent variables per case (for checks only; not a model input).

Design: aggressiveness drives morphology (nuclear density/size/atypia, fewer lumina), proliferation
gene groups, stage and survival; a genomic factor drives DNA-repair/OXPHOS/p53-like groups,
TP53_mut and survival but is invisible in the slides; a hypoxia factor drives the hypoxia/glycolysis/
mTORC1 groups and survival and shows in the slides only subtly, as the share of tumour in clear-cell
foci (pale, eosin-poor cytoplasm); an immune factor drives immune patches and immune groups; subtype
drives stroma/lumina, lineage groups and HER2 status. Survival: Weibull (shape {shape}) with
log-hazard = project baseline + {ba}·aggressiveness + {bu}·genomic + {bx}·hypoxia {bm:+}·immune;
uniform random censoring ({censored:.0%} censored).
"""


def synth_cohort_job(out_dir: str | Path, config: SynthCohortConfig = SynthCohortConfig()
                     ) -> Job[SynthCohortResult]:
    """Write a synthetic cohort to ``out_dir``; a generator of :class:`Progress` events whose return
    value is a :class:`SynthCohortResult`. Deterministic for ``config.seed``."""
    if config.n_cases < 1 or config.n_projects < 1:
        raise MSRLError("a synthetic cohort needs at least one case and one project; "
                        "use --cases N and --projects P with N, P >= 1")
    if config.n_projects > config.n_cases:
        raise MSRLError(f"{config.n_projects} projects cannot be filled by {config.n_cases} cases; "
                        "use fewer projects or more cases")
    if config.seed < 0:
        raise MSRLError(f"seed {config.seed} is negative; use a seed >= 0")
    root = Path(out_dir)
    _prepare_dir(root)
    seed, n_projects = config.seed, config.n_projects
    tools = _load_render_tools(config.encoder_spec) if config.render_slides else None
    dim = tools[3].dim if tools else (config.feature_dim or builtin_feature_dim())
    names = [PROJECT_NAMES[p] if p < len(PROJECT_NAMES) else f"SYN-P{p + 1}" for p in range(n_projects)]

    yield Progress(Stage.LATENTS, 0, 3, "sampling latents, survival and labels")
    lat = sample_latents(config.n_cases, n_projects, seed)
    months, censorship = sample_survival(lat, seed, n_projects, config.censoring)
    labels = sample_labels(lat, seed)
    rng = np.random.default_rng([seed, 10])
    n_slides = np.where(rng.uniform(size=config.n_cases) < config.second_slide_fraction, 2, 1)
    case_ids = [f"SYN-{i + 1:04d}" for i in range(config.n_cases)]

    yield Progress(Stage.LATENTS, 1, 3, "expression")
    sets = make_gene_sets(seed, config.genes_per_group)
    genes, counts = sample_expression(lat, sets, n_projects, seed)
    write_gmt(root / GMT_NAME, sets)
    expr = pd.DataFrame(counts, columns=genes)
    expr.insert(0, "case_id", case_ids)
    expr.to_csv(root / "expression.csv", index=False)

    yield Progress(Stage.LATENTS, 2, 3, "clinical table")
    rows = []
    for i, case in enumerate(case_ids):
        for k in range(n_slides[i]):
            rows.append({"case_id": case, "slide_id": f"{case}-DX{k + 1}", "project": names[lat.project[i]],
                         "survival_months": months[i], "censorship": int(censorship[i]),
                         "stage": labels["stage"][i], "TP53_mut": labels["TP53_mut"][i],
                         "HER2_status": labels["HER2_status"][i] or ""})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    latent_table = pd.DataFrame({"case_id": case_ids, "project": [names[p] for p in lat.project],
                                 **{k: getattr(lat, k) for k in ("subtype", *_LATENTS)},
                                 "log_hazard": log_hazard(lat, seed, n_projects)})
    latent_table.to_csv(root / "synthetic_latents.csv", index=False, float_format="%.6f")

    features_dir = root / "features"
    features_dir.mkdir(exist_ok=True)
    if config.render_slides:
        (root / "slides").mkdir(exist_ok=True)
    total = int(n_slides.sum())
    done = 0
    yield Progress(Stage.SLIDES if config.render_slides else Stage.FEATURE_BAGS, 0, total)
    for i, case in enumerate(case_ids):
        for k in range(n_slides[i]):
            slide_id = f"{case}-DX{k + 1}"
            morph = slide_morphology(lat, i, seed, n_projects, k)
            if config.render_slides:
                _render_and_extract(root / "slides" / f"{slide_id}.svs", features_dir, morph,
                                    int(np.random.default_rng([seed, 11, i, k]).integers(2**31)), config,
                                    tools)
            else:
                feats, coords = sample_feature_bag(lat, i, k, morph, dim, seed, config.patches)
                write_features(features_dir / f"{slide_id}.h5", feats, coords, {
                    "patch_size": 256, "patch_size_level0": 256, "target_mpp": 0.5,
                    "level0_mpp": 0.5, "encoder": "synthetic-bag",
                    "encoder_version": f"synth-cohort-{GENERATOR_VERSION}",
                    "slide_sha256_head": "", "synthetic": True, "morphology": morph})
            done += 1
            yield Progress(Stage.SLIDES if config.render_slides else Stage.FEATURE_BAGS, done, total, slide_id)

    cohort_json = {
        "name": f"synthetic-{config.n_cases}c-{n_projects}p-seed{seed}",
        "description": "SYNTHETIC cohort generated by `msrl synth cohort`; not patient data.",
        "synthetic": True,
        "expression_scale": "raw",
        "gene_sets": GMT_NAME,
        "labels": {"stage": list(STAGES), "TP53_mut": ["0", "1"], "HER2_status": ["negative", "positive"]},
        "generator": {"version": GENERATOR_VERSION, "mode": "render" if config.render_slides else "bags",
                      "feature_dim": dim, **{k: v for k, v in asdict(config).items()
                                             if k not in ("feature_dim", "render_slides")}},
    }
    (root / "cohort.json").write_text(json.dumps(cohort_json, indent=2) + "\n")
    feature_note = (f"features of rendered slides in `slides/` ({config.encoder_spec} encoder)"
                    if config.render_slides else
                    f"patch-feature bags sampled directly ({dim}-d, encoder attr `synthetic-bag`), "
                    "no slide images")
    (root / "README.md").write_text(_README.format(
        version=GENERATOR_VERSION, seed=seed, n_cases=config.n_cases, n_slides=total,
        n_projects=n_projects, projects=", ".join(names), gmt=GMT_NAME, feature_note=feature_note,
        shape=WEIBULL_SHAPE, ba=BETA_AGGRESSIVENESS, bu=BETA_GENOMIC, bx=BETA_HYPOXIA, bm=BETA_IMMUNE,
        censored=float(censorship.mean())))
    return SynthCohortResult(root=root, n_cases=config.n_cases, n_slides=total, n_genes=len(genes),
                             feature_dim=dim, censored_fraction=float(censorship.mean()),
                             files=["README.md", "cohort.json", "clinical.csv", "expression.csv",
                                    GMT_NAME, "synthetic_latents.csv", "features/"]
                             + (["slides/"] if config.render_slides else []))


def make_synth_cohort(out_dir: str | Path, **kwargs: Any) -> SynthCohortResult:
    """Write a synthetic cohort without a progress bar; ``kwargs`` are :class:`SynthCohortConfig` fields."""
    return drive(synth_cohort_job(out_dir, SynthCohortConfig(**kwargs)), show=False)


def run_cohort_command(args: argparse.Namespace) -> int:
    """``msrl synth cohort DIR --cases N --projects P --seed S [--render-slides]``."""
    config = SynthCohortConfig(n_cases=args.cases, n_projects=args.projects, seed=args.seed,
                               render_slides=args.render_slides)
    result = drive(synth_cohort_job(args.out, config), show=True)
    print(result.root)
    print(f"SYNTHETIC cohort: {result.n_cases} cases, {result.n_slides} slides, {config.n_projects} "
          f"projects, {result.n_genes} genes in 50 groups, {result.feature_dim}-d features, "
          f"{result.censored_fraction:.0%} censored (seed {config.seed})")
    return 0
