"""``builtin-he``: a weight-free, deterministic H&E stain/texture patch encoder (torch, batched, CPU or CUDA).

Defined for 256x256 RGB tiles at ~0.5 µm/px (other sizes are resized to 256 first). Distances
below are in pixels of that 256² grid (1 px ≈ 0.5 µm); "level l" is a grid of 2^l px cells.

Maths, for a tile I (3,256,256) with values in [0,255]:

1. Optical density per channel: OD_c = -ln((I_c + 1) / 256) ∈ [0, ln 256]; white gives exactly 0.
2. One Haar step on OD: for each 2x2 block [[a,b],[c,d]], LL = (a+b+c+d)/4 (block mean, level 1),
   LH = (a-b+c-d)/4, HL = (a+b-c-d)/4, HH = (a-b-c+d)/4 (finest left-right, top-bottom, diagonal
   detail). This is the only full-resolution work besides the logarithm.
3. Colour deconvolution (Ruifrok & Johnston 2001, the H&E-DAB stain OD vectors used by scikit-image,
   rows normalised to unit length): OD = C·M, M = [[.65 .70 .29], [.07 .99 .11], [.27 .57 .78]],
   so C = OD·M⁻¹ gives haematoxylin H, eosin E and D (DAB slot: the residual that is neither).
   ODm = mean_c OD_c is the OD brightness, Y = (0.299 R + 0.587 G + 0.114 B)/255 the grey level.
   These maps are linear in OD, so they are computed on the Haar bands (exactly equal to the Haar
   bands of the deconvolved full-resolution maps). Colour statistics use the level-1 block means.
4. Filter bank on T = (H, E, ODm) at levels 1..4 (128, 64, 32, 16-px grids): a Gaussian pyramid with
   the binomial kernel [1 4 6 4 1]/16 per axis (σ = 1 level px) and 2x subsampling. All filters are
   "valid" (no padding; statistics exclude a border of 2-3 level px). At each level, with g the level
   image and G = binomial blur of g:
     band = g - G (difference of Gaussians σ 0 -> 1 level px, i.e. a Laplacian-pyramid band);
     Sobel |∇g| = sqrt(Sx² + Sy²), Sx = [1 2 1]ᵀ[-1 0 1]/8, Sy = Sxᵀ;
     second derivatives of G by central differences gxx, gyy, gxy; oriented (steerable, even
     Gabor-like) line filters R_θ = cos²θ gxx + 2 sinθ cosθ gxy + sin²θ gyy at θ = 0°, 45°, 90°, 135°;
     their anisotropy max_θ R_θ - min_θ R_θ = sqrt((gxx-gyy)² + 4 gxy²) (Hessian eigenvalue gap);
     LoG = gxx + gyy, the scale-normalised Laplacian of Gaussian σ²∇²(G_σ * g) at σ = 1 level px,
     i.e. σ = 2, 4, 8, 16 px at levels 1..4 (bright blobs, e.g. nuclei in H, give LoG < 0).
5. Nuclear proxies: fractions of level-1 pixels with H above fixed thresholds; blob densities =
   number of 3x3 local maxima of B = relu(-LoG(H)) above fixed thresholds at levels 2 and 3
   (σ = 4 and 8 px, best matched to nuclei of radius ≈ 6 and 11 px), per 10⁴ px of the tile.

Output layout (D = 264, float32). "std" is the population standard deviation over pixels, "mean"
the mean over pixels; histograms are fractions of level-1 pixels:

========= ===== ==========================================================================
slice     count meaning
========= ===== ==========================================================================
0:6       6     OD of R, G, B: mean, std (interleaved: R mean, R std, G mean, G std, B mean, B std)
6:15      9     H, E, D: mean, std, skewness (interleaved per stain)
15:19     4     ODm mean, ODm std, grey Y mean, grey Y std
19:31     12    histogram of H: H < 0, ten 0.2-wide bins over [0, 2), H >= 2
31:43     12    histogram of E: E < 0, ten 0.1-wide bins over [0, 1), E >= 1
43:59     16    joint H x E histogram, H edges (0.3, 0.8, 1.5) x E edges (0.1, 0.25, 0.5), row-major
                over H bins (index 4·i_H + i_E)
59        1     Pearson correlation of H and E (0 when either is constant)
60        1     tissue fraction: ODm > 0.1
61        1     dark fraction: Y < 0.5
62:66     4     nuclear: fraction of pixels with H > 0.4, 0.8, 1.2, 1.6
66:70     4     nuclear: blob density per 10⁴ px: level 2 at B > 0.1, 0.3; level 3 at B > 0.1, 0.3
70:72     2     nuclear: mean B at local maxima with B > 0.1, level 2 then level 3 (0 if none)
72:84     12    finest texture (Haar, level 0) for H, E, ODm (4 each, channel-major): mean |LH|,
                mean |HL|, mean |HH|, sqrt(mean(LH² + HL² + HH²))
84:264    180   filter bank, 15 per (channel, level), channel-major then level: offset
                84 + 60·c + 15·(l-1), c ∈ (H, E, ODm), l ∈ (1, 2, 3, 4); the 15 are
                [0] std G, [1] std band, [2] mean relu(band), [3] mean relu(-band),
                [4] mean |∇g|, [5] std |∇g|, [6] edge fraction |∇g| > 2·mean |∇g|,
                [7..10] mean |R_θ| for θ = 0°, 45°, 90°, 135°, [11] mean anisotropy,
                [12] std LoG, [13] mean relu(-LoG) (bright blobs), [14] mean relu(LoG) (dark blobs)
========= ===== ==========================================================================

A blank white tile has OD = 0 everywhere, so every stain, nuclear and texture feature is exactly 0;
only grey Y mean (17) and the histogram bins holding 0 (20, 32, 43) are 1.

Cost per 256² tile (a multiply-add counts 2 FLOP): logarithm and Haar step on 3 x 65 536 OD values
≈ 1.5 MFLOP; deconvolution and colour statistics on 4 x 16 384 level-1 values ≈ 1 MFLOP; the
filter bank on 3 channels over ≈ 21 800 pixels (16 384 + 4 096 + 1 024 + 256 per channel): blur
10, Sobel 14, derivatives/steering/LoG/anisotropy 25, statistics ≈ 25 -> ≈ 75 FLOP per pixel per
channel ≈ 5 MFLOP. Total ≈ 8 MFLOP per tile (a ResNet-50 at 224² is ≈ 8 GFLOP). It is memory-bound
on CPU: ``python -m msrl_model.bench encoder --threads 1`` measured 110-210 tiles per
CPU-second (one core) on the shared 2-core build machine while other jobs ran (load 4-7), i.e.
≈ 400 tiles/s from two single-threaded workers on idle cores. Prefer one torch thread per worker:
intra-op threading of these small ops collapses when cores are oversubscribed. Tiles are processed
in chunks of 4 so the intermediates stay in cache. Every operation is elementwise, a
shift-add, or a per-tile reduction, so a tile's features do not depend on the rest of its batch.

Precision: float32 everywhere, also on CUDA. The logarithm of (I+1)/256 near 1, the thresholded
counts and the higher moments are not safe in half precision, and the encoder costs far less than
reading the tiles, so autocast would buy nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.errors import EncoderError

VERSION = "1.0"  # bump whenever the maths or the layout changes: it is stored in every feature file
INPUT_SIZE = 256  # tiles are resized to this side before encoding

_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))  # Ruifrok & Johnston rows H, E, DAB
_H_EDGES = tuple(round(0.2 * i, 6) for i in range(11))  # 0.0 .. 2.0
_E_EDGES = tuple(round(0.1 * i, 6) for i in range(11))  # 0.0 .. 1.0
_JOINT_H_EDGES = (0.3, 0.8, 1.5)
_JOINT_E_EDGES = (0.1, 0.25, 0.5)
_TISSUE_OD = 0.1  # ODm above this counts as tissue
_DARK_Y = 0.5  # grey below this counts as dark
_H_FRACTION_THRESHOLDS = (0.4, 0.8, 1.2, 1.6)
_BLOB_LEVELS = (2, 3)  # pyramid levels whose H LoG maxima count as nuclei (σ = 4 and 8 px)
_BLOB_THRESHOLDS = (0.1, 0.3)  # on B = relu(-LoG) of H
_LEVELS = (1, 2, 3, 4)  # filter-bank pyramid levels (128, 64, 32, 16 px grids before valid filtering)
_TEXTURE_CHANNELS = 3  # H, E, ODm
_TEXTURE_STATS = 15
_COLOUR_DIM = 62
_NUCLEAR_DIM = 10
_FINE_DIM = 4 * _TEXTURE_CHANNELS
DIM = _COLOUR_DIM + _NUCLEAR_DIM + _FINE_DIM + _TEXTURE_CHANNELS * len(_LEVELS) * _TEXTURE_STATS  # 264
_CHUNK_CPU = 4  # tiles per chunk on CPU: intermediates (~1 MB each) stay in cache


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


class BuiltinHE(torch.nn.Module):
    """H&E stain/texture features: (B, 3, 256, 256) float RGB in [0,255] -> (B, 264) float32.

    See the module docstring for the maths and the output layout. No learnable parameters; the
    stain matrix is a buffer so ``.to(device)`` moves the module.
    """

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__()
        rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float64)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        hed_from_rgb = torch.linalg.inv(rgb_from_hed)  # (3 OD r,g,b; 3 stains H,E,D)
        od_mean = torch.full((3, 1), 1.0 / 3.0, dtype=torch.float64)
        # OD (r,g,b) -> (H, E, D, ODm): the deconvolution plus the OD mean, one linear map.
        self.register_buffer("od_to_channels", torch.cat([hed_from_rgb, od_mean], 1).float())  # (3, 4)
        self.chunk = chunk  # tiles per chunk; None -> 4 on CPU, the whole batch on CUDA

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,256,256) float in [0,255] -> (B, DIM) float32."""
        x = x.float()
        if x.shape[0] == 0:
            return x.new_zeros(0, DIM)
        chunk = self.chunk or (x.shape[0] if x.is_cuda else _CHUNK_CPU)
        return torch.cat([self._features(part) for part in x.split(chunk)])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """x (b,3,256,256) -> (b, DIM)."""
        weights = self.od_to_channels.tolist()
        od = torch.log(x + 1.0).neg_().add_(math.log(256.0))  # -ln((I+1)/256), (b,3,H,W)
        # All channels are linear in OD, so deconvolving the Haar bands of OD equals Haar-transforming
        # the deconvolved channels: only the OD itself is touched at full resolution.
        od_ll, *od_details = _haar(od)  # each (b,3,128,128)
        chans = _mix(od_ll, weights)  # (b,4,128,128): H, E, D, ODm block means
        grey_ll = (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) * 0.25
        grey = (grey_ll[:, 0] * 0.299 + grey_ll[:, 1] * 0.587 + grey_ll[:, 2] * 0.114) * (1.0 / 255.0)
        tex_w = [row[:2] + row[3:] for row in weights]  # OD -> (H, E, ODm)
        fine = torch.stack([_mix(band, tex_w) for band in od_details], 2)  # (b,3 ch,3 bands,128,128)
        fine_abs = _mean(fine.abs())  # (b,3,3)
        fine_rms = _mean(fine * fine).sum(2).sqrt()  # (b,3)
        fine_feats = torch.cat([fine_abs, fine_rms[..., None]], 2).flatten(1)  # (b, 3 ch x 4)
        nuclear, texture = self._nuclear_and_texture(chans[:, [0, 1, 3]])
        return torch.cat([self._colour(od_ll, chans, grey), nuclear, fine_feats, texture], 1)

    def _colour(self, od: torch.Tensor, chans: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
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

    def _nuclear_and_texture(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def tile_transform(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float32 (B,3,256,256) in [0,255]; other sizes are resized (bilinear, antialiased)."""
    x = batch_uint8.permute(0, 3, 1, 2).float()  # (B,3,H,W)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0.0, 255.0)
    return x


@register_encoder("builtin-he")
def build_builtin_he(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """The weight-free H&E encoder; takes no argument or path."""
    if arg is not None or path is not None:
        raise EncoderError("encoder 'builtin-he' takes no ':' argument or '@' path: use the spec 'builtin-he'")
    model = BuiltinHE().to(device).eval()
    return PatchEncoder(
        name="builtin-he",
        version=VERSION,
        dim=DIM,
        model=model,
        transform=tile_transform,
        precision=torch.float32,
        input_size=INPUT_SIZE,
    )
