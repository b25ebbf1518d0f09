r"""What a prediction returns: plain dataclasses of Python numbers, lists and strings, JSON both ways.

Every float is a Python float (JSON number); a missing value is None (JSON ``null``): NaN and
infinities never appear (an infinite survival bin edge, the open last bin, is None).
``PredictionResult.from_json(r.to_json()) == r`` holds exactly.

**Influence and graph contribution** (exact, :meth:`msrl_model.infer.engine.ExactEngine.explain`).
With f(G) the task's prediction of this slide (survival: the risk; classification: the class
probabilities) on the graph G, B the buffer and r a linked case:

.. math::
    \mathrm{influence}_r = f([B; q]) - f([B \setminus \{r\}; q]), \qquad
    \mathrm{graph\ contribution} = f([B; q]) - f([q])

i.e. how much the case's presence in the buffer moves the prediction (positive: it raises the risk
or that class's probability), and how much the whole buffer does against the query linked only to
itself. Influences are not additive (removing two cases is not the sum of removing each), so their
sum need not equal the graph contribution.

**What the neighbours say** (their authentic records, next to the model's numbers): survival — the
edge-weighted event rate Σ w_j [event_j] / Σ w_j over the linked cases with a known status, and the
median of their (unweighted) Kaplan–Meier curve; classification — the edge-weighted share of each
class among the linked cases whose label is one of the task's classes.

JSON layout (``PredictionResult.to_dict``)::

    format_version, software_version, research_use_only (text), synthetic_training_cohort (bool)
    slide_id, slide_path, slide_sha256_head, bundle_path, bundle_sha256, encoder {name, version, dim}
    bundle_provenance                           who signed the bundle ("" in results written before it)
    mode: "msrl" | "msrl_multi" | "msrl_h"      how the graph node of this slide was built
    project                                     as given by the user (or None)
    suggested_project                           weighted majority project of the survival (else first) task's neighbours
    patch_size_level0, coords [[x, y], ...]     level-0 top-left of every analysed patch
    warnings [str]                              a slide unlike the training cohort first ("This slide is unlike …")
    applicability {p_value, level, flagged, score, calibration, n_calibration, message} or None
                                                the slide against the training slides (infer/applicability.py)
    regions {include, exclude, rule, patches_selected, patches_on_tissue, sha256} or None
                                                the regions of interest that chose the patches (slide/regions.py)
    tasks {name: TaskResult}:
        name, kind, variant, mode
        survival (survival tasks) {risk, percentile, percentile_in_project, project_cases, risk_group,
                  risk_thresholds [t1, t2], bin_edges_months, hazards, bin_survival,
                  curve {times, survival}, median_survival_months (None = not reached),
                  cohort_km {times, survival}, neighbours_km {times, survival},
                  risk_query_alone, graph_contribution,
                  neighbours_event_rate, neighbours_with_status, neighbours_median_survival_months}
        classification (classification tasks) {classes (codes), class_names (readable), probabilities, predicted,
                  prediction_set [codes] and set_coverage (conformal, infer/conformal.py; [] / None without),
                  probabilities_query_alone, graph_contribution [per class],
                  neighbours_distribution [per class] (None = no linked case has a class label), neighbours_labelled}
        linked_cases [{row, weight, case {column: value}, pathways [n_groups],
                       influence_risk (survival), influence_probabilities [per class] (classification)}]
                                                by weight, descending
        self_weight                             normalised self-loop of the query node
        attention [N]                           CLS→patch attention of φ_H (sums to 1), aligned with coords
        pathways {names, reconstructed, neighbours_mean} or None
        suggested_project, metrics (the bundle's cross-validated metrics for this task)
        informative (False: "not informative in cross-validation"; None: no metric), informative_note
        graph_evidence (False: the linked cases did not measurably improve this task in cross-validation;
        None: not recorded), graph_evidence_note
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from msrl_model import RESEARCH_USE_ONLY

RESULT_FORMAT_VERSION = 3  # 2: influences, graph contribution, what the neighbours say; 3: class names,
#                             informative tasks, applicability


def readable_label(names: dict[str, dict[str, str]], column: str, value: Any) -> Any:
    """A case-table label ``value`` of ``column`` as its readable class name (``names``:
    :meth:`PredictionResult.label_names`; integer codes 1 / 1.0 read as "1"), else ``value`` as stored."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not float(value).is_integer():
            return value
        value_code = str(int(value))
    else:
        value_code = str(value)
    return names.get(column, {}).get(value_code, value)


@dataclass
class Curve:
    """A right-continuous step function: survival[k] holds on [times[k], times[k+1])."""

    times: list[float]  # months, increasing, starting at 0
    survival: list[float]  # values in [0, 1]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Curve:
        return cls(list(d["times"]), list(d["survival"]))


@dataclass
class SurvivalPrediction:
    """Discrete-time survival prediction of one slide, placed in the training cohort."""

    risk: float  # -Σ_j S_j (higher = worse prognosis)
    percentile: float  # % of buffer cases with a lower risk (ties count half), in [0, 100]
    percentile_in_project: float | None  # the same among the buffer cases of `project`; None when unknown
    project_cases: int  # buffer cases of `project` behind percentile_in_project (0 when None)
    risk_group: str  # "low" | "intermediate" | "high": tertiles of the buffer cases' risks
    risk_thresholds: list[float]  # [t1, t2]: low when risk < t1, high when risk > t2
    bin_edges_months: list[float | None]  # J + 1 bin edges; the last (∞) is None
    hazards: list[float]  # J per-bin hazards h_j
    bin_survival: list[float]  # J values S_j = P(alive at the end of bin j)
    curve: Curve  # S(t): 1 on [0, e_1), S_j on [e_j, e_{j+1}) for j < J
    median_survival_months: float | None  # first edge where S <= 0.5; None = not reached
    cohort_km: Curve  # Kaplan–Meier of the buffer cohort
    neighbours_km: Curve  # unweighted Kaplan–Meier of the linked cases
    risk_query_alone: float  # the risk with the slide linked only to itself (no buffer)
    graph_contribution: float  # risk - risk_query_alone
    neighbours_event_rate: float | None  # Σ w [event] / Σ w over linked cases with a known status; None: none
    neighbours_with_status: int  # linked cases with a known status behind neighbours_event_rate
    neighbours_median_survival_months: float | None  # first time neighbours_km <= 0.5; None = not reached
    # conformal set of time bins for the event at set_coverage (msrl_model.infer.conformal); [] / None: the
    # bundle has no survival calibration
    event_set: list[int] = field(default_factory=list)  # bin indices, ascending
    event_set_text: str = ""  # "between 14 and 31 months, or after 52 months"
    set_coverage: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SurvivalPrediction:
        return cls(**{**d, "curve": Curve.from_dict(d["curve"]), "cohort_km": Curve.from_dict(d["cohort_km"]),
                      "neighbours_km": Curve.from_dict(d["neighbours_km"])})


@dataclass
class ClassificationPrediction:
    """Class probabilities of one slide."""

    classes: list[str]  # class labels, head order
    probabilities: list[float]  # softmax, sums to 1
    predicted: str  # argmax class
    probabilities_query_alone: list[float]  # the probabilities with the slide linked only to itself
    graph_contribution: list[float]  # probabilities - probabilities_query_alone, per class
    neighbours_distribution: list[float] | None  # edge-weighted share of each class among labelled linked cases
    neighbours_labelled: int  # linked cases whose label is one of the classes
    class_names: list[str] = field(default_factory=list)  # readable name per class ("wild-type"); [] = the codes
    prediction_set: list[str] = field(default_factory=list)  # conformal set (codes, most probable first); []: none
    set_coverage: float | None = None  # its coverage (0.9 = 90 %); None: the bundle has no conformal scores

    @property
    def names(self) -> list[str]:
        """What to show for each class: its readable name, else its code."""
        return list(self.class_names) if len(self.class_names) == len(self.classes) else list(self.classes)

    @property
    def predicted_name(self) -> str:
        """The readable name of the predicted class."""
        return self.names[self.classes.index(self.predicted)] if self.predicted in self.classes else self.predicted

    @property
    def set_text(self) -> str:
        """'II or III at 90 %' ('' without a set)."""
        if self.set_coverage is None or not self.prediction_set:
            return ""
        names = dict(zip(self.classes, self.names))
        return f"{' or '.join(names.get(c, c) for c in self.prediction_set)} at {self.set_coverage:.0%}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationPrediction:
        return cls(**d)


@dataclass
class LinkedCase:
    """A training case the slide is linked to in the graph."""

    row: int  # buffer row
    weight: float  # normalised edge weight A'[query, row] > 0
    case: dict[str, Any]  # the case-table row (case_id, slide_id, project, survival, stage, labels)
    pathways: list[float]  # its authentic pathway scores (n_groups)
    influence_risk: float | None  # survival: risk - risk without this case in the buffer; else None
    influence_probabilities: list[float] | None  # classification: per class p - p without this case; else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinkedCase:
        return cls(**d)


@dataclass
class PathwayActivity:
    """Pathway activity reconstructed for the slide next to its neighbours' authentic activity."""

    names: list[str]  # pathway (gene-group) names
    reconstructed: list[float]  # pathway_decoder(z) of the slide
    neighbours_mean: list[float]  # edge-weighted mean of the linked cases' authentic scores

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PathwayActivity:
        return cls(**d)


@dataclass
class Applicability:
    """How far the slide is from the training cohort (:mod:`msrl_model.infer.applicability`)."""

    p_value: float | None  # conformal p-value of the slide's score among the training slides' (None: unchecked)
    level: float  # the slide is flagged when p_value < level (the bundle's level, default 0.05)
    flagged: bool  # p_value < level: the slide is unlike the training cohort
    score: float | None  # mean distance of the slide's profile to its k nearest training slides; None: unchecked
    calibration: str  # where the training slides' profiles come from ("bundle", or "none": the bundle has none)
    n_calibration: int  # training slides behind p_value
    message: str  # one sentence for the user

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Applicability:
        return cls(**d)


@dataclass
class TaskResult:
    """Everything predicted for one task."""

    name: str  # task id
    kind: str  # "survival" | "classification"
    variant: str  # the network variant: "msrl" | "msrl_h"
    mode: str  # "msrl" (WSI only, Inductor prompt) | "msrl_multi" (real expression) | "msrl_h"
    survival: SurvivalPrediction | None  # survival tasks
    classification: ClassificationPrediction | None  # classification tasks
    linked_cases: list[LinkedCase]  # by weight descending
    self_weight: float  # normalised self-loop weight of the query node
    attention: list[float]  # (N,) CLS→patch attention, aligned with PredictionResult.coords
    pathways: PathwayActivity | None  # None when the bundle has no pathway decoder
    suggested_project: str | None  # edge-weighted majority project among the linked cases
    metrics: dict[str, Any] = field(default_factory=dict)  # the bundle's cross-validated metrics
    # Whether the cross-validated metric exceeds chance with confidence (msrl_model.infer.informative):
    # False = "not informative in cross-validation"; None = the bundle has no metric to tell
    informative: bool | None = None
    informative_note: str = ""  # the evidence in words, e.g. "AUC 0.485 ± 0.136 over 5 folds: 95 % CI from 0.30"
    # Whether the linked cases improved this task in cross-validation (msrl_model.infer.graph_evidence):
    # False = "did not measurably improve"; None = the bundle recorded no graph ablation
    graph_evidence: bool | None = None
    graph_evidence_note: str = ""  # the evidence in words (MSRL vs no_graph / shuffled_buffer, p-values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        return cls(**{
            **d,
            "survival": None if d["survival"] is None else SurvivalPrediction.from_dict(d["survival"]),
            "classification": None if d["classification"] is None
            else ClassificationPrediction.from_dict(d["classification"]),
            "linked_cases": [LinkedCase.from_dict(c) for c in d["linked_cases"]],
            "pathways": None if d["pathways"] is None else PathwayActivity.from_dict(d["pathways"]),
        })


@dataclass
class PredictionResult:
    """The prediction for one slide over every task of a bundle."""

    slide_id: str  # slide file stem (or the caller's id)
    slide_path: str | None  # the slide file, when predicted from one
    slide_sha256_head: str | None  # slide fingerprint (first MiB + size), for resume
    bundle_path: str  # the bundle used
    bundle_sha256: str  # the bundle's fingerprint (SHA-256 of its manifest)
    encoder: dict[str, Any]  # patch encoder {name, version, dim}
    mode: str  # "msrl_multi" when real expression was used for some task, else "msrl" (or "msrl_h")
    project: str | None  # the project given by the user
    suggested_project: str | None  # weighted majority project among the graph neighbours
    patch_size_level0: int  # patch side in level-0 pixels
    coords: list[list[int]]  # (N, 2) level-0 top-left of each patch
    tasks: dict[str, TaskResult]  # by task name, bundle order
    warnings: list[str] = field(default_factory=list)  # things the user should know (missing genes, ...)
    synthetic_training_cohort: bool = False  # the bundle was trained on a synthetic cohort
    bundle_provenance: str = ""  # Bundle.provenance: "signed by … (key …)", "unsigned — provenance unknown", …
    software_version: str = ""  # MSRL Studio version that predicted
    research_use_only: str = RESEARCH_USE_ONLY  # shown with every result
    format_version: int = RESULT_FORMAT_VERSION  # layout of this JSON
    applicability: Applicability | None = None  # is the slide like the training cohort? None: not checked
    # the regions of interest that selected the patches (msrl_model.slide.regions.RegionSet.summary: include,
    # exclude, rule, patches_selected, patches_on_tissue, sha256); None: every tissue patch was analysed
    regions: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictionResult:
        applicability = d.get("applicability")
        return cls(**{**d, "tasks": {k: TaskResult.from_dict(v) for k, v in d["tasks"].items()},
                      "applicability": None if applicability is None else Applicability.from_dict(applicability)})

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no NaN/Infinity tokens); floats round-trip exactly."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> PredictionResult:
        return cls.from_dict(json.loads(text))

    def label_names(self) -> dict[str, dict[str, str]]:
        """{label column: {class code: readable name}} of the classification tasks (a linked case's
        TP53_mut "0" reads "wild-type")."""
        return {name: dict(zip(t.classification.classes, t.classification.names))
                for name, t in self.tasks.items() if t.classification is not None}

    def summary(self) -> dict[str, Any]:
        """The headline numbers per task (for one-line outputs)."""
        out: dict[str, Any] = {}
        for name, t in self.tasks.items():
            if t.survival is not None:
                out[name] = {"risk": t.survival.risk, "percentile": t.survival.percentile,
                             "risk_group": t.survival.risk_group,
                             "median_survival_months": t.survival.median_survival_months}
            elif t.classification is not None:
                out[name] = {"predicted": t.classification.predicted,
                             "probabilities": dict(zip(t.classification.classes, t.classification.probabilities))}
        return out


__all__ = ["Applicability", "ClassificationPrediction", "Curve", "LinkedCase", "PathwayActivity", "PredictionResult",
           "RESEARCH_USE_ONLY", "RESULT_FORMAT_VERSION", "SurvivalPrediction", "TaskResult", "readable_label"]
