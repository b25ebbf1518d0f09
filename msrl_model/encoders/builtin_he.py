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

How it is computed. Two implementations of the maths above, both tested against the straightforward
v1.0 implementation (tests/builtin_he_reference.py) on synthetic and real tiles:

* **CPU, 256² uint8 tiles** (what the reader delivers): the fused kernel of
  :mod:`~msrl_model.encoders.builtin_he_cpu` (numba), one pass per tile with the tile's maps in the
  core's cache, tiles shared out over the torch thread count. Measured on the shared 2-core machine
  (``bench encoder --mode patch``, 64-tile batches, side by side): 1,854 tiles/s on one thread against
  625 for the torch path (2.97x), 3,392 against 607 on two (5.59x). Its spread statistics accumulate in
  float64, so on a constant tile they are exactly 0 where v1.0's float32 centring left ~1e-6 (and
  skewness noise up to ±1), and skewness is float64-accurate where v1.0's float32 third moments
  erred by up to ~1e-5 absolute. Without numba (not importable) the CPU runs the torch path.
* **The torch path** (CUDA, float input, or the CPU without numba): :mod:`~msrl_model.encoders.builtin_he_torch`,
  batched torch operations.

In both, everything that a threshold or a local maximum reads (H, E, ODm, Y, |∇g| and its mean, the
LoG of H at the blob levels) is computed with the v1.0 operations in the v1.0 order, so thresholded
counts are identical (bit for bit, tested); the other statistics agree with v1.0 to float32 rounding
(1e-4 relative, tested), so the version stays 1.0 and cached features stay valid.

Cost per 256² tile ≈ 8 MFLOP of elementwise work (a ResNet-50 at 224² is ≈ 8 GFLOP); as separate torch
operations on the CPU it is bound by passes over memory, which is what the fused kernel removes (``python -m msrl_model.bench
encoder --mode patch`` measures it alone, ``bench extract`` in the pipeline and against every thread
count). Every operation is elementwise, a shift-add, a table lookup, a per-tile reduction or a
per-tile count, so a tile's features do not depend on the rest of its batch.

Precision: float32 everywhere, also on CUDA. The logarithm of (I+1)/256 near 1, the thresholded
counts and the higher moments are not safe in half precision, and the encoder costs far less than
reading the tiles, so autocast would buy nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import time
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from msrl_model.encoders import PatchEncoder, register_encoder
from msrl_model.errors import EncoderError

log = logging.getLogger(__name__)

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
_BLUR_SCALE = 256.0  # the binomial blur is kept unscaled: sum of the 5x5 [1 4 6 4 1]ᵀ[1 4 6 4 1] taps
# Level-1 map stack of the colour statistics: OD r, g, b, then the texture channels H, E, ODm (adjacent,
# so the filter bank reads them as one view), then D and grey Y.
_OD, _H, _E, _ODM, _D, _Y = slice(0, 3), 3, 4, 5, 6, 7
_MAPS = 8
# Histogram grids: every H edge (histogram and joint) is a multiple of 1/10, every E edge of 1/20.
_H_PER_UNIT, _E_PER_UNIT = 10.0, 20.0
_H_CELLS, _E_CELLS = 22, 22  # below 0, 20 cells over [0, 2) / [0, 1), from the top edge on
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)
_RETAIN_BLOCK, _RETAIN_TOP = 32 << 20, 256 << 20  # bytes: largest block kept in the heap, free heap top kept


def _optical_density(x: torch.Tensor) -> torch.Tensor:
    """OD = -ln((I + 1) / 256) of float I in [0, 255], elementwise (the v1.0 operations)."""
    return torch.log(x + 1.0).neg_().add_(math.log(256.0))


def _sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last two dims: (..., h, w) -> (...)."""
    return x.sum(dim=(-2, -1))


def grid_cell(x: torch.Tensor, per_unit: float, cells: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cell of a 1/``per_unit`` grid from 0, as float (into ``out``): 0 below 0, k for
    [(k-1)/per_unit, k/per_unit), ``cells`` - 1 from (cells - 2)/per_unit.

    For every H / E edge ``e`` of the features, ``x >= float32(e)`` holds exactly when the cell is at
    least ``_cell_of(e)`` (``floor`` of one rounded product; tests/test_encoders_builtin.py checks
    every float32 within 20,000 ulps of each edge), so counts by cell are the v1.0 counts by compare.
    """
    return torch.mul(x, per_unit, out=out).floor_().clamp_(-1, cells - 2).add_(1)


def _cell_of(edge: float, per_unit: float) -> int:
    """The first grid cell (:func:`grid_cell`) of the values >= ``edge``."""
    return round(edge * per_unit) + 1


def _bins_from_cumulative(at_least: torch.Tensor, n: int) -> torch.Tensor:
    """Counts of x >= edges[i] (b, k), edges ascending -> fractions per bin (b, k+1): below edges[0],
    each [edges[i-1], edges[i]), from edges[-1] (``torch.bucketize(right=True)``'s bins)."""
    total = at_least.new_full((at_least.shape[0], 1), float(n))
    padded = torch.cat([total, at_least, torch.zeros_like(total)], 1)
    return (padded[:, :-1] - padded[:, 1:]) / n


class BuiltinHE(torch.nn.Module):
    """H&E stain/texture features: (B, 3, 256, 256) RGB in [0,255] -> (B, 264) float32.

    The input is uint8 (read through the pair lookup tables) or float (other tile sizes, resized).
    See the module docstring for the maths and the output layout. No learnable parameters; the
    stain matrix and the lookup tables are buffers so ``.to(device)`` moves the module.
    """

    def __init__(self, chunk: int | None = None, fused_cpu: bool = True) -> None:
        from msrl_model.encoders.builtin_he_torch import pair_tables

        super().__init__()
        rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float64)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        hed_from_rgb = torch.linalg.inv(rgb_from_hed)  # (3 OD r,g,b; 3 stains H,E,D)
        od_mean = torch.full((3, 1), 1.0 / 3.0, dtype=torch.float64)
        # OD (r,g,b) -> (H, E, ODm, D): the deconvolution plus the OD mean, one linear map.
        weights = torch.cat([hed_from_rgb[:, :2], od_mean, hed_from_rgb[:, 2:]], 1).float()  # (3, 4)
        self.register_buffer("od_to_channels", weights)
        self.register_buffer("pair_tables", pair_tables(), persistent=False)
        self.register_buffer("h_fraction_thresholds", torch.tensor(_H_FRACTION_THRESHOLDS), persistent=False)
        self.chunk = chunk  # tiles per chunk of level-0/1 work; None -> 8 per torch thread on CPU, all on CUDA
        self._constants: dict[str, object] | None = None
        self.fused_cpu = fused_cpu  # 256² uint8 tiles on the CPU go through the fused kernel (builtin_he_cpu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,3,256,256) uint8, or float in [0,255] -> (B, DIM) float32."""
        if x.dtype != torch.uint8:
            x = x.float()
        b = x.shape[0]
        if b == 0:
            return torch.zeros(0, DIM, device=x.device)
        if self.fused_cpu and x.dtype == torch.uint8 and x.device.type == "cpu" and fused_kernel() is not None:
            return self._forward_fused(x)
        from msrl_model.encoders import builtin_he_torch

        return builtin_he_torch.forward(self, x)

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """256² uint8 tiles x (B,3,256,256) on the CPU through the fused kernel of
        :mod:`~msrl_model.encoders.builtin_he_cpu` (torch threads = kernel threads) -> (B, DIM)."""
        kernel = fused_kernel()
        tiles = x.permute(0, 2, 3, 1).contiguous()  # (B,256,256,3): the reader's channels-last layout, no copy
        out, cells, grads, square_sums = kernel.encode_tiles(
            tiles.numpy(), self._cpu_constants(), DIM, torch.get_num_threads())
        out, square_means = torch.from_numpy(out), torch.from_numpy(square_sums)
        n = (INPUT_SIZE // 2) ** 2
        out[:, 19:59] = histograms(torch.from_numpy(cells), n)
        bank = out[:, -_TEXTURE_CHANNELS * len(_LEVELS) * _TEXTURE_STATS:].view(
            -1, _TEXTURE_CHANNELS, len(_LEVELS), _TEXTURE_STATS)

        def count_above(grad: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(kernel.count_above(grad.numpy(), threshold.numpy())).float()

        for k, grad in enumerate(map(torch.from_numpy, grads)):
            square_mean = (square_means[:, k] / (grad.shape[-1] * grad.shape[-2])).float()
            bank[:, :, k, 4:7] = torch.stack(edge_statistics(grad, square_mean, count_above), -1)
        return out

    def _cpu_constants(self) -> dict[str, object]:
        """The fused kernel's float32 constants (numpy), built once."""
        if self._constants is None:
            import numpy as np

            f32 = np.float32
            blob = [float(torch.tensor(t, dtype=torch.float32)) * _BLUR_SCALE for t in _BLOB_THRESHOLDS]
            self._constants = {
                "lut": _optical_density(torch.arange(256, dtype=torch.float32)).numpy(),
                "weights": self.od_to_channels.cpu().numpy().astype(f32),
                "grey_w": np.array([0.299, 0.587, 0.114, 1.0 / 255.0], f32),
                "h_thresholds": np.array(_H_FRACTION_THRESHOLDS, f32),
                "scalars": np.array([_TISSUE_OD, _DARK_Y, _H_PER_UNIT, _E_PER_UNIT], f32),
                "blob_thresholds": np.array(blob, f32),
            }
        return self._constants

def histograms(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel counts per (H cell, E cell) (b, 22, 22) of n pixels -> the H histogram, the E histogram and
    the joint H x E histogram (b, 40), features 19:59. Every edge starts a cell, so each bin is a
    difference of suffix sums ("at least this H cell and this E cell"), exact integers."""
    b = cells.shape[0]
    at_least = cells.flip((1, 2)).cumsum(1).cumsum(2).flip((1, 2)).float()  # (b, H cells, E cells)
    h_rows = [0] + [_cell_of(e, _H_PER_UNIT) for e in _JOINT_H_EDGES]
    e_rows = [0] + [_cell_of(e, _E_PER_UNIT) for e in _JOINT_E_EDGES]
    padded = F.pad(at_least[:, h_rows][:, :, e_rows], (0, 1, 0, 1))  # 0 past the last edge
    joint = padded[:, :-1, :-1] - padded[:, 1:, :-1] - padded[:, :-1, 1:] + padded[:, 1:, 1:]
    return torch.cat([
        _bins_from_cumulative(at_least[:, [_cell_of(e, _H_PER_UNIT) for e in _H_EDGES], 0], n),
        _bins_from_cumulative(at_least[:, 0, [_cell_of(e, _E_PER_UNIT) for e in _E_EDGES]], n),
        joint.reshape(b, 16) / n,  # row-major over H bins
    ], 1)


def edge_statistics(grad: torch.Tensor, square_mean: torch.Tensor,
                    count_above: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """8|∇g| (b,C,h,w), mean (8|∇g|)² (b,C) and ``count_above(grad, threshold (b,C))`` -> float32 counts
    (b,C) of grad above its threshold -> mean |∇g|, std |∇g| and the edge fraction |∇g| > 2·mean |∇g|,
    each (b,C): filter-bank statistics [4..6]. The mean is torch's sum of the contiguous map, the v1.0
    operation, because the edge threshold reads it."""
    n = grad.shape[-1] * grad.shape[-2]
    mean = _sum(grad) / n
    edge_fraction = count_above(grad, 2 * mean) / n
    std = (square_mean - mean * mean).clamp_min(0).sqrt()
    return [mean / 8, std / 8, edge_fraction]


@functools.cache
def fused_kernel() -> ModuleType | None:
    """:mod:`~msrl_model.encoders.builtin_he_cpu`, or None (said once in the log) where numba cannot be
    imported: the CPU then runs the torch path, the same features about 2.5x slower."""
    try:
        from msrl_model.encoders import builtin_he_cpu
    except ImportError as exc:
        log.warning("builtin-he: the fused CPU kernel needs numba (%s); encoding on the CPU with the slower "
                    "torch path. Install it with: pip install numba", exc)
        return None
    return builtin_he_cpu


# numba compiles the fused kernel once per installation (later runs load it from its cache in < 1 s)
COMPILE_NOTICE = "Preparing the built-in encoder for this computer (once after installing, about 10 s)…"


def kernel_build_notice() -> str | None:
    """:data:`COMPILE_NOTICE` when building the CPU encoder will compile the fused kernel (numba's disk
    cache has none), else None."""
    kernel = fused_kernel()
    return COMPILE_NOTICE if kernel is not None and kernel.cached_on_disk() is False else None


def tile_transform(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> (B,3,256,256): 256² tiles stay uint8 (a channels-last view, read through the
    lookup tables); other sizes are resized (bilinear, antialiased) to float32 in [0,255]."""
    x = batch_uint8.permute(0, 3, 1, 2)  # (B,3,H,W)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
        x = x.clamp(0.0, 255.0)
    return x


def keep_freed_memory() -> bool:
    """On glibc, keep freed memory in the heap for reuse; False (nothing done) elsewhere.

    By default glibc returns every freed block above its mmap threshold to the kernel and trims the
    free top of the heap, so the encoder's per-chunk maps (0.5-10 MB) come back as fresh zero-filled
    pages on every call: ~1,000 page faults per tile, which took 1.5-2.4x the encode time on the shared
    2-core machine. Fixed thresholds (blocks up to 32 MB from the heap, up to 256 MB of free heap top
    kept) make them reused. Process-wide and idempotent; memory is still released by ``malloc_trim``.
    """
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (not glibc)
        glibc = ""
    if not glibc.startswith("glibc"):
        return False
    libc = ctypes.CDLL(None)  # the C library already loaded into this process
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _RETAIN_BLOCK)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TOP))


@register_encoder("builtin-he")
def build_builtin_he(arg: str | None, path: str | None, device: torch.device) -> PatchEncoder:
    """The weight-free H&E encoder; takes no argument or path."""
    if arg is not None or path is not None:
        raise EncoderError("encoder 'builtin-he' takes no ':' argument or '@' path: use the spec 'builtin-he'")
    model = BuiltinHE().to(device).eval()
    if device.type == "cpu":
        keep_freed_memory()
        started = time.perf_counter()
        with torch.inference_mode():  # load the fused kernel now (numba's disk cache, or its first compile)
            model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8))
        kernel = fused_kernel()
        if kernel is not None:
            log.info("builtin-he: CPU kernel %s in %.1f s", "compiled (first use of this installation)"
                     if kernel.compiled_this_process() else "loaded", time.perf_counter() - started)
    return PatchEncoder(
        name="builtin-he",
        version=VERSION,
        dim=DIM,
        model=model,
        transform=tile_transform,
        precision=torch.float32,
        input_size=INPUT_SIZE,
    )
