"""The numba functions of ``builtin-he``'s fused CPU kernel (:mod:`~msrl_model.encoders.builtin_he_cpu`
runs them: threads, numba's cache, the torch glue; its docstring says how they keep v1.0's values).

They all live in this one file on purpose: numba's disk cache is keyed to the file a function is defined
in, not to the files of the functions it calls, so a callee edited in another file would leave a stale
compiled kernel behind.

``_EXACT`` functions are plain IEEE float32 (no reassociation, no fused multiply-add) and compute what a
threshold or a local maximum reads, in the v1.0 order; ``_FAST`` functions (reassociation allowed, so
they vectorise) only sum rows into float64 statistics.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_EXACT = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy")
_FAST = dict(_EXACT, fastmath={"reassoc", "nsz", "contract"})

SIDE = 256  # tile side
FINE = SIDE // 2  # level-1 grid side
LEVELS = 4  # filter-bank levels 1..4
GRAD_SIDES = (126, 60, 27, 11)  # side of 8|∇g| per level: n - 2 for n = 128, 62, 29, 13
H_CELLS = 22  # histogram grid cells (builtin_he.H_CELLS, _E_CELLS)
# Feature offsets (builtin_he's layout table)
_OFF_OD, _OFF_STAIN, _OFF_ODM, _OFF_CORR, _OFF_TISSUE, _OFF_DARK = 0, 6, 15, 59, 60, 61
_OFF_HFRAC, _OFF_DENSITY, _OFF_STRENGTH, _OFF_FINE, _OFF_BANK = 62, 66, 70, 72, 84


@njit(**_FAST)
def _row_sum(row, n):
    """Σ row[:n], float64."""
    s = 0.0
    for j in range(n):
        s += np.float64(row[j])
    return s


@njit(**_FAST)
def _centred(row, n, mean):
    """Sums of (x - mean)², (x - mean)³ over row[:n], float64."""
    s2 = 0.0
    s3 = 0.0
    for j in range(n):
        d = np.float64(row[j]) - mean
        s2 += d * d
        s3 += d * d * d
    return s2, s3


@njit(**_FAST)
def _co_moment(a, b, n, mean_a, mean_b):
    """Σ (a - mean_a)(b - mean_b) over n elements, float64."""
    s = 0.0
    for j in range(n):
        s += (np.float64(a[j]) - mean_a) * (np.float64(b[j]) - mean_b)
    return s


@njit(**_FAST)
def _fine_row(bands, n, acc):
    """Finest-texture sums of one row: bands (9, n) = (LH, HL, HH) x (H, E, ODm) mixed Haar details;
    acc[k] += Σ|band k|, acc[9 + c] += Σ over the three bands of channel c of band²."""
    for k in range(9):
        s = 0.0
        s2 = 0.0
        for j in range(n):
            v = np.float64(bands[k, j])
            s += abs(v)
            s2 += v * v
        acc[k] += s
        acc[9 + k % 3] += s2


@njit(**_FAST)
def _second_derivative_row(xx, yy, xy, n, acc):
    """acc += Σ|X|, Σ|Y|, Σ|Q + 2L|, Σ|Q - 2L|, Σ hypot(X - Y, Q/2), ΣL, ΣL², Σ|L| over one row (L = X + Y)."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    s5 = 0.0
    s6 = 0.0
    s7 = 0.0
    for j in range(n):
        x = np.float64(xx[j])
        y = np.float64(yy[j])
        q = np.float64(xy[j])
        lap = x + y
        s0 += abs(x)
        s1 += abs(y)
        s2 += abs(q + 2.0 * lap)
        s3 += abs(q - 2.0 * lap)
        d = x - y
        s4 += math.sqrt(d * d + 0.25 * q * q)
        s5 += lap
        s6 += lap * lap
        s7 += abs(lap)
    acc[0] += s0
    acc[1] += s1
    acc[2] += s2
    acc[3] += s3
    acc[4] += s4
    acc[5] += s5
    acc[6] += s6
    acc[7] += s7


@njit(**_FAST)
def _band_row(g_row, s_row, n, acc):
    """acc += Σ band, Σ band², Σ|band| of band = g - S/256 over one row (g_row[2:n+2] against s_row[:n]),
    and Σ S."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for j in range(n):
        sv = np.float64(s_row[j])
        b = np.float64(g_row[j + 2]) - sv * (1.0 / 256.0)
        s0 += b
        s1 += b * b
        s2 += abs(b)
        s3 += sv
    acc[0] += s0
    acc[1] += s1
    acc[2] += s2
    acc[3] += s3


@njit(**_EXACT)
def _level1(tile, lut, weights, grey_w, maps, rows, fine_acc):
    """One tile (256, 256, 3) uint8 -> the level-1 map stack maps (8, 128, 128): OD r, g, b, H, E, ODm, D,
    grey Y (builtin_he's ``_MAPS`` order), exactly as the torch path; fine_acc (12,) gets the finest
    texture sums (:func:`_fine_row`). weights (3, 4) float32: OD -> H, E, ODm, D; grey_w (4,): the R, G,
    B grey weights and 1/255; rows (21, 128) scratch.

    Per level-1 row: the lookups and the Haar step channel by channel, then the channel mixes as loops
    over the row (which vectorise)."""
    q = np.float32(0.25)
    for i in range(FINE):
        top = tile[2 * i]
        bottom = tile[2 * i + 1]
        for c in range(3):
            od = maps[c, i]
            grey = rows[c]  # block mean of the raw channel
            lh = rows[3 + c]  # Haar details of this channel's OD
            hl = rows[6 + c]
            hh = rows[9 + c]
            for j in range(FINE):
                a = lut[top[2 * j, c]]
                b = lut[top[2 * j + 1, c]]
                cc = lut[bottom[2 * j, c]]
                d = lut[bottom[2 * j + 1, c]]
                ts = (a + b) * q  # the pair sums / differences of the lookup tables, then the Haar step
                td = (a - b) * q
                bs = (cc + d) * q
                bd = (cc - d) * q
                od[j] = ts + bs
                lh[j] = td + bd
                hl[j] = ts - bs
                hh[j] = td - bd
                raw = (np.float32(top[2 * j, c]) + np.float32(top[2 * j + 1, c])) * q
                grey[j] = raw + (np.float32(bottom[2 * j, c]) + np.float32(bottom[2 * j + 1, c])) * q
        _mix_row(maps, rows, i, weights, grey_w)
        _fine_row(rows[12:], FINE, fine_acc)


@njit(**_EXACT)
def _mix_row(maps, rows, i, weights, grey_w):
    """Row i of the level-1 stack from the per-channel rows (rows[0:3] raw block means, rows[3:12] OD Haar
    details LH, HL, HH x r, g, b): H, E, ODm, D and grey Y (exact, in the torch path's order), then the
    H, E, ODm details into rows[12:21] (band-major, statistics only)."""
    y = maps[7, i]
    for j in range(FINE):
        y[j] = ((rows[0, j] * grey_w[0] + rows[1, j] * grey_w[1]) + rows[2, j] * grey_w[2]) * grey_w[3]
    od0 = maps[0, i]
    od1 = maps[1, i]
    od2 = maps[2, i]
    for t in range(4):  # H, E, ODm, D
        out = maps[3 + t, i]
        w0 = weights[0, t]
        w1 = weights[1, t]
        w2 = weights[2, t]
        for j in range(FINE):
            out[j] = (od0[j] * w0 + od1[j] * w1) + od2[j] * w2
    for band in range(3):
        x0 = rows[3 + 3 * band]
        x1 = rows[4 + 3 * band]
        x2 = rows[5 + 3 * band]
        for t in range(3):
            w0 = weights[0, t]
            w1 = weights[1, t]
            w2 = weights[2, t]
            out = rows[12 + 3 * band + t]
            for j in range(FINE):
                out[j] = x0[j] * w0 + x1[j] * w1 + x2[j] * w2


@njit(**_EXACT)
def _counts(maps, h_thresholds, tissue_od, dark_y, h_per_unit, e_per_unit, cells, fractions):
    """Exact counts on the level-1 stack: cells (22, 22) += pixels per (H cell, E cell)
    (builtin_he.grid_cell); fractions[0:4] = H above each threshold, [4] ODm > tissue, [5] Y < dark.
    Row by row: the cell indices and the threshold counts are branch-free loops (they vectorise), then
    one increment per pixel."""
    flat = cells.reshape(H_CELLS * H_CELLS)
    index = np.empty(FINE, np.int64)
    top = np.float32(H_CELLS - 2)
    low = np.float32(-1.0)
    t0, t1, t2, t3 = h_thresholds[0], h_thresholds[1], h_thresholds[2], h_thresholds[3]
    n0 = n1 = n2 = n3 = n_tissue = n_dark = 0
    for i in range(FINE):
        h = maps[3, i]
        e = maps[4, i]
        odm = maps[5, i]
        y = maps[7, i]
        for j in range(FINE):
            hc = min(max(np.floor(h[j] * h_per_unit), low), top)
            ec = min(max(np.floor(e[j] * e_per_unit), low), top)
            index[j] = (np.int64(hc) + 1) * H_CELLS + np.int64(ec) + 1
            n0 += np.int64(h[j] > t0)
            n1 += np.int64(h[j] > t1)
            n2 += np.int64(h[j] > t2)
            n3 += np.int64(h[j] > t3)
            n_tissue += np.int64(odm[j] > tissue_od)
            n_dark += np.int64(y[j] < dark_y)
        for j in range(FINE):
            flat[index[j]] += 1
    fractions[0] += n0
    fractions[1] += n1
    fractions[2] += n2
    fractions[3] += n3
    fractions[4] += n_tissue
    fractions[5] += n_dark


@njit(**_EXACT)
def _colour(maps, out):
    """Means, standard deviations, skewness and H-E correlation of the level-1 stack into out (the feature
    row) at builtin_he's offsets."""
    n = FINE * FINE
    mean = np.empty(8)
    std = np.empty(8)
    third = np.empty(8)
    for m in range(8):
        s = 0.0
        for i in range(FINE):
            s += _row_sum(maps[m, i], FINE)
        mean[m] = s / n
        s2 = 0.0
        s3 = 0.0
        for i in range(FINE):
            a, b = _centred(maps[m, i], FINE, mean[m])
            s2 += a
            s3 += b
        std[m] = math.sqrt(s2 / n)
        third[m] = s3 / n
    cov = 0.0
    for i in range(FINE):
        cov += _co_moment(maps[3, i], maps[4, i], FINE, mean[3], mean[4])
    cov /= n
    for c in range(3):
        out[_OFF_OD + 2 * c] = mean[c]
        out[_OFF_OD + 2 * c + 1] = std[c]
    for k, m in enumerate((3, 4, 6)):  # H, E, D
        out[_OFF_STAIN + 3 * k] = mean[m]
        out[_OFF_STAIN + 3 * k + 1] = std[m]
        out[_OFF_STAIN + 3 * k + 2] = third[m] / max(std[m], 1e-6) ** 3
    out[_OFF_ODM] = mean[5]
    out[_OFF_ODM + 1] = std[5]
    out[_OFF_ODM + 2] = mean[7]
    out[_OFF_ODM + 3] = std[7]
    denom = std[3] * std[4]
    out[_OFF_CORR] = cov / denom if denom > 1e-6 else 0.0


@njit(**_EXACT)
def _blur(g, s, ring):
    """Unscaled valid binomial blur of one map g (n, n) -> s (n-4, n-4): four [1 1] passes along each row,
    then four down the columns, each sum as in builtin_he_torch._binomial_sum (the same values), streamed: row
    k of g gives row k of the row-blurred map h, then v1[k-1] = h[k] + h[k-1], v2[k-2] = v1[k-1] + v1[k-2],
    v3[k-3] = v2[k-2] + v2[k-3] and s[k-4] = v3[k-3] + v3[k-4], so only the last two rows of each stay
    (ring (8, >= n): h, v1, v2, v3, two rows each) and every pass runs in L1."""
    n = g.shape[0]
    m = n - 4
    for k in range(n):
        h = ring[k % 2]
        for j in range(n - 1):
            h[j] = g[k, j + 1] + g[k, j]
        for p in range(1, 4):
            for j in range(n - 1 - p):
                h[j] = h[j + 1] + h[j]
        if k >= 1:
            _add_rows(ring[k % 2], ring[(k - 1) % 2], ring[2 + (k - 1) % 2], m)
        if k >= 2:
            _add_rows(ring[2 + (k - 1) % 2], ring[2 + k % 2], ring[4 + k % 2], m)
        if k >= 3:
            _add_rows(ring[4 + k % 2], ring[4 + (k - 1) % 2], ring[6 + (k - 1) % 2], m)
        if k >= 4:
            _add_rows(ring[6 + (k - 1) % 2], ring[6 + k % 2], s[k - 4], m)


@njit(**_EXACT)
def _add_rows(a, b, out, n):
    """out[:n] = a[:n] + b[:n] (float32)."""
    for j in range(n):
        out[j] = a[j] + b[j]


@njit(**_EXACT)
def _gradient(g, grad, dx, square):
    """8|∇g| of one map g (n, n) -> grad (n-2, n-2) (Sobel sums in builtin_he's association, sqrt of
    sx² + sy²); returns Σ (8|∇g|)² (float64). dx (3, n) and square (n,) scratch."""
    n = g.shape[0]
    total = 0.0
    for k in range(n):  # dx of row k into slot k % 3: each row's once
        row = dx[k % 3]
        for j in range(n - 2):
            row[j] = g[k, j + 2] - g[k, j]
        if k < 2:
            continue
        i = k - 2  # output row: centred on row i + 1
        above = dx[i % 3]
        middle = dx[(i + 1) % 3]
        below = dx[k % 3]
        for j in range(n - 2):
            sx = (below[j] + middle[j]) + (middle[j] + above[j])
            dy0 = g[k, j] - g[i, j]
            dy1 = g[k, j + 1] - g[i, j + 1]
            dy2 = g[k, j + 2] - g[i, j + 2]
            sy = (dy2 + dy1) + (dy1 + dy0)
            square[j] = sx * sx + sy * sy
            grad[i, j] = np.sqrt(square[j])
        total += _row_sum(square, n - 2)
    return total


@njit(**_EXACT)
def _texture_channel(g, s, ring, grad, dx, square, xx, yy, xy, log, keep_log, stats):
    """Filter bank of one channel at one level: g (n, n) -> s (n-4, n-4) unscaled blur, grad (n-2, n-2)
    8|∇g|, with keep_log the unscaled LoG (n-6, n-6) into log; stats (15,) gets every statistic but
    [4..6] (those read the torch mean of grad), and returns Σ(8|∇g|)²."""
    n = g.shape[0]
    m = n - 4
    _blur(g, s, ring)
    band = np.zeros(4)
    for i in range(m):
        _band_row(g[i + 2], s[i], m, band)
    count = m * m
    s_mean = band[3] / count
    s2 = 0.0
    for i in range(m):
        s2 += _centred(s[i], m, s_mean)[0]
    square_sum = _gradient(g, grad, dx, square)
    k = m - 2
    acc = np.zeros(8)
    two = np.float32(-2.0)
    for i in range(k):
        for j in range(k):
            centre = s[i + 1, j + 1]
            xx[j] = (s[i + 1, j + 2] + s[i + 1, j]) + two * centre
            yy[j] = (s[i + 2, j + 1] + s[i, j + 1]) + two * centre
            xy[j] = (s[i + 2, j + 2] + s[i, j]) - (s[i, j + 2] + s[i + 2, j])
            if keep_log:
                log[i, j] = xx[j] + yy[j]
        _second_derivative_row(xx, yy, xy, k, acc)
    n_log = k * k
    band_mean = band[0] / count
    stats[0] = math.sqrt(s2 / count) / 256.0
    stats[1] = math.sqrt(max(band[1] / count - band_mean * band_mean, 0.0))
    stats[2] = (band[2] / count + band_mean) / 2.0
    stats[3] = (band[2] / count - band_mean) / 2.0
    stats[7] = acc[0] / (n_log * 256.0)
    stats[8] = acc[2] / (n_log * 1024.0)
    stats[9] = acc[1] / (n_log * 256.0)
    stats[10] = acc[3] / (n_log * 1024.0)
    stats[11] = acc[4] / (n_log * 256.0)
    log_mean = acc[5] / n_log
    stats[12] = math.sqrt(max(acc[6] / n_log - log_mean * log_mean, 0.0)) / 256.0
    stats[13] = (acc[7] / n_log - log_mean) / 512.0
    stats[14] = (acc[7] / n_log + log_mean) / 512.0
    return square_sum


@njit(**_EXACT)
def _blobs(log, k, thresholds, out, column):
    """H blob features from the unscaled LoG log[:k, :k]: local maxima of B = relu(-LoG) above each
    threshold per 10⁴ px (out[column], out[column + 1]) and mean B at the maxima above the first
    (out[_OFF_STRENGTH + column - _OFF_DENSITY) // 2]), exactly as builtin_he_torch._blob_features."""
    above0 = 0
    above1 = 0
    strength = 0.0
    zero = np.float32(0.0)
    for i in range(1, k - 1):
        for j in range(1, k - 1):
            v = max(-log[i, j], zero)
            peak = True
            for a in range(-1, 2):
                for b in range(-1, 2):
                    if max(-log[i + a, j + b], zero) > v:
                        peak = False
            if peak and v > thresholds[0]:
                above0 += 1
                strength += v
                if v > thresholds[1]:
                    above1 += 1
    per_1e4 = 1e4 / (SIDE * SIDE)
    out[column] = above0 * per_1e4
    out[column + 1] = above1 * per_1e4
    out[_OFF_STRENGTH + (column - _OFF_DENSITY) // 2] = strength / (max(above0, 1) * 256.0)


@njit(**_EXACT)
def _encode_tile(tile, lut, weights, grey_w, h_thresholds, scalars, blob_thresholds, out, cells, g1, g2, g3, g4,
                 square_sums, maps, scratch):
    """One tile -> out (the feature row, all but the histograms and filter-bank [4..6]), cells (22, 22),
    the 8|∇g| maps g1..g4 (3, side, side) and square_sums (4, 3) = Σ(8|∇g|)² per level and channel."""
    level1_rows, ring, dx, square, xx, yy, xy = scratch
    fine_acc = np.zeros(12)
    _level1(tile, lut, weights, grey_w, maps, level1_rows, fine_acc)
    n = FINE * FINE
    for c in range(3):  # finest texture: mean |LH|, |HL|, |HH|, then rms
        for b in range(3):
            out[_OFF_FINE + 4 * c + b] = fine_acc[3 * b + c] / n
        out[_OFF_FINE + 4 * c + 3] = math.sqrt(fine_acc[9 + c] / n)
    fractions = np.zeros(6)
    _counts(maps, h_thresholds, scalars[0], scalars[1], scalars[2], scalars[3], cells, fractions)
    for k in range(4):
        out[_OFF_HFRAC + k] = fractions[k] / n
    out[_OFF_TISSUE] = fractions[4] / n
    out[_OFF_DARK] = fractions[5] / n
    _colour(maps, out)
    stats = np.zeros(15)
    grads = (g1, g2, g3, g4)
    level = maps  # the level's maps H, E, ODm are level[first:first + 3] (C-contiguous, so loops vectorise)
    first = 3
    for lv in range(LEVELS):
        side = level.shape[1]
        m = side - 4
        s = np.empty((3, m, m), np.float32)
        log = np.empty((m - 2, m - 2), np.float32)
        for c in range(3):
            keep_log = c == 0 and (lv == 1 or lv == 2)  # H at levels 2 and 3
            square_sums[lv, c] = _texture_channel(level[first + c], s[c], ring, grads[lv][c], dx, square, xx,
                                                  yy, xy, log, keep_log, stats)
            base = _OFF_BANK + 60 * c + 15 * lv
            for k in range(15):
                if k < 4 or k > 6:
                    out[base + k] = stats[k]
            if keep_log:
                _blobs(log, m - 2, blob_thresholds, out, _OFF_DENSITY + 2 * (lv - 1))
        if lv + 1 < LEVELS:  # Gaussian pyramid: every other pixel of the blur, scaled back
            nxt = (m + 1) // 2
            level = np.empty((3, nxt, nxt), np.float32)
            first = 0
            inv = np.float32(1.0 / 256.0)
            for c in range(3):
                for i in range(nxt):
                    for j in range(nxt):
                        level[c, i, j] = s[c, 2 * i, 2 * j] * inv


@njit(**_EXACT)
def encode_range(x, start, stop, lut, weights, grey_w, h_thresholds, scalars, blob_thresholds, out, cells,
                  g1, g2, g3, g4, square_sums):
    """Tiles x[start:stop] (B, 256, 256, 3) uint8, one scratch set for the range."""
    maps = np.empty((8, FINE, FINE), np.float32)
    scratch = (np.empty((21, FINE), np.float32), np.empty((8, FINE), np.float32), np.empty((3, FINE), np.float32),
               np.empty(FINE, np.float32), np.empty(FINE, np.float32), np.empty(FINE, np.float32),
               np.empty(FINE, np.float32))
    for t in range(start, stop):
        _encode_tile(x[t], lut, weights, grey_w, h_thresholds, scalars, blob_thresholds, out[t], cells[t],
                     g1[t], g2[t], g3[t], g4[t], square_sums[t], maps, scratch)


@njit(**_EXACT)
def count_above_into(grad, threshold, counts):
    """counts[b, c] = number of grad[b, c] (B, C, h, w) elements > threshold[b, c] (exact compares)."""
    for b in range(grad.shape[0]):
        for c in range(grad.shape[1]):
            t = threshold[b, c]
            k = 0
            for i in range(grad.shape[2]):
                row = grad[b, c, i]
                for j in range(grad.shape[3]):
                    k += np.int64(row[j] > t)
            counts[b, c] = k
