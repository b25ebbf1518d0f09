"""The latent model of synthetic cases (architecture §7; SYNTHETIC data, nothing here is patient data).

Per case: project, subtype, aggressiveness ``a``, genomic factor ``u``, hypoxia ``x``, immune ``m``,
stroma ``s`` and two nuisance factors; from them, survival (Weibull, log-hazard
η = project baseline + β_a·a + β_u·u + β_x·x + β_m·m), clinical labels, and raw expression of
50 Hallmark-named groups of synthetic genes. The table in :mod:`msrl_model.synth.cohort` says which
latent shows where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msrl_model.cohort.gmt import GeneSet

PROJECT_NAMES = ("SYN-BRCA", "SYN-LUAD", "SYN-COAD", "SYN-BLCA", "SYN-HNSC", "SYN-STAD",
                 "SYN-KIRC", "SYN-LGG")
STAGES = ("I", "II", "III", "IV")
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
LATENTS = ("aggressiveness", "genomic", "immune", "stroma", "nuisance1", "nuisance2", "hypoxia")


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


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function 1 / (1 + exp(−x)), elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def project_params(n_projects: int, seed: int) -> dict[str, np.ndarray]:
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
    pp = project_params(n_projects, seed)
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
    pp = project_params(n_projects, seed)
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
    tp53 = rng.uniform(size=n) < sigmoid(-0.3 + 1.6 * lat.genomic + 0.8 * lat.aggressiveness)
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
    z = np.column_stack([getattr(lat, k) for k in LATENTS] + [onehot_p, onehot_ps])  # (n, 7+4P)
    n_lat, roles = len(LATENTS), list(GROUP_ROLES.items())
    w = rng.normal(0, 0.1, (z.shape[1], len(roles)))
    w[n_lat:n_lat + n_projects] = rng.normal(0, 0.6, (n_projects, len(roles)))
    for g, (name, role) in enumerate(roles):
        if role == "subtype":
            w[n_lat + n_projects:, g] = rng.normal(0, 1.0, 3 * n_projects)
        elif role == "nuisance":
            w[LATENTS.index("nuisance1" if g % 2 else "nuisance2"), g] = rng.uniform(0.8, 1.2)
        else:
            sign = -1.0 if name == "HALLMARK_P53_PATHWAY" else 1.0
            w[LATENTS.index(role), g] = sign * rng.uniform(0.9, 1.2)
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
