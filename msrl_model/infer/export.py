"""Machine-readable exports of a :class:`~msrl_model.infer.results.PredictionResult`, one writer for
``msrl analyze`` and the app (File ▸ Export results…) alike.

Files written by :func:`write_results` for ``OUT/<name>.json``:

* ``<name>.json`` — the full result (:meth:`PredictionResult.to_json`, strict JSON, indent 2);
* ``<name>.csv`` — one row per (task, quantity): ``slide_id, mode, task, key, value``; first the
  result's flags and the slide's applicability (task ``slide``: ``research_use_only``,
  ``synthetic_training_cohort``, ``applicability_p``, ``applicability_flagged``,
  ``applicability_message``; with regions of interest ``regions_include``, ``regions_exclude``,
  ``regions_rule``, ``regions_patches_selected``, ``regions_patches_on_tissue``, ``regions_sha256``), then per task whether it is ``informative`` in cross-validation (with
  ``informative_note``), whether its linked cases improved it in cross-validation
  (``graph_evidence``, ``graph_evidence_note``) and, besides the prediction (classes by their readable names: ``p(mutant)``;
  a classification task's conformal ``prediction_set`` "II or III" at ``set_coverage``, a survival
  task's ``event_time_set`` "between 14 and 31 months, or after 52 months" at ``set_coverage``),
  its graph contribution (prediction with the buffer minus with the slide alone) and what
  the linked cases say (survival: ``neighbours_event_rate``, ``neighbours_median_survival_months``;
  classification: ``neighbours_share(<class>)``);
* ``<name>-linked-cases.csv`` — every task's linked training cases by rank: buffer row, edge weight,
  influence (``influence_risk`` for a survival task, ``influence_p(<class>)`` per class for a
  classification task: the prediction minus the prediction without that case in the buffer; empty
  for the other kind), their case-table columns (labels by their readable class names: TP53_mut
  ``wild-type``; the case's ``slide_id`` as ``linked_slide_id``, ``slide_id`` being the analysed
  slide's), and the result's ``synthetic_training_cohort`` and ``research_use_only`` on every row.

QuPath GeoJSON (tiles with measurements, tissue and regions as annotations): :mod:`msrl_model.infer.geojson`.

Every file is written atomically (:mod:`msrl_model.files`). Pure Python: no torch, no Qt.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from msrl_model.files import atomic_write
from msrl_model.infer.results import LinkedCase, PredictionResult, readable_label

KEY_VALUE_COLUMNS = ["slide_id", "mode", "task", "key", "value"]


def key_values(result: PredictionResult) -> list[dict[str, Any]]:
    """One row per (task, quantity): the headline numbers of every task."""
    rows: list[dict[str, Any]] = []

    def add(task: str, key: str, value: Any) -> None:
        rows.append({"slide_id": result.slide_id, "mode": result.mode, "task": task, "key": key, "value": value})

    add("slide", "research_use_only", result.research_use_only)
    add("slide", "synthetic_training_cohort", result.synthetic_training_cohort)
    a = result.applicability
    if a is not None:
        add("slide", "applicability_p", a.p_value)
        add("slide", "applicability_flagged", a.flagged)
        add("slide", "applicability_message", a.message)
    for key, value in (result.regions or {}).items():  # the regions of interest that chose the patches
        add("slide", f"regions_{key}", value)
    for name, task in result.tasks.items():
        add(name, "informative", task.informative)
        add(name, "informative_note", task.informative_note)
        add(name, "graph_evidence", task.graph_evidence)
        add(name, "graph_evidence_note", task.graph_evidence_note)
        if task.survival is not None:
            s = task.survival
            for key in ("risk", "percentile", "percentile_in_project", "risk_group", "median_survival_months"):
                add(name, key, getattr(s, key))
            add(name, "event_time_set", s.event_set_text or None)
            add(name, "set_coverage", s.set_coverage)
            for j, value in enumerate(s.bin_survival):
                add(name, f"S_bin{j}", value)
            for key in ("risk_query_alone", "graph_contribution", "neighbours_event_rate", "neighbours_with_status",
                        "neighbours_median_survival_months"):
                add(name, key, getattr(s, key))
        if task.classification is not None:
            c = task.classification
            add(name, "predicted", c.predicted_name)
            add(name, "prediction_set", " or ".join(dict(zip(c.classes, c.names))[k] for k in c.prediction_set)
                if c.set_coverage is not None else None)
            add(name, "set_coverage", c.set_coverage)
            for i, cls in enumerate(c.names):
                add(name, f"p({cls})", c.probabilities[i])
            for i, cls in enumerate(c.names):
                add(name, f"p_query_alone({cls})", c.probabilities_query_alone[i])
                add(name, f"graph_contribution({cls})", c.graph_contribution[i])
            for i, cls in enumerate(c.names):
                add(name, f"neighbours_share({cls})", None if c.neighbours_distribution is None
                    else c.neighbours_distribution[i])
            add(name, "neighbours_labelled", c.neighbours_labelled)
        add(name, "linked_cases", len(task.linked_cases))
        add(name, "suggested_project", task.suggested_project)
    return rows


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def key_values_csv(result: PredictionResult) -> str:
    """The text of ``<name>.csv``."""
    return _csv_text(KEY_VALUE_COLUMNS, [[r[c] for c in KEY_VALUE_COLUMNS] for r in key_values(result)])


def linked_cases_csv(result: PredictionResult) -> str:
    """The text of ``<name>-linked-cases.csv``: ``influence_risk``, then ``influence_p(<class>)`` for the union
    of the classification tasks' classes and the union of the case-table columns, in first-seen order."""
    classes: list[str] = []
    columns: list[str] = []
    for task in result.tasks.values():
        if task.classification is not None:
            classes += [c for c in task.classification.names if c not in classes]
        for c in task.linked_cases:
            columns += [k for k in c.case if k not in columns]

    def influence(task_classes: list[str], c: LinkedCase) -> list[Any]:
        by_class = dict(zip(task_classes, c.influence_probabilities or []))
        return [c.influence_risk, *[by_class.get(cls) for cls in classes]]

    names = result.label_names()
    rows = [[result.slide_id, name, rank, c.row, c.weight,
             *influence(task.classification.names if task.classification else [], c),
             *[readable_label(names, k, c.case.get(k)) for k in columns],
             result.synthetic_training_cohort, result.research_use_only]
            for name, task in result.tasks.items() for rank, c in enumerate(task.linked_cases, 1)]
    fixed = ["slide_id", "task", "rank", "buffer_row", "weight", "influence_risk",
             *[f"influence_p({cls})" for cls in classes]]
    # the linked case's own columns; one named like a fixed column (its slide_id) is prefixed "linked_"
    case_columns = [f"linked_{k}" if k in fixed else k for k in columns]
    return _csv_text([*fixed, *case_columns, "synthetic_training_cohort", "research_use_only"], rows)


def result_paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The JSON, key-value CSV and linked-cases CSV that :func:`write_results` writes for ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        path = path.with_suffix(".json")
    return path, path.with_suffix(".csv"), path.with_name(f"{path.stem}-linked-cases.csv")


def write_results(path: str | os.PathLike, result: PredictionResult) -> list[Path]:
    """Write ``path`` (JSON), ``<stem>.csv`` and ``<stem>-linked-cases.csv``; returns the files written."""
    json_path, keys_csv, cases_csv = result_paths(path)
    atomic_write(json_path, result.to_json(indent=2) + "\n")
    atomic_write(keys_csv, key_values_csv(result))
    atomic_write(cases_csv, linked_cases_csv(result))
    return [json_path, keys_csv, cases_csv]


__all__ = ["key_values", "key_values_csv", "linked_cases_csv", "result_paths", "write_results"]
