"""Cross-validation of MSRL, its variants and the baselines, and the final models on all cases.

Per fold (``stratified_folds`` over project × event, cases never split across folds):

1. the expression scaler is fitted on the training cases only (:func:`~msrl_model.train.data.fold_genomics`);
2. stage-1 pre-training runs on the training cases only (no test genomics, no test slides);
3. per task, survival bins come from the training cases only; every variant is trained on the
   training cases and predicts the test cases one at a time against its buffer of training cases;
   MSRL_multi is the trained MSRL network given the test case's real genomics;
4. metrics: C-index (survival), macro AUC and macro F1 (classification).

Then, when asked, the final models: the same pipeline on *all* cases (MSRL per task) — the bundle.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from msrl_model.cohort import Cohort, stratified_folds
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import Job, Progress, Stage
from msrl_model.stats import auc_macro_ovr, c_index, f1_macro
from msrl_model.train.data import Bags, FoldGenomics, TaskTargets, fold_genomics, task_targets
from msrl_model.train.finetune import FinetuneResult, finetune_job
from msrl_model.train.predict import Predictions
from msrl_model.train.pretrain import pretrain_job
from msrl_model.train.settings import TrainSettings
from msrl_model.train.variants import FoldInputs, available_variants, get_variant, unknown_variants


@dataclass
class FinalTask:
    """The final (all-cases) MSRL network of one task."""

    result: FinetuneResult  # network + shipped buffer (all cases)
    y: np.ndarray  # (n_cases,) task targets with the final bins / classes


@dataclass
class CVResult:
    """Everything the report and the bundle need."""

    rows: list[dict] = field(default_factory=list)  # {method, task, fold, metric, value}
    oof: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)  # (task, method) -> case, fold, risk/probs
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (train, test) case indices
    final: dict[str, FinalTask] = field(default_factory=dict)  # task -> final network
    final_genomics: FoldGenomics | None = None  # scaler / pathways fitted on all cases

    def metric_summary(self, task: str, method: str) -> dict[str, dict[str, float]]:
        """{metric: {"mean", "std", "n_folds"}} over folds (NaN folds left out)."""
        out: dict[str, dict[str, float]] = {}
        for metric in sorted({r["metric"] for r in self.rows if r["task"] == task and r["method"] == method}):
            vals = np.array([r["value"] for r in self.rows if r["task"] == task and r["method"] == method
                             and r["metric"] == metric], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out[metric] = {"mean": float(vals.mean()) if vals.size else math.nan,
                           "std": float(vals.std()) if vals.size else math.nan, "n_folds": int(vals.size)}
        return out


def evaluate(kind: str, pred: Predictions, y: np.ndarray, times: np.ndarray, censorship: np.ndarray,
             n_classes: int) -> dict[str, float]:
    """C-index (survival) or macro AUC + macro F1 (classification) of predictions of ``pred.cases``."""
    c = pred.cases
    if kind == "survival":
        return {"c_index": c_index(pred.risk, times[c], censorship[c])}
    out = {"f1": f1_macro(y[c], pred.probs.argmax(1))}
    try:
        out["auc"] = auc_macro_ovr(y[c], pred.probs, n_classes)
    except ValueError:  # a test fold with a single class has no AUC
        out["auc"] = math.nan
    return out


def _record_oof(result: CVResult, task: str, method: str, fold: int, pred: Predictions) -> None:
    entry = result.oof.setdefault((task, method), {"case": np.zeros(0, np.int64), "fold": np.zeros(0, np.int64)})
    entry["case"] = np.concatenate([entry["case"], pred.cases])
    entry["fold"] = np.concatenate([entry["fold"], np.full(len(pred.cases), fold)])
    if pred.risk is not None:
        entry["risk"] = np.concatenate([entry.get("risk", np.zeros(0)), pred.risk])
    if pred.probs is not None:
        prev = entry.get("probs", np.zeros((0, pred.probs.shape[1])))
        entry["probs"] = np.concatenate([prev, pred.probs])


def _train_variants(inputs: FoldInputs, variants: Sequence[str]) -> Job[dict[str, object]]:
    """Train every variant of one task on ``inputs.train_cases``; returns {trained-as name: model}
    (MSRL_multi predicts with MSRL's network, so it trains nothing of its own)."""
    models: dict[str, object] = {}
    for name in variants:
        variant = get_variant(get_variant(name).trained_as)
        if variant.name not in models:
            models[variant.name] = yield from variant.train(variant, inputs)
    return models


def _record_fold_task(result: CVResult, cohort: Cohort, task: str, fold: int, tt: TaskTargets,
                      inputs: FoldInputs, models: dict[str, object], variants: Sequence[str],
                      test: np.ndarray, done: int, units: int, label: str) -> Job[None]:
    """Predict the fold's (labelled) test cases with every variant; metric rows and out-of-fold entries.

    A job: a "cross-validation" tick before each variant predicts; a variant whose predictor returns
    a job (ticks per chunk of cases) is driven through it."""
    for name in variants:
        yield Progress(Stage.CROSS_VALIDATION, done, units, f"{label}: predicting {name}")
        variant = get_variant(name)
        pred = variant.predict(variant, models[variant.trained_as], inputs, test)
        if isinstance(pred, Generator):
            pred = yield from pred
        metrics = evaluate(tt.spec.kind, pred, tt.y, cohort.times, cohort.censorship, tt.spec.n_outputs)
        for metric, value in metrics.items():
            result.rows.append({"method": name, "task": task, "fold": fold, "metric": metric,
                                "value": float(value)})
        _record_oof(result, task, name, fold, pred)


def _final_models(result: CVResult, cohort: Cohort, bags: Bags, cfg: MSRLConfig, tasks: Sequence[str],
                  settings: TrainSettings, seed: int, device: torch.device, done: int, units: int) -> Job[None]:
    """The final MSRL network of every task, on all cases, into ``result.final``."""
    every = np.arange(cohort.n_cases)
    fg = fold_genomics(cohort, every)
    result.final_genomics = fg
    final_seed = seed * 1000 + 999
    pre = yield from pretrain_job(cfg, bags, fg.packed, every, settings=settings, seed=final_seed,
                                  device=device)
    for task in tasks:
        yield Progress(Stage.CROSS_VALIDATION, done, units, f"final model {task}")
        tt = task_targets(cohort, task, every, cfg.n_bins)
        res = yield from finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, every,
                                      pretrained=pre, settings=settings, seed=final_seed, device=device)
        result.final[task] = FinalTask(res, tt.y)
        done += 1
        yield Progress(Stage.CROSS_VALIDATION, done, units, f"final model {task} done")


def cv_job(cohort: Cohort, bags: Bags, cfg: MSRLConfig, *, tasks: Sequence[str], variants: Sequence[str],
           n_folds: int = 5, settings: TrainSettings = TrainSettings(), seed: int = 0,
           device: torch.device | str = "cpu", final: bool = True) -> Job[CVResult]:
    """K-fold cross-validation of ``variants`` on ``tasks`` (+ the final models when ``final``).

    A generator of Progress (its own "cross-validation" stage plus the stages of the training jobs);
    returns :class:`CVResult`.
    """
    device = torch.device(device)
    unknown = unknown_variants(variants)
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(available_variants())}")
    result = CVResult()
    folds = stratified_folds(cohort, n_folds, seed=seed, stratify_by=("project", "event"))
    need_pre = any(get_variant(v).needs_pretraining for v in variants)
    units = n_folds * len(tasks) + (len(tasks) if final else 0)
    done = 0
    for fold in folds:
        result.folds.append((fold.train, fold.test))
        fold_seed = seed * 1000 + fold.index
        fg = fold_genomics(cohort, fold.train)
        pre = None
        if need_pre:
            pre = yield from pretrain_job(cfg, bags, fg.packed, fold.train, settings=settings, seed=fold_seed,
                                          device=device)
        for task in tasks:
            yield Progress(Stage.CROSS_VALIDATION, done, units, f"fold {fold.index + 1}/{n_folds} {task}")
            tt = task_targets(cohort, task, fold.train, cfg.n_bins)
            inputs = FoldInputs(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, fold.train,
                                pre, settings, fold_seed, device)
            models = yield from _train_variants(inputs, variants)
            test = tt.valid(fold.test)
            done += 1
            if len(test) == 0:
                continue
            yield from _record_fold_task(result, cohort, task, fold.index, tt, inputs, models, variants, test,
                                         done, units, f"fold {fold.index + 1}/{n_folds} {task}")
            yield Progress(Stage.CROSS_VALIDATION, done, units, f"fold {fold.index + 1}/{n_folds} {task} done")
    if final:
        yield from _final_models(result, cohort, bags, cfg, tasks, settings, seed, device, done, units)
    return result


__all__ = ["CVResult", "FinalTask", "cv_job", "evaluate"]
