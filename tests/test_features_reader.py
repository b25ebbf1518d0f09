"""Parallel tile reader: same pixels as read_tile, order, bounded threads, clean shutdown."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from msrl_model.features.reader import THREAD_PREFIX, ParallelTileReader, ReaderConfig, plan_runs
from msrl_model.slide import open_slide, tile_grid, tissue_mask
from msrl_model.synth.slides import make_slide


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("reader") / "synth.svs", 2048, 1536, seed=3)


def _grid(path):
    with open_slide(path) as slide:
        return tile_grid(slide, tissue_mask(slide))


def _read_all(path, grid, config):
    reader = ParallelTileReader(path, grid, config)
    firsts, batches = [], []
    for first, batch in reader:
        firsts.append(first)
        batches.append(batch)
    return reader, firsts, np.concatenate(batches)


def _reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.mark.parametrize("config, mode", [
    (ReaderConfig(workers=2, batch_size=7), "jpeg-direct"),
    (ReaderConfig(workers=2, batch_size=5, direct_jpeg=False), "region-runs"),
    (ReaderConfig(workers=3, batch_size=6, merge_runs=False), "read_tile"),
])
def test_parallel_reader_equals_sequential_read_tile(synth_slide, config, mode):
    grid = _grid(synth_slide)
    reader, firsts, tiles = _read_all(synth_slide, grid, config)
    assert reader.mode == mode
    assert firsts == list(range(0, len(grid.coords), config.batch_size))  # grid order
    with open_slide(synth_slide) as slide:
        expected = np.stack([grid.read_tile(slide, i) for i in range(len(grid.coords))])
    assert tiles.shape == (len(grid.coords), 256, 256, 3) and tiles.dtype == np.uint8
    np.testing.assert_array_equal(tiles, expected)
    assert _reader_threads() == []


def test_real_aperio_slide_with_resize_and_unaligned_jpeg_tiles(cmu_slide):
    # CMU: 240 px JPEG tiles, patches of 257 level-0 px resized to 256: the hard case for slicing.
    grid = _grid(cmu_slide)
    assert grid.read_size != grid.patch_size
    reader, _, tiles = _read_all(cmu_slide, grid, ReaderConfig(workers=2, batch_size=8))
    assert reader.mode == "jpeg-direct"
    with open_slide(cmu_slide) as slide:
        for i in range(len(grid.coords)):
            np.testing.assert_array_equal(tiles[i], grid.read_tile(slide, i))


def test_plan_runs_splits_rows_gaps_and_long_runs():
    coords = np.array([[0, 0], [10, 0], [20, 0], [40, 0], [0, 10], [10, 10], [20, 10]])
    assert plan_runs(coords, 10, 16, 0, 7) == [(0, 3), (3, 1), (4, 3)]
    assert plan_runs(coords, 10, 2, 0, 7) == [(0, 2), (2, 1), (3, 1), (4, 2), (6, 1)]
    assert plan_runs(coords, 10, 16, 1, 5) == [(1, 2), (3, 1), (4, 1)]


def test_stopping_early_shuts_down_threads_and_handles(synth_slide):
    grid = _grid(synth_slide)
    opened, closed = [], []

    def open_fn(path):
        slide = open_slide(path)
        opened.append(slide)
        original = slide.close
        slide.close = lambda: (closed.append(slide), original())
        return slide

    reader = ParallelTileReader(synth_slide, grid, ReaderConfig(workers=2, batch_size=2, prefetch=2,
                                                                direct_jpeg=False), open_fn=open_fn)
    it = iter(reader)
    first, batch = next(it)
    assert first == 0 and len(batch) == 2
    assert _reader_threads()  # workers alive while iterating
    it.close()  # the consumer stops: cancellation
    assert _reader_threads() == []
    assert opened and sorted(map(id, opened)) == sorted(map(id, closed))


def test_worker_error_reaches_the_consumer_and_stops_the_pool(synth_slide):
    from msrl_model.errors import UnreadableTileError

    grid = _grid(synth_slide)

    class Broken:
        def __init__(self, inner):
            self.inner = inner

        def read_region(self, *args):
            raise UnreadableTileError("tile is damaged")

        def close(self):
            self.inner.close()

    reader = ParallelTileReader(synth_slide, grid, ReaderConfig(workers=2, batch_size=4, direct_jpeg=False),
                                open_fn=lambda p: Broken(open_slide(p)))
    with pytest.raises(UnreadableTileError, match="damaged"):
        for _ in reader:
            pass
    assert _reader_threads() == []


def test_a_wrong_fast_path_is_caught_and_falls_back_to_read_tile(synth_slide, monkeypatch):
    from msrl_model.features import reader as reader_mod

    original = reader_mod.JpegTileSource.region

    def off_by_one(self, x, y, w, h):
        region = original(self, x, y, w, h)
        return None if region is None else region ^ 1  # flip the lowest bit: wrong pixels

    monkeypatch.setattr(reader_mod.JpegTileSource, "region", off_by_one)
    grid = _grid(synth_slide)
    reader, _, tiles = _read_all(synth_slide, grid, ReaderConfig(workers=2, batch_size=6))
    assert reader.mode == "read_tile"
    with open_slide(synth_slide) as slide:
        for i in range(len(grid.coords)):
            np.testing.assert_array_equal(tiles[i], grid.read_tile(slide, i))
