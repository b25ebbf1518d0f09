"""Cohort validation of feature files and requested tasks (issue 15, build item 5): every feature file
is opened and scanned, every problem of every file is listed in the one CohortValidationError with
the rest, the odd dimension is decided by the majority, non-finite features and a survival task
without events are refused up front, and ``python -m msrl_model.train`` on such a cohort fails in
seconds, trains nothing and writes nothing to ``--out``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from msrl_model.cohort import CohortValidationError, load_cohort
from msrl_model.cohort import featurefiles
from msrl_model.synth.cohort import make_synth_cohort


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validation") / "syn24"
    make_synth_cohort(root, n_cases=24, n_projects=2, patches=(8, 16), feature_dim=16, seed=11)
    return root


@pytest.fixture
def cohort_dir(base_dir, tmp_path) -> Path:
    """A fresh copy of the valid synthetic cohort, to break."""
    return Path(shutil.copytree(base_dir, tmp_path / "cohort"))


def _slides(root: Path) -> list[str]:
    return pd.read_csv(root / "clinical.csv", dtype=str)["slide_id"].tolist()


def _rewrite(path: Path, features: np.ndarray | None = None, coords: np.ndarray | None = None) -> None:
    with h5py.File(path, "w") as f:
        if features is not None:
            f["features"] = features
        if coords is not None:
            f["coords"] = coords


def _set_rows(path: Path, rows: slice, value: float) -> int:
    """Put ``value`` into some rows of a feature file; returns its row count."""
    with h5py.File(path, "r+") as f:
        x = f["features"][()]
        x[rows, 1] = value
        f["features"][...] = x
        return len(x)


def _problems(root: Path, **kwargs) -> list[str]:
    with pytest.raises(CohortValidationError) as info:
        load_cohort(root, **kwargs)
    assert len(str(info.value).splitlines()) == len(info.value.problems) + 1  # one line per problem
    return info.value.problems


def test_the_valid_cohort_passes_with_tasks_and_required_features(base_dir):
    cohort = load_cohort(base_dir, tasks=["survival", "stage", "TP53_mut"], require_features=True)
    assert cohort.n_cases == 24


def test_nan_features_are_one_error_naming_the_file_and_rows(cohort_dir):
    slide = _slides(cohort_dir)[5]
    n = _set_rows(cohort_dir / "features" / f"{slide}.h5", slice(2, 5), np.nan)
    (problem,) = _problems(cohort_dir)
    assert f"features/{slide}.h5" in problem and "non-finite" in problem and "NaN" in problem
    assert f"in 3 of its {n} rows" in problem and "first at row 2" in problem


def test_inf_features_are_refused_too(cohort_dir):
    slides = _slides(cohort_dir)
    _set_rows(cohort_dir / "features" / f"{slides[1]}.h5", slice(0, 1), np.inf)
    _set_rows(cohort_dir / "features" / f"{slides[7]}.h5", slice(-1, None), -np.inf)
    problems = _problems(cohort_dir)
    assert len(problems) == 2
    for slide in (slides[1], slides[7]):
        assert any(f"features/{slide}.h5" in p and "non-finite" in p and "in 1 of its" in p for p in problems)


def test_non_finite_rows_are_found_chunk_by_chunk(cohort_dir, monkeypatch):
    """Scanned in row chunks (bounded memory): rows in several chunks are all counted."""
    monkeypatch.setattr(featurefiles, "CHUNK_ROWS", 3)
    slide = _slides(cohort_dir)[0]
    path = cohort_dir / "features" / f"{slide}.h5"
    with h5py.File(path, "r+") as f:
        x = f["features"][()].astype(np.float16)  # fp16 files, as real cohorts store them
        coords = f["coords"][()]
    x[[1, 4, len(x) - 1], 0] = np.nan
    reads = []
    real = featurefiles._row_reader

    def counting(dset):
        read = real(dset)
        return lambda a, b: reads.append(b - a) or read(a, b)

    monkeypatch.setattr(featurefiles, "_row_reader", counting)
    _rewrite(path, x, coords)
    (problem,) = _problems(cohort_dir)
    assert f"in 3 of its {len(x)} rows" in problem and "first at row 1" in problem
    assert max(reads) == 3 and sum(r for r in reads) >= len(x)  # never a whole file at once


def test_several_bad_feature_files_are_one_error_naming_each(cohort_dir):
    slides = _slides(cohort_dir)
    feats = cohort_dir / "features"
    _rewrite(feats / f"{slides[2]}.h5", np.zeros((6, 8), np.float32), np.zeros((6, 2), np.int64))  # wrong D
    _rewrite(feats / f"{slides[4]}.h5", np.zeros((0, 16), np.float32), np.zeros((0, 2), np.int64))  # empty
    (feats / f"{slides[6]}.h5").write_text("not a feature file\n")  # not HDF5
    _rewrite(feats / f"{slides[8]}.h5", np.zeros((5, 16), np.float32))  # no coords
    _rewrite(feats / f"{slides[10]}.h5", np.zeros((5, 16), np.float32), np.zeros((4, 2), np.int64))  # N differs
    problems = _problems(cohort_dir)
    assert len(problems) == 5, problems
    expected = {slides[2]: "8-d features", slides[4]: "0 rows", slides[6]: "not an HDF5 file",
                slides[8]: "no 'coords'", slides[10]: "5 feature rows but 4 coords rows"}
    for slide, detail in expected.items():
        matching = [p for p in problems if f"features/{slide}.h5" in p]
        assert len(matching) == 1 and detail in matching[0], (slide, problems)
    (wrong_d,) = [p for p in problems if slides[2] in p]
    assert "16-d" in wrong_d  # the expected dimension is the majority's


def test_the_majority_dimension_names_the_odd_file_even_when_it_comes_first(cohort_dir):
    slides = _slides(cohort_dir)
    first = sorted(slides)[0]
    assert first == slides[0]
    _rewrite(cohort_dir / "features" / f"{first}.h5", np.ones((7, 32), np.float32), np.zeros((7, 2), np.int64))
    (problem,) = _problems(cohort_dir)
    assert problem.startswith(f"features/{first}.h5 has 32-d features")
    assert f"{len(slides) - 1} of the {len(slides)} readable feature files have 16-d" in problem
    assert not any(s in problem for s in slides[1:])


def test_no_majority_blames_no_file(tmp_path):
    root = tmp_path / "tie"
    make_synth_cohort(root, n_cases=4, n_projects=1, patches=(4, 6), feature_dim=16, seed=2)
    slides = _slides(root)
    assert len(slides) == 5
    for s, d in zip(slides, (8, 8, 32)):  # two 8-d, one 32-d, two 16-d: no single most common D
        _rewrite(root / "features" / f"{s}.h5", np.ones((4, d), np.float32), np.zeros((4, 2), np.int64))
    (problem,) = _problems(root)
    assert "no majority" in problem and "8-d" in problem and "16-d" in problem and "32-d" in problem
    assert all(s in problem for s in slides)


def test_many_bad_files_of_one_kind_collapse_to_one_line(cohort_dir):
    slides = _slides(cohort_dir)
    for s in slides[:12]:
        (cohort_dir / "features" / f"{s}.h5").write_bytes(b"")
    (problem,) = _problems(cohort_dir)
    assert problem.startswith("12 feature files (") and "and 2 more" in problem and "HDF5" in problem


def test_clam_and_trident_layouts_pass(cohort_dir):
    slides = _slides(cohort_dir)
    with h5py.File(cohort_dir / "features" / f"{slides[3]}.h5", "w") as f:  # CLAM/TRIDENT style
        f["features"] = np.ones((1, 5, 16), np.float16)
        f["coords"] = np.zeros((1, 5, 2), np.int64)
        f["coords"].attrs["patch_size"] = 512
    load_cohort(cohort_dir, require_features=True)


def test_all_censored_is_refused_naming_the_survival_task(cohort_dir):
    clinical = pd.read_csv(cohort_dir / "clinical.csv", dtype=str, keep_default_na=False)
    clinical["censorship"] = "1"
    clinical.to_csv(cohort_dir / "clinical.csv", index=False)
    (problem,) = _problems(cohort_dir, tasks=["survival", "stage"])
    assert problem.startswith("task survival:") and "censored" in problem and "no observed event" in problem
    load_cohort(cohort_dir, tasks=["stage"])  # a classification run does not need events
    load_cohort(cohort_dir)  # no task asked: nothing to refuse
    # the default rule (a callable on the label columns) is checked the same way
    assert any("task survival" in p for p in _problems(cohort_dir, tasks=lambda labels: ["survival"]))
    clinical.loc[0, "censorship"] = "0"  # one event: some training fold would have none
    clinical.to_csv(cohort_dir / "clinical.csv", index=False)
    (problem,) = _problems(cohort_dir, tasks=["survival"])
    assert "only 1 of 24" in problem


def test_single_class_and_unknown_tasks_are_listed_with_the_other_problems(cohort_dir):
    clinical = pd.read_csv(cohort_dir / "clinical.csv", dtype=str, keep_default_na=False)
    clinical["TP53_mut"] = "1"
    clinical["censorship"] = "1"
    clinical.to_csv(cohort_dir / "clinical.csv", index=False)
    slide = _slides(cohort_dir)[9]
    _set_rows(cohort_dir / "features" / f"{slide}.h5", slice(0, 2), np.nan)
    problems = _problems(cohort_dir, tasks=["survival", "TP53_mut", "grade"])
    assert len(problems) == 4, problems
    assert any(p.startswith("task survival:") for p in problems)
    assert any(p.startswith("task TP53_mut:") and "'1'" in p and "two classes" in p for p in problems)
    assert any("'grade'" in p and "not a label column" in p for p in problems)
    assert any(slide in p and "non-finite" in p for p in problems)


def test_required_features_refuses_a_case_with_only_a_slide(cohort_dir):
    slide = _slides(cohort_dir)[0]
    (cohort_dir / "features" / f"{slide}.h5").unlink()
    (cohort_dir / "slides").mkdir()
    (cohort_dir / "slides" / f"{slide}.svs").write_bytes(b"placeholder")
    load_cohort(cohort_dir)  # fine for loading: the slide can be extracted
    (problem,) = _problems(cohort_dir, require_features=True)
    assert "no feature file" in problem and slide in problem and "msrl extract" in problem


@pytest.mark.parametrize("existing_out", [False, True])
def test_train_cli_refuses_a_bad_cohort_in_seconds_writing_nothing(cohort_dir, tmp_path, capsys, monkeypatch,
                                                                  existing_out):
    import msrl_model.train.cv as cv
    import msrl_model.train.data as data
    from msrl_model.train import cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("training started on a cohort that fails validation")

    monkeypatch.setattr(data, "load_bags", must_not_run)
    monkeypatch.setattr(cv, "pretrain_job", must_not_run)
    monkeypatch.setattr(cv, "cv_job", must_not_run)
    slides = _slides(cohort_dir)
    _set_rows(cohort_dir / "features" / f"{slides[3]}.h5", slice(0, 1), np.nan)
    _rewrite(cohort_dir / "features" / f"{slides[0]}.h5", np.ones((3, 8), np.float32), np.zeros((3, 2), np.int64))
    clinical = pd.read_csv(cohort_dir / "clinical.csv", dtype=str, keep_default_na=False)
    clinical["censorship"] = "1"
    clinical.to_csv(cohort_dir / "clinical.csv", index=False)
    out = tmp_path / "out"
    if existing_out:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    start = time.perf_counter()
    code = cli.main(["--cohort", str(cohort_dir), "--out", str(out), "--device", "cpu", "--quiet"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: cohort") and err.count("error:") == 1 and "Traceback" not in err
    assert "task survival" in err and f"{slides[3]}.h5" in err and f"{slides[0]}.h5 has 8-d" in err
    if existing_out:
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # no train.log, nothing else
    else:
        assert not out.exists()
    assert elapsed < 30, elapsed  # seconds, not the minute of training it used to take
