"""Bags streamed from disk (issue 9): streamed and held bags give the same batches, statistics and
embeddings; features stay in their stored precision until they are on the device; encoder passes
are chunked by a patch budget; peak memory does not grow with the number of cases."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from msrl_model.nn.config import ConfigError, MSRLConfig
from msrl_model.nn.msrl import SlideBatch
from msrl_model.nn.slide_encoder import SlideEncoder
from msrl_model.progress import Stage, drive
from msrl_model.train import data
from msrl_model.train.buffer import mixup_view
from msrl_model.train.data import SLIDE_GAP, Bags, load_bags
from msrl_model.train.pretrain import embed_slides, embed_slides_job
from msrl_model.train.settings import TrainSettings

torch.set_num_threads(1)

DIM = 12


class FileCohort:
    """What :func:`load_bags` reads of a cohort: its cases and each case's feature files."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        self.files = files
        self.case_ids = list(files)
        self.n_cases = len(files)

    def case_feature_paths(self, case: str) -> list[Path]:
        return self.files[case]


def _grid_coords(n: int, width: int, x0: int = 0) -> np.ndarray:
    """(n, 2) level-0 (x, y) of patches 256 px apart on a grid ``width`` cells wide."""
    i = np.arange(n)
    return np.stack([x0 + (i % width) * 256, (i // width) * 256], axis=1).astype(np.int64)


def _write_h5(path: Path, feats: np.ndarray, coords: np.ndarray, *, chunks=None, lead: bool = False) -> Path:
    """An h5 feature file as TRIDENT/CLAM write them: ``chunks`` (None = contiguous), ``lead`` = 1×N×D."""
    x = feats[None] if lead else feats
    chunked = {} if chunks is None else {"chunks": (1,) * lead + chunks, "maxshape": (1,) * lead + (None, x.shape[-1])}
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x, **chunked)  # resizable along the rows, as TRIDENT writes
        c = f.create_dataset("coords", data=coords[None] if lead else coords)
        c.attrs.update({"patch_size": 256, "patch_size_level0": 256})
    return path


@pytest.fixture(scope="module")
def fp16_cohort(tmp_path_factory):
    """7 cases in every h5 layout, fp16: (cohort, expected features (N_i, D) float16, expected grids)."""
    root = tmp_path_factory.mktemp("fp16")
    rng = np.random.default_rng(0)
    files, feats, grids = {}, [], []

    def case(name, parts):
        paths, fs, gs, col0 = [], [], [], 0
        for k, (n, width, kw) in enumerate(parts):
            x = (rng.standard_normal((n, DIM)) * 3 + 1).astype(np.float16)
            coords = _grid_coords(n, width, x0=1024 * (k + 1))
            paths.append(_write_h5(root / f"{name}_{k}.h5", x, coords, **kw))
            g = np.stack([coords[:, 1] // 256, coords[:, 0] // 256 + col0], axis=1)
            col0 = int(g[:, 1].max()) + 1 + SLIDE_GAP
            fs.append(x)
            gs.append(g)
        files[name] = paths
        feats.append(np.concatenate(fs))
        grids.append(np.concatenate(gs))

    case("contiguous", [(40, 7, {})])
    case("row_chunks", [(57, 9, {"chunks": (1, DIM)})])
    case("two_slides", [(20, 5, {}), (33, 6, {"chunks": (1, DIM)})])
    case("lead_auto_chunks", [(300, 17, {"chunks": (8, 4), "lead": True})])
    case("one_patch", [(1, 1, {})])
    case("large", [(500, 25, {})])
    case("three_slides", [(9, 3, {"chunks": (4, DIM)}), (1, 1, {}), (15, 4, {})])
    return FileCohort(files), feats, grids


@pytest.fixture(scope="module")
def mixed_cohort(tmp_path_factory):
    """A CLAM .pt (fp16 tensor, no coords) next to fp32 h5 files: read as float32."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    torch.save(torch.from_numpy(rng.standard_normal((30, DIM))).half(), root / "pt.pt")
    files = {"pt": [root / "pt.pt"]}
    for name, n in (("a", 25), ("b", 18)):
        files[name] = [_write_h5(root / f"{name}.h5", rng.standard_normal((n, DIM)).astype(np.float32),
                                 _grid_coords(n, 5), chunks=(1, DIM))]
    files["both"] = [_write_h5(root / "c.h5", rng.standard_normal((12, DIM)).astype(np.float16),
                               _grid_coords(12, 4)), root / "pt.pt"]
    return FileCohort(files)


def _held_and_streamed(cohort) -> tuple[Bags, Bags]:
    held = drive(load_bags(cohort, cache_mb=1024), show=False)
    streamed = drive(load_bags(cohort, cache_mb=0), show=False)
    assert not held.streamed and streamed.streamed
    assert held.dtype == streamed.dtype and np.array_equal(held.lengths, streamed.lengths)
    return held, streamed


def _concat_stats(bags: Bags, cases) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([bags.read(i)[0].double().numpy() for i in cases])
    return x.mean(0), x.std(0)


@pytest.mark.parametrize("layout", ["fp16_cohort", "mixed_cohort"])
def test_streamed_and_held_bags_give_identical_batches_stats_and_embeddings(layout, request):
    cohort = request.getfixturevalue(layout)
    cohort = cohort[0] if isinstance(cohort, tuple) else cohort
    held, streamed = _held_and_streamed(cohort)
    assert held.dtype == (torch.float16 if layout == "fp16_cohort" else torch.float32)
    cases = list(range(len(held)))
    gen = torch.Generator().manual_seed(0)
    for i in cases:  # whole bags, and a subset in any order (only those rows are read)
        for rows in (None, torch.randperm(int(held.lengths[i]), generator=gen)[: max(1, int(held.lengths[i]) // 3)]):
            (fh, ph), (fs, ps) = held.read(i, rows), streamed.read(i, rows)
            assert fh.dtype == fs.dtype == held.dtype and torch.equal(fh, fs) and torch.equal(ph, ps)
    for max_patches in (0, 16):
        a = held.batch(cases, max_patches, key=(0, 1))
        b = streamed.batch(cases, max_patches, key=(0, 1))
        assert torch.equal(a.x, b.x) and torch.equal(a.pos, b.pos) and torch.equal(a.mask, b.mask)
        assert a.lengths == b.lengths
    a = mixup_view(held, cases, 10, 0.5, (3, 0, 1))
    b = mixup_view(streamed, cases, 10, 0.5, (3, 0, 1))
    assert torch.equal(a.x, b.x) and torch.equal(a.pos, b.pos) and a.x.dtype == held.dtype
    fold = cases[1:]
    for bags in (held, streamed):
        mean, std = bags.patch_stats(fold)
        ref_mean, ref_std = _concat_stats(held, fold)
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-6)
    enc = SlideEncoder.from_config(MSRLConfig.tiny(patch_dim=DIM)).eval()
    with torch.no_grad():
        assert torch.equal(embed_slides(enc, held, cases, chunk=3), embed_slides(enc, streamed, cases, chunk=3))


def test_bags_read_the_files_exactly_with_the_slides_side_by_side(fp16_cohort):
    cohort, feats, grids = fp16_cohort
    for bags in _held_and_streamed(cohort):
        for i, (want_f, want_g) in enumerate(zip(feats, grids)):
            got_f, got_g = bags.read(i)
            assert got_f.dtype == torch.float16 and np.array_equal(got_f.numpy(), want_f)
            assert np.array_equal(got_g.numpy(), want_g)  # second slide SLIDE_GAP columns right of the first


def test_fp16_features_stay_fp16_until_on_the_device(fp16_cohort):
    cohort, feats, _ = fp16_cohort
    bags = drive(load_bags(cohort, cache_mb=0), show=False)
    batch = bags.batch([0, 2, 5], 20, key=(0,))
    assert batch.x.dtype == torch.float16
    on_device = batch.to("cpu")
    assert on_device.x.dtype == torch.float32 and torch.equal(on_device.x, batch.x.float())
    assert on_device.pos.dtype == torch.long and torch.equal(on_device.mask, batch.mask)
    view = mixup_view(bags, [0, 1, 2], 8, 0.5, (0, 0, 1))
    assert view.x.dtype == torch.float16 and view.to("cpu").x.dtype == torch.float32
    collated = SlideBatch.from_bags([torch.from_numpy(feats[0])], [torch.zeros(40, 2, dtype=torch.long)], [256])
    assert collated.x.dtype == torch.float16 and collated.to("cpu").x.dtype == torch.float32


def test_patch_stats_stream_in_blocks_and_match_the_concatenated_float64(monkeypatch, tmp_path):
    """Large offset, small spread (where one-pass sum-of-squares formulas fail), several blocks a bag."""
    monkeypatch.setattr(data, "STATS_ROWS", 7)
    rng = np.random.default_rng(4)
    feats = [(1000 + rng.standard_normal((n, DIM)) * 0.01).astype(np.float32) for n in (1, 6, 7, 8, 50, 123)]
    files = {f"c{i}": [_write_h5(tmp_path / f"c{i}.h5", x, _grid_coords(len(x), 8), chunks=(5, DIM))]
             for i, x in enumerate(feats)}
    streamed = drive(load_bags(FileCohort(files), cache_mb=0), show=False)
    held = Bags.from_tensors([torch.from_numpy(x) for x in feats], [torch.zeros(len(x), 2).long() for x in feats])
    for fold in ([5], [0, 2, 4], [1, 2, 3, 4, 5]):
        x = np.concatenate([feats[i] for i in fold]).astype(np.float64)
        for bags in (held, streamed):
            mean, std = bags.patch_stats(fold)
            np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-6)
            np.testing.assert_allclose(std.numpy(), x.std(0), rtol=1e-6)


def test_encoder_passes_are_chunked_by_a_patch_budget():
    lengths = [10, 50, 5, 5, 100, 3, 4]
    bags = Bags.from_tensors([torch.randn(n, DIM) for n in lengths],
                             [torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long)], 1) for n in lengths])
    chunks = bags.chunks(np.arange(7), max_patches=0, max_cases=3, budget=60)
    # padded size = cases x the largest bag: 10 + 50 pads to 100 > 60, 50 + 5 too, [5, 5] = 10, 100 alone
    assert [c.tolist() for c in chunks] == [[0], [1], [2, 3], [4], [5, 6]]
    capped = bags.chunks(np.arange(7), max_patches=8, max_cases=3, budget=60)  # bags count at most 8 patches
    assert [c.tolist() for c in capped] == [[0, 1, 2], [3, 4, 5], [6]]
    assert bags.chunks(np.arange(0), max_patches=0, max_cases=3, budget=60) == []
    enc = SlideEncoder.from_config(MSRLConfig.tiny(patch_dim=DIM)).eval()
    events = []
    with torch.no_grad():
        h = drive(embed_slides_job(enc, bags, range(7), chunk=3, chunk_patches=60), show=False,
                  on_event=events.append)
        whole = embed_slides(enc, bags, range(7), chunk=7, chunk_patches=10**6)
    assert [e.done for e in events if e.stage == Stage.EMBED] == [0, 1, 2, 4, 5, 7]
    torch.testing.assert_close(h, whole, rtol=1e-5, atol=1e-5)  # only the padding differs


def test_bags_are_held_under_the_budget_streamed_over_it_and_the_choice_logged(tmp_path, caplog):
    rng = np.random.default_rng(2)
    files = {f"c{i}": [_write_h5(tmp_path / f"c{i}.h5", rng.standard_normal((30_000, DIM)).astype(np.float16),
                                 _grid_coords(30_000, 200), chunks=(1024, DIM))] for i in range(3)}
    cohort = FileCohort(files)  # 3 bags of 0.7 MB (features) + 0.5 MB (positions)
    with caplog.at_level(logging.INFO, logger="msrl_model.train.data"):
        held = drive(load_bags(cohort), show=False)  # default TrainSettings().bag_cache_mb
        over = drive(load_bags(cohort, cache_mb=2), show=False)  # exceeded at the second case: all streamed
    assert not held.streamed and over.streamed
    messages = [r.getMessage() for r in caplog.records]
    assert any("held in memory" in m and "float16" in m for m in messages)
    assert any("streamed from their files" in m and "bag_cache_mb = 2" in m for m in messages)
    assert torch.equal(held.read(2)[0], over.read(2)[0])
    with pytest.raises(ConfigError, match="bag_cache_mb"):
        TrainSettings(bag_cache_mb=-1)
    with pytest.raises(ConfigError, match="chunk_patches"):
        TrainSettings(chunk_patches=0)
    assert "bag_cache_mb" not in TrainSettings().identity()  # how bags are held does not change a run


# Measured (2 cores, 384-d fp16 bags of 1,500 patches in TRIDENT's row chunks, streamed): peak RSS
# 359 MB after 30 cases (the embedding pass dominates), +0.5 to +1.5 MB after 120. Held as float32
# like the old loader, the 90 extra bags alone would add 207 MB, and its float64 concatenation of the
# fold in patch_stats another 415 MB; held in memory as fp16 (this loader under its budget): +104 MB.
# The probe fixes glibc's mmap threshold so that freed temporaries leave the process and the peak
# is what the code holds: with the default, dynamic threshold heap fragmentation adds 1-17 MB here
# (sub-linear in the cases: +28 MB at 960).
PROBE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from msrl_model.nn.config import MSRLConfig
    from msrl_model.nn.slide_encoder import SlideEncoder
    from msrl_model.progress import drive
    from msrl_model.train.data import load_bags
    from msrl_model.train.pretrain import embed_slides

    class FileCohort:
        def __init__(self, paths):
            self.case_ids = [p.stem for p in paths]
            self.n_cases = len(paths)
            self.paths = {p.stem: p for p in paths}
        def case_feature_paths(self, case):
            return [self.paths[case]]

    paths = sorted(Path(sys.argv[1]).glob("*.h5"))
    enc = SlideEncoder.from_config(MSRLConfig.tiny(patch_dim=int(sys.argv[2]))).eval()
    peaks = []
    for n in (30, len(paths)):
        bags = drive(load_bags(FileCohort(paths[:n]), cache_mb=0), show=False)
        assert bags.streamed
        bags.patch_stats(range(n))
        with torch.no_grad():
            embed_slides(enc, bags, range(n), chunk=8, chunk_patches=6000)
        del bags
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(peaks))
""")


def test_peak_memory_stays_flat_as_cases_grow(tmp_path):
    n_cases, patches, dim = 120, 1500, 384
    rng = np.random.default_rng(3)
    for i in range(n_cases):
        _write_h5(tmp_path / f"c{i:03d}.h5", rng.standard_normal((patches, dim), dtype=np.float32).astype(np.float16),
                  _grid_coords(patches, 40), chunks=(1, dim))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), str(dim)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    peak_30, peak_120 = json.loads(out.stdout.strip().splitlines()[-1])
    held_float32_mb = (n_cases - 30) * patches * dim * 4 / 2**20  # 207 MB: what the old loader added
    assert peak_120 - peak_30 < 0.1 * held_float32_mb, (peak_30, peak_120)
