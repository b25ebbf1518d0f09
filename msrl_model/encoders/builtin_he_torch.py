"""``builtin-he``'s torch path: the maths of :mod:`msrl_model.encoders.builtin_he` as batched torch
operations, for CUDA, for float input (tiles of other sizes, resized) and for a CPU without numba (256²
uint8 tiles on the CPU otherwise go through the fused kernel, :mod:`~msrl_model.encoders.builtin_he_cpu`).

Same values as v1.0, far fewer passes over memory than v1.0's straightforward code:

* 256² uint8 tiles never go through a float logarithm: every 2 horizontally adjacent bytes of a
  channel form a 16-bit index into lookup tables of (OD(left) ± OD(right))/4 and (left + right)/4,
  built once with the very float32 operations of step 1. The Haar step is then 5 row-pair adds.
  Other tile sizes are resized in float and take the logarithm; both give the same pair sums.
* Colour statistics run on one (b, 8, 128²) map stack (OD r,g,b, H, E, ODm, D, Y): one centring,
  one square. Every H edge is a multiple of 0.1 and every E edge of 0.05, so each pixel gets an
  (H cell, E cell) of those grids (``floor`` of one product, which splits exactly at each float32
  edge: tested) and one bincount per batch gives the 22 x 22 joint cell counts; the H and E
  histograms and the joint histogram are differences of their suffix sums (exact integers).
* The filter bank keeps the blur unscaled (256·G) and folds the power-of-two factors of the blur,
  Sobel, gxy and steering into the statistics, which is exact in float32. Means of |x| are sums of
  ``abs``, standard deviations of band, |∇g| and LoG use E[x²] - E[x]² (their means are small against
  their spread), that of G is centred.
* Intermediates are reused in place (one scratch map per size for every |x|, x² and centred map).
  Levels 0-1 run in chunks of 8 tiles per torch thread (cache), levels 2-4 on the whole batch (fewer,
  larger ops). On glibc, :func:`~msrl_model.encoders.builtin_he.keep_freed_memory` stops the chunks'
  maps from being page-faulted back in on every call.

Every operation is elementwise, a shift-add, a table lookup, a per-tile reduction or a per-tile count,
so a tile's features do not depend on the rest of its batch.
"""

from __future__ import annotations

import sys

import torch

from msrl_model.encoders.builtin_he import (
    _BLOB_LEVELS, _BLOB_THRESHOLDS, _BLUR_SCALE, _COLOUR_DIM, _D, _DARK_Y, _E, _E_CELLS, _E_PER_UNIT, _FINE_DIM,
    _H, _H_CELLS, _H_FRACTION_THRESHOLDS, _H_PER_UNIT, _LEVELS, _MAPS, _OD, _ODM, _TEXTURE_CHANNELS,
    _TEXTURE_STATS, _TISSUE_OD, _Y, INPUT_SIZE, _optical_density, _sum, edge_statistics, grid_cell, histograms)

_CHUNK_PER_THREAD = 8  # CPU tiles per chunk of level-0/1 work and torch thread: fewer, larger ops vs cache


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The torch path of :meth:`BuiltinHE.forward <msrl_model.encoders.builtin_he.BuiltinHE.forward>`: x
    (b,3,256,256) uint8 or float, b > 0, on ``model``'s device (its buffers) -> (b, DIM) float32."""
    b = x.shape[0]
    chunk = model.chunk or (b if x.is_cuda else _CHUNK_PER_THREAD * torch.get_num_threads())
    fine_level = INPUT_SIZE // 2
    level2 = (fine_level - 4) // 2  # side of the level-2 grid: valid blur, then every other pixel
    colour = x.new_empty(b, _COLOUR_DIM, dtype=torch.float32)
    fractions = x.new_empty(b, len(_H_FRACTION_THRESHOLDS), dtype=torch.float32)
    fine = x.new_empty(b, _FINE_DIM, dtype=torch.float32)
    bank = x.new_empty(b, _TEXTURE_CHANNELS, len(_LEVELS), _TEXTURE_STATS, dtype=torch.float32)
    g = x.new_empty(b, _TEXTURE_CHANNELS, level2, level2, dtype=torch.float32)
    for i in range(0, b, chunk):
        part = slice(i, i + chunk)
        maps = _level1(model, x[part], colour[part], fractions[part], fine[part])
        bank[part, :, 0], blur, _ = _texture_level(maps[:, _H:_ODM + 1])
        torch.mul(blur[..., ::2, ::2], 1.0 / _BLUR_SCALE, out=g[part])  # Gaussian pyramid: next level
    blobs = []  # per blob level (b, 3): densities at the two thresholds, mean strength
    for k, level in enumerate(_LEVELS[1:], 1):  # the small levels on the whole batch: fewer, larger ops
        bank[:, :, k], blur, blob = _texture_level(g, blob=level in _BLOB_LEVELS)
        blobs += [] if blob is None else [blob]
        if level < _LEVELS[-1]:
            g = blur[..., ::2, ::2] * (1.0 / _BLUR_SCALE)
    blob_feats = torch.stack(blobs, 1)  # (b, 2 levels, 3)
    density, strength = blob_feats[..., :len(_BLOB_THRESHOLDS)].flatten(1), blob_feats[..., -1]
    return torch.cat([colour, fractions, density, strength, fine, bank.flatten(1)], 1)


def pair_tables() -> torch.Tensor:
    """(3, 65536) float32 lookup tables of two horizontally adjacent bytes (left, right) of one channel.

    Indexed by the native 16-bit word of the byte pair: rows (OD(left) + OD(right))/4,
    (OD(left) - OD(right))/4 and (left + right)/4, each computed with the float32 operations the
    float path uses, so both paths give bit-identical pair sums.
    """
    values = torch.arange(256, dtype=torch.float32)
    od = _optical_density(values)
    word = torch.arange(65536)
    low, high = word % 256, word // 256  # the first byte in memory is the low byte on little-endian CPUs
    left, right = (low, high) if sys.byteorder == "little" else (high, low)
    return torch.stack([(od[left] + od[right]) * 0.25, (od[left] - od[right]) * 0.25,
                        (values[left] + values[right]) * 0.25])


def _pair_sums(tables: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x (b,3,H,W) -> (3, b, 3, H, W/2): OD pair sums /4, OD pair differences /4, raw pair sums /4
    of horizontally adjacent pixels (columns 2j, 2j+1)."""
    if x.dtype == torch.uint8:  # one 16-bit word per byte pair, three table lookups
        words = x.contiguous().view(torch.uint16).int().flatten()
        out = tables.new_empty(3, words.numel())
        for k in range(3):
            torch.index_select(tables[k], 0, words, out=out[k])
        return out.view(3, *x.shape[:-1], x.shape[-1] // 2)
    od = _optical_density(x)
    left, right = od[..., 0::2], od[..., 1::2]
    return torch.stack([(left + right) * 0.25, (left - right) * 0.25, (x[..., 0::2] + x[..., 1::2]) * 0.25])


def _level1(model: torch.nn.Module, x: torch.Tensor, colour: torch.Tensor, fractions: torch.Tensor,
            fine: torch.Tensor) -> torch.Tensor:
    """Tiles x (b,3,256,256) -> the level-1 map stack (b, 8, 128, 128) (see ``_MAPS``); fills the
    colour (b, 62), H-fraction (b, 4) and finest-texture (b, 12) features in place."""
    sums, diffs, raw = _pair_sums(model.pair_tables, x)  # each (b,3,256,128)
    top, bottom = slice(0, None, 2), slice(1, None, 2)  # rows 2i and 2i+1
    b, _, h, w = sums.shape[0], sums.shape[1], sums.shape[2] // 2, sums.shape[3]
    maps = sums.new_empty(b, _MAPS, h, w)
    od = torch.add(sums[..., top, :], sums[..., bottom, :], out=maps[:, _OD])  # Haar LL: block means
    weights = model.od_to_channels.tolist()
    _mix_into(maps[:, _H:_D + 1], od, weights)  # H, E, ODm, D
    grey = raw[..., top, :] + raw[..., bottom, :]  # (b,3,h,w) block means of R, G, B
    _mix_into(maps[:, _Y:], grey, [[0.299], [0.587], [0.114]])
    maps[:, _Y].mul_(1.0 / 255.0)
    details = sums.new_empty(b, 3, 3, h, w)  # (b, band LH/HL/HH, OD channel, h, w)
    torch.add(diffs[..., top, :], diffs[..., bottom, :], out=details[:, 0])
    torch.sub(sums[..., top, :], sums[..., bottom, :], out=details[:, 1])
    torch.sub(diffs[..., top, :], diffs[..., bottom, :], out=details[:, 2])
    texture_w = model.od_to_channels[:, :_TEXTURE_CHANNELS].T  # OD -> (H, E, ODm)
    bands = torch.matmul(texture_w, details.flatten(3))  # (b, 3 bands, 3 channels, h·w)
    n = h * w
    fine_abs = bands.abs().sum(-1).transpose(1, 2) / n  # (b, 3 channels, 3 bands)
    fine_rms = (bands.mul_(bands).sum(-1).sum(1) / n).sqrt()  # (b, 3 channels)
    fine.copy_(torch.cat([fine_abs, fine_rms[..., None]], 2).flatten(1))
    flat = maps.flatten(2)
    above = flat.new_empty(b, len(_H_FRACTION_THRESHOLDS), n)
    fractions.copy_(torch.gt(flat[:, _H, None], model.h_fraction_thresholds[:, None], out=above).sum(-1) / n)
    colour.copy_(_colour(flat, n))
    return maps


def _colour(maps: torch.Tensor, n: int) -> torch.Tensor:
    """Level-1 map stack maps (b, 8, n) -> the 62 colour features (b, 62)."""
    b = maps.shape[0]
    mean = maps.sum(-1) / n  # (b, 8)
    centred = maps - mean[..., None]
    powers = centred * centred
    std = (powers.sum(-1) / n).sqrt()  # (b, 8)
    stains = [_H, _E, _D]
    cubes = powers.mul_(centred).sum(-1)[:, stains] / n  # all 8 maps: one contiguous pass beats a gather
    skew = cubes / std[:, stains].clamp_min(1e-6) ** 3  # (b, 3): mean z³
    cov = torch.mul(centred[:, _H], centred[:, _E], out=powers[:, 0]).sum(-1) / n
    denom = std[:, _H] * std[:, _E]
    corr = torch.where(denom > 1e-6, cov / denom.clamp_min(1e-6), torch.zeros_like(cov))
    cells = _joint_cells(maps[:, _H], maps[:, _E], powers[:, 0])  # (b, H cells, E cells)
    tissue = torch.gt(maps[:, _ODM], _TISSUE_OD, out=torch.empty_like(maps[:, _ODM])).sum(-1) / n
    dark = torch.lt(maps[:, _Y], _DARK_Y, out=torch.empty_like(maps[:, _Y])).sum(-1) / n
    feats = [
        torch.stack([mean[:, _OD], std[:, _OD]], -1).reshape(b, 6),  # R mean, R std, G mean, ...
        torch.stack([mean[:, stains], std[:, stains], skew], -1).reshape(b, 9),  # H mean, std, skew, E ...
        torch.stack([mean[:, _ODM], std[:, _ODM], mean[:, _Y], std[:, _Y]], -1),
        histograms(cells, n),
        corr[:, None],
        tissue[:, None],
        dark[:, None],
    ]
    return torch.cat(feats, 1)


def _mix_into(out: torch.Tensor, x: torch.Tensor, weights: list[list[float]]) -> None:
    """out[:, j] = per-pixel linear map of x's 3 channels, weights[i][j] from input i to output j.

    Written as scalar multiplies and adds, each rounded, in a fixed order ((x0·w0 + x1·w1) + x2·w2) so
    every element is computed the same way whatever the batch size (thresholds read these maps)."""
    term = torch.empty_like(x[:, 0])
    for j, (w0, w1, w2) in enumerate(zip(*weights)):
        mixed = torch.mul(x[:, 0], w0, out=out[:, j])
        mixed.add_(torch.mul(x[:, 1], w1, out=term)).add_(torch.mul(x[:, 2], w2, out=term))


def _joint_cells(h: torch.Tensor, e: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """H and E maps (b, n), a (b, n) float buffer -> (b, H cells, E cells) pixel counts per
    (:func:`grid_cell` of H, of E): one bincount per batch."""
    b = h.shape[0]
    cells = _H_CELLS * _E_CELLS
    index = grid_cell(e, _E_PER_UNIT, _E_CELLS, out=scratch).add_(grid_cell(h, _H_PER_UNIT, _H_CELLS), alpha=_E_CELLS)
    index += torch.arange(0, b * cells, cells, device=h.device, dtype=h.dtype)[:, None]  # tile i: its own bins
    return torch.bincount(index.flatten().long(), minlength=b * cells).view(b, _H_CELLS, _E_CELLS)


def _binomial_sum(g: torch.Tensor) -> torch.Tensor:
    """Valid 5x5 binomial filter [1 4 6 4 1] per axis, unscaled: (..., h, w) -> 256·G (..., h-4, w-4).

    Four [1 1] passes per axis (shifted adds, no padding); G = the σ = 1 px blur. Exact per element,
    so results never depend on the batch size, and the 1/256 is a power of two: callers fold it.
    """
    for _ in range(4):
        g = g[..., 1:] + g[..., :-1]
    for _ in range(4):
        g = g[..., 1:, :] + g[..., :-1, :]
    return g


def _local_max(x: torch.Tensor) -> torch.Tensor:
    """True where x (..., h, w) is the maximum of its 3x3 neighbourhood (interior (h-2, w-2))."""
    row = torch.maximum(torch.maximum(x[..., :-2], x[..., 1:-1]), x[..., 2:])  # (..., h, w-2)
    box = torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])  # (..., h-2, w-2)
    return x[..., 1:-1, 1:-1] >= box


def _texture_level(g: torch.Tensor, blob: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pyramid level g (b,C,n,n) -> 15 stats per channel (b,C,15), the unscaled blur 256·G
    (b,C,n-4,n-4) and, with ``blob``, the H blob features (b, 3): densities at the two thresholds,
    then the mean strength (else None).

    Unscaled maps (exact powers of two of the documented ones): S = 256·G, X = 256·gxx, Y = 256·gyy,
    L = X + Y = 256·LoG, Q = 1024·gxy, 1024·R_45 = 2L + Q, -1024·R_135 = 2L - Q, 8·|∇g| = sqrt(sx² + sy²)
    with the Sobel sums sx, sy; 256·anisotropy = hypot(X - Y, Q/2).
    """
    s = _binomial_sum(g)  # (b,C,n-4,n-4)
    band = torch.add(g[..., 2:-2, 2:-2], s, alpha=-1.0 / _BLUR_SCALE)  # g - G
    n_band = band.shape[-1] * band.shape[-2]
    scratch = torch.abs(band)  # one buffer reused for every |x|, x² and centred map of this size
    band_mean, band_abs = _sum(band) / n_band, _sum(scratch) / n_band
    band_var = _sum(torch.mul(band, band, out=scratch)) / n_band - band_mean * band_mean
    torch.sub(s, (_sum(s) / n_band)[..., None, None], out=scratch)
    s_std = (_sum(scratch.mul_(scratch)) / n_band).sqrt()

    dx = g[..., 2:] - g[..., :-2]  # (b,C,n,n-2)
    dx = dx[..., 1:, :] + dx[..., :-1, :]  # row pairs, shared: (d0 + d1) + (d1 + d2) as in v1.0
    grad = dx[..., 1:, :] + dx[..., :-1, :]  # Sobel x * 8, (n-2,n-2)
    dy = g[..., 2:, :] - g[..., :-2, :]  # (b,C,n-2,n)
    dy = dy[..., 1:] + dy[..., :-1]
    sy = dy[..., 1:] + dy[..., :-1]  # Sobel y * 8
    grad.mul_(grad).add_(sy.mul_(sy))  # sx² + sy², each square rounded as in v1.0
    n_grad = grad.shape[-1] * grad.shape[-2]
    grad_square_mean = _sum(grad) / n_grad  # mean (8|∇g|)²
    grad.sqrt_()  # 8|∇g|, the v1.0 operations (the edge threshold reads it)
    grad_stats = edge_statistics(grad, grad_square_mean,
                                 lambda above, threshold: _sum(torch.gt(above, threshold[..., None, None], out=sy)))

    centre = s[..., 1:-1, 1:-1]
    xx = (s[..., 1:-1, 2:] + s[..., 1:-1, :-2]).add_(centre, alpha=-2.0)  # (b,C,n-6,n-6)
    yy = (s[..., 2:, 1:-1] + s[..., :-2, 1:-1]).add_(centre, alpha=-2.0)
    scratch = s[..., 2:, :-2] + s[..., :-2, 2:]
    xy = (s[..., 2:, 2:] + s[..., :-2, :-2]).sub_(scratch)
    log = xx + yy
    n_log = log.shape[-1] * log.shape[-2]
    steer = 1024.0  # R_θ scale
    r_0 = _sum(torch.abs(xx, out=scratch)) / (n_log * _BLUR_SCALE)
    r_90 = _sum(torch.abs(yy, out=scratch)) / (n_log * _BLUR_SCALE)
    r_45 = _sum(torch.add(xy, log, alpha=2.0, out=scratch).abs_()) / (n_log * steer)
    r_135 = _sum(torch.sub(xy, log, alpha=2.0, out=scratch).abs_()) / (n_log * steer)
    aniso = _sum(torch.hypot(xx.sub_(yy), xy.mul_(0.5), out=scratch)) / (n_log * _BLUR_SCALE)
    stats = torch.stack([
        s_std / _BLUR_SCALE,
        band_var.clamp_min(0).sqrt(),
        (band_abs + band_mean) / 2,
        (band_abs - band_mean) / 2,
        *grad_stats,
        r_0, r_45, r_90, r_135, aniso,
        *_log_stats(log, n_log, scratch),
    ], -1)
    return stats, s, _blob_features(log[:, 0]) if blob else None


def _log_stats(log: torch.Tensor, n: int, scratch: torch.Tensor) -> list[torch.Tensor]:
    """Unscaled L = 256·LoG (b,C,h,w), n = h·w, a buffer of its shape -> std LoG, mean relu(-LoG),
    mean relu(LoG), each (b,C)."""
    mean = _sum(log) / n
    absolute = _sum(torch.abs(log, out=scratch)) / n
    var = _sum(torch.mul(log, log, out=scratch)) / n - mean * mean
    return [var.clamp_min(0).sqrt() / _BLUR_SCALE, (absolute - mean) / (2 * _BLUR_SCALE),
            (absolute + mean) / (2 * _BLUR_SCALE)]


def _blob_features(log_h: torch.Tensor) -> torch.Tensor:
    """Unscaled LoG of H (b,h,w) -> (b, 3): local maxima of B = relu(-LoG) per 10⁴ px above each of
    the two thresholds, then mean B at the maxima above the first (0 if none)."""
    blob = torch.relu(-log_h)
    peak = _local_max(blob)  # (b,h-2,w-2)
    inner = blob[..., 1:-1, 1:-1]
    per_1e4 = 1e4 / (INPUT_SIZE * INPUT_SIZE)  # count per 10⁴ px of the 256² tile
    # float32 thresholds times 256 are exact, so the comparisons equal B > threshold
    above = [peak & (inner > float(torch.tensor(t, dtype=torch.float32)) * _BLUR_SCALE) for t in _BLOB_THRESHOLDS]
    density = [a.flatten(1).sum(1).float() * per_1e4 for a in above]
    peaks = above[0].float()
    strength = (inner * peaks).flatten(1).sum(1) / (peaks.flatten(1).sum(1).clamp_min(1.0) * _BLUR_SCALE)
    return torch.stack([*density, strength], 1)
