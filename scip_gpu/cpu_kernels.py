"""Compiled CPU kernels (numba), for per-pixel work that no NumPy array form does fast.

Optional: with numba installed (``pip install 'scip_gpu[fast]'``) ``ops.median_disk`` runs the
batched sliding-histogram median below; without it, scikit-image's rank filter per plane. Both
give identical results (the tests compare them). Kernels compile on first use and are cached on
disk (numba's cache), so each worker pays the compilation at most once.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # ImportError, or a numba that does not match this NumPy
        return False
    return True


@functools.cache
def _median_kernel():
    from numba import njit

    @njit(cache=True, nogil=True, boundscheck=False)
    def median_disk_planes(x, extents, half, out):  # pragma: no cover - compiled
        # x: (M, H, W) uint16; half[dy + r]: half-width of the disk row dy; out like x.
        # For each plane, a histogram of the pixels inside the disk around (i, j) that lie in the
        # plane's extent is slid along each row (Huang's algorithm): the pixels leaving and
        # entering at the disk's row ends update it, and the median (the element of rank
        # pop // 2, as scikit-image's rank.median) is found by moving from the previous one.
        m_planes = x.shape[0]
        r = (half.shape[0] - 1) // 2
        nbins = 65536
        hist = np.zeros(nbins, dtype=np.int32)
        for m in range(m_planes):
            h = extents[m, 0]
            w = extents[m, 1]
            vmax = 0
            for i in range(h):
                for j in range(w):
                    if x[m, i, j] > vmax:
                        vmax = x[m, i, j]
            for i in range(h):
                for v in range(vmax + 1):
                    hist[v] = 0
                pop = 0
                # window at (i, 0)
                for dy in range(-r, r + 1):
                    rr = i + dy
                    if rr < 0 or rr >= h:
                        continue
                    a = half[dy + r]
                    for dx in range(-a, a + 1):
                        if 0 <= dx < w:
                            hist[x[m, rr, dx]] += 1
                            pop += 1
                # median of the first window: scan up
                med = 0
                below = 0  # number of window pixels with value < med
                while below + hist[med] <= pop // 2:
                    below += hist[med]
                    med += 1
                out[m, i, 0] = med
                for j in range(1, w):
                    for dy in range(-r, r + 1):
                        rr = i + dy
                        if rr < 0 or rr >= h:
                            continue
                        a = half[dy + r]
                        c_out = j - 1 - a
                        if c_out >= 0:
                            v = x[m, rr, c_out]
                            hist[v] -= 1
                            pop -= 1
                            if v < med:
                                below -= 1
                        c_in = j + a
                        if c_in < w:
                            v = x[m, rr, c_in]
                            hist[v] += 1
                            pop += 1
                            if v < med:
                                below += 1
                    k = pop // 2
                    while below > k:  # too many below: move down
                        med -= 1
                        below -= hist[med]
                    while below + hist[med] <= k:  # rank k lies above med: move up
                        below += hist[med]
                        med += 1
                    out[m, i, j] = med

    return median_disk_planes


def median_disk(x: np.ndarray, extents: np.ndarray, radius: int) -> np.ndarray:
    """Batched ``skimage.filters.rank.median(plane, disk(radius))`` of uint8/uint16 planes."""
    from .ops import disk

    fp = disk(radius)
    half = ((fp.sum(axis=1) - 1) // 2).astype(np.int64)
    out = np.zeros(x.shape, dtype=np.uint16)
    _median_kernel()(np.ascontiguousarray(x, dtype=np.uint16), np.ascontiguousarray(extents, dtype=np.int64),
                     half, out)
    return out.astype(x.dtype, copy=False)


@functools.cache
def _glcm_kernel():
    from numba import njit

    @njit(cache=True, nogil=True, boundscheck=False)
    def glcm_props(values, view, extents, edges, offsets, props):  # pragma: no cover - compiled
        # The CPU twin of kernels/glcm.cu (same steps, one plane at a time): quantise on the fly
        # (level = number of edges strictly below the value), count the symmetric co-occurrences
        # of in-view pairs per offset, then the six graycoprops properties.
        m_planes = values.shape[0]
        k_off = offsets.shape[0]
        nl = 16
        counts = np.zeros((k_off, nl, nl), dtype=np.int64)
        lev = np.empty((values.shape[1], values.shape[2]), dtype=np.int64)
        for m in range(m_planes):
            h = extents[m, 0]
            w = extents[m, 1]
            counts[:] = 0
            for r in range(h):
                for c in range(w):
                    if view[m, r, c]:
                        x = values[m, r, c]
                        q = 0
                        for e in range(nl):
                            if x > edges[m, e]:
                                q += 1
                        lev[r, c] = q
                    else:
                        lev[r, c] = nl
            for k in range(k_off):
                dr = offsets[k, 0]
                dc = offsets[k, 1]
                for r in range(max(0, -dr), min(h, h - dr)):
                    for c in range(max(0, -dc), min(w, w - dc)):
                        a = lev[r, c]
                        b = lev[r + dr, c + dc]
                        if a < nl and b < nl:
                            counts[k, a, b] += 1
                            counts[k, b, a] += 1
            for k in range(k_off):
                total = 0.0
                for i in range(nl):
                    for j in range(nl):
                        total += counts[k, i, j]
                norm = 1.0 / total if total > 0 else 0.0
                contrast = 0.0
                dissim = 0.0
                homog = 0.0
                asm = 0.0
                mi = 0.0
                mj = 0.0
                for i in range(nl):
                    for j in range(nl):
                        p = counts[k, i, j] * norm
                        d = float(i - j)
                        contrast += p * d * d
                        dissim += p * abs(d)
                        homog += p / (1.0 + d * d)
                        asm += p * p
                        mi += p * i
                        mj += p * j
                vi = 0.0
                vj = 0.0
                cov = 0.0
                for i in range(nl):
                    for j in range(nl):
                        p = counts[k, i, j] * norm
                        di = i - mi
                        dj = j - mj
                        vi += p * di * di
                        vj += p * dj * dj
                        cov += p * di * dj
                si = np.sqrt(vi)
                sj = np.sqrt(vj)
                props[m, k, 0] = contrast
                props[m, k, 1] = dissim
                props[m, k, 2] = homog
                props[m, k, 3] = np.sqrt(asm)
                props[m, k, 4] = 1.0 if (si < 1e-15 or sj < 1e-15) else cov / (si * sj)
                props[m, k, 5] = asm

    return glcm_props


def glcm_props(values, view, extents, edges, offsets) -> np.ndarray:
    """CPU twin of ``gpu_kernels.glcm_props``: (M, K, 6) graycoprops of the symmetric GLCMs."""
    m = values.shape[0]
    out = np.empty((m, len(offsets), 6))
    _glcm_kernel()(np.ascontiguousarray(values, dtype=np.float64), np.ascontiguousarray(view, dtype=np.bool_),
                   np.ascontiguousarray(extents, dtype=np.int64), np.ascontiguousarray(edges, dtype=np.float64),
                   np.asarray(offsets, dtype=np.int64).reshape(-1, 2), out)
    return out
