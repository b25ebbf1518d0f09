"""builtin-he v1.0 written the straightforward way: the reference the optimised encoder is tested against.

The maths and the output layout are documented in :mod:`msrl_model.encoders.builtin_he`; this is the
v1.0 implementation (per-op torch, one tile chunk at a time, every map at full size), kept here only
as the test oracle: ``reference_features(x)`` for x (B,3,256,256) float RGB in [0,255] -> (B, 264).
"""

from __future__ import annotations

import math

import torch

from msrl_model.encoders.builtin_he import (
    _BLOB_LEVELS, _BLOB_THRESHOLDS, _DARK_Y, _E_EDGES, _H_EDGES, _H_FRACTION_THRESHOLDS, _JOINT_E_EDGES,
    _JOINT_H_EDGES, _LEVELS, _RGB_FROM_HED, _TISSUE_OD, DIM, INPUT_SIZE)


def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the last two dims: (..., h, w) -> (...) float32 (bool maps give fractions)."""
    total = x.sum(dim=(-2, -1), dtype=torch.float32) if x.dtype == torch.bool else x.sum(dim=(-2, -1))
    return total / (x.shape[-2] * x.shape[-1])


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the last two dims: (..., h, w) -> (...), (...)."""
    mean = _mean(x)
    centred = x - mean[..., None, None]
    return mean, _mean(centred * centred).sqrt()


def _binomial_blur(g: torch.Tensor) -> torch.Tensor:
    """Valid 5x5 binomial blur [1 4 6 4 1]/16 per axis (σ = 1 px): (..., h, w) -> (..., h-4, w-4).

    Built from four [1 1] passes per axis (shifted adds, no padding); exact per element, so
    results never depend on the batch size.
    """
    for _ in range(4):
        g = g[..., 1:] + g[..., :-1]
    for _ in range(4):
        g = g[..., 1:, :] + g[..., :-1, :]
    return g * (1.0 / 256.0)


def _haar(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One 2x2 Haar step (..., 2h, 2w) -> LL, LH, HL, HH each (..., h, w), all with weight 1/4.

    For a block [[a, b], [c, d]]: LL = (a+b+c+d)/4 (block mean), LH = (a-b+c-d)/4 (left-right),
    HL = (a+b-c-d)/4 (top-bottom), HH = (a-b-c+d)/4 (diagonal).
    """
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    s1, d1, s2, d2 = a + b, a - b, c + d, c - d
    return (s1 + s2) * 0.25, (d1 + d2) * 0.25, (s1 - s2) * 0.25, (d1 - d2) * 0.25


def _local_max(x: torch.Tensor) -> torch.Tensor:
    """True where x (..., h, w) is the maximum of its 3x3 neighbourhood (interior (h-2, w-2))."""
    row = torch.maximum(torch.maximum(x[..., :-2], x[..., 1:-1]), x[..., 2:])  # (..., h, w-2)
    box = torch.maximum(torch.maximum(row[..., :-2, :], row[..., 1:-1, :]), row[..., 2:, :])  # (..., h-2, w-2)
    return x[..., 1:-1, 1:-1] >= box


def _mix(x: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """Per-pixel linear map of channels: x (b,3,h,w), weights[i][j] from input i to output j -> (b,J,h,w).

    Written as scalar multiply-adds so every element is computed the same way whatever the batch size.
    """
    outs = [x[:, 0] * w0 + x[:, 1] * w1 + x[:, 2] * w2 for w0, w1, w2 in zip(*weights)]
    return torch.stack(outs, 1)


def _od_to_channels() -> list[list[float]]:
    """(3 OD r,g,b) x (4: H, E, D, ODm) float32 weights: the deconvolution plus the OD mean."""
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float64)
    rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    od_mean = torch.full((3, 1), 1.0 / 3.0, dtype=torch.float64)
    return torch.cat([hed_from_rgb, od_mean], 1).float().tolist()


def reference_features(x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """x (B,3,256,256) float RGB in [0,255] -> (B, DIM) float32, v1.0 chunk by chunk."""
    x = x.float()
    if x.shape[0] == 0:
        return x.new_zeros(0, DIM)
    return torch.cat([_features(part) for part in x.split(chunk)])


def _features(x: torch.Tensor) -> torch.Tensor:
    """x (b,3,256,256) -> (b, DIM)."""
    weights = _od_to_channels()
    od = torch.log(x + 1.0).neg_().add_(math.log(256.0))  # -ln((I+1)/256), (b,3,H,W)
    od_ll, *od_details = _haar(od)  # each (b,3,128,128)
    chans = _mix(od_ll, weights)  # (b,4,128,128): H, E, D, ODm block means
    grey_ll = (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.25
    grey = (grey_ll[:, 0] * 0.299 + grey_ll[:, 1] * 0.587 + grey_ll[:, 2] * 0.114) * (1.0 / 255.0)
    tex_w = [row[:2] + row[3:] for row in weights]  # OD -> (H, E, ODm)
    fine = torch.stack([_mix(band, tex_w) for band in od_details], 2)  # (b,3 ch,3 bands,128,128)
    fine_abs = _mean(fine.abs())  # (b,3,3)
    fine_rms = _mean(fine * fine).sum(2).sqrt()  # (b,3)
    fine_feats = torch.cat([fine_abs, fine_rms[..., None]], 2).flatten(1)  # (b, 3 ch x 4)
    nuclear, texture = _nuclear_and_texture(chans[:, [0, 1, 3]])
    return torch.cat([_colour(od_ll, chans, grey), nuclear, fine_feats, texture], 1)


def _colour(od: torch.Tensor, chans: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """Block-mean maps od (b,3,h,w), chans (b,4,h,w) H,E,D,ODm, grey (b,h,w) -> (b, 62)."""
    b = od.shape[0]
    od_mean, od_std = _moments(od)  # (b,3)
    mean, std = _moments(chans)  # (b,4)
    grey_mean, grey_std = _moments(grey)  # (b,)
    z = (chans[:, :3] - mean[:, :3, None, None]) / std[:, :3, None, None].clamp_min(1e-6)
    skew = _mean(z * z * z)  # (b,3)
    h, e = chans[:, 0].contiguous(), chans[:, 1].contiguous()  # (b,h,w)
    hb = _bin_index(h, _JOINT_H_EDGES)  # (b,h,w) in 0..3
    eb = _bin_index(e, _JOINT_E_EDGES)
    joint = _bin_fractions(hb * 4 + eb, 16)  # (b,16), row-major over H bins
    cov = _mean((h - mean[:, 0, None, None]) * (e - mean[:, 1, None, None]))
    denom = std[:, 0] * std[:, 1]
    corr = torch.where(denom > 1e-6, cov / denom.clamp_min(1e-6), torch.zeros_like(cov))
    feats = [
        torch.stack([od_mean, od_std], -1).reshape(b, 6),  # (b,3,2) -> R mean, R std, G mean, ...
        torch.stack([mean[:, :3], std[:, :3], skew], -1).reshape(b, 9),  # (b,3,3) -> H mean, std, skew, E ...
        torch.stack([mean[:, 3], std[:, 3], grey_mean, grey_std], -1),
        _bin_fractions(_bin_index(h, _H_EDGES), len(_H_EDGES) + 1),
        _bin_fractions(_bin_index(e, _E_EDGES), len(_E_EDGES) + 1),
        joint,
        corr[:, None],
        _mean(chans[:, 3] > _TISSUE_OD)[:, None],
        _mean(grey < _DARK_Y)[:, None],
    ]
    return torch.cat(feats, 1)


def _nuclear_and_texture(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-1 maps t (b,3,128,128) of H, E, ODm -> nuclear (b,10), filter-bank texture (b,180)."""
    b = t.shape[0]
    nuclear = [_mean(t[:, 0] > thr) for thr in _H_FRACTION_THRESHOLDS]
    density, strength = [], []
    texture = []  # per level: (b,3,15)
    g = t
    for level in _LEVELS:
        stats, blob = _texture_level(g)
        texture.append(stats)
        if level in _BLOB_LEVELS:
            peak = _local_max(blob)  # (b,h-2,w-2)
            inner = blob[..., 1:-1, 1:-1]
            per_1e4 = 1e4 / (INPUT_SIZE * INPUT_SIZE)  # count per 10⁴ px of the 256² tile
            for thr in _BLOB_THRESHOLDS:
                density.append((peak & (inner > thr)).flatten(1).sum(1).float() * per_1e4)
            peaks = (peak & (inner > _BLOB_THRESHOLDS[0])).float()
            strength.append((inner * peaks).flatten(1).sum(1) / peaks.flatten(1).sum(1).clamp_min(1.0))
        if level < _LEVELS[-1]:
            g = _binomial_blur(g)[..., ::2, ::2].contiguous()  # Gaussian pyramid: next level, half size
    nuclear_feats = torch.stack(nuclear + density + strength, -1)  # (b,10)
    texture_feats = torch.stack(texture, 2).reshape(b, -1)  # (b,3 ch,4 levels,15) channel-major
    return nuclear_feats, texture_feats



def _texture_level(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pyramid level g (b,C,n,n) -> 15 stats per channel (b,C,15) and H blob strength relu(-LoG) (b,n-6,n-6)."""
    blur = _binomial_blur(g)  # (b,C,n-4,n-4), σ = 1 level px
    band = g[..., 2:-2, 2:-2] - blur  # fine band-pass (difference of Gaussians σ 0 -> 1)

    dx = g[..., 2:] - g[..., :-2]  # (b,C,n,n-2)
    sx = (dx[..., :-2, :] + dx[..., 1:-1, :]) + (dx[..., 1:-1, :] + dx[..., 2:, :])  # Sobel x * 8, (n-2,n-2)
    dy = g[..., 2:, :] - g[..., :-2, :]  # (b,C,n-2,n)
    sy = (dy[..., :-2] + dy[..., 1:-1]) + (dy[..., 1:-1] + dy[..., 2:])  # Sobel y * 8
    grad = (sx * sx + sy * sy).sqrt_().mul_(0.125)

    c2 = blur[..., 1:-1, 1:-1] * 2  # (b,C,n-6,n-6)
    gxx = (blur[..., 1:-1, 2:] + blur[..., 1:-1, :-2]) - c2
    gyy = (blur[..., 2:, 1:-1] + blur[..., :-2, 1:-1]) - c2
    gxy = ((blur[..., 2:, 2:] + blur[..., :-2, :-2]) - (blur[..., 2:, :-2] + blur[..., :-2, 2:])) * 0.25
    log = gxx + gyy  # σ²∇²G with σ = 1 level px (scale-normalised LoG)
    half = log * 0.5
    diff = gxx - gyy
    aniso = (diff * diff + gxy * gxy * 4).sqrt_()  # λ1 - λ2 = max_θ R_θ - min_θ R_θ

    band_mean, band_std = _moments(band)
    band_abs = _mean(band.abs())
    grad_mean, grad_std = _moments(grad)
    log_mean, log_std = _moments(log)
    log_abs = _mean(log.abs())
    stats = [
        _moments(blur)[1],
        band_std,
        (band_abs + band_mean) / 2,
        (band_abs - band_mean) / 2,
        grad_mean,
        grad_std,
        _mean(grad > 2 * grad_mean[..., None, None]),
        _mean(gxx.abs()),
        _mean((half + gxy).abs()),
        _mean(gyy.abs()),
        _mean((half - gxy).abs()),
        _mean(aniso),
        log_std,
        (log_abs - log_mean) / 2,
        (log_abs + log_mean) / 2,
    ]
    return torch.stack(stats, -1), torch.relu(-log[:, 0])


def _bin_index(x: torch.Tensor, edges: tuple[float, ...]) -> torch.Tensor:
    """Bin of each element (int64): 0 below edges[0], i for edges[i-1] <= x < edges[i], len(edges) from the last edge."""
    return torch.bucketize(x, torch.tensor(edges, dtype=x.dtype, device=x.device), right=True)


def _bin_fractions(idx: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin indices idx (b,h,w) in [0, bins) -> (b, bins) fraction of pixels per bin (exact integer counts)."""
    b = idx.shape[0]
    offset = torch.arange(b, device=idx.device)[:, None] * bins  # (b,1): tile i uses bins [i·bins, (i+1)·bins)
    counts = torch.bincount((idx.flatten(1) + offset).flatten(), minlength=b * bins)
    return counts.reshape(b, bins).float() / (idx.shape[-2] * idx.shape[-1])


