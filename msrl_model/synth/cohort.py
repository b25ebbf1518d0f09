"""Synthetic cohorts (architecture §7): SYNTHETIC data in the cohort-directory format of architecture §3.

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

The latent model is :mod:`msrl_model.synth.latents`; morphology and feature bags are
:mod:`msrl_model.synth.bags`; this module writes the cohort directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msrl_model.cohort.gmt import write_gmt
from msrl_model.errors import MSRLError
from msrl_model.features.h5io import write_features
from msrl_model.progress import Job, Progress, Stage, drive
from msrl_model.synth.bags import sample_feature_bag, slide_morphology
from msrl_model.synth.latents import (BETA_AGGRESSIVENESS, BETA_GENOMIC, BETA_HYPOXIA, BETA_IMMUNE, LATENTS,
                                      PROJECT_NAMES, STAGES, WEIBULL_SHAPE, Latents, log_hazard, make_gene_sets,
                                      sample_expression, sample_labels, sample_latents, sample_survival)

GENERATOR_VERSION = "1"
GMT_NAME = "hallmark_synthetic.gmt"


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


def builtin_feature_dim() -> int:
    """Feature dimension of the built-in H&E encoder (the default of the fast mode)."""
    from msrl_model.encoders import build_encoder

    return int(build_encoder("builtin-he").dim)


@dataclass
class SynthCases:
    """The sampled cases: latents, outcomes, labels and slide counts (arrays (n_cases,))."""

    case_ids: list[str]  # SYN-0001, ...
    latents: Latents  # the true latent variables
    months: np.ndarray  # survival or censoring time, months
    censorship: np.ndarray  # int64, 1 = censored
    labels: dict[str, list[str | None]]  # stage, TP53_mut, HER2_status
    n_slides: np.ndarray  # 1 or 2 slides per case

    def slides(self) -> Iterator[tuple[int, int, str]]:
        """(case index, slide index within the case, slide id) of every slide."""
        for i, case in enumerate(self.case_ids):
            for k in range(self.n_slides[i]):
                yield i, k, f"{case}-DX{k + 1}"


def sample_cases(config: SynthCohortConfig) -> SynthCases:
    """Latents, survival, labels and slides per case of ``config`` (deterministic for its seed)."""
    seed, n_projects = config.seed, config.n_projects
    lat = sample_latents(config.n_cases, n_projects, seed)
    months, censorship = sample_survival(lat, seed, n_projects, config.censoring)
    labels = sample_labels(lat, seed)
    rng = np.random.default_rng([seed, 10])
    n_slides = np.where(rng.uniform(size=config.n_cases) < config.second_slide_fraction, 2, 1)
    return SynthCases([f"SYN-{i + 1:04d}" for i in range(config.n_cases)], lat, months, censorship, labels,
                      n_slides)


def project_names(n_projects: int) -> list[str]:
    """SYN-BRCA, SYN-LUAD, ... then SYN-P<k> once the named projects run out."""
    return [PROJECT_NAMES[p] if p < len(PROJECT_NAMES) else f"SYN-P{p + 1}" for p in range(n_projects)]


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


def _check_config(config: SynthCohortConfig) -> None:
    if config.n_cases < 1 or config.n_projects < 1:
        raise MSRLError("a synthetic cohort needs at least one case and one project; "
                        "use --cases N and --projects P with N, P >= 1")
    if config.n_projects > config.n_cases:
        raise MSRLError(f"{config.n_projects} projects cannot be filled by {config.n_cases} cases; "
                        "use fewer projects or more cases")
    if config.seed < 0:
        raise MSRLError(f"seed {config.seed} is negative; use a seed >= 0")


def _write_expression(root: Path, cases: SynthCases, config: SynthCohortConfig) -> int:
    """``expression.csv`` and the gene sets' ``.gmt``; returns the number of genes."""
    sets = make_gene_sets(config.seed, config.genes_per_group)
    genes, counts = sample_expression(cases.latents, sets, config.n_projects, config.seed)
    write_gmt(root / GMT_NAME, sets)
    expr = pd.DataFrame(counts, columns=genes)
    expr.insert(0, "case_id", cases.case_ids)
    expr.to_csv(root / "expression.csv", index=False)
    return len(genes)


def _write_clinical(root: Path, cases: SynthCases, names: list[str], config: SynthCohortConfig) -> None:
    """``clinical.csv`` (one row per slide) and ``synthetic_latents.csv`` (one row per case)."""
    lat, labels = cases.latents, cases.labels
    rows = [{"case_id": cases.case_ids[i], "slide_id": slide_id, "project": names[lat.project[i]],
             "survival_months": cases.months[i], "censorship": int(cases.censorship[i]),
             "stage": labels["stage"][i], "TP53_mut": labels["TP53_mut"][i],
             "HER2_status": labels["HER2_status"][i] or ""} for i, _, slide_id in cases.slides()]
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    latent_table = pd.DataFrame({"case_id": cases.case_ids, "project": [names[p] for p in lat.project],
                                 **{k: getattr(lat, k) for k in ("subtype", *LATENTS)},
                                 "log_hazard": log_hazard(lat, config.seed, config.n_projects)})
    latent_table.to_csv(root / "synthetic_latents.csv", index=False, float_format="%.6f")


def _write_slides(root: Path, cases: SynthCases, config: SynthCohortConfig, dim: int,
                  tools: tuple[Any, Any, Any, Any] | None) -> Job[int]:
    """Every slide's feature file (rendered and extracted, or a sampled bag); returns the slide count."""
    seed, lat = config.seed, cases.latents
    features_dir = root / "features"
    features_dir.mkdir(exist_ok=True)
    if tools is not None:
        (root / "slides").mkdir(exist_ok=True)
    stage = Stage.SLIDES if tools is not None else Stage.FEATURE_BAGS
    total = int(cases.n_slides.sum())
    yield Progress(stage, 0, total)
    for done, (i, k, slide_id) in enumerate(cases.slides(), start=1):
        morph = slide_morphology(lat, i, seed, config.n_projects, k)
        if tools is not None:
            _render_and_extract(root / "slides" / f"{slide_id}.svs", features_dir, morph,
                                int(np.random.default_rng([seed, 11, i, k]).integers(2**31)), config, tools)
        else:
            feats, coords = sample_feature_bag(lat, i, k, morph, dim, seed, config.patches)
            write_features(features_dir / f"{slide_id}.h5", feats, coords, {
                "patch_size": 256, "patch_size_level0": 256, "target_mpp": 0.5,
                "level0_mpp": 0.5, "encoder": "synthetic-bag",
                "encoder_version": f"synth-cohort-{GENERATOR_VERSION}",
                "slide_sha256_head": "", "synthetic": True, "morphology": morph})
        yield Progress(stage, done, total, slide_id)
    return total


def _write_description(root: Path, config: SynthCohortConfig, names: list[str], n_slides: int, dim: int,
                       censored: float) -> None:
    """``cohort.json`` (what the cohort loader reads) and ``README.md`` (what a person reads)."""
    cohort_json = {
        "name": f"synthetic-{config.n_cases}c-{config.n_projects}p-seed{config.seed}",
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
        version=GENERATOR_VERSION, seed=config.seed, n_cases=config.n_cases, n_slides=n_slides,
        n_projects=config.n_projects, projects=", ".join(names), gmt=GMT_NAME, feature_note=feature_note,
        shape=WEIBULL_SHAPE, ba=BETA_AGGRESSIVENESS, bu=BETA_GENOMIC, bx=BETA_HYPOXIA, bm=BETA_IMMUNE,
        censored=censored))


def synth_cohort_job(out_dir: str | Path, config: SynthCohortConfig = SynthCohortConfig()
                     ) -> Job[SynthCohortResult]:
    """Write a synthetic cohort to ``out_dir``; a generator of :class:`Progress` events whose return
    value is a :class:`SynthCohortResult`. Deterministic for ``config.seed``."""
    _check_config(config)
    root = Path(out_dir)
    _prepare_dir(root)
    tools = _load_render_tools(config.encoder_spec) if config.render_slides else None
    dim = tools[3].dim if tools else (config.feature_dim or builtin_feature_dim())
    names = project_names(config.n_projects)

    yield Progress(Stage.LATENTS, 0, 3, "sampling latents, survival and labels")
    cases = sample_cases(config)
    yield Progress(Stage.LATENTS, 1, 3, "expression")
    n_genes = _write_expression(root, cases, config)
    yield Progress(Stage.LATENTS, 2, 3, "clinical table")
    _write_clinical(root, cases, names, config)
    n_slides = yield from _write_slides(root, cases, config, dim, tools)
    censored = float(cases.censorship.mean())
    _write_description(root, config, names, n_slides, dim, censored)
    return SynthCohortResult(root=root, n_cases=config.n_cases, n_slides=n_slides, n_genes=n_genes,
                             feature_dim=dim, censored_fraction=censored,
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
