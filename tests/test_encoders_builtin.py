"""builtin-he encoder and the encoder registry: shape, determinism, batch invariance, H vs E discrimination."""

from __future__ import annotations

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


def _assert_equals_reference(out: torch.Tensor, tiles_uint8: torch.Tensor) -> None:
    from builtin_he_reference import reference_features

    expected = reference_features(tiles_uint8.permute(0, 3, 1, 2).float())
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    exact = THRESHOLDED + EDGE_FRACTIONS
    assert torch.equal(out[:, exact], expected[:, exact])


def _cmu_tiles(path, n: int, seed: int) -> torch.Tensor:
    """(n, 256, 256, 3) uint8 tiles at random level-0 positions of the real CMU slide."""
    from msrl_model.slide import open_slide

    rng = np.random.default_rng(seed)
    with open_slide(path) as slide:
        w, h = slide.dimensions
        xs, ys = rng.integers(0, w - 256, n), rng.integers(0, h - 256, n)
        return torch.from_numpy(np.stack([slide.read_region((int(x), int(y)), 0, (256, 256)) for x, y in zip(xs, ys)]))


def test_equals_v1_reference_on_synthetic_noise_and_blank_tiles(encoder, tiles):
    rng = np.random.default_rng(3)
    smooth = np.clip(rng.normal(200, 25, (4, 32, 32, 3)), 0, 255).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    batch = torch.cat([tiles, torch.from_numpy(smooth), torch.zeros(1, 256, 256, 3, dtype=torch.uint8)])
    _assert_equals_reference(encoder.encode(batch), batch)


def test_equals_v1_reference_on_real_cmu_tiles(encoder, cmu_slide):
    batch = _cmu_tiles(cmu_slide, 24, seed=0)
    _assert_equals_reference(encoder.encode(batch), batch)


def test_float_input_path_equals_the_uint8_lookup_path(encoder, tiles):
    """Resized tiles reach the model as float and take the logarithm; 256² uint8 tiles go through the
    byte-pair lookup tables. On the same pixels both give identical features."""
    x = builtin_he.tile_transform(tiles)
    assert x.dtype == torch.uint8
    with torch.inference_mode():
        assert torch.equal(encoder.model(x), encoder.model(x.float()))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunk_size_changes_nothing(tiles, chunk):
    x = builtin_he.tile_transform(tiles)
    with torch.inference_mode():
        chunked, default = builtin_he.BuiltinHE(chunk=chunk)(x), builtin_he.BuiltinHE()(x)
        torch.testing.assert_close(chunked, default, rtol=1e-5, atol=1e-6)


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
