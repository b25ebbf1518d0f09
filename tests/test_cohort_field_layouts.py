"""Field layouts in and out (issue 9): a cohort whose features stay where TRIDENT or CLAM wrote them
(fp16 features, read in place, never copied) loads, validates and trains; our own h5 files carry
TRIDENT's attributes on ``coords``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from msrl_model.cohort import CohortValidationError, load_cohort
from msrl_model.features.h5io import FeatureFileError, read_features, write_features
from msrl_model.nn.config import MSRLConfig
from msrl_model.progress import drive
from msrl_model.synth.cohort import make_synth_cohort
from msrl_model.train import cli
from msrl_model.train.data import load_bags

torch.set_num_threads(1)

TRIDENT_SETTING = "20x_256px_0px_overlap"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("field") / "synth"
    make_synth_cohort(root, n_cases=24, n_projects=2, patches=(8, 16), feature_dim=16, seed=11)
    return root


def _tables(synth: Path, dest: Path, features: str | None = None) -> Path:
    """A cohort directory with the synthetic tables but no features/ (and ``features`` in its config)."""
    dest.mkdir(parents=True)
    for item in synth.iterdir():
        if item.is_file() and item.name != "cohort.json":
            shutil.copy(item, dest / item.name)
    config = json.loads((synth / "cohort.json").read_text())
    if features is not None:
        config["features"] = features
    (dest / "cohort.json").write_text(json.dumps(config))
    return dest


def _bags(synth: Path):
    for h5 in sorted((synth / "features").glob("*.h5")):
        yield h5.stem, read_features(h5)


def _write_clam(synth: Path, folder: Path, h5: bool, pt: bool) -> None:
    """CLAM's layout: h5_files/ (features float32, coords int32) and/or pt_files/ (an fp16 tensor N×D)."""
    for slide, ff in _bags(synth):
        if h5:
            (folder / "h5_files").mkdir(parents=True, exist_ok=True)
            with h5py.File(folder / "h5_files" / f"{slide}.h5", "w") as f:
                f.create_dataset("features", data=ff.features.astype(np.float32))
                c = f.create_dataset("coords", data=ff.coords.astype(np.int32))
                c.attrs.update({"patch_size": 256, "patch_level": 0, "downsample": np.array([1.0, 1.0])})
        if pt:
            (folder / "pt_files").mkdir(parents=True, exist_ok=True)
            torch.save(torch.from_numpy(ff.features).half(), folder / "pt_files" / f"{slide}.pt")


def _assert_same_bags(cohort, synth: Path, coords: bool = True) -> None:
    bags = drive(load_bags(cohort), show=False)
    ref = drive(load_bags(load_cohort(synth, require_features=True)), show=False)
    assert len(bags) == len(ref) == 24
    for i in range(24):
        (got, got_pos), (want, want_pos) = bags.read(i), ref.read(i)
        np.testing.assert_allclose(got.float().numpy(), want.numpy(), rtol=2e-3, atol=2e-3)  # fp16 rounding
        if coords:
            assert torch.equal(got_pos, want_pos)


def _train(cohort_dir: Path, out: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "small.toml"
    MSRLConfig.tiny(max_patches_train=12, pretrain_epochs=1, finetune_epochs=1, batch_size=8).to_toml(config)
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(out), "--folds", "2", "--tasks", "survival",
                     "--variants", "msrl", "--config", str(config), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "bundle" / "manifest.json").is_file() and (out / "cv_results.csv").is_file()


def test_trident_job_dir_named_in_config_loads_in_place_and_trains(synth, tmp_path, capsys, write_trident):
    job = tmp_path / "trident_job"
    write_trident(_bags(synth), job / TRIDENT_SETTING / "features_synthetic")
    (job / TRIDENT_SETTING / "patches").mkdir()  # TRIDENT's other folders are ignored
    cohort_dir = _tables(synth, tmp_path / "cohort", features=str(job))  # absolute path
    cohort = load_cohort(cohort_dir, tasks=["survival"], require_features=True)
    folder = job / TRIDENT_SETTING / "features_synthetic"
    assert all(p is not None and p.parent == folder for p in cohort.feature_paths.values())  # not copied
    assert not (cohort_dir / "features").exists()
    assert any("trident" in n for n in cohort.notes)
    _assert_same_bags(cohort, synth)
    _train(cohort_dir, tmp_path / "run", tmp_path, capsys)


def test_trident_features_folder_relative_and_auto_detected(synth, tmp_path, write_trident):
    cohort_dir = _tables(synth, tmp_path / "rel", features=f"{TRIDENT_SETTING}/features_synthetic")
    write_trident(_bags(synth), cohort_dir / TRIDENT_SETTING / "features_synthetic")
    assert all(p.suffix == ".h5" for p in load_cohort(cohort_dir).feature_paths.values())
    auto = _tables(synth, tmp_path / "auto")  # no features entry, no features/: the job tree in the dir
    write_trident(_bags(synth), auto / TRIDENT_SETTING / "features_synthetic")
    cohort = load_cohort(auto, require_features=True)
    assert all(p.parent.name == "features_synthetic" for p in cohort.feature_paths.values())
    _assert_same_bags(cohort, synth)


def test_trident_job_dir_with_several_feature_folders_is_refused_with_the_list(synth, tmp_path, write_trident):
    cohort_dir = _tables(synth, tmp_path / "many")
    write_trident(_bags(synth), cohort_dir / TRIDENT_SETTING / "features_a")
    write_trident(_bags(synth), cohort_dir / "40x_256px_0px_overlap" / "features_a")
    with pytest.raises(CohortValidationError) as err:
        load_cohort(cohort_dir)
    text = str(err.value)
    assert f"{TRIDENT_SETTING}/features_a" in text and "40x_256px_0px_overlap/features_a" in text
    assert '"features"' in text and "neither" not in text


def test_clam_h5_files_train(synth, tmp_path, capsys):
    clam = tmp_path / "clam"
    _write_clam(synth, clam, h5=True, pt=True)
    cohort_dir = _tables(synth, tmp_path / "cohort", features="../clam")
    cohort = load_cohort(cohort_dir, tasks=["survival"], require_features=True)
    assert all(p.parent == clam / "h5_files" for p in cohort.feature_paths.values())  # h5 (coords) first
    _assert_same_bags(cohort, synth)
    _train(cohort_dir, tmp_path / "run", tmp_path, capsys)


def test_clam_pt_files_train_without_coords(synth, tmp_path, capsys):
    cohort_dir = _tables(synth, tmp_path / "cohort")
    _write_clam(synth, cohort_dir, h5=False, pt=True)  # auto-detected pt_files/ in the cohort dir
    cohort = load_cohort(cohort_dir, tasks=["survival"], require_features=True)
    assert all(p.suffix == ".pt" and p.parent.name == "pt_files" for p in cohort.feature_paths.values())
    ff = read_features(next(iter(cohort.feature_paths.values())))
    assert ff.attrs["coords_synthetic"] is True and ff.features.dtype == np.float32
    _assert_same_bags(cohort, synth, coords=False)
    _train(cohort_dir, tmp_path / "run", tmp_path, capsys)


class _NotATensor:
    pass


def test_pt_files_are_read_weights_only_and_bad_ones_are_listed(synth, tmp_path):
    cohort_dir = _tables(synth, tmp_path / "cohort")
    _write_clam(synth, cohort_dir, h5=False, pt=True)
    pts = sorted((cohort_dir / "pt_files").glob("*.pt"))
    torch.save({"features": _NotATensor()}, pts[0])  # needs an unrestricted pickle: refused
    torch.save(torch.full((3, 16), float("nan")), pts[1])
    with pytest.raises(FeatureFileError, match="weights_only"):
        read_features(pts[0])
    bf16 = tmp_path / "bf16.pt"
    torch.save(torch.ones(5, 16, dtype=torch.bfloat16), bf16)  # bf16 tensors are read as float32
    assert read_features(bf16).features.dtype == np.float32 and read_features(bf16).features.shape == (5, 16)
    with pytest.raises(CohortValidationError) as err:
        load_cohort(cohort_dir)
    text = str(err.value)
    assert pts[0].name in text and "weights_only" in text
    assert pts[1].name in text and "non-finite" in text


def test_missing_features_folder_in_config_is_a_problem(synth, tmp_path):
    cohort_dir = _tables(synth, tmp_path / "cohort", features="nowhere")
    with pytest.raises(CohortValidationError, match="nowhere"):
        load_cohort(cohort_dir)


def test_written_h5_carries_trident_attributes_on_coords(tmp_path):
    feats = np.ones((3, 4), np.float32)
    coords = np.array([[0, 0], [512, 0], [0, 512]])
    path = write_features(tmp_path / "s.h5", feats, coords, {
        "patch_size": 256, "patch_size_level0": 512, "target_mpp": 0.5, "level0_mpp": 0.25,
        "encoder": "builtin-he"})
    with h5py.File(path) as f:
        c = dict(f["coords"].attrs)
        root = dict(f.attrs)
    assert c == {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                 "target_magnification": 20, "overlap": 0}
    assert root["target_mpp"] == 0.5 and root["level0_mpp"] == 0.25 and root["patch_size_level0"] == 512
    # TRIDENT's own rule reproduces the level-0 patch size from them
    assert c["patch_size"] * c["level0_magnification"] // c["target_magnification"] == c["patch_size_level0"]
    attrs = read_features(path).attrs  # our reader still reads the root attributes
    assert attrs["target_mpp"] == 0.5 and attrs["level0_mpp"] == 0.25
    odd = write_features(tmp_path / "odd.h5", feats, coords, {"target_mpp": 0.499, "level0_mpp": 0.2527})
    with h5py.File(odd) as f:
        assert f["coords"].attrs["target_magnification"] == 20
        assert f["coords"].attrs["level0_magnification"] == pytest.approx(39.57)
