"""One task of a loaded bundle at prediction time: its network and exact engine on the predictor's device
(:class:`TaskRuntime`), and how its head's logits become the slide's survival or class prediction with
conformal sets and each linked case's influence (:func:`survival_prediction`,
:func:`classification_prediction`). :class:`~msrl_model.infer.predictor.Predictor` runs them."""

from __future__ import annotations

import numpy as np
import torch

from msrl_model.infer.bundle import Bundle, TaskBundle, json_safe
from msrl_model.infer.conformal import describe_bins, prediction_set, quantile, survival_set, weighted_quantile
from msrl_model.infer.engine import ExactEngine
from msrl_model.infer.neighbours import (class_shares, km, km_median, percentile_of, survival_curve,
                                         weighted_event_rate)
from msrl_model.infer.results import ClassificationPrediction, Curve, SurvivalPrediction
from msrl_model.nn.heads import survival_from_logits
from msrl_model.nn.msrl import MSRLNet

INT8_SCREEN_ROWS = 50_000
"""From this many buffer cases the engine screens the buffer in int8 (infer/screen.py): a quarter of the memory
and of the bytes read per query, bit-identical results (at 10⁶ cases ≈ 150 ms per query on one thread)."""


class TaskRuntime:
    """One task's network, engine and cohort statistics on the predictor's device."""

    def __init__(self, bundle: Bundle, task: TaskBundle, device: torch.device) -> None:
        self.task = task
        with torch.device("meta"):  # shapes only: every weight comes from the bundle, no random init to discard
            self.net = MSRLNet(bundle.config, task.spec, task.variant)  # type: ignore[arg-type]
        self.net.load_state_dict(task.state_dict, assign=True)  # the bundle's tensors become the parameters
        self.net.to(device).eval()
        self.device = device
        self.k = bundle.config.k
        self._engine: ExactEngine | None = None
        self.cohort_risk: np.ndarray | None = None  # (N,) survival tasks
        self.cohort_km: Curve | None = None

    @torch.no_grad()
    def prepare(self) -> None:
        """Engine over the buffer and, for survival, the cohort risks and KM (once)."""
        if self._engine is not None:
            return
        buffer = torch.from_numpy(self.task.buffer_nodes).to(self.device)  # (N, node_dim)
        screen = "int8" if len(buffer) >= INT8_SCREEN_ROWS else "fp32"  # the same results either way
        self._engine = ExactEngine(self.net.gsl, self.net.gcn, buffer, self.k, screen=screen)
        if self.task.spec.kind == "survival":
            edge_index, edge_weight = self.net.gsl.adjacency(buffer)
            z = self.net.gcn(buffer, edge_index, edge_weight)  # (N, gcn_out)
            self.cohort_risk = survival_from_logits(self.net.readout(z, buffer)).risk.double().cpu().numpy()
            self.cohort_km = km(self.task.cases)

    @property
    def engine(self) -> ExactEngine:
        self.prepare()
        assert self._engine is not None
        return self._engine


def survival_prediction(rt: TaskRuntime, logits: torch.Tensor, project: str | None, rows: np.ndarray,
                         weights: np.ndarray, coverage: float) -> tuple[SurvivalPrediction, list[float]]:
    """The slide's survival from its head ``logits`` (2 + M, J) — rows: [buffer; q], [q] alone, then
    [buffer without linked row i; q] — placed among the cohort risks, with the conformal set of time
    bins for the event at ``coverage`` (when the bundle has survival calibration); and the influence on
    the risk of each linked row, risk - risk without it.

    risk = -Σ_j S_j in float64; risk groups are the tertiles t1, t2 of the cohort risks."""
    task, cases = rt.task, rt.task.cases
    out = survival_from_logits(logits.double())  # float64: risk = -Σ S exactly
    risks = out.risk.cpu().numpy()  # (2 + M,)
    risk = float(risks[0])
    s = out.survival[0].double().cpu().numpy()
    assert rt.cohort_risk is not None and rt.cohort_km is not None
    t1, t2 = (float(v) for v in np.quantile(rt.cohort_risk, [1 / 3, 2 / 3]))
    in_project = (cases["project"] == project).to_numpy(dtype=bool, na_value=False) \
        if project is not None and "project" in cases.columns else np.zeros(len(cases), dtype=bool)
    curve, median = survival_curve(task.spec.bin_edges, s)
    scores, score_weights = task.conformal_scores, task.conformal_weights
    chosen = survival_set(s[None], weighted_quantile(np.asarray(scores), np.asarray(score_weights), coverage)) \
        if scores and score_weights else []
    neighbours_km = km(cases, rows)
    event_rate, with_status = weighted_event_rate(cases, rows, weights)
    prediction = SurvivalPrediction(
        risk=risk, percentile=percentile_of(risk, rt.cohort_risk),
        percentile_in_project=percentile_of(risk, rt.cohort_risk[in_project]) if in_project.any() else None,
        project_cases=int(in_project.sum()),
        risk_group="low" if risk < t1 else ("high" if risk > t2 else "intermediate"),
        risk_thresholds=[t1, t2], bin_edges_months=json_safe(list(task.spec.bin_edges)),
        hazards=[float(v) for v in out.hazards[0]], bin_survival=[float(v) for v in s],
        curve=curve, median_survival_months=median, cohort_km=rt.cohort_km, neighbours_km=neighbours_km,
        risk_query_alone=float(risks[1]), graph_contribution=float(risks[0] - risks[1]),
        neighbours_event_rate=event_rate, neighbours_with_status=with_status,
        neighbours_median_survival_months=km_median(neighbours_km), event_set=chosen,
        event_set_text=describe_bins(chosen, json_safe(list(task.spec.bin_edges))) if chosen else "",
        set_coverage=coverage if chosen else None)
    return prediction, [float(risks[0] - v) for v in risks[2:]]


def classification_prediction(rt: TaskRuntime, logits: torch.Tensor, rows: np.ndarray, weights: np.ndarray,
                               coverage: float) -> tuple[ClassificationPrediction, list[list[float]]]:
    """The class probabilities from the head ``logits`` (2 + M, C) (rows as in :func:`survival_prediction`)
    with their conformal set at ``coverage`` (when the bundle has scores), and each linked row's influence
    p - p without it (per class)."""
    spec = rt.task.spec
    p = torch.softmax(logits.double(), dim=-1).cpu().numpy()  # (2 + M, C) float64: each row sums to 1
    classes = list(spec.classes)
    scores = rt.task.conformal_scores
    chosen = [classes[c] for c in prediction_set(p[0], quantile(np.asarray(scores), coverage))] if scores else []
    shares, labelled = class_shares(rt.task.cases, spec.name, classes, rows, weights)
    prediction = ClassificationPrediction(
        classes, [float(v) for v in p[0]], classes[int(np.argmax(p[0]))],
        probabilities_query_alone=[float(v) for v in p[1]], graph_contribution=[float(v) for v in p[0] - p[1]],
        neighbours_distribution=shares, neighbours_labelled=labelled, class_names=list(rt.task.class_names or []),
        prediction_set=chosen, set_coverage=coverage if scores else None)
    return prediction, [[float(v) for v in p[0] - row] for row in p[2:]]
