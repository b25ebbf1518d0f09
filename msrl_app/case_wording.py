"""The wording of a slide's linked training cases (Qt-free): a case's fields and status, its influence
on the prediction, the graph contribution, and what the linked cases say next to the model. Shared by
the Linked cases tab, the results tabs and the PDF report.

Influence (:mod:`msrl_model.infer.results`): the prediction with the whole buffer minus the prediction
with that one case removed from the buffer, the graph rebuilt exactly without it; shown on the risk
for a survival task and on the probability of the predicted class for a classification task (every
class in the detail pane)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from msrl_app.labels import task_title
from msrl_model.infer.results import LinkedCase, TaskResult

PATHWAY_TOP_N = 12  # pathways shown in the paired bar chart
TOP_INFLUENCES = 3  # the largest influences (by size) whose sum is shown next to the graph contribution
HIDDEN_CASE_KEYS = {"case_id", "project", "survival_months", "censorship", "stage", "slide_id"}


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def event_status(case: dict[str, Any]) -> str:
    """'event' / 'censored' from the ``censorship`` column (1 = censored), '' when unknown."""
    c = case.get("censorship")
    if is_missing(c):
        return ""
    return "censored" if int(c) == 1 else "event"


def format_value(value: Any) -> str:
    if is_missing(value):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_months(value: Any) -> str:
    """A follow-up time in months with one decimal everywhere (table, detail pane, PDF); '—' when missing."""
    return "—" if is_missing(value) else f"{float(value):.1f}"


def label_columns(cases: list[LinkedCase]) -> list[str]:
    """Label columns of the case table (everything that is not an id, the project or survival)."""
    keys: list[str] = []
    for c in cases:
        for k in c.case:
            if k not in HIDDEN_CASE_KEYS and k not in keys:
                keys.append(k)
    return keys


def influence_value(task: TaskResult, case: LinkedCase) -> float | None:
    """The influence shown for ``case``: on the risk (survival task) or on the probability of the task's
    predicted class (classification task)."""
    c = task.classification
    if c is None:
        return case.influence_risk
    return None if case.influence_probabilities is None else case.influence_probabilities[c.classes.index(c.predicted)]


def influence_title(task: TaskResult) -> str:
    """The influence column's header."""
    return f"Influence on P({task.classification.predicted_name})" if task.classification is not None else \
        "Influence on risk"


def influence_tip(task: TaskResult) -> str:
    """What the influence column means, exactly (its tooltip)."""
    exact = ("The graph is rebuilt exactly without the case (the cases that listed it take their next nearest "
             "case instead), not approximated. Influences of several cases do not add up.")
    if task.classification is not None:
        p = task.classification.predicted_name
        return (f"How much this training case moves this slide's probability of {p}: P({p}) with the whole "
                f"training buffer minus P({p}) with this case removed from it, in percentage points (pp). "
                f"Positive: the case pulls the slide towards {p}; negative: away from it. {exact}")
    return ("How much this training case moves this slide's risk score: the risk with the whole training "
            "buffer minus the risk with this case removed from it. Positive: the case raises the risk "
            f"(worse prognosis); negative: it lowers it. {exact}")


def format_influence(task: TaskResult, value: float | None) -> str:
    """A risk influence as ±0.000, a probability influence in percentage points (±0.0 pp)."""
    if value is None:
        return "—"
    return f"{100 * value:+.1f} pp" if task.classification is not None else f"{value:+.3f}"


def influence_sums(task: TaskResult) -> tuple[float, int, float, int]:
    """(sum of the ``TOP_INFLUENCES`` largest influences by size, how many, sum of all, how many)."""
    values = [v for v in (influence_value(task, c) for c in task.linked_cases) if v is not None]
    largest = sorted(values, key=abs, reverse=True)[:TOP_INFLUENCES]
    return sum(largest), len(largest), sum(values), len(values)


def graph_contribution(task: TaskResult) -> float:
    """The graph contribution to the shown quantity: the risk, or the predicted class's probability."""
    c = task.classification
    return task.survival.graph_contribution if c is None else c.graph_contribution[c.classes.index(c.predicted)]


def graph_line(task: TaskResult) -> str:
    """One short line: the graph contribution next to the sums of the largest and of all influences."""
    target = "the risk" if task.classification is None else f"P({task.classification.predicted_name})"
    top, n_top, total, n = influence_sums(task)
    return (f"Graph contribution to {target} {format_influence(task, graph_contribution(task))} · "
            f"{n_top} largest influences {format_influence(task, top)} · all {n} {format_influence(task, total)}")


def graph_summary(task: TaskResult) -> str:
    """The graph contribution (prediction with the buffer minus with the slide alone) with both values,
    next to the sum of the largest influences and of all of them, in the influence column's units."""
    c = task.classification
    if c is not None:
        i = c.classes.index(c.predicted)
        head = (f"Graph contribution to P({c.predicted_name}): {format_influence(task, c.graph_contribution[i])} "
                f"({c.probabilities[i]:.1%} with the training buffer, {c.probabilities_query_alone[i]:.1%} with "
                f"this slide alone)")
    else:
        s = task.survival
        head = (f"Graph contribution to the risk: {format_influence(task, s.graph_contribution)} (risk "
                f"{s.risk:.3f} with the training buffer, {s.risk_query_alone:.3f} with this slide alone)")
    top, n_top, total, n = influence_sums(task)
    if not n:
        return head + "."
    return (f"{head}. Influences: the {n_top} largest sum to {format_influence(task, top)}, "
            f"all {n} to {format_influence(task, total)}.")


def neighbours_summary(task: TaskResult) -> str:
    """What the linked cases' authentic records say, worded to compare with the model's prediction."""
    n = len(task.linked_cases)
    if task.survival is not None:
        s = task.survival
        if s.neighbours_event_rate is None:
            said = f"none of the {n} linked cases has a known survival status"
        else:
            km = (f"{s.neighbours_median_survival_months:.0f} months" if s.neighbours_median_survival_months
                  is not None else "not reached")
            said = (f"edge-weighted event rate {s.neighbours_event_rate:.0%} ({s.neighbours_with_status} of {n} "
                    f"cases with a known status; not adjusted for follow-up), Kaplan–Meier median {km}")
        model = (f"{s.median_survival_months:.0f} months" if s.median_survival_months is not None else "not reached")
        return f"Linked cases: {said}. Model: {s.risk_group} risk, predicted median survival {model}."
    c = task.classification
    if c.neighbours_distribution is None:
        said = f"none of the {n} linked cases has a {task_title(task.name)} label among its classes"
    else:
        said = ", ".join(f"{cls} {p:.0%}" for cls, p in zip(c.names, c.neighbours_distribution)) + \
            f" (edge-weighted, {c.neighbours_labelled} of {n} cases labelled)"
    model = ", ".join(f"{cls} {p:.0%}" for cls, p in zip(c.names, c.probabilities))
    return f"Linked cases: {said}. Model: {model}."


def without_case_html(task: TaskResult, case: LinkedCase) -> str:
    """The prediction with and without ``case`` in the training buffer (the detail pane's rich text)."""
    name = case.case.get("case_id", "this case")
    if task.classification is not None and case.influence_probabilities is not None:
        c = task.classification
        rows = "".join(
            f"<tr><td style='padding-right:10px'>P({cls})</td><td align='right'>{p:.1%}</td>"
            f"<td align='right' style='padding:0 10px'>{p - d:.1%}</td><td align='right'>{100 * d:+.1f} pp</td></tr>"
            for cls, p, d in zip(c.names, c.probabilities, case.influence_probabilities))
        return (f"<b>Without {name}</b> in the training buffer (graph rebuilt exactly):<table cellspacing='0' "
                "cellpadding='1'><tr style='color:#9aa0a8'><td></td><td align='right'>with</td><td align='right' "
                f"style='padding:0 10px'>without</td><td align='right'>influence</td></tr>{rows}</table>")
    if task.survival is not None and case.influence_risk is not None:
        s = task.survival
        return (f"<b>Without {name}</b> in the training buffer (graph rebuilt exactly) this slide's risk score "
                f"would be {s.risk - case.influence_risk:.3f} instead of {s.risk:.3f}: influence "
                f"<b>{case.influence_risk:+.3f}</b> ({'raises' if case.influence_risk > 0 else 'lowers'} the risk).")
    return ""


def paired_pathways(names: list[str], this_slide: list[float], case: list[float],
                    top_n: int = PATHWAY_TOP_N) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The ``top_n`` pathways with the largest activity in either series, strongest first."""
    a, b = np.asarray(this_slide, dtype=float), np.asarray(case, dtype=float)
    order = np.argsort(-np.maximum(np.abs(a), np.abs(b)), kind="stable")[:top_n]
    short = [names[i].removeprefix("HALLMARK_").replace("_", " ").lower() for i in order]
    return short, a[order], b[order]
