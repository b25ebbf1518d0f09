"""Per-fold results on disk and the resume of an interrupted cross-validation (train/foldstore.py):
fold files and oof_predictions.csv as each fold ends, a rerun that skips the finished folds and ends
with the table of an uninterrupted run, other settings refused, repeats added to a finished run,
several processes sharing one folder's folds by claim files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from msrl_model.cohort import load_cohort, stratified_folds
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train import cv as cv_mod
from msrl_model.train import report
from msrl_model.train.data import load_bags
from msrl_model.train.graphcheck import DIAGNOSTICS
from msrl_model.train.foldstore import FoldStore, ResumeMismatchError, oof_csv

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores

TASKS = ["survival", "stage"]
VARIANTS = ["msrl", "no_graph", "shuffled_buffer", "abmil"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=30, n_projects=2, patches=(8, 16), feature_dim=16, seed=13)
    cohort = load_cohort(root)
    bags = drive(load_bags(cohort), show=False)
    cfg = MSRLConfig.tiny(patch_dim=16, max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8,
                          group_sizes=tuple(len(g) for g in cohort.gene_groups))
    return cohort, bags, cfg


def _job(setup, out, **kw):
    cohort, bags, cfg = setup
    options = dict(tasks=TASKS, variants=VARIANTS, n_folds=3, seed=0, final=False, out_dir=out)
    return cv_mod.cv_job(cohort, bags, cfg, **{**options, **kw})


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, drive(_job(setup, out), show=False)


def _count_pretraining(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = cv_mod.pretrain_job

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(cv_mod, "pretrain_job", counting)
    return calls


def test_each_fold_is_written_as_it_ends(setup, uninterrupted):
    cohort, _, cfg = setup
    out, result = uninterrupted
    for k in range(3):
        data = json.loads((out / "folds" / f"fold_{k}.json").read_text())
        assert (data["repeat"], data["fold"]) == (0, k)
        assert set(data["seconds"]) == {"pretrain", "finetune", "predict", "total"}
        assert data["seconds"]["total"] >= data["seconds"]["pretrain"] + data["seconds"]["finetune"] > 0
        assert data["epochs"] == {"pretrain": cfg.pretrain_epochs, "finetune": cfg.finetune_epochs}
        assert data["rows"] == [r for r in result.rows if r["fold"] == k]
        assert list(data["graph"]) == TASKS and set(data["graph"]["survival"]) == set(DIAGNOSTICS)
        edges = data["bin_edges"]["survival"]  # the fold's own bins, and each test case's S_j at their ends
        assert list(data["bin_edges"]) == ["survival"] and edges[0] == 0 and edges[-1] == float("inf")
        surv = np.asarray(data["predictions"]["survival"]["msrl"]["survival"])
        assert surv.shape == (data["n_test"], len(edges) - 1) and (np.diff(surv, axis=1) <= 0).all()
        np.testing.assert_allclose(-surv.sum(1), data["predictions"]["survival"]["msrl"]["risk"], rtol=1e-6)
    rows = list(csv.DictReader((out / "oof_predictions.csv").open()))
    classes = cohort.labels["stage"]
    assert list(rows[0]) == ["case", "fold", "repeat", "method", "task", "risk"] + [f"prob_{c}" for c in classes]
    survival = [r for r in rows if r["task"] == "survival" and r["method"] == "msrl"]
    assert sorted(r["case"] for r in survival) == sorted(cohort.case_ids)  # every case once, out of fold
    oof = result.oof[("survival", "msrl")]
    by_case = {r["case"]: r for r in survival}
    for case, fold, risk in zip(oof["case"], oof["fold"], oof["risk"]):
        assert int(by_case[cohort.case_ids[case]]["fold"]) == fold
        assert float(by_case[cohort.case_ids[case]]["risk"]) == risk  # every digit
    stage = [r for r in rows if r["task"] == "stage"]
    assert all(r["risk"] == "" and abs(sum(float(r[f"prob_{c}"]) for c in classes) - 1) < 1e-5 for r in stage)


def test_interrupted_run_resumes_after_the_last_finished_fold(setup, uninterrupted, tmp_path, monkeypatch):
    out_full, full = uninterrupted
    out = tmp_path / "run"
    job = _job(setup, out)
    for event in job:  # stop as soon as the first fold is finished, like a killed run
        if event.message == "fold 1/3 finished":
            break
    job.close()
    assert (out / "folds" / "fold_0.json").is_file() and not (out / "folds" / "fold_1.json").exists()
    assert {r["fold"] for r in csv.DictReader((out / "oof_predictions.csv").open())} == {"0"}

    pretrained = _count_pretraining(monkeypatch)
    messages = []
    resumed = drive(_job(setup, out), show=False, on_event=lambda e: messages.append(e.message))
    assert len(pretrained) == 2 and resumed.resumed == 1  # fold 0 read back, folds 1 and 2 trained
    assert "fold 1/3 read from an earlier run" in messages
    assert resumed.rows == full.rows  # the same numbers, in the same order
    assert json.dumps(resumed.graph) == json.dumps(full.graph)  # graph diagnostics read back (NaN too)
    assert resumed.oof.keys() == full.oof.keys()
    for key, entry in full.oof.items():
        for name, values in entry.items():
            np.testing.assert_array_equal(resumed.oof[key][name], values, err_msg=f"{key} {name}")
    assert (report.cv_table_markdown(resumed, TASKS, VARIANTS)
            == report.cv_table_markdown(full, TASKS, VARIANTS))
    assert (out / "oof_predictions.csv").read_text() == (out_full / "oof_predictions.csv").read_text()


def test_other_settings_in_the_same_out_are_refused(setup, uninterrupted):
    out, _ = uninterrupted
    before = (out / "folds" / "fold_0.json").read_text()
    with pytest.raises(ResumeMismatchError, match=r"seed.*new --out"):
        drive(_job(setup, out, seed=1), show=False)
    cohort, bags, cfg = setup
    with pytest.raises(ResumeMismatchError, match=r"config \(finetune_epochs\), variants"):
        drive(cv_mod.cv_job(cohort, bags, cfg.__class__.from_dict({**cfg.to_dict(), "finetune_epochs": 2}),
                            tasks=TASKS, variants=VARIANTS[:2], n_folds=3, final=False, out_dir=out), show=False)
    assert (out / "folds" / "fold_0.json").read_text() == before  # nothing touched


def test_repeats_extend_a_finished_run_with_new_fold_seeds(setup, uninterrupted, monkeypatch):
    cohort, _, _ = setup
    out, full = uninterrupted
    pretrained = _count_pretraining(monkeypatch)
    result = drive(_job(setup, out, repeats=2), show=False)
    assert len(pretrained) == 3 and result.resumed == 3  # only repeat 1 was trained
    assert [r for r in result.rows if r["repeat"] == 0] == full.rows
    assert {r["repeat"] for r in result.rows} == {0, 1} and result.repeats == 2 and len(result.folds) == 6
    first = [te.tolist() for _, te in result.folds[:3]]
    assert first == [f.test.tolist() for f in stratified_folds(cohort, 3, seed=0, stratify_by=("project", "event"))]
    assert first != [te.tolist() for _, te in result.folds[3:]]  # another split
    assert (out / "folds" / "repeat_1" / "fold_2.json").is_file()
    oof = result.oof[("survival", "msrl")]
    assert np.bincount(oof["case"]).tolist() == [2] * cohort.n_cases  # each case once per repeat
    sig = report.significance(result, cohort, TASKS, VARIANTS, n_resamples=100)
    assert {r["n_pairs"] for r in sig if r["metric"] == "c_index"} == {6}  # 3 folds x 2 repeats
    assert "3 cross-validation folds × 2 repeats" in report.cv_table_markdown(result, TASKS, VARIANTS, sig)


# several processes, one --out: folds shared out by claim files ---------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_claim(path, pid: int, host: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": 0.0}))


def test_a_claim_is_held_once_and_taken_over_only_from_a_dead_process_of_this_host(tmp_path):
    store = FoldStore(tmp_path, {"seed": 0})
    path = store.claim_path(0, 1)
    assert path.name == "fold_1.json.claim" and store.claim_path(2, 0).parent.name == "repeat_2"
    assert store.claim(path) is None  # taken
    assert store.claim(path)["pid"] == os.getpid()  # a second claim, even by the holder, is refused
    store.release(path)
    assert not path.exists()

    _write_claim(path, os.getppid())  # a live process of this host
    assert store.claim(path)["pid"] == os.getppid()
    store.release(path)  # not ours: left alone
    assert path.exists()

    _write_claim(path, _dead_pid(), host="another-node")  # maybe alive there: never taken over
    assert store.claim(path)["host"] == "another-node"

    _write_claim(path, _dead_pid())  # died here: taken over
    assert store.claim(path) is None and json.loads(path.read_text())["pid"] == os.getpid()


def test_folds_claimed_by_another_process_are_read_when_written_and_the_table_is_unchanged(
        setup, uninterrupted, tmp_path, monkeypatch):
    """Fold 2 is held by a live process that writes it while this one trains fold 3; fold 3's
    claim is stale (its process died) and is taken over; the final models' claim is held too."""
    out_full, full = uninterrupted
    out = tmp_path / "shared"
    store = FoldStore(out, {})
    _write_claim(store.claim_path(0, 1), os.getppid())
    _write_claim(store.claim_path(0, 2), _dead_pid())
    _write_claim(store.claim_path(), os.getppid())
    original = cv_mod._run_fold

    def run_fold(plan, repeat, fold, *args):
        record = yield from original(plan, repeat, fold, *args)
        if fold == 2:  # meanwhile the other process finishes fold 1 and drops its claim
            shutil.copy(out_full / "folds" / "fold_1.json", out / "folds" / "fold_1.json")
            store.claim_path(0, 1).unlink()
        return record

    monkeypatch.setattr(cv_mod, "_run_fold", run_fold)
    pretrained = _count_pretraining(monkeypatch)
    messages = []
    result = drive(_job(setup, out, final=True), show=False, on_event=lambda e: messages.append(e.message))
    assert len(pretrained) == 2  # folds 0 and 2 here; fold 1 read; no final models (claimed elsewhere)
    assert any(m.startswith(f"fold 2/3 is being trained by process {os.getppid()}") for m in messages)
    assert result.final == {} and result.final_by.startswith(f"process {os.getppid()} on {socket.gethostname()}")
    assert result.rows == full.rows
    assert (out / "oof_predictions.csv").read_text() == oof_csv(full.oof, setup[0])
    assert sorted(p.name for p in (out / "folds").glob("*.claim")) == ["final.claim"]  # fold claims released


def test_trained_ablations_can_be_limited_to_some_tasks(setup, tmp_path):
    result = drive(_job(setup, tmp_path / "ablations", variants=["msrl", "knn_cos", "no_graph"],
                        ablation_tasks=["survival"], n_folds=2), show=False)
    by_task = {t: {r["method"] for r in result.rows if r["task"] == t} for t in TASKS}
    assert by_task == {"survival": {"msrl", "knn_cos", "no_graph"}, "stage": {"msrl", "no_graph"}}
    table = report.cv_table_markdown(result, TASKS, ["msrl", "knn_cos", "no_graph"]).splitlines()
    knn = next(ln for ln in table if ln.startswith("| KNN-cosine"))
    assert knn.split("|")[2].strip() != "–" and knn.split("|")[3].strip() == "–"  # survival only
    run = json.loads((tmp_path / "ablations" / "folds" / "run.json").read_text())
    assert run["identity"]["ablation_tasks"] == ["survival"]
