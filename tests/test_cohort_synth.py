"""Synthetic cohorts: determinism, the intended signal split between morphology and genomics, the
CLI, and (heavy tier) rendered slides."""

from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_predict

from msrl_model.cohort import load_cohort
from msrl_model.errors import MSRLError
from msrl_model.stats import c_index
from msrl_model.synth.cohort import make_synth_cohort, run_cohort_command

ALPHAS = np.logspace(-2, 4, 13)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "syn200"
    make_synth_cohort(root, n_cases=200, n_projects=3, seed=5, feature_dim=48, patches=(64, 160))
    return root, load_cohort(root), pd.read_csv(root / "synthetic_latents.csv")


def _pooled_features(root, cohort) -> np.ndarray:
    """(cases, 2·D) mean and std of the first slide's patch features."""
    rows = []
    for case in cohort.case_ids:
        with h5py.File(cohort.feature_paths[cohort.slides[case][0]], "r") as f:
            x = f["features"][:]
            assert f["coords"].shape == (len(x), 2) and f["coords"].dtype == np.int64
        rows.append(np.r_[x.mean(0), x.std(0)])
    return np.array(rows)


def _cv_r2(x: np.ndarray, y: np.ndarray) -> float:
    pred = cross_val_predict(RidgeCV(alphas=ALPHAS), x, y, cv=5)
    return r2_score(y, pred)


def test_signal_split_between_morphology_and_genomics(big):
    root, cohort, latents = big
    assert latents["case_id"].tolist() == cohort.case_ids
    times, cens = cohort.times, cohort.censorship
    assert 0.3 <= cens.mean() <= 0.5
    # both the visible and the genomics-only factor are prognostic
    assert c_index(latents["aggressiveness"], times, cens) > 0.65
    assert c_index(latents["genomic"], times, cens) > 0.6
    assert c_index(latents["hypoxia"], times, cens) > 0.6
    assert c_index(latents["log_hazard"], times, cens) > 0.72
    assert 0.4 < c_index(latents["nuisance1"], times, cens) < 0.6
    # slides show aggressiveness plainly, hypoxia (clear-cell foci) faintly, the genomic factor not at all
    feats = _pooled_features(root, cohort)
    r2_aggressiveness = _cv_r2(feats, latents["aggressiveness"].to_numpy())
    r2_hypoxia = _cv_r2(feats, latents["hypoxia"].to_numpy())
    assert r2_aggressiveness > 0.3
    assert 0.05 < r2_hypoxia < r2_aggressiveness
    assert _cv_r2(feats, latents["genomic"].to_numpy()) < 0.1
    # expression measures all three, hypoxia far better than the slides do
    for latent in ("genomic", "aggressiveness", "hypoxia"):
        assert _cv_r2(cohort.expression, latents[latent].to_numpy()) > 0.5
    assert _cv_r2(cohort.expression, latents["hypoxia"].to_numpy()) > r2_hypoxia + 0.2
    # labels follow their latents: stage rises with aggressiveness, TP53 with the genomic factor
    stage = cohort.label_codes("stage")
    assert np.corrcoef(stage, latents["aggressiveness"])[0, 1] > 0.4
    tp53 = cohort.label_codes("TP53_mut")
    assert latents["genomic"][tp53 == 1].mean() - latents["genomic"][tp53 == 0].mean() > 0.8


def test_patch_bags_and_coords(big):
    root, cohort, _ = big
    sizes = []
    for path in list(cohort.feature_paths.values())[:20]:
        with h5py.File(path, "r") as f:
            x, xy = f["features"][:], f["coords"][:]
            assert x.dtype == np.float32 and x.shape[1] == 48
            assert f.attrs["encoder"] == "synthetic-bag"
        assert np.all(xy % 256 == 0) and len(np.unique(xy, axis=0)) == len(xy)  # a grid, no repeats
        sizes.append(len(x))
    assert 64 <= min(sizes) and max(sizes) <= 160


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(n_cases=12, n_projects=2, feature_dim=8, patches=(8, 16))
    a = make_synth_cohort(tmp_path / "a", seed=1, **kwargs).root
    b = make_synth_cohort(tmp_path / "b", seed=1, **kwargs).root
    c = make_synth_cohort(tmp_path / "c", seed=2, **kwargs).root
    for name in ("clinical.csv", "expression.csv", "hallmark_synthetic.gmt", "synthetic_latents.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "clinical.csv").read_bytes() != (c / "clinical.csv").read_bytes()
    with h5py.File(a / "features" / "SYN-0003-DX1.h5") as fa, \
            h5py.File(b / "features" / "SYN-0003-DX1.h5") as fb:
        np.testing.assert_array_equal(fa["features"][:], fb["features"][:])
    # regenerating into a synthetic cohort directory replaces it
    make_synth_cohort(a, seed=2, **kwargs)
    assert (a / "clinical.csv").read_bytes() == (c / "clinical.csv").read_bytes()


def test_refuses_a_non_synthetic_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(MSRLError, match="not empty"):
        make_synth_cohort(tmp_path, n_cases=5, n_projects=1, feature_dim=4)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(MSRLError, match="projects"):
        make_synth_cohort(tmp_path / "x", n_cases=2, n_projects=3, feature_dim=4)


def test_cli_command_writes_a_loadable_cohort(tmp_path, capsys):
    args = argparse.Namespace(out=str(tmp_path / "cli"), cases=15, projects=2, seed=4,
                              render_slides=False)
    assert run_cohort_command(args) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC cohort: 15 cases" in out
    cohort = load_cohort(tmp_path / "cli")
    assert cohort.n_cases == 15 and len(cohort.projects) == 2 and cohort.config.synthetic


def test_render_mode_without_the_pipeline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "msrl_model.features.pipeline", None)  # import fails
    with pytest.raises(MSRLError, match="without --render-slides"):
        make_synth_cohort(tmp_path / "r", n_cases=2, n_projects=1, render_slides=True)


@pytest.mark.heavy
def test_render_slides_mode(tmp_path):
    result = make_synth_cohort(tmp_path / "render", n_cases=3, n_projects=2, seed=0,
                               render_slides=True, slide_size=(768, 512))
    cohort = load_cohort(result.root)
    for slide_id, path in cohort.slide_paths.items():
        assert path is not None and path.suffix == ".svs"
        with h5py.File(cohort.feature_paths[slide_id], "r") as f:
            assert f["features"].shape[1] == result.feature_dim and len(f["features"]) > 0
            assert f.attrs["encoder"] == "builtin-he"
