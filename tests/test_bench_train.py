"""``bench train`` at tiny sizes: the TRIDENT-layout fp16 cohort it writes, the JSON record of a real
(child-process) training run, the child's peak RSS and stop-after-first-fold, and the per-fold records.
The issue-9 sizes (400 cases × 9,000 patches × 1,024-d) are run by hand only."""

from __future__ import annotations

import json
import signal
import sys

import h5py
import numpy as np
import pytest

from msrl_model.bench.__main__ import main
from msrl_model.bench._trident import TRIDENT_SETTING, patch_counts, write_cohort_job
from msrl_model.bench.train import fold_records, run_child
from msrl_model.progress import drive

TINY = ["--scale", "tiny", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--quiet", "--json"]


def _bench(capsys, *argv: str) -> dict:
    assert main(["train", *argv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object, nothing else on stdout
    return json.loads(out[0])


def test_cohort_is_trident_layout_fp16_loads_in_place_and_is_reused(tmp_path):
    from msrl_model.cohort import load_cohort

    root = tmp_path / "cohort"
    cohort = drive(write_cohort_job(root, 12, 60, 24, seed=3), show=False)
    assert not cohort.reused and cohort.cases == 12
    assert cohort.feature_dir == root / "trident" / TRIDENT_SETTING / "features_random24"
    counts = patch_counts(12, 60, 3)
    assert counts.min() >= 20 and counts.max() <= 100 and len(set(counts.tolist())) > 1  # around P: P/3 … 5P/3
    files = sorted(cohort.feature_dir.glob("*.h5"))
    assert len(files) == 12
    with h5py.File(files[0]) as f:
        assert f["features"].dtype == np.float16 and f["features"].shape[1] == 24
        assert f["coords"].dtype == np.int64 and f["features"].shape[0] == f["coords"].shape[0]
        assert {k: f["coords"].attrs[k] for k in ("patch_size", "patch_size_level0", "level0_magnification",
                                                  "target_magnification", "overlap")} == \
            {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40, "target_magnification": 20,
             "overlap": 0}
        assert np.isfinite(f["features"][()]).all()
    loaded = load_cohort(root, tasks=["survival"], require_features=True)  # the job dir, read in place
    assert loaded.n_cases == 12 and all(p.parent == cohort.feature_dir for p in loaded.feature_paths.values())
    assert sum(cohort.patches) == sum(h5py.File(p)["features"].shape[0] for p in files)

    again = drive(write_cohort_job(root, 12, 60, 24, seed=3), show=False)
    assert again.reused and again.bytes == cohort.bytes
    other = drive(write_cohort_job(root, 12, 60, 16, seed=3), show=False)  # other parameters: rewritten
    assert not other.reused and not cohort.feature_dir.exists()


def test_cohort_refuses_a_folder_of_other_files(tmp_path):
    from msrl_model.errors import MSRLError

    (tmp_path / "mine.txt").write_text("not a bench cohort")
    with pytest.raises(MSRLError, match="give an empty or new --workdir"):
        drive(write_cohort_job(tmp_path, 12, 10, 8), show=False)
    assert (tmp_path / "mine.txt").is_file()


def test_train_bench_json_record(tmp_path, capsys):
    work = tmp_path / "work"
    r = _bench(capsys, "--cases", "12", "--patches", "50", "--dim", "32", "--folds", "2", "--workdir", str(work),
               *TINY)
    assert r["benchmark"] == "train" and r["exit_code"] == 0 and not r["stopped_after_first_fold"]
    assert r["cases"] == 12 and r["dim"] == 32 and r["dtype"] == "float16" and r["layout"] == "trident"
    assert 17 <= r["patches_min"] <= r["patches_mean"] <= r["patches_max"] <= 83
    assert r["peak_rss_mb"] > 50 and r["peak_rss_gib"] == pytest.approx(r["peak_rss_mb"] / 1024, abs=1e-3)
    assert r["peak_rss_within_4gib"] is True and r["wall_s"] > 0 and r["fold_s"] > 0
    assert (r["pretrain_epochs"], r["finetune_epochs"], r["folds"], r["d"]) == (1, 1, 2, 16)
    if r["timing_source"] == "fold files":  # the run records its folds: epochs as configured, s/epoch > 0
        assert r["folds_recorded"] == 2 and [f["fold"] for f in r["fold_records"]] == [0, 1]
        for f in r["fold_records"]:
            assert (f["pretrain_epochs"], f["finetune_epochs"]) == (1, 1)
            assert f["pretrain_s_per_epoch"] > 0 and f["finetune_s_per_epoch"] > 0
            assert f["total_s"] >= f["pretrain_s"] + f["finetune_s"] - 1e-6
        assert r["pretrain_s_per_epoch"] > 0 and r["finetune_s_per_epoch"] > 0
    else:
        assert r["timing_source"] == "wall clock" and r["folds_recorded"] == 0
        assert r["fold_s"] == pytest.approx(r["wall_s"] / 2, abs=0.01)
    assert not any(work.iterdir())  # cohort, run and config removed without --keep


def test_first_fold_only_stops_the_child_and_still_reports_its_peak(tmp_path):
    flag = tmp_path / "folds" / "fold_0.json"
    script = (f"import pathlib, time; p = pathlib.Path({str(flag)!r}); p.parent.mkdir(parents=True); "
              "p.write_text('{}'); b = bytearray(64 << 20); time.sleep(60)")
    child = run_child([sys.executable, "-c", script], flag, quiet=True)
    assert child["stopped"] and child["exit_code"] == -signal.SIGTERM and child["wall_s"] < 30
    assert child["peak_rss_kib"] > 64 * 1024  # its 64 MiB buffer is in the high-water mark
    assert run_child([sys.executable, "-c", "pass"], None, quiet=True)["exit_code"] == 0


def test_fold_records_give_seconds_per_epoch(tmp_path):
    folds = tmp_path / "folds"
    folds.mkdir()
    for k, (pre, fine) in enumerate([(4.0, 6.0), (5.0, 9.0)]):
        (folds / f"fold_{k}.json").write_text(json.dumps({
            "seconds": {"pretrain": pre, "finetune": fine, "predict": 0.5, "total": pre + fine + 1},
            "epochs": {"pretrain": 2, "finetune": 3}}))
    (folds / "fold_summary.json").write_text("{}")  # not a fold record
    records = fold_records(tmp_path)
    assert [r["fold"] for r in records] == [0, 1]
    assert records[0]["pretrain_s_per_epoch"] == 2.0 and records[1]["finetune_s_per_epoch"] == 3.0
    assert records[1]["total_s"] == 15.0 and records[0]["predict_s"] == 0.5
    assert fold_records(tmp_path / "none") == []


def test_bad_sizes_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--cases", "3", "--workdir", str(tmp_path)]) == 2
    assert main(["train", "--cases", "6", "--folds", "4", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: --") for line in err)


def test_peak_memory_is_flat_as_cases_grow(tmp_path, capsys, monkeypatch):
    """4x the cases at the same bag size: the training's peak RSS grows by far less than the features
    the extra cases would take in float32 (what holding every bag in memory costs). Cohorts this small
    fit the in-memory bag cache, so the run is told to stream (``bag_cache_mb = 0``), as a cohort over
    the cache's budget does by itself; and encoder passes hold at most ``chunk_patches`` patches, a
    bound reached here by both cohorts (at the default 65,536 the larger cohort's chunks are fuller).
    The training child gets glibc's mmap threshold fixed (as tests/test_train_streaming.py's probe):
    otherwise freed temporaries stay in a fragmented heap and RSS wanders by tens of MB run to run."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    config = tmp_path / "stream.toml"
    config.write_text("[train]\nbag_cache_mb = 0\nchunk_patches = 4096\n")
    args = ["--patches", "1500", "--dim", "512", "--config", str(config), *TINY]
    small = _bench(capsys, "--cases", "8", "--workdir", str(tmp_path / "s"), *args)
    large = _bench(capsys, "--cases", "32", "--workdir", str(tmp_path / "l"), *args)
    extra_fp32_mb = (large["patches_total"] - small["patches_total"]) * 512 * 4 / 2**20  # ~68 MB
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 0.5 * extra_fp32_mb, (small["peak_rss_mb"],
                                                                                large["peak_rss_mb"])
