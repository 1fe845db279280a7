"""The numba kernels of the CellProfiler families (imported only when one is first used).

Module-level functions so that numba's on-disk cache (``cache=True``) finds them in every worker
process; ``cp_cpu_kernels`` holds their NumPy-facing wrappers. One plane at a time, no
per-pixel Python.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def _cp_quantile(s, n, frac):  # pragma: no cover - compiled
    pos = n * frac
    lo = int(np.floor(pos))
    if lo > n - 1:
        lo = n - 1
    hi = lo + 1
    if hi > n - 1:
        hi = n - 1
    f = pos - lo
    return s[lo] * (1.0 - f) + s[hi] * f


@njit(cache=True, nogil=True, boundscheck=False)
def cp_plane_intensity(x, view, edge, out):  # pragma: no cover - compiled
    # x (M, H, W) float64; view, edge (M, H, W) bool; out (M, 19) float64 (see
    # features.cp_intensity.plane_intensity for the order). Sums in raster order.
    m_planes, h, w = x.shape
    buf = np.empty(h * w, dtype=np.float64)
    dev = np.empty(h * w, dtype=np.float64)
    for m in range(m_planes):
        n = 0
        s = 0.0
        mn = np.inf
        mx = -np.inf
        amax = -1
        sr = 0.0
        sc = 0.0
        wr = 0.0
        wc = 0.0
        ne = 0
        es = 0.0
        emn = np.inf
        emx = -np.inf
        for i in range(h):
            for j in range(w):
                if view[m, i, j]:
                    v = x[m, i, j]
                    buf[n] = v
                    n += 1
                    s += v
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                        amax = i * w + j
                    sr += i
                    sc += j
                    wr += v * i
                    wc += v * j
                if edge[m, i, j]:
                    v = x[m, i, j]
                    ne += 1
                    es += v
                    if v < emn:
                        emn = v
                    if v > emx:
                        emx = v
        if n == 0:
            for k in range(out.shape[1]):
                out[m, k] = np.nan
            continue
        mean = s / n
        var = 0.0
        for k in range(n):
            d = buf[k] - mean
            var += d * d
        var /= n
        if ne > 0:
            emean = es / ne
            evar = 0.0
            for i in range(h):
                for j in range(w):
                    if edge[m, i, j]:
                        d = x[m, i, j] - emean
                        evar += d * d
            evar /= ne
            out[m, 5] = es
            out[m, 6] = emean
            out[m, 7] = np.sqrt(evar)
            out[m, 8] = emn
            out[m, 9] = emx
        else:
            for k in range(5, 10):
                out[m, k] = np.nan
        srt = np.sort(buf[:n])
        med = _cp_quantile(srt, n, 0.5)
        for k in range(n):
            dev[k] = abs(buf[k] - med)
        dsrt = np.sort(dev[:n])
        cy = sr / n
        cx = sc / n
        if s != 0:
            my = wr / s
            mxx = wc / s
        else:
            my = np.nan
            mxx = np.nan
        out[m, 0] = s
        out[m, 1] = mean
        out[m, 2] = np.sqrt(var)
        out[m, 3] = mn
        out[m, 4] = mx
        out[m, 10] = np.sqrt((my - cy) ** 2 + (mxx - cx) ** 2)
        out[m, 11] = _cp_quantile(srt, n, 0.25)
        out[m, 12] = med
        out[m, 13] = _cp_quantile(dsrt, n, 0.5)
        out[m, 14] = _cp_quantile(srt, n, 0.75)
        out[m, 15] = mxx
        out[m, 16] = my
        out[m, 17] = amax % w
        out[m, 18] = amax // w


@njit(cache=True, nogil=True, boundscheck=False)
def cp_plane_radii(padded, labels, out):  # pragma: no cover - compiled
    # padded (M, H, W) bool with a background frame; labels (M, H, W) int32, one label per
    # plane; out (3, nl + 1): max, mean, median of the exact Euclidean distance to the nearest
    # background pixel over each label's pixels (column pass, then Felzenszwalb's lower
    # envelope along rows).
    m_planes, h, w = padded.shape
    big = (h + w) * (h + w)
    g = np.empty((h, w), dtype=np.int64)
    d2 = np.empty(w, dtype=np.int64)
    v = np.empty(w, dtype=np.int64)
    z = np.empty(w + 1, dtype=np.float64)
    vals = np.empty(h * w, dtype=np.float64)
    for m in range(m_planes):
        lab = 0
        for j in range(w):
            run = big
            for i in range(h):
                if padded[m, i, j]:
                    run = run + 1 if run < big else big
                else:
                    run = 0
                g[i, j] = run
            run = big
            for i in range(h - 1, -1, -1):
                if padded[m, i, j]:
                    run = run + 1 if run < big else big
                else:
                    run = 0
                if run < g[i, j]:
                    g[i, j] = run
        n = 0
        for i in range(h):
            # lower envelope of the parabolas (x - q)^2 + g[i, q]^2
            k = 0
            v[0] = 0
            z[0] = -np.inf
            z[1] = np.inf
            for q in range(1, w):
                fq = g[i, q] * g[i, q]
                while True:
                    p = v[k]
                    fp = g[i, p] * g[i, p]
                    sx = ((fq + q * q) - (fp + p * p)) / (2.0 * (q - p))
                    if sx <= z[k] and k > 0:
                        k -= 1
                        continue
                    if sx <= z[k]:
                        # k == 0: replace the first parabola
                        v[0] = q
                        z[0] = -np.inf
                        z[1] = np.inf
                        break
                    k += 1
                    v[k] = q
                    z[k] = sx
                    z[k + 1] = np.inf
                    break
            k = 0
            for q in range(w):
                while z[k + 1] < q:
                    k += 1
                p = v[k]
                d2[q] = (q - p) * (q - p) + g[i, p] * g[i, p]
            for q in range(w):
                if labels[m, i, q] > 0:
                    lab = labels[m, i, q]
                    vals[n] = np.sqrt(float(d2[q]))
                    n += 1
        if n == 0:
            continue
        srt = np.sort(vals[:n])
        tot = 0.0
        for k in range(n):
            tot += vals[k]
        out[0, lab] = srt[n - 1]
        out[1, lab] = tot / n
        out[2, lab] = (srt[(n - 1) // 2] + srt[n // 2]) / 2
