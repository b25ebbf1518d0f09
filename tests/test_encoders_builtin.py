"""builtin-he encoder and the encoder registry: shape, determinism, batch invariance, H vs E discrimination."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from msrl_model.encoders import available_encoders, build_encoder
from msrl_model.encoders import builtin_he
from msrl_model.errors import EncoderError

# Slices of the documented layout (see builtin_he's module docstring).
H_MEAN = 6
E_MEAN = 9
H_FRACTIONS = slice(62, 66)
BLOB_DENSITY = slice(66, 70)
FINE = slice(72, 84)
BANK = slice(84, 264)
GREY_MEAN = 17
ZERO_BINS = (20, 32, 43)  # histogram bins that hold H = 0, E = 0 and the joint (0, 0)


def _tile(kind: str, seed: int) -> np.ndarray:
    """Synthetic 256² H&E-like tile: 'H' = lilac with many dark purple nuclei, 'E' = smooth pink stroma."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    img = np.empty((256, 256, 3))
    img[:] = (235, 160, 205) if kind == "E" else (220, 175, 215)
    img += rng.normal(0, 3, img.shape)
    if kind == "H":
        for _ in range(60):
            cy, cx = rng.uniform(0, 256, 2)
            r = rng.uniform(5, 9)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = np.array((70, 50, 130)) + rng.normal(0, 6, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("builtin-he")


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """(6,256,256,3) uint8: H, E, H, E (other seeds), uniform noise, blank white."""
    noise = np.random.default_rng(9).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    blank = np.full((256, 256, 3), 255, np.uint8)
    arr = np.stack([_tile("H", 0), _tile("E", 0), _tile("H", 1), _tile("E", 1), noise, blank])
    return torch.from_numpy(arr)


def test_registry_lists_the_encoders():
    assert available_encoders() == ["builtin-he", "timm", "uni_v1", "uni_v2", "virchow2", "hoptimus0", "hoptimus1",
                                    "gigapath", "conch_v15", "phikon_v2"]


@pytest.mark.parametrize("spec", ["resnet50", "nope", "timm-resnet", "gigapath2", "builtin", ""])
def test_unknown_spec_raises_listing_available(spec):
    with pytest.raises(EncoderError) as err:
        build_encoder(spec)
    msg = str(err.value)
    assert "builtin-he" in msg and "timm:<arch>" in msg and "gigapath" in msg
    assert "\n" not in msg


def test_builtin_rejects_arguments():
    with pytest.raises(EncoderError, match="takes no"):
        build_encoder("builtin-he@/tmp/x.pth")


def test_encoder_metadata(encoder):
    assert encoder.name == "builtin-he"
    assert encoder.version == builtin_he.VERSION
    assert encoder.dim == builtin_he.DIM == 264
    assert encoder.input_size == 256
    assert encoder.precision == torch.float32


def test_output_shape_dtype_finite(encoder, tiles):
    out = encoder.encode(tiles)
    assert out.shape == (tiles.shape[0], encoder.dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_deterministic_and_batch_size_invariant(encoder, tiles):
    batch = encoder.encode(tiles)
    again = encoder.encode(tiles)
    assert torch.equal(batch, again)
    one_by_one = torch.cat([encoder.encode(tiles[i : i + 1]) for i in range(tiles.shape[0])])
    torch.testing.assert_close(one_by_one, batch, atol=1e-5, rtol=1e-5)
    reversed_batch = encoder.encode(tiles.flip(0)).flip(0)
    torch.testing.assert_close(reversed_batch, batch, atol=1e-5, rtol=1e-5)


def test_empty_batch(encoder):
    out = encoder.encode(torch.zeros(0, 256, 256, 3, dtype=torch.uint8))
    assert out.shape == (0, encoder.dim)


@pytest.mark.parametrize("pair", [(0, 1), (2, 3)])
def test_h_heavy_vs_e_heavy(encoder, tiles, pair):
    h_idx, e_idx = pair
    out = encoder.encode(tiles)
    h, e = out[h_idx], out[e_idx]
    assert h[H_MEAN] > e[H_MEAN] + 0.1
    assert e[E_MEAN] > h[E_MEAN]
    assert (h[H_FRACTIONS] > 0.05).all() and (e[H_FRACTIONS] < 0.01).all()
    # Dozens of nuclei in the H tile, no blob at all in the smooth pink one.
    assert h[BLOB_DENSITY][0] * 256 * 256 / 1e4 >= 20
    assert (e[BLOB_DENSITY] == 0).all()
    # The H channel's filter-bank energy is far higher with nuclei than on smooth stroma.
    h_bank = h[BANK].reshape(3, 4, 15)
    e_bank = e[BANK].reshape(3, 4, 15)
    assert (h_bank[0, :, 13] > 5 * e_bank[0, :, 13]).all()  # mean relu(-LoG) of H at every level


def test_blank_tile_is_zero_except_documented(encoder, tiles):
    out = encoder.encode(tiles[-1:])[0]
    expected = torch.zeros_like(out)
    expected[GREY_MEAN] = 1.0
    expected[list(ZERO_BINS)] = 1.0
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_other_tile_sizes_are_resized(encoder, tiles):
    small = tiles[:2, ::2, ::2].contiguous()  # (2,128,128,3)
    out = encoder.encode(small)
    assert out.shape == (2, encoder.dim) and torch.isfinite(out).all()
    assert out[0, H_MEAN] > out[1, H_MEAN]


def test_rejects_non_uint8(encoder):
    with pytest.raises(EncoderError, match="uint8"):
        encoder.encode(torch.zeros(1, 256, 256, 3))


def test_noise_has_more_fine_texture_than_smooth_stroma(encoder, tiles):
    out = encoder.encode(tiles)
    assert (out[4, FINE] > out[1, FINE]).all()


# ---- equal to the straightforward v1.0 implementation (tests/builtin_he_reference.py) ---------------

# Features read through a threshold or a local maximum: histograms, joint histogram, tissue and dark
# fractions, H fractions, blob densities; the optimised encoder computes their inputs with the v1.0
# operations in the v1.0 order, so these must be bit-identical, not merely close.
THRESHOLDED = [*range(19, 59), 60, 61, *range(62, 70)]
EDGE_FRACTIONS = [84 + 15 * k + 6 for k in range(12)]  # [6] of every (channel, level) filter-bank block


# Features that measure spread (standard deviations, skewness, correlation, finest texture, filter bank):
# 0 on a constant tile. v1.0 centres in float32, so on a constant non-white tile they hold the rounding
# error of its float32 mean (stds ~1e-6, skewness up to ±1); the fused CPU kernel accumulates in float64
# and gives the exact 0.
SPREAD = [1, 3, 5, 7, 8, 10, 11, 13, 14, 16, 18, 59, *range(72, 264)]
# Skewness of H, E, D: v1.0's float32 third moments carry absolute errors of up to ~1e-5 (relative 3.5e-4 on
# the smooth E tile, whose skewness is 0.0196), which the fused kernel's float64 sums do not
# (test_fused_skewness_is_float64_accurate): compared to v1.0 with that absolute tolerance.
SKEWNESS = [8, 11, 14]


def _assert_close(out: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """out ≈ expected (rtol, atol 1e-6), the skewness columns to 2e-5 absolute (see SKEWNESS)."""
    rest = [k for k in range(builtin_he.DIM) if k not in SKEWNESS]
    torch.testing.assert_close(out[:, rest], expected[:, rest], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(out[:, SKEWNESS], expected[:, SKEWNESS], rtol=rtol, atol=2e-5)


def _assert_equals_reference(out: torch.Tensor, tiles_uint8: torch.Tensor, exact_on_constant_tiles: bool) -> None:
    from builtin_he_reference import reference_features

    expected = reference_features(tiles_uint8.permute(0, 3, 1, 2).float())
    if exact_on_constant_tiles:
        constant = (tiles_uint8 == tiles_uint8[:, :1, :1]).flatten(1).all(1)
        expected[torch.nonzero(constant)[:, None], torch.tensor(SPREAD)] = 0.0
        _assert_close(out, expected, rtol=1e-4)
    else:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    exact = THRESHOLDED + EDGE_FRACTIONS
    assert torch.equal(out[:, exact], expected[:, exact])


def _encode_by(path: str, tiles_uint8: torch.Tensor) -> torch.Tensor:
    """Features of the tiles through the fused CPU kernel or through the torch path (the CUDA code)."""
    model = builtin_he.BuiltinHE(fused_cpu=path == "fused")
    with torch.inference_mode():
        return model(builtin_he.tile_transform(tiles_uint8))


def _cmu_tiles(path, n: int, seed: int) -> torch.Tensor:
    """(n, 256, 256, 3) uint8 tiles at random level-0 positions of the real CMU slide."""
    from msrl_model.slide import open_slide

    rng = np.random.default_rng(seed)
    with open_slide(path) as slide:
        w, h = slide.dimensions
        xs, ys = rng.integers(0, w - 256, n), rng.integers(0, h - 256, n)
        return torch.from_numpy(np.stack([slide.read_region((int(x), int(y)), 0, (256, 256)) for x, y in zip(xs, ys)]))


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_equals_v1_reference_on_synthetic_noise_and_blank_tiles(tiles, path):
    rng = np.random.default_rng(3)
    smooth = np.clip(rng.normal(200, 25, (4, 32, 32, 3)), 0, 255).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    constant = torch.stack([torch.full((256, 256, 3), v, dtype=torch.uint8) for v in (0, 128)])
    batch = torch.cat([tiles, torch.from_numpy(smooth), constant])
    _assert_equals_reference(_encode_by(path, batch), batch, exact_on_constant_tiles=path == "fused")


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_equals_v1_reference_on_real_cmu_tiles(cmu_slide, path):
    batch = _cmu_tiles(cmu_slide, 24, seed=0)
    _assert_equals_reference(_encode_by(path, batch), batch, exact_on_constant_tiles=path == "fused")


def test_cpu_encoder_uses_the_fused_kernel(encoder, tiles):
    """The registry's CPU encoder gives the fused kernel's features (bit for bit)."""
    assert torch.equal(encoder.encode(tiles), _encode_by("fused", tiles))


def test_cpu_encoder_without_numba_runs_the_torch_path(tiles, monkeypatch, caplog):
    """Where numba cannot be imported, the CPU encoder says so once and gives the torch path's features."""
    import logging

    import msrl_model.encoders

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    for module in ("builtin_he_cpu", "builtin_he_kernel"):  # imported afresh: they import numba
        monkeypatch.delitem(sys.modules, f"msrl_model.encoders.{module}", raising=False)
        monkeypatch.delattr(msrl_model.encoders, module, raising=False)
    builtin_he.fused_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="msrl_model.encoders.builtin_he"):
            out = _encode_by("fused", tiles)  # asks for the fused kernel
        assert builtin_he.fused_kernel() is None
        assert "pip install numba" in caplog.text
        assert torch.equal(out, _encode_by("torch", tiles))
    finally:
        builtin_he.fused_kernel.cache_clear()


def test_float_input_path_equals_the_uint8_paths(tiles):
    """Resized tiles reach the model as float and take the logarithm (torch path); 256² uint8 tiles go
    through the lookup tables (torch path on CUDA, fused kernel on the CPU). On the same pixels the torch
    paths are bit-identical and the fused kernel equal to float32 rounding, thresholded features exactly."""
    x = builtin_he.tile_transform(tiles)
    assert x.dtype == torch.uint8
    with torch.inference_mode():
        from_float = builtin_he.BuiltinHE()(x.float())
    assert torch.equal(_encode_by("torch", tiles), from_float)
    fused = _encode_by("fused", tiles)
    _assert_close(fused, from_float, rtol=1e-5)
    exact = THRESHOLDED + EDGE_FRACTIONS
    assert torch.equal(fused[:, exact], from_float[:, exact])


def test_fused_skewness_is_float64_accurate(tiles):
    """The fused kernel's skewness of H, E and D equals the skewness of the v1.0 level-1 maps (float32)
    computed in float64."""
    import builtin_he_reference as v1

    od = torch.log(tiles.permute(0, 3, 1, 2).float() + 1.0).neg_().add_(math.log(256.0))  # v1.0's float32 maps
    stains = v1._mix(v1._haar(od)[0], v1._od_to_channels())[:, :3].flatten(2).double()  # (b, H E D, n)
    centred = stains - stains.mean(-1, keepdim=True)
    std = centred.square().mean(-1).sqrt()
    skew = centred.pow(3).mean(-1) / std.clamp_min(1e-6) ** 3
    varied = std.min(1).values > 1e-3  # not the blank tile
    fused = _encode_by("fused", tiles)[:, SKEWNESS].double()
    torch.testing.assert_close(fused[varied], skew[varied], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunk_size_changes_nothing(tiles, chunk):
    x = builtin_he.tile_transform(tiles)
    with torch.inference_mode():
        chunked = builtin_he.BuiltinHE(chunk=chunk, fused_cpu=False)(x)
        default = builtin_he.BuiltinHE(fused_cpu=False)(x)
        torch.testing.assert_close(chunked, default, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_fused_kernel_gives_the_same_bits_on_any_thread_count(tiles, threads):
    """The kernel splits a batch over threads, tile by tile: the thread count changes no bit."""
    from msrl_model.encoders import builtin_he_cpu

    constants = builtin_he.BuiltinHE()._cpu_constants()
    x = tiles.repeat(2, 1, 1, 1).contiguous().numpy()  # 12 tiles
    one = builtin_he_cpu.encode_tiles(x, constants, builtin_he.DIM, 1)
    many = builtin_he_cpu.encode_tiles(x, constants, builtin_he.DIM, threads)
    for a, b in zip([one[0], one[1], *one[2], one[3]], [many[0], many[1], *many[2], many[3]]):
        assert np.array_equal(a, b)


def test_cpu_encoder_reuses_freed_memory(encoder, tiles):
    """Building builtin-he on the CPU keeps freed memory in the heap (glibc), so a warm encode no longer
    page-faults its working set back in: ~1,000 faults per tile without, 0-70 with (OpenMP workers' arenas)."""
    import resource

    if not builtin_he.keep_freed_memory():
        pytest.skip("mallopt is glibc's")
    batch = tiles.repeat(3, 1, 1, 1)  # 18 tiles
    encoder.encode(batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    encoder.encode(batch)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 200 * batch.shape[0]


@pytest.mark.parametrize("edges, per_unit, cells", [
    (builtin_he._H_EDGES + builtin_he._JOINT_H_EDGES, builtin_he._H_PER_UNIT, builtin_he._H_CELLS),
    (builtin_he._E_EDGES + builtin_he._JOINT_E_EDGES, builtin_he._E_PER_UNIT, builtin_he._E_CELLS)])
def test_grid_cells_split_exactly_at_every_edge(edges, per_unit, cells):
    """The histograms count pixels by grid cell; for every float32 within 20,000 ulps of each H / E edge
    (and ±0 and the subnormals around an edge at 0), cell >= the edge's first cell exactly when x >= edge."""
    span = np.arange(-20_000, 20_000, dtype=np.int64)
    for edge in edges:
        bits = np.float32(edge).view(np.int32).astype(np.int64)
        if edge == 0:
            tiny = np.arange(20_000, dtype=np.int32).view(np.float32)
            values = np.concatenate([tiny, -tiny])
        else:
            values = (bits + span).astype(np.int32).view(np.float32)
        x = torch.from_numpy(values)
        cell = builtin_he.grid_cell(x, per_unit, cells)
        assert torch.equal(cell >= builtin_he._cell_of(edge, per_unit), x >= float(np.float32(edge))), edge
        assert cell.min() >= 0 and cell.max() <= cells - 1


@pytest.mark.parametrize("channel, edges, per_unit", [
    (3, builtin_he._H_EDGES + builtin_he._JOINT_H_EDGES, builtin_he._H_PER_UNIT),
    (4, builtin_he._E_EDGES + builtin_he._JOINT_E_EDGES, builtin_he._E_PER_UNIT)])
def test_fused_kernel_cells_split_exactly_at_every_edge(channel, edges, per_unit):
    """The fused kernel's histogram cells: for the float32 values within 8,192 ulps of each H / E edge placed
    in the level-1 H (or E) map, the pixels counted at or above the edge's first cell are exactly those
    >= the edge."""
    from msrl_model.encoders import builtin_he_kernel

    constants = builtin_he.BuiltinHE()._cpu_constants()
    scalars = constants["scalars"]
    side = builtin_he_kernel.FINE
    for edge in edges:
        bits = np.int64(np.float32(edge).view(np.int32))
        values = (bits + np.arange(-side * side // 2, side * side // 2)).astype(np.int32).view(np.float32)
        if edge == 0:  # ±0 and the subnormals
            tiny = np.arange(side * side // 2, dtype=np.int32).view(np.float32)
            values = np.concatenate([tiny, -tiny])
        maps = np.zeros((8, side, side), np.float32)
        maps[channel] = values.reshape(side, side)
        cells = np.zeros((builtin_he._H_CELLS, builtin_he._E_CELLS), np.int64)
        builtin_he_kernel._counts(maps, constants["h_thresholds"], scalars[0], scalars[1], scalars[2], scalars[3],
                               cells, np.zeros(6))
        per_cell = cells.sum(1) if channel == 3 else cells.sum(0)
        first = builtin_he._cell_of(edge, per_unit)
        assert per_cell[first:].sum() == (values >= np.float32(edge)).sum(), edge
