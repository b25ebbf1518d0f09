"""Extraction pipeline: tissue coords, attrs, cache, cancellation, batch runs, shards."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from msrl_model.encoders import PatchEncoder
from msrl_model.errors import MSRLError
from msrl_model.features.h5io import read_features
from msrl_model.features.pipeline import (ExtractStats, collect_slides, extract_many, extract_slide,
                                          parse_shard, resolve_shard, shard_slides)
from msrl_model.features.reader import THREAD_PREFIX
from msrl_model.progress import drive
from msrl_model.slide import TilingParams, open_slide, tile_grid, tissue_mask
from msrl_model.synth.slides import make_slide


class _ChannelStats(torch.nn.Module):
    """(B, 3, S, S) float -> (B, 6): per-channel mean and std (a fast stand-in encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def tiny_encoder(version: str = "1") -> PatchEncoder:
    return PatchEncoder(name="test-stats", version=version, dim=6, model=_ChannelStats().eval(),
                        transform=lambda b: b.permute(0, 3, 1, 2).float() / 255.0,  # (B,H,W,3)->(B,3,H,W)
                        precision=torch.float32, input_size=256)


@pytest.fixture(scope="module")
def synth_slide(tmp_path_factory):
    return make_slide(tmp_path_factory.mktemp("pipe") / "synth-a.svs", 2048, 1536, seed=1)


def _run(path, out, encoder=None, **kw):
    stats = ExtractStats()
    events = []
    result = drive(extract_slide(path, out, encoder or tiny_encoder(), "cpu", workers=2, batch_size=8,
                                 stats=stats, **kw), show=False, on_event=events.append)
    return result, stats, events


def _reader_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.mark.parametrize("which", ["cmu", "synthetic"])
def test_extraction_writes_tissue_coords_and_attrs(which, cmu_slide, synth_slide, tmp_path):
    path = cmu_slide if which == "cmu" else synth_slide
    out, stats, events = _run(path, tmp_path)
    assert out == tmp_path / f"{path.stem}.h5"
    ff = read_features(out)
    n = len(ff.coords)
    assert n > 0 and ff.features.shape == (n, 6) and np.isfinite(ff.features).all()
    assert stats.tiles == n and not stats.cached
    with open_slide(path) as slide:
        mask = tissue_mask(slide)
        sha = slide.sha256_head()
        level0_mpp = slide.mpp
    a = ff.attrs
    assert a["encoder"] == "test-stats" and a["encoder_version"] == "1" and a["slide_sha256_head"] == sha
    assert a["patch_size"] == 256 and a["target_mpp"] == 0.5 and a["level0_mpp"] == pytest.approx(level0_mpp)
    assert a["patch_size_level0"] == round(256 * 0.5 / level0_mpp)
    assert a["tiling_params"]["patch_size"] == 256 and "min_saturation" in a["tissue_params"]
    # Every patch overlaps the tissue mask, checked directly on the mask pixels.
    ps, ds = a["patch_size_level0"], mask.downsample
    for x, y in ff.coords:
        window = mask.mask[int(y / ds):int(np.ceil((y + ps) / ds)), int(x / ds):int(np.ceil((x + ps) / ds))]
        assert window.any(), (x, y)
    # Features match a direct encoding of the same tiles (order and content).
    with open_slide(path) as slide:
        grid = tile_grid(slide, mask)
        tiles = np.stack([grid.read_tile(slide, i) for i in (0, n // 2, n - 1)])
    np.testing.assert_array_equal(ff.coords, grid.coords)
    direct = tiny_encoder().encode(torch.from_numpy(tiles)).numpy()
    np.testing.assert_allclose(ff.features[[0, n // 2, n - 1]], direct, rtol=1e-5, atol=1e-6)
    assert {e.stage for e in events} >= {"open", "tissue", "read+encode", "write"}


def test_second_run_is_a_cache_hit_and_key_changes_recompute(synth_slide, tmp_path):
    out, _, _ = _run(synth_slide, tmp_path)
    mtime = out.stat().st_mtime_ns
    again, stats, events = _run(synth_slide, tmp_path)
    assert again == out and stats.cached and [e.stage for e in events] == ["open", "cached"]
    assert out.stat().st_mtime_ns == mtime

    _, stats, _ = _run(synth_slide, tmp_path, encoder=tiny_encoder(version="2"))
    assert not stats.cached and read_features(out).attrs["encoder_version"] == "2"
    _, stats, _ = _run(synth_slide, tmp_path, encoder=tiny_encoder(version="2"),
                       tiling=TilingParams(min_tissue_fraction=0.9))
    assert not stats.cached and read_features(out).attrs["tiling_params"]["min_tissue_fraction"] == 0.9
    _, stats, _ = _run(synth_slide, tmp_path, encoder=tiny_encoder(version="2"),
                       tiling=TilingParams(min_tissue_fraction=0.9))
    assert stats.cached


def test_cancel_mid_run_keeps_the_encoded_tiles_and_the_next_run_resumes_there(synth_slide, tmp_path):
    job = extract_slide(synth_slide, tmp_path, tiny_encoder(), "cpu", workers=2, batch_size=2)
    for event in job:
        if event.stage == "read+encode" and event.done >= 6:
            break
    assert not torch.is_inference_mode_enabled()  # no torch mode leaks out of the job at a yield
    assert _reader_threads()
    job.close()
    assert _reader_threads() == []
    assert [p.name for p in tmp_path.iterdir()] == ["synth-a.partial.h5"]  # no feature file, the tiles kept
    kept = read_features(tmp_path / "synth-a.partial.h5")
    assert len(kept.coords) == 6

    out, stats, events = _run(synth_slide, tmp_path)
    assert stats.resumed == 6 and stats.tiles == len(read_features(out).coords) - 6  # only the rest encoded
    assert [e.done for e in events if e.stage == "read+encode"][0] == 6  # the bar starts where it stopped
    fresh, _, _ = _run(synth_slide, tmp_path / "fresh")
    np.testing.assert_array_equal(read_features(out).features, read_features(fresh).features)
    assert not (tmp_path / "synth-a.partial.h5").exists()


def test_a_partial_file_of_another_key_is_ignored(synth_slide, tmp_path):
    job = extract_slide(synth_slide, tmp_path, tiny_encoder("1"), "cpu", workers=2, batch_size=2)
    for event in job:
        if event.stage == "read+encode" and event.done >= 4:
            break
    job.close()
    _, stats, _ = _run(synth_slide, tmp_path, encoder=tiny_encoder("2"))  # another encoder version: another key
    assert stats.resumed == 0


def test_extract_many_finishes_good_slides_and_reports_bad_ones(synth_slide, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a-good.svs").write_bytes(synth_slide.read_bytes())
    (slides / "b-text.svs").write_text("this is not a slide\n")
    make_slide(slides / "c-blank.svs", 1024, 768, seed=0, kind="blank")
    (slides / "notes.txt").write_text("ignored: not a slide extension")
    out = tmp_path / "features"
    report = drive(extract_many([slides], out, tiny_encoder(), "cpu", workers=2, batch_size=16), show=False)
    status = {s.slide_id: s.status for s in report.slides}
    assert status == {"a-good": "ok", "b-text": "error", "c-blank": "error"}
    assert (out / "a-good.h5").exists() and not (out / "b-text.h5").exists()
    saved = json.loads((out / "extract_report.json").read_text())
    assert saved["counts"] == {"ok": 1, "cached": 0, "error": 2}
    messages = {s["slide_id"]: s["message"] for s in saved["slides"]}
    assert "tissue" in messages["c-blank"] and messages["b-text"] and "\n" not in messages["b-text"]
    # Resume: the finished slide is a cache hit, the bad ones are tried (and reported) again.
    report = drive(extract_many([slides], out, tiny_encoder(), "cpu", workers=2, batch_size=16), show=False)
    assert {s.slide_id: s.status for s in report.slides}["a-good"] == "cached"


def test_shards_partition_the_sorted_slide_list(tmp_path):
    for name in ["d.svs", "a.svs", "c.tif", "b.ndpi", "e.svs"]:
        (tmp_path / name).write_bytes(b"")
    slides = collect_slides([tmp_path])
    assert [p.name for p in slides] == ["a.svs", "b.ndpi", "c.tif", "d.svs", "e.svs"]
    for n in (1, 2, 3, 7):
        parts = [shard_slides(slides, (i, n)) for i in range(n)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(slides) and len(flat) == len(set(flat))
    assert shard_slides(slides, (1, 2)) == shard_slides(collect_slides([tmp_path]), (1, 2))
    assert resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert resolve_shard((1, 3), {"RANK": "2", "WORLD_SIZE": "4"}) == (1, 3)
    assert resolve_shard(None, {}) == (0, 1)
    assert parse_shard("0/4") == (0, 4)
    for bad in ("4/4", "x/2", "1"):
        with pytest.raises(MSRLError, match="shard"):
            parse_shard(bad)


@pytest.mark.parametrize("cached", [False, True])
def test_a_first_builtin_he_build_is_announced_before_it_compiles(synth_slide, tmp_path, monkeypatch, cached):
    """Before numba has compiled builtin-he's CPU kernel on an installation (its disk cache holds none),
    the extraction says so first (Stage.NOTICE: the CLI's "note:", the app's status line); once compiled,
    nothing is said."""
    from msrl_model.encoders import builtin_he, builtin_he_cpu
    from msrl_model.progress import Stage

    monkeypatch.setattr(builtin_he_cpu, "cached_on_disk", lambda: cached)
    out, _, events = _run(synth_slide, tmp_path, encoder="builtin-he")
    notices = [e.message for e in events if e.stage == Stage.NOTICE]
    assert notices == ([] if cached else [builtin_he.COMPILE_NOTICE])
    assert read_features(out).features.shape[1] == builtin_he.DIM


def test_the_kernel_is_in_numbas_disk_cache_once_built():
    """Building the CPU encoder leaves the compiled kernel in numba's cache, so the next process loads it
    (None: numba's cache internals are not where this version looks, and nothing is announced)."""
    from msrl_model.encoders import build_encoder, build_notice, builtin_he_cpu

    build_encoder("builtin-he")
    assert builtin_he_cpu.cached_on_disk() in (True, None)
    assert build_notice("builtin-he", "cpu") is None
    assert build_notice("uni_v1@/data/uni.bin", "cpu") is None  # only builtin-he compiles anything
