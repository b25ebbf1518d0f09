"""The tasks a run asks of a cohort (architecture §4 "Tasks"), checked with the rest of the cohort:
``survival`` needs observed events (``censorship`` 0) — at least two, so that every training fold of
a cross-validation keeps one — and a classification label needs cases of at least two classes.

Only the tasks asked for are checked: a cohort whose every case is censored is fine for a
classification run, not for a survival one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from msrl_model.cohort.clinical import Clinical
from msrl_model.cohort.format import CohortConfig, Problems

# The tasks of a run: names, or a rule that picks them from the cohort's label columns.
Tasks = Sequence[str] | Callable[[list[str]], Sequence[str]]
# Observed events survival needs: one per training fold of a cross-validation at least.
MIN_EVENTS = 2


def resolve_tasks(tasks: Tasks, label_columns: list[str]) -> list[str]:
    """The task names of ``tasks`` (a rule is given the cohort's label columns)."""
    return list(tasks(list(label_columns)) if callable(tasks) else tasks)


def check_tasks(tasks: Sequence[str], clinical: Clinical, config: CohortConfig, problems: Problems) -> None:
    """Problems of the requested ``tasks`` on the valid cases of ``clinical``."""
    cases = clinical.cases
    n = len(cases)
    if n == 0:
        return  # clinical.csv's own problems say why there is no case
    for task in dict.fromkeys(tasks):
        if task == "survival":
            events = int((cases["censorship"] == 0).sum())
            if events == 0:
                problems.add(f"task survival: all {n} cases are censored ({config.clinical} censorship 1 "
                             "everywhere, no observed event); survival needs cases with censorship 0 "
                             "(1 = censored, 0 = event observed): fix the column or train other tasks")
            elif events < MIN_EVENTS:
                problems.add(f"task survival: only {events} of {n} cases has an observed event "
                             f"(censorship 0); cross-validation needs at least {MIN_EVENTS} so that every "
                             "training fold has one: add cases with events or train other tasks")
            continue
        if task not in clinical.label_columns:
            if task not in (config.labels or {}):  # a declared but absent column is reported already
                problems.add(f"task {task!r} is not a label column of {config.clinical}; available: "
                             + ", ".join(["survival", *clinical.label_columns]))
            continue
        counts = Counter(v for v in cases[task] if isinstance(v, str))
        if not counts:
            problems.add(f"task {task}: no case has a {task} value in {config.clinical}; "
                         "fill the column or train other tasks")
        elif len(counts) < 2:
            (value, k), = counts.items()
            problems.add(f"task {task}: every labelled case ({k} of {n}) has the class {value!r}; a "
                         "classification task needs cases of at least two classes: fix the column or "
                         "train other tasks")


__all__ = ["MIN_EVENTS", "Tasks", "check_tasks", "resolve_tasks"]
