"""Bundles remember how their features were made (issue 9): the manifest records the training
features' tiling, tissue parameters and encoder; ``msrl analyze`` and the app extract a new slide
with exactly that tiling; a feature file made otherwise is refused, saying what differs; a cohort
whose feature files disagree is refused at load, listing the files per tiling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from msrl_model.encoders import build_encoder
from msrl_model.cohort.format import CohortValidationError
from msrl_model.errors import BundleError
from msrl_model.features.h5io import read_features
from msrl_model.infer.random_bundle import make_random_bundle
from msrl_model.infer.results import PredictionResult
from msrl_model.slide import TilingParams, TissueParams

torch.set_num_threads(1)

COARSE = TilingParams(patch_size=256, target_mpp=0.5)  # 20x: 256 level-0 px on the 0.5 µm/px slide
FINE = TilingParams(patch_size=224, target_mpp=0.25)  # 40x: 112 level-0 px (upsampled) on that slide


def _run_analyze(argv: list[str]) -> int:
    from msrl_model.infer.cli import register

    parser = argparse.ArgumentParser(prog="msrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.func(args)


def _finish(job):
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    enc = build_encoder("builtin-he")
    root = tmp_path_factory.mktemp("bundles")
    encoder = {"name": enc.name, "version": enc.version, "dim": enc.dim}
    return {name: make_random_bundle(root / name, patch_dim=enc.dim, n_cases=12, seed=3, thumbnails=False,
                                     encoder=encoder, tiling=tiling, tissue=TissueParams())
            for name, tiling in (("coarse", COARSE), ("fine", FINE))}


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from msrl_model.synth.slides import make_slide

    return make_slide(tmp_path_factory.mktemp("slide") / "new_slide.svs", 2048, 1536, seed=1)


def _assert_tiling(result: PredictionResult, h5: Path, tiling: TilingParams) -> None:
    psl0 = round(tiling.patch_size * tiling.target_mpp / 0.5)  # the synthetic slide is 0.5 µm/px
    assert result.patch_size_level0 == psl0
    coords = np.asarray(result.coords)
    assert (coords % psl0 == 0).all()
    assert {int(d) for d in np.diff(np.unique(coords[:, 0]))} == {psl0}  # neighbouring patches psl0 apart
    attrs = read_features(h5, load_features=False).attrs
    assert attrs["patch_size"] == tiling.patch_size and attrs["target_mpp"] == pytest.approx(tiling.target_mpp)
    assert attrs["patch_size_level0"] == psl0 and attrs["tiling_params"] == tiling.to_dict()
    assert attrs["tissue_params"] == TissueParams().to_dict()


def test_random_bundle_records_the_given_tiling(bundles):
    from msrl_model.infer.bundle import load_bundle

    for name, tiling in (("coarse", COARSE), ("fine", FINE)):
        manifest = json.loads((bundles[name] / "manifest.json").read_text())
        assert manifest["tiling"] == tiling.to_dict() and manifest["tissue"] == TissueParams().to_dict()
        assert load_bundle(bundles[name]).tiling == tiling.to_dict()


def test_analyze_extracts_with_each_bundles_tiling(bundles, slide, tmp_path, capsys):
    cache = tmp_path / "cache"  # one cache for both: a file made at the other tiling is made again
    for i, (name, tiling) in enumerate((("coarse", COARSE), ("fine", FINE), ("coarse", COARSE))):
        out = tmp_path / f"out-{i}-{name}"
        assert _run_analyze([str(slide), "--bundle", str(bundles[name]), "--out", str(out), "--cache", str(cache),
                             "--device", "cpu", "--workers", "2", "--quiet"]) == 0, capsys.readouterr().err
        result = PredictionResult.from_json((out / "new_slide.json").read_text())
        _assert_tiling(result, cache / "new_slide.h5", tiling)
        assert all(len(t.attention) == len(result.coords) for t in result.tasks.values())


def test_app_analysis_extracts_with_the_bundles_tiling(bundles, slide, tmp_path):
    from msrl_app.analysis import AnalysisRequest, PredictorCache, analysis_job

    predictors = PredictorCache()
    for name, tiling in (("fine", FINE), ("coarse", COARSE)):
        cache = tmp_path / name
        outcome = _finish(analysis_job(AnalysisRequest(slide=slide, bundle=bundles[name], device="cpu", cache=cache),
                                       predictors))
        _assert_tiling(outcome.result, cache / "new_slide.h5", tiling)


def test_feature_file_made_at_another_tiling_is_refused(bundles, slide, tmp_path):
    from msrl_model.infer.predictor import Predictor

    fine = Predictor.from_bundle(bundles["fine"], device="cpu")
    _finish(fine.predict_slide(slide, tmp_path / "fine", workers=2))
    h5 = tmp_path / "fine" / "new_slide.h5"
    assert fine.predict_features_file(h5).patch_size_level0 == 112  # its own tiling: accepted
    coarse = Predictor.from_bundle(bundles["coarse"], device="cpu")
    with pytest.raises(BundleError) as err:
        coarse.predict_features_file(h5)
    text = str(err.value)
    assert "\n" not in text
    assert f"{h5} was made at 224 px / 0.25 µm/px; this model needs 256 px / 0.5 µm/px — extract again" in text
    assert "msrl analyze" in text


def test_feature_file_without_resolution_only_warns(bundles, tmp_path):
    """A CLAM-style file names no µm/px: it cannot be checked, so the result says so."""
    from msrl_model.infer.predictor import Predictor

    dim = build_encoder("builtin-he").dim
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as f:
        f["features"] = np.random.default_rng(0).standard_normal((6, dim)).astype(np.float32)
        f["coords"] = np.arange(12, dtype=np.int64).reshape(6, 2) * 256
        f.attrs["encoder"], f.attrs["encoder_version"] = "builtin-he", "1.0"
    r = Predictor.from_bundle(bundles["coarse"], device="cpu").predict_features_file(path)
    assert any("does not record the resolution" in w and "256 px / 0.5 µm/px" in w for w in r.warnings)


# ---- export side -----------------------------------------------------------------------------------


def _retile(path: Path, tiling: TilingParams, tissue: TissueParams | None = None) -> None:
    """Make ``path`` look extracted at ``tiling`` (and ``tissue``), as this tool records it."""
    with h5py.File(path, "r+") as f:
        f.attrs["patch_size"], f.attrs["target_mpp"] = tiling.patch_size, tiling.target_mpp
        f.attrs["tiling_params"] = json.dumps(tiling.to_dict())
        if tissue is not None:
            f.attrs["tissue_params"] = json.dumps(tissue.to_dict())


@pytest.fixture()
def cohort_dir(tmp_path):
    from msrl_model.synth.cohort import make_synth_cohort

    root = tmp_path / "cohort"
    make_synth_cohort(root, n_cases=16, n_projects=2, patches=(6, 10), feature_dim=16, seed=4)
    return root


def test_cohort_with_two_tilings_is_refused_listing_the_files(cohort_dir, tmp_path, capsys):
    from msrl_model.cohort import load_cohort
    from msrl_model.train import cli

    files = sorted((cohort_dir / "features").glob("*.h5"))
    for path in files[:3]:
        _retile(path, FINE)
    with pytest.raises(CohortValidationError) as err:
        load_cohort(cohort_dir, require_features=True)
    (line,) = err.value.problems  # one problem: the tiling disagreement
    assert "256 px / 0.5 µm/px" in line and "224 px / 0.25 µm/px: 3 file(s)" in line
    assert all(f"features/{p.name}" in line for p in files[:3])
    out = tmp_path / "run"
    assert cli.main(["--cohort", str(cohort_dir), "--out", str(out), "--quiet"]) == 2
    assert "224 px / 0.25 µm/px" in capsys.readouterr().err
    assert not out.exists()  # refused before any training


def test_export_records_the_feature_files_tiling(cohort_dir, tmp_path, capsys):
    from msrl_model.cohort import load_cohort
    from msrl_model.infer.bundle import load_bundle
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.train import cli
    from msrl_model.train.export import feature_encoder, feature_tiling

    tissue = TissueParams(min_saturation=0.1, mask_mpp=4.0)
    made = TilingParams(patch_size=224, target_mpp=0.25, min_tissue_fraction=0.5)
    for path in (cohort_dir / "features").glob("*.h5"):
        _retile(path, made, tissue)
    cohort = load_cohort(cohort_dir, require_features=True)
    assert feature_tiling(cohort) == (made.to_dict(), tissue.to_dict())
    assert feature_encoder(cohort, 16)["name"] == "synthetic-bag"

    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=8, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    out = tmp_path / "run"
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(out), "--folds", "2", "--tasks", "survival",
                     "--variants", "msrl", "--config", str(config), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["tiling"] == made.to_dict() and manifest["tissue"] == tissue.to_dict()
    assert manifest["encoder"]["name"] == "synthetic-bag" and manifest["encoder"]["dim"] == 16
    assert manifest["features_made"] == {"tiling_from": "feature files", "tissue_from": "feature files",
                                         "encoder_from": "feature files", "files": 21}
    bundle = load_bundle(out / "bundle")
    assert bundle.tiling == made.to_dict() and bundle.tissue == tissue.to_dict()


def test_schema_checks_the_optional_features_made(bundles):
    from msrl_model.infer.bundle.schema import manifest_problem

    manifest = json.loads((bundles["coarse"] / "manifest.json").read_text())
    assert "features_made" not in manifest and manifest_problem(manifest) is None  # optional
    manifest["features_made"] = {"tiling_from": "feature files", "files": 3}
    assert manifest_problem(manifest) is None
    manifest["features_made"] = {"tiling_from": "guess"}
    assert "features_made.tiling_from" in manifest_problem(manifest)
    manifest["features_made"], manifest["tiling"] = {}, {"patch_size": 224, "target_mpp": 0.25, "stride": 1}
    assert "tiling" in manifest_problem(manifest)  # tiling holds TilingParams fields only


def test_disagreements_compare_what_the_files_record():
    from msrl_model.features.provenance import FeatureProvenance, common_provenance, disagreements

    ours = FeatureProvenance(256, 0.5, "builtin-he", "1.0", "builtin-he", 0.25, (("min_saturation", 0.08),))
    trident = FeatureProvenance(256, 0.5, "builtin-he", "1.0")  # no tissue parameters recorded
    clam = FeatureProvenance(512, 0.5, "unknown", "", tiling_recorded=False)  # no resolution, no encoder
    assert disagreements([("a", ours), ("b", trident), ("c", clam)]) == []
    assert common_provenance([("c", clam), ("b", trident), ("a", ours)]) == ours
    other = FeatureProvenance(256, 0.5, "builtin-he", "1.0", None, 0.25, (("min_saturation", 0.1),))
    (line,) = disagreements([("a", ours), ("b", trident), ("d", other)])
    assert "min_saturation 0.08: 1 file(s) (a)" in line and "min_saturation 0.1: 1 file(s) (d)" in line
    enc = FeatureProvenance(256, 0.5, "uni", "2")
    (line,) = disagreements([("a", ours), ("e", enc)])
    assert "encoder builtin-he 1.0: 1 file(s) (a)" in line and "encoder uni 2: 1 file(s) (e)" in line


# ---- end to end: `msrl extract --patch-size --mpp` → training → `msrl analyze` and the app ------------

PROVENANCE_ATTRS = ("patch_size", "target_mpp", "tiling_params", "tissue_params", "encoder", "encoder_version",
                    "encoder_spec")


def _extract(slide: Path, out: Path, tiling: TilingParams, capsys) -> Path:
    from msrl_model.cli import main

    code = main(["extract", str(slide), "--out", str(out), "--patch-size", str(tiling.patch_size),
                 "--mpp", str(tiling.target_mpp), "--device", "cpu", "--workers", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    return out / f"{slide.stem}.h5"


def _cohort_made_like(made: Path, root: Path) -> Path:
    """A small cohort whose feature files carry ``made``'s provenance (tiling, tissue, encoder): bags
    sampled at the builtin-he dimension, labelled as `msrl extract` labelled ``made``."""
    from msrl_model.synth.cohort import make_synth_cohort

    make_synth_cohort(root, n_cases=16, n_projects=2, patches=(6, 10), feature_dim=build_encoder("builtin-he").dim,
                      seed=4)
    with h5py.File(made, "r") as f:
        attrs = {k: f.attrs[k] for k in PROVENANCE_ATTRS}
    for path in (root / "features").glob("*.h5"):
        with h5py.File(path, "r+") as f:
            f.attrs.update(attrs)
    return root


@pytest.mark.parametrize("tiling", [COARSE, FINE], ids=["256px-0.5mpp", "224px-0.25mpp"])
def test_model_trained_on_features_of_a_tiling_reextracts_new_slides_with_it(tiling, slide, tmp_path, capsys):
    """Issue 9's done-when: a model trained on features made at 256 px / 0.5 µm/px and one trained at
    224 px / 0.25 µm/px each tile a new slide their own way in `msrl analyze` and in the app."""
    from msrl_app.analysis import AnalysisRequest, PredictorCache, analysis_job
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.synth.slides import make_slide
    from msrl_model.train import cli

    train_slide = make_slide(tmp_path / "train_slide.svs", 1024, 768, seed=2)
    made = _extract(train_slide, tmp_path / "extracted", tiling, capsys)
    assert read_features(made, load_features=False).attrs["tiling_params"] == tiling.to_dict()
    cohort = _cohort_made_like(made, tmp_path / "cohort")
    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=8, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    run = tmp_path / "run"
    assert cli.main(["--cohort", str(cohort), "--out", str(run), "--folds", "2", "--tasks", "survival",
                     "--variants", "msrl", "--config", str(config), "--device", "cpu", "--quiet"]) == 0, \
        capsys.readouterr().err
    bundle = run / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tiling"] == tiling.to_dict() and manifest["encoder"]["name"] == "builtin-he"

    out = tmp_path / "analyze"
    assert _run_analyze([str(slide), "--bundle", str(bundle), "--out", str(out), "--cache", str(out / "features"),
                         "--device", "cpu", "--workers", "2", "--quiet"]) == 0, capsys.readouterr().err
    _assert_tiling(PredictionResult.from_json((out / "new_slide.json").read_text()), out / "features" / "new_slide.h5",
                   tiling)

    app_cache = tmp_path / "app"
    outcome = _finish(analysis_job(AnalysisRequest(slide=slide, bundle=bundle, device="cpu", cache=app_cache),
                                   PredictorCache()))
    _assert_tiling(outcome.result, app_cache / "new_slide.h5", tiling)


@pytest.mark.parametrize("flags, says", [(["--mpp", "0"], "--mpp 0: give the target resolution in µm per pixel"),
                                         (["--patch-size", "2"], "--patch-size 2: give the patch side in pixels")])
def test_extract_refuses_a_bad_tiling_in_one_line(flags, says, slide, tmp_path, capsys):
    from msrl_model.cli import main

    assert main(["extract", str(slide), "--out", str(tmp_path / "f"), *flags, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err
    assert not (tmp_path / "f").exists()
