"""Cross-validation: folds never mix cases, scalers / bins / pre-training see training cases only;
reports (CSV, Markdown table, Kaplan-Meier PNG, model card)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from msrl_model.cohort import ExpressionScaler, load_cohort
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train import cv as cv_mod
from msrl_model.train import data as data_mod
from msrl_model.train import report
from msrl_model.train.model_card import model_card
from msrl_model.train import variants as variants_mod
from msrl_model.train.data import load_bags

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=30, n_projects=2, patches=(8, 16), feature_dim=16, seed=9)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8,
                          group_sizes=tuple(len(g) for g in cohort.gene_groups))
    calls = {"fit": [], "bins": [], "pretrain": [], "predict": []}
    mp = pytest.MonkeyPatch()
    fit, bins, pre, pred = ExpressionScaler.fit, data_mod.survival_bins, cv_mod.pretrain_job, variants_mod.predict_job

    def spy_fit(self, x):
        calls["fit"].append(np.asarray(x).copy())
        return fit(self, x)

    def spy_bins(times, censorship, n_bins=4):
        calls["bins"].append(np.asarray(times).copy())
        return bins(times, censorship, n_bins)

    def spy_pretrain(cfg, bags, genomics, cases, **kw):
        calls["pretrain"].append(np.asarray(cases).copy())
        return pre(cfg, bags, genomics, cases, **kw)

    def spy_predict(result, bags, cases, genomics=None, **kw):
        calls["predict"].append((np.asarray(cases).copy(), result.buffer_cases.copy()))
        return pred(result, bags, cases, genomics, **kw)

    mp.setattr(ExpressionScaler, "fit", spy_fit)
    mp.setattr(data_mod, "survival_bins", spy_bins)
    mp.setattr(cv_mod, "pretrain_job", spy_pretrain)
    mp.setattr(variants_mod, "predict_job", spy_predict)
    try:
        result = drive(cv_mod.cv_job(cohort, bags, cfg, tasks=["survival", "stage"],
                                     variants=["msrl", "msrl_multi", "snn"], n_folds=3, seed=0), show=False)
    finally:
        mp.undo()
    return cohort, result, calls


def test_folds_partition_cases_without_mixing(spied_run):
    cohort, result, _ = spied_run
    assert len(result.folds) == 3
    tests = np.concatenate([te for _, te in result.folds])
    assert sorted(tests.tolist()) == list(range(cohort.n_cases))
    for train, test in result.folds:
        assert not set(train.tolist()) & set(test.tolist())
        assert len(train) + len(test) == cohort.n_cases


def test_scaler_bins_pretraining_and_buffer_use_training_cases_only(spied_run):
    cohort, result, calls = spied_run
    trains = [tr for tr, _ in result.folds] + [np.arange(cohort.n_cases)]  # folds, then the final model
    assert len(calls["fit"]) == len(trains)
    for x, train in zip(calls["fit"], trains):
        assert np.array_equal(x, cohort.expression[train])
    survival_bins_calls = [b for b in calls["bins"]]
    assert len(survival_bins_calls) == len(trains)
    for times, train in zip(survival_bins_calls, trains):
        assert np.array_equal(times, cohort.times[train])
    assert [c.tolist() for c in calls["pretrain"]] == [t.tolist() for t in trains]
    for (cases, buffer_cases), fold in zip(calls["predict"], [f for f in result.folds for _ in range(4)]):
        train, test = fold
        assert set(cases.tolist()) <= set(test.tolist())  # predictions only for test cases
        assert set(buffer_cases.tolist()) == set(train.tolist())  # the buffer holds training cases only


def test_metrics_rows_and_oof(spied_run):
    cohort, result, _ = spied_run
    methods = {r["method"] for r in result.rows}
    assert methods == {"msrl", "msrl_multi", "snn"}
    for r in result.rows:
        if r["metric"] == "c_index":
            assert r["task"] == "survival" and 0.0 <= r["value"] <= 1.0
    assert {r["metric"] for r in result.rows if r["task"] == "stage"} == {"auc", "f1"}
    oof = result.oof[("survival", "msrl")]
    assert sorted(oof["case"].tolist()) == list(range(cohort.n_cases))
    assert set(result.final) == {"survival", "stage"}
    assert result.final["survival"].result.buffer.shape[0] == cohort.n_cases


def test_reports(spied_run, tmp_path):
    cohort, result, _ = spied_run
    path = report.write_cv_csv(result, tmp_path / "cv_results.csv")
    rows = list(csv.DictReader(path.open()))
    assert rows and set(rows[0]) == {"method", "task", "repeat", "fold", "metric", "value"}
    assert len(rows) == len(result.rows) and {r["repeat"] for r in rows} == {"0"}
    table = report.cv_table_markdown(result, ["survival", "stage"], ["msrl", "msrl_multi", "snn"])
    lines = table.splitlines()
    assert lines[0] == "| Method | survival (C-index) | stage (AUC) | stage (F1) |"
    assert [ln.split("|")[1].strip() for ln in lines[2:5]] == ["MSRL", "MSRL_multi", "SNN (genomics)"]
    assert "±" in lines[2] and "**" in table and "†" not in table  # no significance given: no marks, no legend
    p = report.plot_km(result, cohort, "survival", "msrl", tmp_path / "km.png")
    assert 0.0 <= p <= 1.0
    assert (tmp_path / "km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = model_card(cohort=cohort, result=result, tasks=["survival", "stage"],
                             methods=["msrl", "snn"], encoder={"name": "x", "version": "1", "dim": 16},
                             config_text="d = 16", km_pvalues={"msrl": p})
    assert "Research use only" in card and "SYNTHETIC" in card and "| MSRL |" in card
    graph = report.graph_summary(result)  # MSRL's graph diagnostics, one entry per fold and task
    assert set(graph) == {"survival", "stage"} and graph["survival"]["self_share"]["n_folds"] == result.n_folds
    assert "### What the graph does" in card and "What was measured (survival):" in card
    assert "This cohort is SYNTHETIC and built so that part of the prognosis" in card  # the reason, for this cohort
    row = next(ln for ln in card.splitlines() if ln.startswith("| query's own share"))
    assert f"{graph['survival']['self_share']['mean']:.3f}" in row
    cal = report.survival_calibration(result, cohort, "survival")  # out-of-fold S(t): Brier against KM
    assert cal["folds"] >= 1 and 0 < cal["ibs"]["mean"] < 0.5 and 0 < cal["ibs_reference"]["mean"] < 0.5
    assert [g["group"] for g in cal["groups"]][:1] == ["low"] and all(0 <= g["predicted"] <= 1 for g in cal["groups"])
    assert "### Survival calibration on held-out folds (survival, MSRL)" in card
    assert f"Integrated Brier score {cal['ibs']['mean']:.4f}" in card


def test_risk_groups_split_per_fold():
    risk = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 200.0, 300.0, 400.0])
    fold = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert report.risk_groups(risk, fold).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


def test_significance_against_msrl_marks_and_files(spied_run, tmp_path):
    cohort, result, _ = spied_run
    tasks, methods = ["survival", "stage"], ["msrl", "msrl_multi", "snn"]
    sig = report.significance(result, cohort, tasks, methods, n_resamples=200, seed=0)
    assert [(r["method"], r["task"], r["metric"]) for r in sig] == [
        (m, t, metric) for t, metric in (("survival", "c_index"), ("stage", "auc"), ("stage", "f1"))
        for m in ("msrl_multi", "snn")]
    for r in sig:
        assert r["reference"] == "msrl" and r["n_pairs"] == 3
        folds = result.fold_values(r["task"], r["method"], r["metric"])
        ref = result.fold_values(r["task"], "msrl", r["metric"])
        assert r["mean_difference"] == pytest.approx(np.mean([folds[k] - ref[k] for k in folds]))
        if r["metric"] == "f1":
            assert r["p"] == r["fold_p"] and r["n_resamples"] == 0
        else:  # the bootstrap's observed difference is the CV table's: the same per-fold metrics
            assert r["boot_difference"] == pytest.approx(r["mean_difference"], abs=1e-9)
            assert r["boot_ci_low"] <= r["boot_ci_high"] and r["n_resamples"] == 200
            assert r["p"] == pytest.approx(np.max([r["fold_p"], r["boot_p"]]), nan_ok=True)
    forced = [dict(r, p=0.004 if r["method"] == "snn" and r["metric"] == "c_index" else 0.03 if r["method"] == "snn"
                   else 0.5) for r in sig]
    table = report.cv_table_markdown(result, tasks, methods, forced).splitlines()
    snn = next(ln for ln in table if ln.startswith("| SNN"))
    multi = next(ln for ln in table if ln.startswith("| MSRL_multi"))
    assert snn.split("|")[2].strip().endswith("‡") and snn.split("|")[3].strip().endswith("†")
    assert "†" not in multi and "‡" not in multi
    assert any(ln.startswith("† p < 0.05, ‡ p < 0.01") and "3 folds" in ln for ln in table)
    rows = list(csv.DictReader(report.write_significance_csv(sig, tmp_path / "sig.csv").open()))
    assert len(rows) == len(sig) and {"fold_p", "boot_p", "boot_ci_low", "boot_ci_high", "p"} <= set(rows[0])
    summary = json.loads(report.write_cv_summary_json(result, tasks, methods, sig, tmp_path / "s.json").read_text())
    assert len(summary["significance"]) == len(sig) and summary["n_folds"] == 3 and summary["repeats"] == 1
    assert all(s["boot_p"] is None for s in summary["significance"] if s["metric"] == "f1")  # strict JSON
