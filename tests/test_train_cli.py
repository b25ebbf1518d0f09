"""The training CLI: broken cohorts are reported in full without training; a small run writes
every output; ``msrl train`` registration; heavy: the tiny and demo presets."""

from __future__ import annotations

import argparse
import csv
import json
import os

import pandas as pd
import pytest
import torch

from msrl_model.nn.config import MSRLConfig
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train import cli

torch.set_num_threads(1)  # tiny models: threads only add contention on shared cores


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    make_synth_cohort(root, n_cases=24, n_projects=2, patches=(8, 16), feature_dim=16, seed=11)
    return root


def test_broken_cohort_lists_every_problem_and_trains_nothing(cohort_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in cohort_dir.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "clinical.csv").unlink()
    clinical = pd.read_csv(cohort_dir / "clinical.csv", dtype=str, keep_default_na=False)
    clinical.loc[1, "survival_months"] = "soon"
    clinical.loc[2, "censorship"] = "7"
    clinical = clinical.drop(columns=["project"])
    clinical.to_csv(broken / "clinical.csv", index=False)
    out = tmp_path / "out"
    code = cli.main(["--cohort", str(broken), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "project" in err and "soon" in err and "censorship" in err  # every problem listed at once
    assert not out.exists()  # nothing trained, nothing written


def test_small_run_writes_every_output(cohort_dir, tmp_path, capsys):
    from msrl_model.infer.bundle import load_bundle

    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    with config.open("a") as fh:
        fh.write("\n[train]\nencode_chunk = 24\n")
    out = tmp_path / "run"
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(out), "--folds", "2", "--tasks", "survival,stage",
                     "--variants", "msrl,abmil", "--config", str(config), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in ("cv_results.csv", "cv_table.md", "km_survival_msrl.png", "km_survival_abmil.png",
                 "model_card.md", "config.toml", "train.log", "bundle/manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "calibration_survival.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the calibration plot
    assert not (out / "calibration_stage.png").exists()  # survival only
    rows = list(csv.DictReader((out / "cv_results.csv").open()))
    assert {(r["method"], r["task"], r["metric"]) for r in rows} == {
        ("msrl", "survival", "c_index"), ("abmil", "survival", "c_index"),
        ("msrl", "stage", "auc"), ("msrl", "stage", "f1"), ("abmil", "stage", "auc"), ("abmil", "stage", "f1")}
    assert "| MSRL |" in (out / "cv_table.md").read_text()
    for name in ("cv_significance.csv", "cv_summary.json", "oof_predictions.csv", "folds/fold_0.json",
                 "folds/fold_1.json", "folds/run.json"):
        assert (out / name).is_file(), name
    config_text = (out / "config.toml").read_text()
    assert config_text.startswith("# scale: demo (auto: 24 cases on cpu") and f"--config {config}" in config_text
    assert "encode_chunk = 24" in config_text and "\nd = 16\n" in config_text  # --config over the scale
    assert "scale: demo (auto: 24 cases on cpu" in (out / "train.log").read_text()
    bundle = load_bundle(out / "bundle")
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["survival", "stage"]
    assert manifest["cohort"]["synthetic"] is True and bundle.synthetic
    assert manifest["tasks"][0]["n_buffer"] == 24
    assert "c_index" in manifest["tasks"][0]["metrics"]


def test_rerun_resumes_and_a_changed_run_is_refused(cohort_dir, tmp_path, capsys):
    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    out = tmp_path / "run"
    argv = ["--cohort", str(cohort_dir), "--out", str(out), "--folds", "2", "--tasks", "survival",
            "--variants", "msrl,no_graph,shuffled_buffer", "--config", str(config), "--device", "cpu", "--quiet",
            "--no-bundle"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    table = (out / "cv_table.md").read_text()
    assert "| No graph |" in table and "| Shuffled buffer |" in table and "† p < 0.05, ‡ p < 0.01" in table
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (out / "cv_table.md").read_text() == table  # every fold read back: the same table
    assert "fold 2/2 read from an earlier run" in (out / "train.log").read_text()
    config_before = (out / "config.toml").read_text()
    code = cli.main(argv + ["--seed", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "seed" in err and "new --out" in err and err.count("error:") == 1
    assert (out / "config.toml").read_text() == config_before  # refused before anything was rewritten


def test_cohort_scale_rule():
    from msrl_model.train.presets import cohort_scale

    assert cohort_scale("auto", 2000, "cpu").name == "demo"
    assert cohort_scale("auto", 100, "cuda").name == "demo"
    large = cohort_scale("auto", 600, "cuda")
    assert large.name == "large" and large.config.d == 256 and "600 cases on cuda" in large.reason
    demo = cohort_scale("auto", 300, "cpu")
    assert (demo.config.d, demo.config.finetune_lr, demo.config.readout_skip) == (128, 1e-3, True)
    assert demo.settings.pretrained_slide_encoder is False and demo.config.finetune_epochs == 10
    small = cohort_scale("demo", 40, "cpu").config  # 32 training cases: 2 steps an epoch
    assert small.finetune_epochs == 75 and small.finetune_epochs * 2 >= 150
    paper = cohort_scale("paper", 40, "cuda")
    assert paper.config == MSRLConfig.paper() and paper.settings.pretrained_slide_encoder is True


def test_scale_is_for_cohort_runs(tmp_path, capsys):
    code = cli.main(["--preset", "tiny", "--scale", "demo", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "--scale applies to --cohort runs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_variant_and_task_are_user_errors(cohort_dir, tmp_path, capsys):
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(tmp_path / "o"), "--variants", "msrl,nope",
                     "--quiet"])
    assert code == 2 and "nope" in capsys.readouterr().err
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(tmp_path / "o"), "--tasks", "grade", "--quiet"])
    assert code == 2 and "grade" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_register_adds_msrl_train():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--preset", "tiny", "--out", "x", "--folds", "3"])
    assert args.func is cli.run_train and args.preset == "tiny" and args.folds == 3


def test_tiny_preset_end_to_end_then_analyze_the_real_slide(tmp_path, cmu_slide):
    """What CI promises: ``--preset tiny`` writes every output, and its bundle analyses a real slide."""
    from msrl_model.cli import main as msrl

    out = tmp_path / "tiny"
    assert cli.main(["--preset", "tiny", "--out", str(out), "--quiet"]) == 0
    for name in ("bundle/manifest.json", "cv_results.csv", "cv_table.md", "km_survival_msrl.png", "model_card.md"):
        assert (out / name).is_file()
    assert "SYNTHETIC" in (out / "model_card.md").read_text()
    methods = {row["method"] for row in csv.DictReader((out / "cv_results.csv").open())}
    assert {"msrl", "msrl_multi", "abmil", "snn"} <= methods
    from msrl_model.infer.bundle import load_bundle

    thumbnails = load_bundle(out / "bundle").tasks["survival"].thumbnails
    assert thumbnails and all(t[:2] == b"\xff\xd8" for t in thumbnails)  # a JPEG per rendered case

    results = tmp_path / "results"
    assert msrl(["analyze", str(cmu_slide), "--bundle", str(out / "bundle"), "--out", str(results), "--quiet"]) == 0
    result = json.loads((results / "cmu_small_region.json").read_text())
    survival = result["tasks"]["survival"]
    assert 0.0 <= survival["survival"]["percentile"] <= 100.0
    assert survival["linked_cases"] and len(survival["attention"]) == len(result["coords"])
    assert result["synthetic_training_cohort"] is True


def test_demo_preset_trains_on_the_apps_features():
    from msrl_model.train.presets import preset

    demo = preset("demo")
    # rendered slides -> builtin-he features, the cohort of `msrl synth cohort --cases 300 --projects 3 --seed 0
    # --render-slides`; the bundle's encoder spec is then builtin-he
    assert demo.render_slides and demo.feature_dim is None and demo.slide_size == (2048, 1536)
    assert (demo.n_cases, demo.n_projects) == (300, 3) and demo.config.readout_skip


@pytest.mark.heavy
def test_demo_preset_ordering(tmp_path):
    """The paper's claim on the SYNTHETIC demo cohort: MSRL_multi >= MSRL > WSI-only ABMIL (C-index)."""
    out = tmp_path / "demo"
    assert cli.main(["--preset", "demo", "--out", str(out), "--quiet", "--tasks", "survival"]) == 0
    rows = list(csv.DictReader((out / "cv_results.csv").open()))

    def mean(method):
        vals = [float(r["value"]) for r in rows if r["method"] == method and r["metric"] == "c_index"]
        return sum(vals) / len(vals)

    assert mean("msrl_multi") >= mean("msrl") > mean("abmil"), (mean("msrl_multi"), mean("msrl"), mean("abmil"))
    assert os.path.isdir(out / "bundle")
