r"""Do the linked training cases make this model more accurate? What cross-validation measured.

The app shows the authentic training cases a slide is linked to. Whether they *improve* the
prediction is a measured fact of the bundle's cross-validation, not an assumption: MSRL's held-out
ranking metric (C-index for survival, macro AUC for classification) against the same trained
network with each test case linked to nothing (``no_graph``) and with the buffer's genomics
permuted across cases (``shuffled_buffer``), paired tests across folds and over out-of-fold cases
(:func:`msrl_model.train.report.significance`: ``p`` is the larger of the two p-values).

The bundle keeps, next to a task's own metrics, ``"<metric>@<ablation>"`` entries
``{"mean", "std", "n_folds", "p"}`` (:func:`ablation_metrics`). :func:`graph_evidence` reads them:
the graph **earns its place** for a task when MSRL beats every recorded ablation on the mean with
p < 0.05. Otherwise the app says that the linked cases are similar cases to compare with, not the
reason for the prediction. Measured on the shipped (synthetic) cohort: not earned — its genomic
factor is invisible in slides, so neighbours chosen by their slides cannot tell a query's genomics
beyond what the Inductor prompt already reconstructs (:mod:`msrl_model.train.graphcheck`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from msrl_model.infer.informative import RANKING_METRICS

ABLATIONS = {"no_graph": "linked to nothing", "shuffled_buffer": "with their genomics shuffled"}
"""The inference-time ablations a bundle records, and how the note words them."""
ALPHA = 0.05  # significance level of "earns its place"


def ablation_key(metric: str, method: str) -> str:
    """The bundle metrics key of an ablation's metric, e.g. ``"c_index@no_graph"``."""
    return f"{metric}@{method}"


def ablation_metrics(summaries: dict[str, dict[str, dict[str, float]]], significance: Sequence[dict],
                     task: str) -> dict[str, dict[str, float]]:
    """The ``"<metric>@<ablation>"`` entries of one task for the bundle.

    Args:
        summaries: {ablation: {metric: {"mean", "std", "n_folds"}}} (``CVResult.metric_summary``).
        significance: rows of :func:`msrl_model.train.report.significance` (``task``, ``metric``,
            ``method``, ``p``) against MSRL.
        task: the task.
    """
    p_of = {(r["method"], r["metric"]): r["p"] for r in significance if r["task"] == task}
    out = {}
    for method in ABLATIONS:
        for metric, s in summaries.get(method, {}).items():
            out[ablation_key(metric, method)] = {"mean": s["mean"], "std": s["std"], "n_folds": s["n_folds"],
                                                 "p": p_of.get((method, metric), math.nan)}
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def graph_evidence(kind: str, metrics: dict[str, Any]) -> tuple[bool | None, str]:
    """(earns its place, the evidence in words) for a task of ``kind`` with the bundle's ``metrics``;
    (None, "") when the bundle recorded no ablation for it (bundles written before this check)."""
    key, title = RANKING_METRICS.get(kind, ("", ""))
    own = metrics.get(key)
    if not isinstance(own, dict) or not _finite(own.get("mean")):
        return None, ""
    found = []
    for method, words in ABLATIONS.items():
        entry = metrics.get(ablation_key(key, method))
        if isinstance(entry, dict) and _finite(entry.get("mean")):
            found.append((words, float(entry["mean"]), entry.get("p")))
    if not found:
        return None, ""
    mean = float(own["mean"])
    earns = all(mean > m and _finite(p) and p < ALPHA for _, m, p in found)
    parts = ", ".join(f"{m:.3f} {words}" + (f" (p = {p:.2g})" if _finite(p) else "") for words, m, p in found)
    figures = f"{title} {mean:.3f} with the linked cases, {parts}"
    if earns:
        return True, f"In cross-validation the linked training cases improved this prediction: {figures}."
    return False, (f"In cross-validation the linked training cases did not measurably improve this prediction "
                   f"({figures}): read them as similar training cases to compare with, not as the reason "
                   f"for the prediction.")


__all__ = ["ABLATIONS", "ALPHA", "ablation_key", "ablation_metrics", "graph_evidence"]
