"""Inference: model bundles, the exact engine, the :class:`Predictor` and its result dataclasses.

Names are imported lazily (PEP 562) so that ``import msrl_model.infer.results`` (what the app's views
need) does not import torch.

    from msrl_model.infer import Predictor, load_bundle, write_bundle, PredictionResult
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Bundle": "bundle", "GenomicsBlock": "bundle", "TaskBundle": "bundle", "load_bundle": "bundle",
    "write_bundle": "bundle", "read_manifest": "bundle", "FORMAT_VERSION": "bundle",
    "Predictor": "predictor",
    "PredictionResult": "results", "TaskResult": "results", "SurvivalPrediction": "results",
    "ClassificationPrediction": "results", "LinkedCase": "results", "PathwayActivity": "results",
    "Curve": "results", "Applicability": "results",
    "ExactEngine": "engine", "DenseReference": "dense_reference", "QueryResult": "query", "Explanation": "query",
    "make_random_bundle": "random_bundle",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'msrl_model.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"msrl_model.infer.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
