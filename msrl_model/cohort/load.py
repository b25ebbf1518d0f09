"""Loading a cohort directory (format in :mod:`msrl_model.cohort.format`): the optional config,
the clinical table, slide and feature files, expression and gene groups, all checked before one
:class:`~msrl_model.cohort.format.CohortValidationError` lists every problem."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from msrl_model.cohort.clinical import Clinical, check_clinical
from msrl_model.cohort.featurefiles import check_feature_files
from msrl_model.cohort.featuresource import resolve_feature_source
from msrl_model.cohort.format import (SLIDE_SUFFIXES, Cohort, CohortConfig, CohortValidationError, Problems,
                                      read_csv)
from msrl_model.cohort.genomics import check_expression, read_gene_sets, resolve_gmt, restrict_gene_groups
from msrl_model.cohort.labels import classes_for
from msrl_model.cohort.tasks import Tasks, check_tasks, resolve_tasks
from msrl_model.errors import CohortError


def _config_file(root: Path, problems: Problems) -> dict[str, Any]:
    """The settings of ``cohort.json`` or ``cohort.toml`` (empty when neither exists or on a problem)."""
    json_path, toml_path = root / "cohort.json", root / "cohort.toml"
    if json_path.exists() and toml_path.exists():
        problems.add("both cohort.json and cohort.toml exist: keep one of them")
        return {}
    try:
        if json_path.exists():
            raw = json.loads(json_path.read_text(encoding="utf-8"))
        elif toml_path.exists():
            import tomllib

            raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        else:
            return {}
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        name = json_path.name if json_path.exists() else toml_path.name
        problems.add(f"{name} cannot be parsed ({exc}); fix the syntax or delete the file")
        return {}
    if not isinstance(raw, dict):
        problems.add("cohort.json must hold an object of settings")
        return {}
    return raw


def read_config(root: Path, problems: Problems) -> CohortConfig:
    """The cohort's :class:`CohortConfig`; unknown settings and invalid values are problems."""
    raw = _config_file(root, problems)
    known = {f.name for f in fields(CohortConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        problems.add(f"cohort config has unknown setting(s) {', '.join(unknown)}; "
                     f"known settings: {', '.join(sorted(known))}")
    config = CohortConfig(**{k: v for k, v in raw.items() if k in known})
    if config.expression_scale not in (None, "raw", "log"):
        problems.add(f"cohort config: expression_scale must be \"raw\" or \"log\", "
                     f"not {config.expression_scale!r}")
        config.expression_scale = None
    if config.features is not None and not isinstance(config.features, str):
        problems.add("cohort config: features must be a path (text) to a features/, TRIDENT or CLAM folder")
        config.features = None
    if isinstance(config.labels, list):  # a plain list of label columns: classes inferred
        config.labels = {str(name): None for name in config.labels}
    if config.labels is not None and not isinstance(config.labels, dict):
        problems.add("cohort config: labels must map column names to class lists (or be a list of names)")
        config.labels = None
    return config


def _find_slide_files(slides_dir: Path) -> dict[str, Path]:
    if not slides_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(slides_dir.iterdir()):
        if p.suffix.lower() in SLIDE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def _check_files(root: Path, clinical: Clinical, config: CohortConfig, problems: Problems,
                 require_features: bool = False, notes: list[str] | None = None
                 ) -> tuple[dict[str, Path | None], dict[str, Path | None]]:
    """``(slide_id -> feature file, slide_id -> slide file)``; a slide with neither is a problem, and
    so is (``require_features``) a case without any feature file. Feature files are found by the one
    resolver (``cohort/featuresource.py``: features/, TRIDENT or CLAM trees, read in place) and every
    one is opened and checked (``cohort/featurefiles.py``)."""
    slides_dir = root / config.slides_dir
    n_before = len(problems.items)
    source = resolve_feature_source(root, config, problems)
    slide_files = _find_slide_files(slides_dir)
    feature_paths: dict[str, Path | None] = {}
    slide_paths: dict[str, Path | None] = {}
    entries = []
    if source is None and not slides_dir.is_dir():
        if len(problems.items) == n_before:  # a configured source that failed is reported already
            problems.add(f"neither {config.features_dir}/ nor {config.slides_dir}/ exists in {root}: put "
                         f"feature files ({config.features_dir}/<slide_id>.h5) or slides there, or name "
                         "a TRIDENT/CLAM folder with \"features\" in cohort.json")
        return feature_paths, slide_paths
    if source is not None and source.kind != "msrl" and notes is not None:
        notes.append(f"features read in place from {source.describe()}")
    expected = source.expected if source is not None else (lambda s: f"{config.features_dir}/{s}.h5")
    for case, slide_ids in clinical.slides.items():
        for s in slide_ids:
            feature_paths[s] = source.path_for(s) if source is not None else None
            slide_paths[s] = slide_files.get(s)
            if feature_paths[s] is None and slide_paths[s] is None:
                entries.append((clinical.slide_rows[s],
                                f"case {case}: slide {s} has neither {expected(s)} "
                                f"nor a slide file {config.slides_dir}/{s}.<svs|tif|ndpi|...>"))
    problems.per_row(config.clinical, entries,
                     "slides without a feature file or a slide file (cases without features or slides)")
    if require_features:
        no_features = [(clinical.first_row[case], f"case {case} has no feature file "
                        f"({expected('<slide_id>')} for {', '.join(slide_ids)}); run "
                        "`msrl extract` on its slides first")
                       for case, slide_ids in clinical.slides.items()
                       if slide_ids and all(feature_paths[s] is None for s in slide_ids)
                       and any(slide_paths[s] is not None for s in slide_ids)]  # neither: listed above
        problems.per_row(config.clinical, no_features,
                         "cases without a feature file; run `msrl extract` on their slides first")
    check_feature_files([(source.name(p) if source is not None else p.name, p)
                         for p in feature_paths.values() if p is not None], problems)
    return feature_paths, slide_paths


def _used_genes(all_genes: list[str], matrix: np.ndarray,
                group_genes: list[list[str]]) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """Keep the expression columns some gene group uses: ``(genes, (n_cases, n_genes) float32,
    per group int64 indices into genes)``."""
    used = set().union(*map(set, group_genes))
    genes = [g for g in all_genes if g in used]
    column = {g: i for i, g in enumerate(all_genes)}
    gene_index = {g: i for i, g in enumerate(genes)}
    groups = [np.array([gene_index[g] for g in members], dtype=np.int64) for members in group_genes]
    return genes, matrix[:, [column[g] for g in genes]].astype(np.float32), groups


def load_cohort(root: str | Path, *, tasks: Tasks | None = None, require_features: bool = False) -> Cohort:
    """Load and validate a cohort directory (format in :mod:`msrl_model.cohort.format`).

    Args:
        root: the cohort directory.
        tasks: the tasks a run will train (``survival`` and/or label columns), or a rule that picks
            them from the label columns; each is checked (``cohort/tasks.py``: observed events, two
            classes, a known column). None: no task is checked.
        require_features: every case needs a feature file (training reads only those).

    Raises:
        CohortValidationError: listing every problem found (missing columns, duplicates, bad
            survival or censorship values, conflicting case rows, slides without features or slide
            files, every feature file that is not HDF5, has no coords, no rows, non-finite values or
            a dimension other than the majority's, cases missing from the expression table,
            non-numeric expression values, a requested task the cases cannot train, ...).
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"cohort directory {root} does not exist; give the folder that holds "
                          "clinical.csv, expression.csv and a .gmt file")
    problems = Problems()
    notes: list[str] = []
    config = read_config(root, problems)

    df = read_csv(root / config.clinical, problems, dtype=str, keep_default_na=False)
    clinical = check_clinical(df, config, problems, notes) if df is not None else None
    feature_paths, slide_paths = _check_files(root, clinical, config, problems, require_features, notes) \
        if clinical is not None else ({}, {})
    if clinical is not None and tasks is not None:
        check_tasks(resolve_tasks(tasks, clinical.label_columns), clinical, config, problems)
    expression = check_expression(root, clinical, config, problems, notes)
    gmt_path = resolve_gmt(root, config, problems)
    gene_sets = read_gene_sets(gmt_path, problems) if gmt_path is not None else []

    cohort_warnings: list[str] = []
    group_names: list[str] = []
    group_genes: list[list[str]] = []
    if expression is not None and gene_sets:
        group_names, group_genes, cohort_warnings = restrict_gene_groups(
            [(s.name, s.genes) for s in gene_sets], expression[0], source=gmt_path.name)
        if not group_names:
            problems.add(f"no gene of {gmt_path.name} occurs in {config.expression}: check that both "
                         "use the same gene symbols")

    if problems.items:
        raise CohortValidationError(root, problems.items)
    assert clinical is not None and expression is not None  # guaranteed by the empty problem list

    genes, matrix, groups = _used_genes(*expression, group_genes)
    cases = clinical.cases.reset_index(drop=True)
    labels = {name: classes_for(name, cases[name], config) for name in clinical.label_columns}
    for name, classes in labels.items():
        if len(classes) < 2:
            notes.append(f"label {name} has fewer than two classes ({', '.join(classes) or 'none'}); "
                         "it cannot be used as a task")
    return Cohort(
        root=root, config=config, cases=cases, slides=clinical.slides,
        feature_paths=feature_paths, slide_paths=slide_paths, genes=genes, expression=matrix,
        group_names=group_names, gene_groups=groups, labels=labels,
        projects=sorted(cases["project"].unique().tolist()), warnings=cohort_warnings, notes=notes)
