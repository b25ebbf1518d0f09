"""Cohort directories (architecture §3): the format and loading with validation, expression files and
scaling, survival bins, cross-validation folds and ``.gmt`` gene-set files.

Names are imported lazily (PEP 562) so that the app's ``read_expression`` (``cohort/expression.py``,
numpy only) does not import pandas.

    from msrl_model.cohort import load_cohort, stratified_folds, survival_bins, read_expression

=====================  ==================================================================
``format.py``          :class:`CohortConfig`, :class:`Cohort`, errors, warnings, the problem collector
``load.py``            :func:`load_cohort`: config, files, then every check below
``clinical.py``        ``clinical.csv`` validation by column family
``labels.py``          label columns, stage I–IV, class order
``genomics.py``        ``expression.csv`` validation, gene groups restricted to its genes
``featurefiles.py``    every feature file opened and checked (layout, rows, NaN/inf, the majority's dimension)
``tasks.py``           the requested tasks: survival needs events, a label two classes
``expression.py``      one reader of expression files for prediction; :class:`ExpressionScaler`
``survival.py``        discrete-time survival bins
``folds.py``           stratified cross-validation folds
``gmt.py``             MSigDB ``.gmt`` files
=====================  ==================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cohort": "format", "CohortConfig": "format", "CohortValidationError": "format",
    "CohortWarning": "format", "REQUIRED_COLUMNS": "format", "SLIDE_SUFFIXES": "format",
    "load_cohort": "load", "read_config": "load",
    "MISSING_TOKENS": "labels", "STAGE_CLASSES": "labels",
    "restrict_gene_groups": "genomics",
    "ExpressionScaler": "expression", "ExpressionTable": "expression", "read_expression": "expression",
    "assign_bins": "survival", "survival_bins": "survival",
    "Fold": "folds", "stratified_folds": "folds",
    "GeneSet": "gmt", "parse_gmt": "gmt", "read_gmt": "gmt", "write_gmt": "gmt",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'msrl_model.cohort' has no attribute {name!r}")
    return getattr(importlib.import_module(f"msrl_model.cohort.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
