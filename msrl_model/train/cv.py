"""Cross-validation of MSRL, its variants and the baselines, and the final models on all cases.

Per fold (``stratified_folds`` over project × event, cases never split across folds):

1. the expression scaler is fitted on the training cases only (:func:`~msrl_model.train.data.fold_genomics`);
2. stage-1 pre-training runs on the training cases only (no test genomics, no test slides);
3. per task, survival bins come from the training cases only; every variant is trained on the
   training cases and predicts the test cases one at a time against its buffer of training cases;
   MSRL_multi is the trained MSRL network given the test case's real genomics, no_graph and
   shuffled_buffer the same network linked to nothing / to a buffer with permuted genomics;
4. metrics: C-index (survival), macro AUC and macro F1 (classification);
5. MSRL's graph diagnostics on the test cases (:mod:`msrl_model.train.graphcheck`: how much the
   buffer moves a prediction, what the neighbours' authentic genomics add to the prompt, where the
   gradient goes).

**Repeated CV** (``repeats``): repeat r splits the cohort again with its own fold seed; repeat 0
uses the seeds of a single CV (:func:`repeat_seeds`), so a one-repeat run is unchanged.

**Per-fold results on disk and resume** (``out_dir``, :mod:`msrl_model.train.foldstore`): as each
fold ends its metric rows, out-of-fold predictions and timings go to ``folds/…json`` and
``oof_predictions.csv`` is rewritten; a run started again with the same settings reads the finished
folds back and trains only the others, with the same final table as an uninterrupted run (every
training job seeds itself from its fold's seed, so a fold does not depend on the folds before it).

Then, when asked, the final models: the same pipeline on *all* cases (MSRL per task) — the bundle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from msrl_model.cohort import Cohort, stratified_folds
from msrl_model.nn.config import MSRLConfig
from msrl_model.nn.heads import survival_from_logits
from msrl_model.progress import Job, Progress, Stage
from msrl_model.stats import auc_macro_ovr, c_index, f1_macro
from msrl_model.train import distributed
from msrl_model.train.data import Bags, FoldGenomics, TaskTargets, fold_genomics, task_targets
from msrl_model.train.finetune import FinetuneResult, finetune_job
from msrl_model.train.foldstore import FoldRecord, FoldStore, claim_holder, describe_holder, run_identity
from msrl_model.train.graphcheck import gradient_shares, graph_diagnostics
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

    rows: list[dict] = field(default_factory=list)  # {method, task, repeat, fold, metric, value}
    # (task, method) -> {"case", "fold", "repeat", "risk" and "survival" (Q, J) | "probs"}: out-of-fold predictions
    oof: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (train, test) case indices, repeat-major
    final: dict[str, FinalTask] = field(default_factory=dict)  # task -> final network
    final_genomics: FoldGenomics | None = None  # scaler / pathways fitted on all cases
    n_folds: int = 0  # folds per repeat
    repeats: int = 1  # repetitions of the CV with other fold seeds
    resumed: int = 0  # folds read back from an earlier run's files
    graph: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # (task, MSRL graph diagnostics) per fold
    # (task, repeat, fold) -> survival bin edges in months (the fold's own, from its training cases)
    bin_edges: dict[tuple[str, int, int], list[float]] = field(default_factory=dict)
    final_by: str | None = None  # the other process that builds the final models (several processes, one --out)

    def metric_summary(self, task: str, method: str) -> dict[str, dict[str, float]]:
        """{metric: {"mean", "std", "n_folds"}} over folds and repeats (NaN folds left out)."""
        out: dict[str, dict[str, float]] = {}
        for metric in sorted({r["metric"] for r in self.rows if r["task"] == task and r["method"] == method}):
            vals = np.array([r["value"] for r in self.rows if r["task"] == task and r["method"] == method
                             and r["metric"] == metric], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out[metric] = {"mean": float(vals.mean()) if vals.size else math.nan,
                           "std": float(vals.std()) if vals.size else math.nan, "n_folds": int(vals.size)}
        return out

    def fold_values(self, task: str, method: str, metric: str) -> dict[tuple[int, int], float]:
        """{(repeat, fold): value} of one method's metric (the pairs of a paired test)."""
        return {(r["repeat"], r["fold"]): r["value"] for r in self.rows
                if r["task"] == task and r["method"] == method and r["metric"] == metric}

    @property
    def test_train_ratio(self) -> float:
        """Mean n_test / n_train over the folds (the overlap correction of the fold test)."""
        return float(np.mean([len(te) / len(tr) for tr, te in self.folds])) if self.folds else math.nan


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


def repeat_seeds(seed: int, repeat: int, fold: int) -> tuple[int, int]:
    """(fold-split seed, training seed) of fold ``fold`` of repeat ``repeat``.

    Repeat 0 keeps the seeds of a single cross-validation (split ``seed``, training
    ``seed * 1000 + fold``); repeat r ≥ 1 draws both from ``SeedSequence((seed, r))`` and
    ``SeedSequence((seed, r, fold))`` (31-bit: valid for scikit-learn and torch alike)."""
    if repeat == 0:
        return seed, seed * 1000 + fold
    return distributed.key_seed(seed, repeat) % 2**31, distributed.key_seed(seed, repeat, fold) % 2**31


def _add_record(result: CVResult, record: FoldRecord) -> None:
    """A finished fold's rows and out-of-fold predictions into ``result`` (computed or read back alike)."""
    result.rows += record.rows
    result.graph += list(record.graph.items())
    for task, edges in record.bin_edges.items():
        result.bin_edges[(task, record.repeat, record.fold)] = edges
    for key, pred in record.predictions.items():
        n = len(pred["case"])
        entry = result.oof.setdefault(key, {"case": np.zeros(0, np.int64), "fold": np.zeros(0, np.int64),
                                            "repeat": np.zeros(0, np.int64)})
        entry["case"] = np.concatenate([entry["case"], pred["case"]])
        entry["fold"] = np.concatenate([entry["fold"], np.full(n, record.fold)])
        entry["repeat"] = np.concatenate([entry["repeat"], np.full(n, record.repeat)])
        for name in ("risk", "probs", "survival"):
            if name in pred:
                values = pred[name]
                entry[name] = values if name not in entry else np.concatenate([entry[name], values])


def _train_variants(inputs: FoldInputs, variants: Sequence[str]) -> Job[dict[str, object]]:
    """Train every variant of one task on ``inputs.train_cases``; returns {trained-as name: model}
    (MSRL_multi, no_graph and shuffled_buffer predict with MSRL's network: they train nothing)."""
    models: dict[str, object] = {}
    for name in variants:
        variant = get_variant(get_variant(name).trained_as)
        if variant.name not in models:
            models[variant.name] = yield from variant.train(variant, inputs)
    return models


def _predict_fold_task(record: FoldRecord, cohort: Cohort, task: str, tt: TaskTargets, inputs: FoldInputs,
                       models: dict[str, object], variants: Sequence[str], test: np.ndarray, done: int,
                       units: int, label: str) -> Job[None]:
    """Predict the fold's (labelled) test cases with every variant; metric rows and predictions
    into ``record``.

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
            record.rows.append({"method": name, "task": task, "repeat": record.repeat, "fold": record.fold,
                                "metric": metric, "value": float(value)})
        entry = {"case": np.asarray(pred.cases, np.int64)}
        if pred.risk is not None:
            entry["risk"] = np.asarray(pred.risk, np.float64)
            # (Q, J) S_j = P(alive at the end of bin j): survival calibration / Brier on held-out folds
            entry["survival"] = survival_from_logits(torch.as_tensor(pred.logits)).survival.numpy().astype(np.float64)
            record.bin_edges[task] = [float(e) for e in tt.spec.bin_edges]
        if pred.probs is not None:
            entry["probs"] = np.asarray(pred.probs, np.float64)
        record.predictions[(task, name)] = entry


@dataclass(frozen=True)
class _Plan:
    """What every fold of one run shares."""

    cohort: Cohort
    bags: Bags
    cfg: MSRLConfig
    tasks: Sequence[str]
    variants: Sequence[str]
    ablation_tasks: Sequence[str] | None  # tasks the Table-3 ablations run on (None: every task)
    settings: TrainSettings
    device: torch.device
    units: int  # cross-validation progress units: one per fold and task (+ one per final task)


def _run_fold(plan: _Plan, repeat: int, fold: int, train: np.ndarray, test_cases: np.ndarray, train_seed: int,
              done: int, label: str) -> Job[FoldRecord]:
    """Pre-train, train every variant of every task and predict one fold's test cases; returns its
    :class:`~msrl_model.train.foldstore.FoldRecord` with the timings of the three phases."""
    start = time.perf_counter()
    seconds = {"pretrain": 0.0, "finetune": 0.0, "predict": 0.0}
    need_pre = any(get_variant(v).needs_pretraining for v in plan.variants)
    record = FoldRecord(repeat, fold, len(train), len(test_cases),
                        epochs={"pretrain": plan.cfg.pretrain_epochs if need_pre else 0,
                                "finetune": plan.cfg.finetune_epochs})
    fg = fold_genomics(plan.cohort, train)
    pre = None
    if need_pre:
        t0 = time.perf_counter()
        pre = yield from pretrain_job(plan.cfg, plan.bags, fg.packed, train, settings=plan.settings,
                                      seed=train_seed, device=plan.device)
        seconds["pretrain"] += time.perf_counter() - t0
    for task in plan.tasks:
        yield Progress(Stage.CROSS_VALIDATION, done, plan.units, f"{label} {task}")
        variants = [v for v in plan.variants if get_variant(v).runs_on(task, plan.ablation_tasks)]
        tt = task_targets(plan.cohort, task, train, plan.cfg.n_bins)
        inputs = FoldInputs(plan.cfg, tt.spec, plan.bags, fg.packed, fg.pathways, tt.y, tt.censorship, train,
                            pre, plan.settings, train_seed, plan.device)
        t0 = time.perf_counter()
        models = yield from _train_variants(inputs, variants)
        seconds["finetune"] += time.perf_counter() - t0
        test = tt.valid(test_cases)
        done += 1
        if len(test) == 0:
            continue
        t0 = time.perf_counter()
        yield from _predict_fold_task(record, plan.cohort, task, tt, inputs, models, variants, test, done,
                                      plan.units, f"{label} {task}")
        msrl = models.get("msrl")
        if msrl is not None and msrl.online.pathway_decoder is not None:  # where MSRL's graph signal goes
            record.graph[task] = {**graph_diagnostics(msrl, plan.bags, test, fg.pathways,
                                                      chunk=plan.settings.encode_chunk,
                                                      chunk_patches=plan.settings.chunk_patches, device=plan.device),
                                  **gradient_shares(msrl.history)}
        seconds["predict"] += time.perf_counter() - t0
        yield Progress(Stage.CROSS_VALIDATION, done, plan.units, f"{label} {task} done")
    record.seconds = {**seconds, "total": time.perf_counter() - start}
    return record


def _final_models(result: CVResult, plan: _Plan, seed: int, done: int) -> Job[None]:
    """The final MSRL network of every task, on all cases, into ``result.final``."""
    cohort, bags, cfg, settings, device = plan.cohort, plan.bags, plan.cfg, plan.settings, plan.device
    every = np.arange(cohort.n_cases)
    fg = fold_genomics(cohort, every)
    result.final_genomics = fg
    final_seed = seed * 1000 + 999
    pre = yield from pretrain_job(cfg, bags, fg.packed, every, settings=settings, seed=final_seed,
                                  device=device)
    for task in plan.tasks:
        yield Progress(Stage.CROSS_VALIDATION, done, plan.units, f"final model {task}")
        tt = task_targets(cohort, task, every, cfg.n_bins)
        res = yield from finetune_job(cfg, tt.spec, bags, fg.packed, fg.pathways, tt.y, tt.censorship, every,
                                      pretrained=pre, settings=settings, seed=final_seed, device=device)
        result.final[task] = FinalTask(res, tt.y)
        done += 1
        yield Progress(Stage.CROSS_VALIDATION, done, plan.units, f"final model {task} done")


WAIT_SECONDS = 10.0  # between looks at the folds other processes of the same run are training


@dataclass(frozen=True)
class _FoldUnit:
    """One fold of one repeat, as the run's fold loop visits it."""

    repeat: int
    fold: int
    train: np.ndarray  # training case indices
    test: np.ndarray  # test case indices
    label: str  # "repeat 2/3 fold 4/5" in progress messages

    @property
    def key(self) -> tuple[int, int]:
        return self.repeat, self.fold


def _take_fold(plan: _Plan, store: FoldStore | None, claims: bool, unit: _FoldUnit, seed: int, done: int
               ) -> Job[FoldRecord | None]:
    """Train and write one fold, unless another process holds its claim (then None). With ``claims``
    the fold is claimed first, read back if its file appeared meanwhile, and released either way."""
    path = store.claim_path(*unit.key) if claims else None
    if path is not None and store.claim(path) is not None:
        return None
    try:
        record = store.load(*unit.key) if path is not None else None  # finished while we looked
        if record is None:
            record = yield from _run_fold(plan, unit.repeat, unit.fold, unit.train, unit.test,
                                          repeat_seeds(seed, unit.repeat, unit.fold)[1], done, unit.label)
            if store is not None:
                store.save(record)
        return record
    finally:
        if path is not None:
            store.release(path)


def _collect(records: dict[tuple[int, int], FoldRecord], units: Sequence[_FoldUnit]) -> CVResult:
    """The results of the finished folds in the run's fold order, whichever process trained them
    (so the tables do not depend on how the folds were shared out)."""
    result = CVResult(n_folds=len({u.fold for u in units}), repeats=len({u.repeat for u in units}))
    for unit in units:
        result.folds.append((unit.train, unit.test))
        if unit.key in records:
            _add_record(result, records[unit.key])
    return result


def cv_job(cohort: Cohort, bags: Bags, cfg: MSRLConfig, *, tasks: Sequence[str], variants: Sequence[str],
           n_folds: int = 5, repeats: int = 1, settings: TrainSettings = TrainSettings(), seed: int = 0,
           device: torch.device | str = "cpu", final: bool = True, out_dir: str | Path | None = None,
           ablation_tasks: Sequence[str] | None = None) -> Job[CVResult]:
    """K-fold cross-validation of ``variants`` on ``tasks``, ``repeats`` times (+ the final models
    when ``final``).

    A generator of Progress (its own "cross-validation" stage plus the stages of the training jobs);
    returns :class:`CVResult`.

    Args:
        ablation_tasks: the tasks on which the trained ablations of Table 3 (``ablation=True`` in
            :mod:`~msrl_model.train.variants`) run; None = every task.
        out_dir: where each finished fold is written and read back from on a restart (module
            docstring); None = nothing is written. A folder holding another run's folds is refused
            (:class:`~msrl_model.train.foldstore.ResumeMismatchError`) before any training. Under
            torchrun every process reads it and rank 0 writes. Several independent processes
            with the same ``out_dir`` share the folds out by claim files
            (:mod:`~msrl_model.train.foldstore`) and end with the same table; one of them builds
            the final models, the others return with ``final_by`` naming it.
    """
    device = torch.device(device)
    unknown = unknown_variants(variants)
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(available_variants())}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    store = None
    if out_dir is not None:
        identity = run_identity(cohort, cfg, settings, seed=seed, tasks=list(tasks), variants=list(variants),
                                n_folds=n_folds, ablation_tasks=ablation_tasks)
        store = FoldStore(out_dir, identity, write=distributed.is_main())
        store.begin()
    # the finished folds, read once before any training: every process skips the same ones
    finished = {(r, k): store.load(r, k) for r in range(repeats) for k in range(n_folds)} if store else {}
    # several processes on one --out split the folds by claim files (not under torchrun: there every
    # rank trains every fold together)
    claims = store is not None and store.write and distributed.world_size() == 1
    plan = _Plan(cohort, bags, cfg, tasks, variants, None if ablation_tasks is None else list(ablation_tasks),
                 settings, device,
                 units=repeats * n_folds * len(tasks) + (len(tasks) if final else 0))
    units: list[_FoldUnit] = []
    for repeat in range(repeats):
        split_seed, _ = repeat_seeds(seed, repeat, 0)
        for fold in stratified_folds(cohort, n_folds, seed=split_seed, stratify_by=("project", "event")):
            label = (f"repeat {repeat + 1}/{repeats} " if repeats > 1 else "") + f"fold {fold.index + 1}/{n_folds}"
            units.append(_FoldUnit(repeat, fold.index, fold.train, fold.test, label))
    records: dict[tuple[int, int], FoldRecord] = {}
    resumed = 0
    pending: list[_FoldUnit] = []
    for unit in units:
        record = finished.get(unit.key)
        if record is not None:
            resumed += 1
            message = f"{unit.label} read from an earlier run"
        else:
            record = yield from _take_fold(plan, store, claims, unit, seed, len(records) * len(tasks))
            if record is None:
                pending.append(unit)
                holder = claim_holder(store.claim_path(*unit.key)) or {}
                yield Progress(Stage.CROSS_VALIDATION, len(records) * len(tasks), plan.units,
                               f"{unit.label} is being trained by {describe_holder(holder)}")
                continue
            message = f"{unit.label} finished"
        records[unit.key] = record
        if store is not None:
            store.write_oof(_collect(records, units).oof, cohort)
        yield Progress(Stage.CROSS_VALIDATION, len(records) * len(tasks), plan.units, message)
    while pending:  # folds of other processes: read them when written, take them over when their process died
        for unit in list(pending):
            record = store.load(*unit.key)
            if record is None:  # its process may have died: then this one trains it
                record = yield from _take_fold(plan, store, claims, unit, seed, len(records) * len(tasks))
            if record is not None:
                records[unit.key] = record
                pending.remove(unit)
        if pending:
            waiting = ", ".join(f"{u.label} ({describe_holder(claim_holder(store.claim_path(*u.key)) or {})}, "
                                f"claim file {store.claim_path(*u.key)})" for u in pending)
            yield Progress(Stage.CROSS_VALIDATION, len(records) * len(tasks), plan.units, f"waiting for {waiting}")
            time.sleep(WAIT_SECONDS)
    if store is not None:
        store.write_oof(_collect(records, units).oof, cohort)
    result = _collect(records, units)
    result.resumed = resumed
    done = len(units) * len(tasks)
    if final and claims:
        holder = store.claim(store.claim_path())
        if holder is not None:  # another process of this run builds the final models and the bundle
            result.final_by = describe_holder(holder)
            return result
    if final:
        try:
            yield from _final_models(result, plan, seed, done)
        except BaseException:
            if claims:
                store.release(store.claim_path())
            raise
    return result


__all__ = ["CVResult", "FinalTask", "cv_job", "evaluate", "repeat_seeds"]
