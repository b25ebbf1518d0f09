"""Render synthetic H&E-looking RGB images at 0.5 µm/px (synthetic data, not real tissue).

The image is built in optical-density (OD) space and converted to RGB by Beer-Lambert:

    I_c = I0_c * 10 ** -(h * H_c + e * E_c)        c in {R, G, B}

where ``h``/``e`` are per-pixel haematoxylin/eosin concentrations and ``H``/``E`` the stain
vectors (OD per unit stain). Layers, coarse to fine:

1. low-resolution fields (1/16 scale): tissue pieces (irregular blobs), cellular vs stromal
   regions, stain variation, fibre warp; upsampled per strip by separable linear interpolation;
2. glands: white lumina with a pale epithelial rim (stamped at full resolution);
3. nuclei: ellipses (tumour / gland rim / fibroblast / lymphocyte) stamped into a haematoxylin map,
   with size, shape irregularity and darkness controlled by :class:`SlideMorphology`;
4. per 512-row strip: eosin stroma with wavy fibre texture, cytoplasm, nuclei with granular
   chromatin, noise; a 256 x 256 lookup table turns quantised (h, e) into RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_LOW = 16  # level-0 px per low-resolution field px
_MID = 4  # level-0 px per mid-resolution texture field px
_FIBRE_TEX = 256  # side of the periodic fibre noise texture, texels
_STRIP = 512  # rows composed at a time (bounds memory: ~20 float32 maps of STRIP x width)
_OD_SCALE = 100.0  # OD units -> LUT index (index 255 = OD 2.55)
_GLASS = np.array([243.0, 242.0, 246.0], np.float32)  # RGB of empty glass
_H_VEC = np.array([0.60, 0.74, 0.30], np.float32)  # haematoxylin OD per unit concentration
_E_VEC = np.array([0.10, 0.85, 0.40], np.float32)  # eosin OD per unit concentration
_NUC_MAX = 1.4  # haematoxylin concentration stored as 255 in the uint8 nucleus map
_CLEAR_CELL_PALLOR = 0.7  # share of the cytoplasm's eosin lost inside clear-cell foci


@dataclass(frozen=True)
class SlideMorphology:
    """Visible tissue properties; the cohort generator maps latent tumour biology onto these."""

    nuclear_density: float = 1.0  # nuclei per area in cellular regions, relative to default (0.2-3)
    nuclear_size: float = 1.0  # mean tumour nuclear diameter relative to 14 px = 7 µm (0.5-2)
    atypia: float = 0.3  # 0..1: nuclear size/shape spread, irregular outline, hyperchromasia
    stroma_fraction: float = 0.5  # 0..1: share of tissue that is eosin-pink fibrous stroma
    lumen_fraction: float = 0.06  # 0..0.4: share of tissue that is glandular lumina (white holes)
    tissue_fraction: float = 0.45  # 0.05..0.9: share of the glass covered by tissue pieces
    lymphocytes: float = 1.0  # density of small dark round lymphocytes in stroma, relative (0-5)
    stain_hematoxylin: float = 1.0  # haematoxylin (purple) stain strength multiplier (0.3-2)
    stain_eosin: float = 1.0  # eosin (pink) stain strength multiplier (0.3-2)
    hue_shift: float = 0.0  # -1..1: stains drift toward blue (-) or toward red/magenta (+)
    blur: float = 1.0  # edge softness of nuclei in px (focus); 0.5 sharp .. 3 out of focus
    clear_cell_fraction: float = 0.0  # 0..0.9: share of the tumour in clear-cell foci (pale cytoplasm)


def downsample_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Box-average an H x W x 3 uint8 image -> (H//factor) x (W//factor) x 3 (edges cropped)."""
    from PIL import Image

    h, w = max(rgb.shape[0] // factor, 1), max(rgb.shape[1] // factor, 1)
    crop = np.ascontiguousarray(rgb[: h * factor, : w * factor])
    return np.asarray(Image.fromarray(crop).reduce(factor))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean, unit std (float32, ``shape``)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-9)).astype(np.float32)


def _lin_index(n_out: int, n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps (i0, i1, frac), each (n_out,), from ``n_in`` samples spaced
    ``factor`` level-0 px apart to level-0 pixel centres."""
    pos = np.clip((np.arange(n_out) + 0.5) / factor - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), (pos - i0).astype(np.float32)


def _upsample_columns(fields: np.ndarray, tx: tuple) -> np.ndarray:
    """Interpolate ``fields`` (k, h, w) along columns to level-0 width -> (k, h, W) float32."""
    j0, j1, g = tx
    return fields[:, :, j0] * (1 - g) + fields[:, :, j1] * g


def _upsample_rows(cols: np.ndarray, ty: tuple, r0: int, r1: int) -> np.ndarray:
    """Rows r0:r1 of column-interpolated fields (k, h, W) -> (k, r1 - r0, W) float32."""
    i0, i1, f = (t[r0:r1] for t in ty)
    return cols[:, i0] * (1 - f)[None, :, None] + cols[:, i1] * f[None, :, None]


def _sample_periodic(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the periodic texture ``tex`` (n, n), n a power of two, at texel
    coordinates u (column) and v (row), both (R, W) float32 -> (R, W) float32."""
    n = tex.shape[0]
    flat = tex.ravel()
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    c0 = u0.astype(np.int32) & (n - 1)
    r0 = (v0.astype(np.int32) & (n - 1)) * n
    c1, r1 = (c0 + 1) & (n - 1), (r0 + n) & (n * n - 1)
    top = flat[r0 + c0] * (1 - fu) + flat[r0 + c1] * fu
    bottom = flat[r1 + c0] * (1 - fu) + flat[r1 + c1] * fu
    return top * (1 - fv) + bottom * fv


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _stain_lut(m: SlideMorphology) -> np.ndarray:
    """(256*256, 3) uint8 RGB for quantised (h, e) OD index pairs, index = h_q * 256 + e_q."""
    shift = float(np.clip(m.hue_shift, -1, 1))
    # +shift: more red absorption removed (pinker/magenta); -shift: bluer haematoxylin and eosin
    h_vec = _H_VEC + shift * np.array([-0.10, 0.04, 0.08], np.float32)
    e_vec = _E_VEC + shift * np.array([-0.04, 0.02, 0.10], np.float32)
    od = np.arange(256, dtype=np.float32) / _OD_SCALE
    total = od[:, None, None] * h_vec + od[None, :, None] * e_vec  # (256 h, 256 e, 3) OD
    rgb = _GLASS * np.power(10.0, -total)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


@dataclass
class _Nuclei:
    """Nucleus parameters, one entry per nucleus (all arrays (n,), float32 unless noted)."""

    cy: np.ndarray  # centre row, level-0 px
    cx: np.ndarray  # centre column, level-0 px
    a: np.ndarray  # semi-major axis, px
    b: np.ndarray  # semi-minor axis, px
    angle: np.ndarray  # orientation of the major axis, radians
    dark: np.ndarray  # haematoxylin concentration at the rim (hyperchromasia)
    irregular: np.ndarray  # amplitude of the 3rd/4th-harmonic outline wobble
    vesicular: np.ndarray  # 0..1 pale centre + nucleolus (open chromatin of atypical nuclei)


def _concat(parts: list[_Nuclei]) -> _Nuclei:
    fields = _Nuclei.__dataclass_fields__
    return _Nuclei(**{f: np.concatenate([getattr(p, f) for p in parts]).astype(np.float32)
                      for f in fields})


def _sample_points(rng: np.random.Generator, density_lo: np.ndarray, per_px: float,
                   height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson points with intensity ``density_lo * per_px`` per level-0 px; returns (ys, xs)."""
    counts = rng.poisson(np.clip(density_lo, 0, None) * per_px * _LOW * _LOW)
    cells = np.repeat(np.arange(counts.size), counts.ravel())
    ys = (cells // density_lo.shape[1] + rng.random(cells.size)) * _LOW
    xs = (cells % density_lo.shape[1] + rng.random(cells.size)) * _LOW
    keep = (ys < height - 1) & (xs < width - 1)
    return ys[keep], xs[keep]


def _stamp_nuclei(nmap: np.ndarray, nuc: _Nuclei, blur: float) -> None:
    """Draw soft ellipses into the uint8 haematoxylin map ``nmap`` (H x W), in place (max-blend)."""
    height, width = nmap.shape
    flat = nmap.reshape(-1)
    radius = np.ceil(nuc.a * (1 + nuc.irregular) + 1.5 * blur + 0.5).astype(np.int64)
    halves = np.clip(((radius + 1) // 2) * 2, 2, 64)  # stamp half-size, binned to even px
    for half in np.unique(halves):
        sel = np.flatnonzero(halves == half)
        d = np.arange(-half, half + 1)
        for chunk in np.array_split(sel, max(1, sel.size // 3000)):
            if chunk.size == 0:
                continue
            iy = np.floor(nuc.cy[chunk]).astype(np.int64)
            ix = np.floor(nuc.cx[chunk]).astype(np.int64)
            py = iy[:, None, None] + d[None, :, None]  # (n, S, 1) rows
            px = ix[:, None, None] + d[None, None, :]  # (n, 1, S) columns
            dy = (py - nuc.cy[chunk, None, None]).astype(np.float32)
            dx = (px - nuc.cx[chunk, None, None]).astype(np.float32)
            cos = np.cos(nuc.angle[chunk])[:, None, None]
            sin = np.sin(nuc.angle[chunk])[:, None, None]
            u = dx * cos + dy * sin  # (n, S, S) along the major axis
            v = dy * cos - dx * sin  # (n, S, S) along the minor axis
            a = nuc.a[chunk, None, None]
            b = nuc.b[chunk, None, None]
            rho2 = u * u + v * v + 1e-3
            rho3 = rho2 * np.sqrt(rho2)
            cos3 = (u * u * u - 3 * u * v * v) / rho3
            cos4 = ((u * u - v * v) ** 2 - 4 * u * u * v * v) / (rho2 * rho2)
            wobble = 1 + nuc.irregular[chunk, None, None] * (0.8 * cos3 + 0.6 * cos4)
            r = np.sqrt((u / a) ** 2 + (v / b) ** 2) * wobble
            val = np.clip((1 - r) * b / blur + 0.5, 0, 1)  # ~1 px soft rim per unit blur
            ves = nuc.vesicular[chunk, None, None]
            r2 = np.minimum(r * r, 1)
            profile = (1 - 0.55 * ves * (1 - r2)) * (0.82 + 0.18 * r2)  # pale centre, dark rim
            nucleolus = ves * np.clip(1.6 - 6 * np.sqrt(rho2) / b, 0, 1)
            val = val * np.clip(profile + nucleolus, 0, 1.3) * nuc.dark[chunk, None, None]
            ok = (val > 0.02) & (py >= 0) & (py < height) & (px >= 0) & (px < width)
            idx = (py * width + px)[ok]
            q = np.minimum(val[ok] * (255 / _NUC_MAX), 255).astype(np.uint8)
            flat[idx] = np.maximum(flat[idx], q)


def _glands(rng: np.random.Generator, m: SlideMorphology, cand: np.ndarray, n: int,
            height: int, width: int, lumen: np.ndarray, rim: np.ndarray) -> _Nuclei:
    """Stamp ``n`` glands (lumen + epithelial rim) centred in low-res cells ``cand`` (k, 2).

    Fills the uint8 maps ``lumen`` and ``rim`` in place; returns the rim nuclei lining each gland.
    """
    parts = []
    if n == 0 or cand.shape[0] == 0:
        return _concat([_empty_nuclei()])
    picks = cand[rng.integers(0, cand.shape[0], n)]
    for (ly, lx) in picks:
        cy = (ly + rng.random()) * _LOW
        cx = (lx + rng.random()) * _LOW
        la = float(np.clip(rng.lognormal(np.log(26), 0.45), 10, 110))  # lumen semi-axes, px
        lb = la * rng.uniform(0.45, 1.0)
        ang = rng.uniform(0, np.pi)
        h2, h3 = rng.normal(0, 0.08, 2)
        thick = rng.uniform(13, 20) * m.nuclear_size  # epithelial rim thickness, px
        half = int(la + thick + 4)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, height)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, width)
        if y1 <= y0 or x1 <= x0:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        u = dx * np.cos(ang) + dy * np.sin(ang)
        v = dy * np.cos(ang) - dx * np.sin(ang)
        rho = np.sqrt(u * u + v * v) + 1e-3
        wob = 1 + h2 * ((u * u - v * v) / (rho * rho)) + h3 * ((u ** 3 - 3 * u * v * v) / rho ** 3)
        r = np.sqrt((u / la) ** 2 + (v / lb) ** 2) * wob  # 1 on the lumen edge
        dist = (r - 1) * lb  # ~px outside the lumen edge
        lum = np.clip(0.5 - dist / 1.5, 0, 1)
        ring = np.clip(0.5 - (dist - thick) / 2.0, 0, 1)
        sl = (slice(y0, y1), slice(x0, x1))
        lumen[sl] = np.maximum(lumen[sl], (lum * 255).astype(np.uint8))
        rim[sl] = np.maximum(rim[sl], (ring * 255).astype(np.uint8))
        # nuclei lining the lumen, elongated radially, at ~60% of the rim thickness
        perim = np.pi * (3 * (la + lb) - np.sqrt((3 * la + lb) * (la + 3 * lb)))
        size = 7.0 * m.nuclear_size
        k = max(int(perim / (size * 1.5) * np.clip(m.nuclear_density, 0.5, 1.5)), 6)
        phi = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
        phi = phi + rng.normal(0, 0.5 / k * 2 * np.pi * 0.3, k)
        off = thick * rng.uniform(0.45, 0.7, k)
        eu = (la + off) * np.cos(phi)
        ev = (lb + off) * np.sin(phi)
        ys = cy + eu * np.sin(ang) + ev * np.cos(ang)
        xs = cx + eu * np.cos(ang) - ev * np.sin(ang)
        normal = np.arctan2(ys - cy, xs - cx)
        spread = 0.12 + 0.35 * m.atypia
        parts.append(_Nuclei(
            cy=ys, cx=xs,
            a=size * rng.lognormal(0, spread, k), b=size * rng.uniform(0.45, 0.65, k),
            angle=normal, dark=np.clip(rng.normal(0.80 + 0.25 * m.atypia, 0.08, k), 0.4, 1.3),
            irregular=np.full(k, 0.05 + 0.2 * m.atypia), vesicular=np.full(k, 0.3 * m.atypia)))
    return _concat(parts or [_empty_nuclei()])


def _empty_nuclei() -> _Nuclei:
    e = np.zeros(0, np.float32)
    return _Nuclei(e, e, e, e, e, e, e, e)


def _clear_cell_foci(seed: int, fraction: float, cellular_in: np.ndarray) -> np.ndarray:
    """Low-res field (> 0 inside clear-cell foci) covering ``fraction`` of the cellular region, as a
    few smooth blobs; from its own random stream, so slides without foci keep their pixels."""
    if fraction <= 0:
        return np.full(cellular_in.shape, -1.0, np.float32)
    raw = _smooth_noise(np.random.default_rng([seed, 77]), cellular_in.shape, 3)
    weights = cellular_in.ravel()
    order = np.argsort(-raw.ravel())  # foci grow from the field's peaks
    covered = np.cumsum(weights[order]) / max(float(weights.sum()), 1e-9)
    thr = raw.ravel()[order[min(np.searchsorted(covered, min(fraction, 0.9)), order.size - 1)]]
    return ((raw - thr) * 4.0).astype(np.float32)


def _render_blank(rng: np.random.Generator, height: int, width: int, low: tuple[int, int],
                  ty: tuple, tx: tuple) -> np.ndarray:
    """Empty glass: the glass colour under slightly uneven illumination, with faint noise."""
    out = np.empty((height, width, 3), np.uint8)
    light = 1 + 0.006 * _smooth_noise(rng, low, 24)  # illumination unevenness
    light_cols = _upsample_columns(light[None], tx)
    for r0 in range(0, height, _STRIP):
        r1 = min(r0 + _STRIP, height)
        lit = _upsample_rows(light_cols, ty, r0, r1)[0, :, :, None] * _GLASS
        noise = rng.standard_normal((r1 - r0, width, 1), dtype=np.float32) * 1.2
        out[r0:r1] = np.clip(lit + noise + 0.5, 0, 255).astype(np.uint8)
    return out


@dataclass
class _Fields:
    """The low-resolution fields (all (hl, wl) float32, 1/16 scale) that lay out the tissue."""

    tissue_lo: np.ndarray  # > 0 inside tissue, ramping ~1/6 per low-res px at the edge
    cell_lo: np.ndarray  # > 0 in cellular (tumour) regions, < 0 in stroma
    e_var: np.ndarray  # eosin uptake multiplier ~1 ± 0.10
    h_var: np.ndarray  # haematoxylin uptake multiplier ~1 ± 0.08
    warp: np.ndarray  # fibre phase warp, in units of _LOW px
    fib_amp: np.ndarray  # 0.5..1 strength of the white clefts between fibres
    lymph_lo: np.ndarray  # lymphocyte cluster intensity (log-normal)
    tissue_in: np.ndarray  # 0..1 soft stromal tissue mask
    cellular_in: np.ndarray  # 0..1 soft cellular tissue mask
    clear_lo: np.ndarray  # > 0 inside clear-cell foci


def _tissue_shape(rng: np.random.Generator, m: SlideMorphology, hl: int, wl: int) -> np.ndarray:
    """(hl, wl) field > 0 on ``m.tissue_fraction`` of the glass: a few irregular elliptical pieces."""
    yy, xx = np.mgrid[0:hl, 0:wl].astype(np.float32)
    n_pieces = int(rng.integers(2, 6))
    shape = np.full((hl, wl), -np.inf, np.float32)
    for _ in range(n_pieces):
        py, px = rng.uniform(0.15, 0.85) * hl, rng.uniform(0.12, 0.88) * wl
        ra = rng.uniform(0.15, 0.35) * min(hl, wl) * np.sqrt(m.tissue_fraction / 0.45 + 0.05)
        rb = ra * rng.uniform(0.5, 1.0)
        ang = rng.uniform(0, np.pi)
        u = (xx - px) * np.cos(ang) + (yy - py) * np.sin(ang)
        v = (yy - py) * np.cos(ang) - (xx - px) * np.sin(ang)
        shape = np.maximum(shape, 1 - np.sqrt((u / ra) ** 2 + (v / rb) ** 2))
    shape += 0.25 * _smooth_noise(rng, (hl, wl), 3) + 0.08 * _smooth_noise(rng, (hl, wl), 1)
    margin = np.minimum.reduce([yy, xx, hl - 1 - yy, wl - 1 - xx]) / 3
    shape -= np.clip(1 - margin, 0, 1) * 2  # keep tissue off the slide border
    frac = float(np.clip(m.tissue_fraction, 0.02, 0.95))
    thr = np.quantile(shape, 1 - frac)
    return (shape - thr) * 6  # > 0 inside tissue; ~1/6 field unit per low-res px edge ramp


def _low_res_fields(rng: np.random.Generator, m: SlideMorphology, seed: int, hl: int, wl: int) -> _Fields:
    """Layer 1: tissue pieces, cellular vs stromal regions, stain variation, fibre warp, foci."""
    tissue_lo = _tissue_shape(rng, m, hl, wl)
    cell_raw = _smooth_noise(rng, (hl, wl), 4) + 0.4 * _smooth_noise(rng, (hl, wl), 1.5)
    inside = tissue_lo > 0
    cthr = (np.quantile(cell_raw[inside], float(np.clip(m.stroma_fraction, 0, 1)))
            if inside.any() else 0.0)
    cell_lo = ((cell_raw - cthr) * 2.5).astype(np.float32)  # > 0 cellular (tumour) region
    e_var = 1 + 0.10 * _smooth_noise(rng, (hl, wl), 12)  # eosin uptake variation
    h_var = 1 + 0.08 * _smooth_noise(rng, (hl, wl), 12)  # haematoxylin uptake variation
    warp = 4.0 * _smooth_noise(rng, (hl, wl), 6)  # fibre phase warp, in units of _LOW px
    fib_amp = 0.5 + 0.5 * _smoothstep(0.5 + 0.5 * _smooth_noise(rng, (hl, wl), 2))
    lymph_lo = np.exp(1.2 * _smooth_noise(rng, (hl, wl), 3))  # lymphocyte cluster intensity
    tissue_in = _smoothstep(tissue_lo) * _smoothstep(0.5 - cell_lo)
    cellular_in = _smoothstep(tissue_lo) * _smoothstep(0.5 + cell_lo)
    return _Fields(tissue_lo, cell_lo, e_var, h_var, warp, fib_amp, lymph_lo, tissue_in, cellular_in,
                   _clear_cell_foci(seed, m.clear_cell_fraction, cellular_in))


def _gland_maps(rng: np.random.Generator, m: SlideMorphology, f: _Fields, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray, _Nuclei]:
    """Layer 2: (lumen, rim) uint8 (H, W) maps of the glands and the nuclei lining them."""
    lumen = np.zeros((height, width), np.uint8)
    rim = np.zeros((height, width), np.uint8)
    cand = np.argwhere((f.tissue_lo > 1.5) & (f.cell_lo > 0.3))
    cell_area = float(np.sum(f.cellular_in)) * _LOW * _LOW
    tissue_area = float(np.sum(_smoothstep(f.tissue_lo))) * _LOW * _LOW
    mean_lumen = np.pi * 26 * 26 * 0.73 * np.exp(0.45 ** 2)
    n_glands = int(min(np.clip(m.lumen_fraction, 0, 0.5) * tissue_area,
                       0.6 * cell_area) / mean_lumen)
    rim_nuclei = _glands(rng, m, cand, n_glands, height, width, lumen, rim)
    return lumen, rim, rim_nuclei


def _tumour_nuclei(rng: np.random.Generator, m: SlideMorphology, f: _Fields, lumen: np.ndarray,
                   rim: np.ndarray) -> _Nuclei:
    """Tumour nuclei in the cellular regions, outside lumina and gland rims."""
    height, width = lumen.shape
    base = 1.0 / 170.0  # tumour nuclei per px² at nuclear_density 1
    size = 6.0 * m.nuclear_size  # default tumour nuclear semi-axis, px
    atyp = float(np.clip(m.atypia, 0, 1))
    ys, xs = _sample_points(rng, f.cellular_in, base * m.nuclear_density, height, width)
    free = (lumen[ys.astype(np.int64), xs.astype(np.int64)] == 0) & (
        rim[ys.astype(np.int64), xs.astype(np.int64)] < 128)
    ys, xs = ys[free], xs[free]
    n = ys.size
    a = size * rng.lognormal(0, 0.10 + 0.30 * atyp, n)
    return _Nuclei(
        cy=ys, cx=xs, a=a, b=a / (1 + np.abs(rng.normal(0.15, 0.1 + 0.3 * atyp, n))),
        angle=rng.uniform(0, np.pi, n),
        dark=np.clip(rng.normal(0.62 + 0.40 * atyp, 0.05 + 0.12 * atyp, n), 0.3, 1.35),
        irregular=np.clip(rng.normal(0.03 + 0.15 * atyp, 0.03, n), 0, 0.25),
        vesicular=np.clip(rng.normal(atyp * 0.8 - 0.2, 0.2, n), 0, 1))


def _fibroblast_nuclei(rng: np.random.Generator, f: _Fields, height: int, width: int) -> tuple[_Nuclei, float]:
    """Fibroblast nuclei in the stroma along the fibres, and the fibres' mean angle (radians)."""
    hl, wl = f.warp.shape
    ys, xs = _sample_points(rng, f.tissue_in, 1 / 2600, height, width)
    n = ys.size
    fib_angle = rng.uniform(0, np.pi)
    # fibroblasts lie along the local fibre direction, perpendicular to the gradient of
    # across = x cos + y sin + warp * _LOW (see the fibre texture in _compose)
    gy, gx = np.gradient(f.warp)  # d(warp * _LOW)/d(level-0 px) per low-res cell
    cell_y = np.minimum((ys // _LOW).astype(np.int64), hl - 1)
    cell_x = np.minimum((xs // _LOW).astype(np.int64), wl - 1)
    along_angle = np.arctan2(np.sin(fib_angle) + gy[cell_y, cell_x],
                             np.cos(fib_angle) + gx[cell_y, cell_x]) + np.pi / 2
    return _Nuclei(
        cy=ys, cx=xs, a=rng.uniform(7, 12, n), b=rng.uniform(1.8, 2.8, n),
        angle=along_angle + rng.normal(0, 0.15, n), dark=rng.uniform(0.75, 1.0, n),
        irregular=np.full(n, 0.03), vesicular=np.zeros(n)), float(fib_angle)


def _lymphocyte_nuclei(rng: np.random.Generator, m: SlideMorphology, f: _Fields, height: int,
                       width: int) -> _Nuclei:
    """Small dark round lymphocytes in the stroma, clustered by ``f.lymph_lo``."""
    ys, xs = _sample_points(rng, f.tissue_in * f.lymph_lo, 1 / 5000 * m.lymphocytes, height, width)
    n = ys.size
    ra = rng.uniform(3.5, 4.8, n)
    return _Nuclei(cy=ys, cx=xs, a=ra, b=ra * rng.uniform(0.85, 1.0, n),
                   angle=rng.uniform(0, np.pi, n), dark=rng.uniform(1.0, 1.25, n),
                   irregular=np.full(n, 0.03), vesicular=np.zeros(n))


def _compose(rng: np.random.Generator, m: SlideMorphology, f: _Fields, lumen: np.ndarray, rim: np.ndarray,
             nmap: np.ndarray, fib_angle: float, ty: tuple, tx: tuple) -> np.ndarray:
    """Layer 4: stroma, cytoplasm and nuclei in OD space, strip by strip, through the stain LUT."""
    height, width = nmap.shape
    hl = f.tissue_lo.shape[0]
    out = np.empty((height, width, 3), np.uint8)
    lut = _stain_lut(m)
    hs, es = float(m.stain_hematoxylin), float(m.stain_eosin)
    cosf, sinf = float(np.cos(fib_angle)), float(np.sin(fib_angle))
    xcol = np.arange(width, dtype=np.float32)[None, :]
    # bilinear for fields with level-0 detail; nearest row for the very smooth stain fields
    lo_cols = _upsample_columns(np.stack([f.tissue_lo, f.cell_lo, f.warp * _LOW, f.clear_lo]).astype(np.float32), tx)
    stain_cols = _upsample_columns(
        np.stack([f.fib_amp, f.e_var * es, f.h_var * hs]).astype(np.float32), tx)
    nearest = np.minimum((np.arange(height) // _LOW + 0.5).astype(np.int64), hl - 1)
    hm, wm = -(-height // _MID) + 1, -(-width // _MID) + 1  # mid-res (1/4) texture field
    my, mx = _lin_index(height, hm, _MID), _lin_index(width, wm, _MID)
    fibre_tex = _smooth_noise(rng, (_FIBRE_TEX, _FIBRE_TEX), 1.0)  # periodic, stretched below
    mid_cols = _upsample_columns(_smooth_noise(rng, (hm, wm), 2.0)[None], mx)  # cleft gate
    for r0 in range(0, height, _STRIP):
        r1 = min(r0 + _STRIP, height)
        rows = r1 - r0
        t_lo, c_lo, wrp, clr = _upsample_rows(lo_cols, ty, r0, r1)
        famp, ev, hv = stain_cols[:, nearest[r0:r1]]
        gate = _upsample_rows(mid_cols, my, r0, r1)[0]
        grain = rng.random((rows, width), dtype=np.float32)
        t = _smoothstep(t_lo + 0.15 * (grain - 0.5))  # slightly ragged tissue edge
        c = _smoothstep(0.5 + c_lo)
        lum = lumen[r0:r1].astype(np.float32) * (1 / 255)
        rimf = rim[r0:r1].astype(np.float32) * (1 / 255)
        yrow = np.arange(r0, r1, dtype=np.float32)[:, None]
        across = (xcol * cosf + yrow * sinf + wrp) * (1 / 5.0)  # texels across fibres
        along = (yrow * cosf - xcol * sinf) * (1 / 45.0)  # texels along fibres
        fibre = _sample_periodic(fibre_tex, across, along)  # ~N(0, 1), long thin streaks
        cleft = _smoothstep((-0.6 - fibre) * 1.5) * _smoothstep(gate + 0.6) * famp  # white gaps
        stroma_e = (0.40 + 0.08 * fibre) * (1 - 0.85 * cleft)
        cyto_e = (0.20 + 0.08 * rimf) * (1 - _CLEAR_CELL_PALLOR * _smoothstep(clr))  # clear cells: pale
        e = t * (1 - lum) * ev * ((1 - c) * stroma_e + c * cyto_e)
        h = t * (1 - lum) * hv * (0.04 + 0.12 * c + 0.06 * rimf)
        nuc = nmap[r0:r1].astype(np.float32) * (_NUC_MAX / 255)
        h += nuc * hv * (0.78 + 0.44 * grain)  # granular chromatin
        e *= 1 - 0.5 * np.minimum(nuc, 1)  # nuclei displace cytoplasm
        e += t * 0.05 * (grain - 0.5)
        hq = np.clip(h * _OD_SCALE + 0.5, 0, 255).astype(np.int32)
        eq = np.clip(e * _OD_SCALE + 0.5, 0, 255).astype(np.int32)
        out[r0:r1] = lut[hq * 256 + eq]
    return out


def render_slide(width: int, height: int, seed: int,
                 morphology: SlideMorphology = SlideMorphology(),
                 kind: str = "tissue") -> np.ndarray:
    """A ``height x width x 3`` uint8 RGB image of synthetic H&E tissue (``kind="tissue"``) or of
    empty glass with faint noise (``kind="blank"``); the same arguments give the same pixels.

    The layers of the module docstring, in order, all drawn from one random stream (seeded by
    ``seed``), so every step's draws follow the previous step's.
    """
    m = morphology
    rng = np.random.default_rng(seed)
    hl, wl = -(-height // _LOW) + 1, -(-width // _LOW) + 1  # low-res field shape
    ty, tx = _lin_index(height, hl, _LOW), _lin_index(width, wl, _LOW)
    if kind == "blank":
        return _render_blank(rng, height, width, (hl, wl), ty, tx)
    fields = _low_res_fields(rng, m, seed, hl, wl)
    lumen, rim, rim_nuclei = _gland_maps(rng, m, fields, height, width)
    tumour = _tumour_nuclei(rng, m, fields, lumen, rim)
    fibro, fib_angle = _fibroblast_nuclei(rng, fields, height, width)
    lymph = _lymphocyte_nuclei(rng, m, fields, height, width)
    nmap = np.zeros((height, width), np.uint8)
    _stamp_nuclei(nmap, _concat([tumour, rim_nuclei, fibro, lymph]), float(np.clip(m.blur, 0.3, 5)))
    return _compose(rng, m, fields, lumen, rim, nmap, fib_angle, ty, tx)
