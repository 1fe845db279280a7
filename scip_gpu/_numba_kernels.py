"""The numba kernels behind ``scip_gpu.cpu_kernels`` (imported only when one is first used).

They are module-level functions so that numba's on-disk cache (``cache=True``) finds them again
in every new worker process; ``cpu_kernels`` holds their documented NumPy-facing wrappers.
"""

import numpy as np
from numba import njit

from .stats import MOMENT_LANES  # partial sums of the central moments (sorted_stats)

# chunks of the blocked prefix sums in li_rows: the threads per block of the CUDA twin
# (kernels/masks.cu, sg_threshold_li; SG_THREADS)
LI_CHUNKS = 256


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

@njit(cache=True, nogil=True, boundscheck=False)
def glcm_props(values, view, extents, edges, offsets, props):  # pragma: no cover - compiled
    # The CPU twin of kernels/glcm.cu (same steps, one plane at a time): quantise on the fly
    # (level = number of edges strictly below the value), count the symmetric co-occurrences
    # of in-view pairs per offset, then the six graycoprops properties.
    m_planes = values.shape[0]
    k_off = offsets.shape[0]
    nl = 16
    counts = np.zeros((k_off, nl, nl), dtype=np.int64)
    # one-sided counts of (level at p, level at p + offset) over a 17 x 17 table whose last row
    # and column collect the pairs with a pixel outside the view (level nl); symmetrised below
    half = np.zeros((nl + 1) * (nl + 1), dtype=np.int32)
    lev = np.empty((values.shape[1], values.shape[2]), dtype=np.int32)
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        counts[:] = 0
        lo = edges[m, 0]
        top = edges[m, nl - 1]
        step = (top - lo) / (nl - 1)
        r_lo = h
        r_hi = -1
        c_lo = w
        c_hi = -1
        for r in range(h):
            for c in range(w):
                if view[m, r, c]:
                    r_lo = min(r_lo, r)
                    r_hi = r
                    c_lo = min(c_lo, c)
                    c_hi = max(c_hi, c)
                    x = values[m, r, c]
                    # level = number of edges strictly below x: an arithmetic guess from the
                    # equal spacing, moved onto the exact edges
                    if x <= lo:
                        q = 0
                    elif x > top:
                        q = nl
                    else:
                        q = int((x - lo) / step) if step > 0 else 0
                        q = min(max(q, 0), nl - 1)
                        while q > 0 and not x > edges[m, q - 1]:
                            q -= 1
                        while q < nl and x > edges[m, q]:
                            q += 1
                    lev[r, c] = q
                else:
                    lev[r, c] = nl
        for k in range(k_off):
            dr = offsets[k, 0]
            dc = offsets[k, 1]
            half[:] = 0
            # only pixels in the view's bounding box start a pair that counts
            for r in range(max(r_lo, -dr), min(r_hi + 1, h - dr)):
                for c in range(max(c_lo, -dc), min(c_hi + 1, w - dc)):
                    a = lev[r, c]
                    if a != nl:  # outside the view (most of the plane): nothing to count
                        half[a * (nl + 1) + lev[r + dr, c + dc]] += 1
            for a in range(nl):
                for b in range(nl):
                    counts[k, a, b] = half[a * (nl + 1) + b] + half[b * (nl + 1) + a]
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

@njit(cache=True, nogil=True)
def lerp(a, b, t):  # pragma: no cover - compiled; numpy's _lerp
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t

@njit(cache=True, nogil=True, boundscheck=False)
def quantile(v, n, p):  # pragma: no cover - compiled; numpy's 'linear' method
    virt = (n - 1) * p
    lo = int(np.floor(virt))
    hi = min(lo + 1, n - 1)
    return lerp(v[lo], v[hi], virt - lo)

@njit(cache=True, nogil=True, boundscheck=False)
def sorted_stats(v, n, out, part):  # pragma: no cover - compiled
    # the 11 statistics of the ascending v[:n], as scip_gpu.stats.compact_statistics. The
    # central moments are summed in MOMENT_LANES partial sums (member i into partial i mod
    # MOMENT_LANES, ascending i) added as a pairwise tree: the order of the CUDA twin
    # (kernels/intensity.cu, int_moment_lane), whose threads each sum one partial. part: (3,
    # MOMENT_LANES) scratch.
    if n == 0:
        for k in range(11):
            out[k] = np.nan
        return
    total = 0.0
    for i in range(n):
        total += v[i]
    mean = total / n
    part[:] = 0.0
    for i in range(n):
        e = v[i] - mean
        e2 = e * e
        lane = i % MOMENT_LANES
        part[0, lane] += e2
        part[1, lane] += e2 * e
        part[2, lane] += e2 * e2
    off = MOMENT_LANES // 2
    while off > 0:
        for j in range(off):
            for k in range(3):
                part[k, j] += part[k, j + off]
        off //= 2
    m2 = part[0, 0]
    m3 = part[1, 0]
    m4 = part[2, 0]
    m2 /= n
    m3 /= n
    m4 /= n
    med = quantile(v, n, 0.5)
    # median absolute deviation: |v - med| is two ascending runs (below the median read
    # downwards, the rest upwards); merge them up to the ranks the median needs
    k_lo = (n - 1) // 2
    k_hi = min(n // 2, n - 1)
    split = 0
    while split < n and v[split] < med:
        split += 1
    a = split - 1
    b = split
    d_lo = 0.0
    d_hi = 0.0
    for k in range(k_hi + 1):
        if b >= n or (a >= 0 and med - v[a] <= v[b] - med):
            d = abs(v[a] - med)
            a -= 1
        else:
            d = abs(v[b] - med)
            b += 1
        if k == k_lo:
            d_lo = d
        d_hi = d
    mad = lerp(d_lo, d_hi, 0.0 if k_lo == k_hi else 0.5)
    zero = m2 <= (2.220446049250313e-16 * mean) ** 2
    out[0] = mean
    out[1] = med
    out[2] = v[n - 1]
    out[3] = v[0]
    out[4] = np.sqrt(m2)
    out[5] = mad
    out[6] = quantile(v, n, 0.25)
    out[7] = quantile(v, n, 0.75)
    out[8] = total
    out[9] = np.nan if zero else m3 / (m2 * np.sqrt(m2))  # (not a power: see stats.compact_statistics)
    out[10] = np.nan if zero else m4 / (m2 * m2) - 3.0

@njit(cache=True, nogil=True, boundscheck=False)
def sorted_view_statistics(order, values, views, out):  # pragma: no cover - compiled
    # order: (R, P) argsort of each plane; values: (R, P) the plane's values in that order;
    # views: (V, R, P) bool; out: (R, V, 11). Each view's members are read off the sorted
    # order (already ascending), so nothing is sorted here.
    n_views, n_planes, p = views.shape
    buf = np.empty((n_views, p))
    cnt = np.empty(n_views, dtype=np.int64)
    part = np.empty((3, MOMENT_LANES))
    for r in range(n_planes):
        cnt[:] = 0
        for k in range(p):  # one pass over the order fills every view (branch-free)
            i = order[r, k]
            val = values[r, k]
            for vv in range(n_views):
                buf[vv, cnt[vv]] = val
                cnt[vv] += views[vv, r, i]
        for vv in range(n_views):
            sorted_stats(buf[vv], cnt[vv], out[r, vv], part)

@njit(cache=True, nogil=True, boundscheck=False)
def radix_argsort_u16(x, order, values):  # pragma: no cover - compiled
    # stable LSD radix sort of each uint16 row, two 8-bit passes
    n_rows, p = x.shape
    tmp = np.empty(p, dtype=np.int32)
    cnt = np.empty(257, dtype=np.int64)
    for r in range(n_rows):
        cnt[:] = 0
        for k in range(p):
            cnt[(x[r, k] & 255) + 1] += 1
        for b in range(256):
            cnt[b + 1] += cnt[b]
        for k in range(p):
            d = x[r, k] & 255
            tmp[cnt[d]] = k
            cnt[d] += 1
        cnt[:] = 0
        for k in range(p):
            cnt[(x[r, k] >> 8) + 1] += 1
        for b in range(256):
            cnt[b + 1] += cnt[b]
        for k in range(p):
            i = tmp[k]
            d = x[r, i] >> 8
            order[r, cnt[d]] = i
            values[r, cnt[d]] = x[r, i]
            cnt[d] += 1

@njit(cache=True, nogil=True, boundscheck=False)
def fill_and_clean(fg, extents, hole_area, min_size, out):  # pragma: no cover - compiled
    # per plane: remove_small_holes(area_threshold=hole_area[m]) then
    # remove_small_objects(min_size), both 4-connected, inside each extent
    m_planes, ha, wa = fg.shape
    lab, parent, final = _label_workspace(ha, wa)
    size = np.empty(ha * wa + 1, dtype=np.int64)
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        o = out[m]
        o[:, :] = False
        for i in range(h):
            for j in range(w):
                o[i, j] = fg[m, i, j]
        for stage in range(2):
            value = stage == 1  # holes (background) first, then objects
            n = label_plane(o, h, w, value, False, lab, parent, final, 1)
            size[: n + 1] = 0
            for i in range(h):
                for j in range(w):
                    size[lab[i, j]] += 1
            limit = hole_area[m] if stage == 0 else min_size
            for i in range(h):
                for j in range(w):
                    k = lab[i, j]
                    if k != 0 and size[k] < limit:
                        o[i, j] = not value


@njit(cache=True, nogil=True, boundscheck=False)
def border_regions(mask, extents, out, regions):  # pragma: no cover - compiled
    # SCIP's border rule per plane (see ops.regions_touching_border), 8-connected
    m_planes, ha, wa = mask.shape
    lab, parent, final = _label_workspace(ha, wa)
    touching = np.empty(ha * wa + 1, dtype=np.int64)
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        limit = int(0.25 * min(h, w))
        o = out[m]
        o[:, :] = False
        n = label_plane(mask[m], h, w, True, True, lab, parent, final, 1)
        touching[: n + 1] = 0
        for j in range(w):
            touching[lab[0, j]] += 1
            touching[lab[h - 1, j]] += 1
        for i in range(h):
            touching[lab[i, 0]] += 1
            touching[lab[i, w - 1]] += 1
        kept = 0
        for k in range(1, n + 1):
            kept += touching[k] <= limit
        for i in range(h):
            for j in range(w):
                k = lab[i, j]
                o[i, j] = k != 0 and touching[k] <= limit
        regions[m] = kept


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _sobel_px(f, m, ip, i, ib, jp, j, jb, inv):  # pragma: no cover - compiled
    top = 0.25 * f[m, ip, jp] + 0.5 * f[m, ip, j] + 0.25 * f[m, ip, jb]
    bottom = 0.25 * f[m, ib, jp] + 0.5 * f[m, ib, j] + 0.25 * f[m, ib, jb]
    left = 0.25 * f[m, ip, jp] + 0.5 * f[m, i, jp] + 0.25 * f[m, ib, jp]
    right = 0.25 * f[m, ip, jb] + 0.5 * f[m, i, jb] + 0.25 * f[m, ib, jb]
    gr = top - bottom
    gc = left - right
    return np.sqrt(gr * gr + gc * gc) * inv


@njit(cache=True, nogil=True, boundscheck=False)
def sobel_planes(f, extents, out):  # pragma: no cover - compiled
    # skimage.filters.sobel inside each extent (mode 'reflect'): the [1, 2, 1] / 4 smoothing
    # across and [1, 0, -1] along each axis, sqrt((gr^2 + gc^2) / 2); 0 outside the extent.
    # The first and last column of a row are done apart so the columns between vectorise.
    m_planes = f.shape[0]
    inv = 1.0 / np.sqrt(2.0)
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        for i in range(h):
            ip = i - 1 if i > 0 else 0
            ib = i + 1 if i < h - 1 else h - 1
            out[m, i, 0] = _sobel_px(f, m, ip, i, ib, 0, 0, 1 if w > 1 else 0, inv)
            for j in range(1, w - 1):
                out[m, i, j] = _sobel_px(f, m, ip, i, ib, j - 1, j, j + 1, inv)
            if w > 1:
                out[m, i, w - 1] = _sobel_px(f, m, ip, i, ib, w - 2, w - 1, w - 1, inv)


@njit(cache=True, nogil=True, boundscheck=False)
def erosion_rows(mask, extents, half, out):  # pragma: no cover - compiled
    # binary erosion by a footprint made of centred row segments (half[dy + r]: half-width
    # of row dy), outside the extent counting as foreground (border_value=True).
    # run[i, j]: largest a with mask[i, j-a..j+a] all set (within the row; beyond its ends
    # counts as set), + 1; 0 where mask[i, j] is unset.
    m_planes, ha, wa = mask.shape
    r = (half.shape[0] - 1) // 2
    big = ha + wa + 1
    run = np.empty((ha, wa), dtype=np.int32)
    left = np.empty(wa, dtype=np.int32)
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        for i in range(h):
            c = big
            for j in range(w):
                c = c + 1 if mask[m, i, j] else 0
                left[j] = c
            c = big
            for j in range(w - 1, -1, -1):
                c = c + 1 if mask[m, i, j] else 0
                run[i, j] = min(left[j], c)
        o = out[m]
        o[:, :] = False
        for i in range(h):
            for j in range(w):
                if run[i, j] == 0:
                    continue
                keep = True
                for k in range(2 * r + 1):
                    ii = i + k - r
                    if 0 <= ii < h and run[ii, j] <= half[k]:
                        keep = False
                        break
                o[i, j] = keep

@njit(cache=True, nogil=True)
def sobel_view_statistics(sob, view, extents, out):  # pragma: no cover - compiled
    # nanmean, nanstd, nanmax, nanmin of the Sobel map of where(view, x, nan) over each
    # extent: the map of x (``sob``) where all eight neighbours, reflected at the border, are
    # in the view (the centre has weight zero)
    n_planes = sob.shape[0]
    vals = np.empty(sob.shape[1] * sob.shape[2])
    for r in range(n_planes):
        h = extents[r, 0]
        w = extents[r, 1]
        n = 0
        for i in range(h):
            for j in range(w):
                ok = True
                for di in range(-1, 2):
                    ii = i + di
                    ii = 0 if ii < 0 else (h - 1 if ii >= h else ii)
                    for dj in range(-1, 2):
                        if di == 0 and dj == 0:
                            continue
                        jj = j + dj
                        jj = 0 if jj < 0 else (w - 1 if jj >= w else jj)
                        if not view[r, ii, jj]:
                            ok = False
                            break
                    if not ok:
                        break
                if ok:
                    vals[n] = sob[r, i, j]
                    n += 1
        if n == 0:
            for k in range(4):
                out[r, k] = np.nan
            continue
        s = 0.0
        mx = -np.inf
        mn = np.inf
        for k in range(n):
            s += vals[k]
            mx = max(mx, vals[k])
            mn = min(mn, vals[k])
        mean = s / n
        var = 0.0
        for k in range(n):
            var += (vals[k] - mean) ** 2
        out[r, 0] = mean
        out[r, 1] = np.sqrt(var / n)
        out[r, 2] = mx
        out[r, 3] = mn

@njit(cache=True, nogil=True)
def digitize_rows(x, valid, edges, out):  # pragma: no cover - compiled
    # numpy.digitize(x[m], edges[m]) (right=False) for every valid entry of every row: an
    # arithmetic guess from the equal bin width, then moved to the exact edge
    n_rows, n = x.shape
    last = edges.shape[1] - 1
    for m in range(n_rows):
        lo = edges[m, 0]
        hi = edges[m, last]
        scale = last / (hi - lo)
        for k in range(n):
            if not valid[m, k]:
                out[m, k] = 0
                continue
            v = x[m, k]
            g = int(np.floor((v - lo) * scale)) + 1
            g = max(0, min(g, last + 1))
            while g > 0 and v < edges[m, g - 1]:
                g -= 1
            while g <= last and v >= edges[m, g]:
                g += 1
            out[m, k] = g


@njit(cache=True, nogil=True, boundscheck=False)
def masked_range(values, view, lo, hi, has):  # pragma: no cover - compiled
    # min and max of each (M, P) row over its view
    m_rows, p = values.shape
    for m in range(m_rows):
        a = np.inf
        b = -np.inf
        any_ = False
        for k in range(p):
            if view[m, k]:
                v = values[m, k]
                a = min(a, v)
                b = max(b, v)
                any_ = True
        lo[m] = a
        hi[m] = b
        has[m] = any_


@njit(cache=True, nogil=True, boundscheck=False)
def outside_sums(px, mask, combined, extents, bg, n_bg, cbg, n_cbg):  # pragma: no cover - compiled
    # px, mask: (N, C, H, W); combined: (N, H, W). Sum and count of each channel's pixels inside
    # the extent but outside its own mask, and outside the combined mask. The sums in the order
    # of the CUDA twin (kernels/masks.cu, sg_combine_float_sums): the extent's pixels in raster
    # order cut into LI_CHUNKS chunks of ceil(h w / LI_CHUNKS), each summed in order, the chunk
    # sums added in order (for integer pixels of up to 16 bits every order gives the same sum).
    n_obj, n_ch, ha, wa = px.shape
    for i in range(n_obj):
        h = extents[i, 0]
        w = extents[i, 1]
        n = h * w
        cs = (n + LI_CHUNKS - 1) // LI_CHUNKS
        for c in range(n_ch):
            s = 0.0
            k = 0
            sc = 0.0
            kc = 0
            for a in range(0, n, cs):
                cs1 = 0.0
                cs2 = 0.0
                for p in range(a, min(a + cs, n)):
                    r = p // w
                    q = p - r * w
                    v = float(px[i, c, r, q])
                    if not mask[i, c, r, q]:
                        cs1 += v
                        k += 1
                    if not combined[i, r, q]:
                        cs2 += v
                        kc += 1
                s += cs1
                sc += cs2
            bg[i, c] = s
            n_bg[i, c] = k
            cbg[i, c] = sc
            n_cbg[i, c] = kc


@njit(cache=True, nogil=True, boundscheck=False)
def otsu_int_rows(x, valid, out):  # pragma: no cover - compiled
    # skimage.filters.threshold_otsu of each row's valid non-negative integers (one histogram
    # bin per integer value), with the arithmetic of masks.methods.threshold_otsu_int
    m_rows, p = x.shape
    hist = np.zeros(65537, dtype=np.int64)
    for m in range(m_rows):
        vmin = 1 << 62
        vmax = -1
        for k in range(p):
            if valid[m, k]:
                v = np.int64(x[m, k])
                vmin = min(vmin, v)
                vmax = max(vmax, v)
        if vmax < 0:
            out[m] = np.nan
            continue
        if vmin == vmax:
            out[m] = float(vmin)
            continue
        nb = vmax + 1
        hist[:nb] = 0
        for k in range(p):
            if valid[m, k]:
                hist[x[m, k]] += 1
        total_w = 0
        total_s = 0
        for b in range(nb):
            total_w += hist[b]
            total_s += hist[b] * b
        w1 = 0
        s1 = 0
        best = -np.inf
        arg = 0
        for b in range(nb - 1):
            w1 += hist[b]
            s1 += hist[b] * b
            w2 = total_w - w1  # weight of bins b + 1 ..
            s2 = total_s - s1
            if b < vmin or b >= vmax:
                continue
            mean1 = s1 / w1
            mean2 = s2 / w2
            d = mean1 - mean2
            var = (w1 * w2) * (d * d)
            if var > best:
                best = var
                arg = b
        out[m] = float(arg)


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def li_rows(s, n, max_iter, out):  # pragma: no cover - compiled
    # skimage.filters.threshold_li of each row's n[r] sorted values s[r, :n[r]], with the
    # arithmetic of masks.methods.threshold_li (shift to 0, tolerance half the smallest gap,
    # background/foreground means from prefix sums). The prefix sums are blocked as in the
    # CUDA twin (kernels/masks.cu, sg_threshold_li): LI_CHUNKS chunks of ceil(n / LI_CHUNKS)
    # values, each summed in order; the chunk sums added in order; the sum of the first k values
    # is the sum of the chunks before k's chunk plus k's chunk's values before k, in order.
    m_rows, p = s.shape
    chunk = np.empty(LI_CHUNKS + 1)
    for r in range(m_rows):
        cnt = n[r]
        if cnt == 0:
            out[r] = np.nan
            continue
        lo = s[r, 0]
        if lo == s[r, cnt - 1]:
            out[r] = lo
            continue
        cs = (cnt + LI_CHUNKS - 1) // LI_CHUNKS
        tol = np.inf
        prev = 0.0
        chunk[:] = 0.0
        for k in range(cnt):
            v = s[r, k] - lo
            if k > 0:
                g = v - prev
                if g > 0 and g < tol:
                    tol = g
            prev = v
            chunk[k // cs] = chunk[k // cs] + v
        acc = 0.0
        for c in range(LI_CHUNKS):
            t = chunk[c]
            chunk[c] = acc
            acc = acc + t
        chunk[LI_CHUNKS] = acc
        tol = tol / 2
        total = acc
        cntf = float(cnt)
        t_next = total / cntf
        t_curr = -2 * tol
        for _ in range(max_iter):
            if not abs(t_next - t_curr) > tol:
                break
            t_curr = t_next
            # background: shifted values <= t_curr (binary search in the sorted row)
            a = 0
            b = cnt
            while a < b:
                mid = (a + b) // 2
                if s[r, mid] - lo <= t_curr:
                    a = mid + 1
                else:
                    b = mid
            k = a
            c = k // cs
            part = 0.0
            for j in range(c * cs, k):
                part = part + (s[r, j] - lo)
            sum_back = chunk[c] + part
            mean_back = sum_back / k
            mean_fore = (total - sum_back) / (cntf - k)
            if mean_back == 0:
                break
            t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
        out[r] = t_next + lo


@njit(cache=True, nogil=True, boundscheck=False)
def label_pixels(labels, lab, row, col, plane, minr, maxr):  # pragma: no cover - compiled
    # every foreground pixel of a labelled (M, H, W) stack in raster order: its label, row and
    # column; and each label's plane and row range (features.shape._geometry)
    m_planes, hp, wp = labels.shape
    k = 0
    for p in range(m_planes):
        for i in range(hp):
            for j in range(wp):
                v = labels[p, i, j]
                if v != 0:
                    lab[k] = v
                    row[k] = i
                    col[k] = j
                    k += 1
                    plane[v] = p
                    if i < minr[v]:
                        minr[v] = i
                    if i > maxr[v]:
                        maxr[v] = i


@njit(cache=True, nogil=True, boundscheck=False)
def label_rows(lab, row, col, minr, roff, rec_label, rec, left, right, minc, maxc):  # pragma: no cover
    # row record of every pixel, the column range of every record and of every label
    for k in range(lab.shape[0]):
        v = lab[k]
        r = roff[v] + row[k] - minr[v]
        rec[k] = r
        c = col[k]
        if c < left[r]:
            left[r] = c
        if c > right[r]:
            right[r] = c
    left[0] = 0
    right[0] = 0
    for r in range(rec_label.shape[0]):
        v = rec_label[r]
        if left[r] < minc[v]:
            minc[v] = left[r]
        if right[r] > maxc[v]:
            maxc[v] = right[r]


@njit(cache=True, nogil=True, boundscheck=False)
def pattern_sums(padded, labels, euler_coefs, crofton_coefs, perimeter_weights, euler, crofton,
                 perimeter):  # pragma: no cover - compiled
    # features.shape._pattern_props in one raster pass per plane (same windows, same order of
    # summation as its bincounts)
    m_planes, hp, wp = padded.shape
    for p in range(m_planes):
        for i in range(hp - 1):
            for j in range(wp - 1):
                # window with bottom-right pixel (i + 1, j + 1)
                code = (padded[p, i + 1, j + 1] + 2 * padded[p, i, j + 1] + 4 * padded[p, i + 1, j]
                        + 8 * padded[p, i, j])
                if code == 0 or code == 15:
                    continue
                v = max(max(labels[p, i, j], labels[p, i, j + 1]),
                        max(labels[p, i + 1, j], labels[p, i + 1, j + 1]))
                euler[v] += euler_coefs[code]
                crofton[v] += crofton_coefs[code]
    border = np.zeros((hp, wp), dtype=np.uint8)
    for p in range(m_planes):
        border[:, :] = 0
        for i in range(1, hp - 1):
            for j in range(1, wp - 1):
                if padded[p, i, j] and not (padded[p, i - 1, j] and padded[p, i + 1, j]
                                            and padded[p, i, j - 1] and padded[p, i, j + 1]):
                    border[i, j] = 1
        for i in range(1, hp - 1):
            for j in range(1, wp - 1):
                if border[i, j]:
                    four = border[i - 1, j] + border[i + 1, j] + border[i, j - 1] + border[i, j + 1]
                    diag = (border[i - 1, j - 1] + border[i - 1, j + 1] + border[i + 1, j - 1]
                            + border[i + 1, j + 1])
                    perimeter[labels[p, i, j]] += perimeter_weights[1 + 2 * four + 10 * diag]


@njit(cache=True, nogil=True, boundscheck=False)
def record_power_sums(rec, col, minc, lab, shift, n_rec, out):  # pragma: no cover - compiled
    # out[r, q] = sum over the pixels of record r of x**q (q = 0..3; x**2 = x*x, x**3 = x*x*x as
    # features.shape._powers) with x = (col - minc[label]) - shift[label], in pixel order (the
    # order of numpy.bincount)
    out[:, :] = 0.0
    for k in range(rec.shape[0]):
        r = rec[k]
        v = lab[k]
        x = float(col[k] - minc[v]) - shift[v]
        x2 = x * x
        out[r, 0] += 1.0
        out[r, 1] += x
        out[r, 2] += x2
        out[r, 3] += x2 * x


@njit(cache=True, nogil=True, boundscheck=False)
def label_moment_sums(rec_label, y, s, order_min, out):  # pragma: no cover - compiled
    # out[L, p, q] = sum over the records of label L of y**p * s[r, q] (p = 0 uses s alone),
    # for p + q >= order_min, in record order (as features.shape._raw/_central_moments)
    for r in range(rec_label.shape[0]):
        v = rec_label[r]
        a = y[r]
        a2 = a * a
        for p in range(4):
            for q in range(4):
                if p + q < order_min:
                    continue
                if p == 0:
                    w = s[r, q]
                elif p == 1:
                    w = a * s[r, q]
                elif p == 2:
                    w = a2 * s[r, q]
                else:
                    w = (a2 * a) * s[r, q]
                out[v, p, q] += w


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
def scale_to_u16(p, extents, xmax, out):  # pragma: no cover - compiled
    # masks.methods.otsu's rescaling: (p - min) / (max - min) * xmax over each extent, as
    # uint16 (truncated; non-finite values 0); 0 outside the extent
    m_planes = p.shape[0]
    out[:, :, :] = 0
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        lo = np.inf
        hi = -np.inf
        for i in range(h):
            for j in range(w):
                v = p[m, i, j]
                lo = min(lo, v)
                hi = max(hi, v)
        span = hi - lo
        for i in range(h):
            for j in range(w):
                v = (p[m, i, j] - lo) / span
                v = v * xmax[m]
                if np.isfinite(v):
                    out[m, i, j] = np.uint16(v)


@njit(cache=True, nogil=True, boundscheck=False)
def gaussian_planes(x, extents, weights, scale, out):  # pragma: no cover - compiled
    # scipy.ndimage.gaussian_filter(plane, sigma, mode='nearest') of each plane's x * scale
    # (float64; scale 1/65535 is skimage's img_as_float of uint16) inside each extent: the
    # symmetric 1-D correlation along axis 0 then axis 1, each output summed as SciPy's
    # correlate1d does for a symmetric kernel (centre weight first, then the pairs from the
    # outermost in), the edges extended by repeating the last pixel; 0 outside the extent.
    # Loops run tap by tap over whole rows (same order of summation per pixel) to vectorise.
    m_planes, ha, wa = x.shape
    r = (weights.shape[0] - 1) // 2
    f = np.empty((ha, wa))
    tmp = np.empty((ha, wa))
    ext = np.empty(wa + 2 * r)
    acc = np.empty(wa)
    out[:, :, :] = 0.0
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        for i in range(h):
            for j in range(w):
                f[i, j] = x[m, i, j] * scale
        for i in range(h):
            w0 = weights[r]
            for j in range(w):
                acc[j] = f[i, j] * w0
            for k in range(r, 0, -1):
                a = i - k
                b = i + k
                a = 0 if a < 0 else a
                b = h - 1 if b >= h else b
                wk = weights[r - k]
                for j in range(w):
                    acc[j] += (f[a, j] + f[b, j]) * wk
            for j in range(w):
                tmp[i, j] = acc[j]
        for i in range(h):
            for j in range(r):
                ext[j] = tmp[i, 0]
                ext[r + w + j] = tmp[i, w - 1]
            for j in range(w):
                ext[r + j] = tmp[i, j]
            w0 = weights[r]
            for j in range(w):
                acc[j] = ext[r + j] * w0
            for k in range(r, 0, -1):
                wk = weights[r - k]
                for j in range(w):
                    acc[j] += (ext[r + j - k] + ext[r + j + k]) * wk
            for j in range(w):
                out[m, i, j] = acc[j]


@njit(cache=True, nogil=True, boundscheck=False)
def otsu_digitize_u16(x, extents, out, xmax):  # pragma: no cover - compiled
    # masks.methods.otsu's first step for uint8/uint16 planes: planes whose maximum exceeds 512
    # become numpy.digitize(x, numpy.histogram_bin_edges(x, bins=512)) (edges with
    # numpy.linspace's arithmetic), others are kept; 0 outside the extent; xmax: the result's
    # maximum over the extent
    m_planes = x.shape[0]
    edges = np.empty(513)
    out[:, :, :] = 0
    for m in range(m_planes):
        h = extents[m, 0]
        w = extents[m, 1]
        vmin = 65536
        vmax = -1
        for i in range(h):
            for j in range(w):
                v = np.int64(x[m, i, j])
                vmin = min(vmin, v)
                vmax = max(vmax, v)
        if vmax <= 512:
            for i in range(h):
                for j in range(w):
                    out[m, i, j] = x[m, i, j]
            xmax[m] = float(max(vmax, 0))
            continue
        lo = float(vmin)
        hi = float(vmax)  # > lo here: vmax > 512 >= ... unless the plane is constant
        if lo == hi:
            lo -= 0.5
            hi += 0.5
        step = (hi - lo) / 512
        for k in range(512):
            edges[k] = k * step + lo
        edges[512] = hi
        scale = 512 / (hi - lo)
        top = 0
        for i in range(h):
            for j in range(w):
                v = float(x[m, i, j])
                g = int(np.floor((v - lo) * scale)) + 1
                g = max(0, min(g, 513))
                while g > 0 and v < edges[g - 1]:
                    g -= 1
                while g <= 512 and v >= edges[g]:
                    g += 1
                out[m, i, j] = g
                top = max(top, g)
        xmax[m] = float(top)


@njit(cache=True, nogil=True, boundscheck=False)
def _find(parent, a):  # pragma: no cover - compiled
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True, nogil=True, boundscheck=False)
def _union(parent, a, b):  # pragma: no cover - compiled
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
        return ra
    if rb < ra:
        parent[ra] = rb
    return rb


@njit(cache=True, nogil=True, boundscheck=False)
def _label_workspace(h, w):  # pragma: no cover - compiled
    # scratch arrays of label_plane for planes of up to h x w: labels, union-find parents,
    # final numbers (at most one provisional label per pixel)
    return (np.empty((h, w), dtype=np.int32), np.empty(h * w + 1, dtype=np.int32),
            np.empty(h * w + 1, dtype=np.int32))


@njit(cache=True, nogil=True, boundscheck=False)
def label_plane(x, h, w, value, eight, o, parent, final, first):  # pragma: no cover - compiled
    # connected components of the pixels equal to ``value`` in x[:h, :w] (8- or 4-connected),
    # numbered first..first+n-1 in raster order of their first pixel (scipy.ndimage.label's
    # numbering) into o[:h, :w] (0 elsewhere inside h x w); two raster passes with union-find,
    # the smaller provisional label (the earlier first pixel) always the root; returns n
    nxt = 1
    for i in range(h):
        for j in range(w):
            if x[i, j] != value:
                o[i, j] = 0
                continue
            # neighbours already visited; pixels adjacent to each other among them are already
            # in one set (the classic decision tree), so few unions are needed
            left = j > 0 and x[i, j - 1] == value
            up = i > 0 and x[i - 1, j] == value
            lab = 0
            if eight:
                upl = i > 0 and j > 0 and x[i - 1, j - 1] == value
                upr = i > 0 and j + 1 < w and x[i - 1, j + 1] == value
                if up:
                    lab = o[i - 1, j]  # left and up-left/right touch it: same set
                elif left:
                    lab = o[i, j - 1]
                    if upr:
                        lab = _union(parent, lab, o[i - 1, j + 1])
                elif upl:
                    lab = o[i - 1, j - 1]
                    if upr:
                        lab = _union(parent, lab, o[i - 1, j + 1])
                elif upr:
                    lab = o[i - 1, j + 1]
            else:
                if up and left:
                    a = o[i, j - 1]
                    b = o[i - 1, j]
                    lab = a if a == b else _union(parent, a, b)
                elif up:
                    lab = o[i - 1, j]
                elif left:
                    lab = o[i, j - 1]
            if lab == 0:
                parent[nxt] = nxt
                lab = nxt
                nxt += 1
            o[i, j] = lab
    count = 0
    for a in range(1, nxt):
        r = _find(parent, a)
        if r == a:
            final[a] = first + count
            count += 1
        else:
            final[a] = final[r]  # r < a: already numbered
    for i in range(h):
        for j in range(w):
            if o[i, j] != 0:
                o[i, j] = final[o[i, j]]
    return count


@njit(cache=True, nogil=True, boundscheck=False)
def label_stack(mask, eight, out):  # pragma: no cover - compiled
    # ops.label of a (M, H, W) stack: labels unique across the stack (see label_plane); returns n
    m_planes, h, w = mask.shape
    _, parent, final = _label_workspace(h, w)
    total = 0
    for m in range(m_planes):
        total += label_plane(mask[m], h, w, True, eight, out[m], parent, final, total + 1)
    return total


@njit(cache=True, nogil=True, boundscheck=False)
def lower_hull_flags(x, offset, length, flags):  # pragma: no cover - compiled
    # features.shape._lower_hull one sequence at a time (Andrew's monotone chain, the same pop
    # rule in exact integer arithmetic)
    stack = np.empty(x.shape[0], dtype=np.int64)
    for b in range(offset.shape[0]):
        o = offset[b]
        n = length[b]
        sp = 0
        for i in range(n):
            while sp >= 2:
                ia = stack[sp - 2]
                ib = stack[sp - 1]
                xa = x[o + ia]
                xb = x[o + ib]
                if (xb - xa) * (i - ib) >= (x[o + i] - xb) * (ib - ia):
                    sp -= 1
                else:
                    break
            stack[sp] = i
            sp += 1
        for k in range(sp):
            flags[o + stack[k]] = True


@njit(cache=True, nogil=True, boundscheck=False)
def filled_area(labels, holed, out):  # pragma: no cover - compiled
    # labels (M, H, W) int32 (each label in one plane); holed (nl + 1,) bool; out (nl + 1,)
    # float64 holding each label's area, replaced for the holed ones by the area of the label
    # with its holes filled: the pixels of its bounding box that no 8-connected path of
    # other pixels joins to the box's border (scipy.ndimage.binary_fill_holes of the bbox
    # image with a 3x3 structure, as scikit-image's area_filled).
    m_planes, h, w = labels.shape
    nl = holed.shape[0] - 1
    r0 = np.full(nl + 1, h, dtype=np.int64)
    r1 = np.zeros(nl + 1, dtype=np.int64)
    c0 = np.full(nl + 1, w, dtype=np.int64)
    c1 = np.zeros(nl + 1, dtype=np.int64)
    plane = np.zeros(nl + 1, dtype=np.int64)
    for m in range(m_planes):
        for i in range(h):
            for j in range(w):
                lab = labels[m, i, j]
                if lab > 0 and holed[lab]:
                    plane[lab] = m
                    if i < r0[lab]:
                        r0[lab] = i
                    if i >= r1[lab]:
                        r1[lab] = i + 1
                    if j < c0[lab]:
                        c0[lab] = j
                    if j >= c1[lab]:
                        c1[lab] = j + 1
    seen = np.zeros(h * w, dtype=np.bool_)
    stack = np.empty(h * w, dtype=np.int64)
    for lab in range(1, nl + 1):
        if not holed[lab] or r1[lab] == 0:
            continue
        m = plane[lab]
        a0 = r0[lab]
        b0 = c0[lab]
        hh = r1[lab] - a0
        ww = c1[lab] - b0
        seen[: hh * ww] = False
        sp = 0
        reached = 0
        for i in range(hh):
            for j in range(ww):
                if (i == 0 or i == hh - 1 or j == 0 or j == ww - 1) and labels[m, a0 + i, b0 + j] != lab:
                    seen[i * ww + j] = True
                    stack[sp] = i * ww + j
                    sp += 1
                    reached += 1
        while sp > 0:
            sp -= 1
            k = stack[sp]
            i = k // ww
            j = k % ww
            for di in range(-1, 2):
                a = i + di
                if a < 0 or a >= hh:
                    continue
                for dj in range(-1, 2):
                    b = j + dj
                    if b < 0 or b >= ww or seen[a * ww + b] or labels[m, a0 + a, b0 + b] == lab:
                        continue
                    seen[a * ww + b] = True
                    stack[sp] = a * ww + b
                    sp += 1
                    reached += 1
        out[lab] = float(hh * ww - reached)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _ws_before(c1, x1, c2, x2):  # pragma: no cover - compiled
    # the flood's queue order: level (altitude), then steps << 32 | pixel
    return c1 < c2 or (c1 == c2 and x1 < x2)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _ws_sift_down(hc, hx, k, size):  # pragma: no cover - compiled
    c = hc[k]
    x = hx[k]
    while 2 * k + 1 < size:
        a = 2 * k + 1
        if a + 1 < size and _ws_before(hc[a + 1], hx[a + 1], hc[a], hx[a]):
            a += 1
        if not _ws_before(hc[a], hx[a], c, x):
            break
        hc[k], hx[k], k = hc[a], hx[a], a
    hc[k] = c
    hx[k] = x


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _ws_sift_up(hc, hx, k, c, x):  # pragma: no cover - compiled
    while k > 0 and _ws_before(c, x, hc[(k - 1) // 2], hx[(k - 1) // 2]):
        hc[k], hx[k], k = hc[(k - 1) // 2], hx[(k - 1) // 2], (k - 1) // 2
    hc[k] = c
    hx[k] = x


@njit(cache=True, nogil=True, boundscheck=False)
def watershed_flood(f, flags, lab, h, w, out):  # pragma: no cover - compiled
    # ops.watershed by a priority flood over the keys (C, S), C compared as the altitudes
    # themselves (the reference's ranks only preserve their order). Pixels are popped in the
    # order of (C, S, index). The key a popped pixel gives a neighbour never decreases with the
    # popped key, so a pixel's first key is its final one, from the first neighbour popped among
    # those giving it that key: the one of smallest (key, index), the reference's parent rule.
    # So a pixel is queued once, with its label; the queue is a binary heap of C and
    # (S << 32 | pixel) in two arrays (images of fewer than 2^31 pixels).
    n = h * w
    state = np.empty(n, dtype=np.uint8)  # bit 0: in the domain; bit 1: reached (markers: from the start)
    size = 0
    for p in range(n):
        out[p] = 0
        state[p] = flags[p] & 1
        if flags[p] & 2:
            out[p] = lab[p]
            state[p] = 3
            size += 1
    hc = np.empty(max(size, 16), dtype=np.float64)
    hx = np.empty(max(size, 16), dtype=np.int64)
    cap = hc.shape[0]
    size = 0
    for p in range(n):
        if flags[p] & 2:
            hc[size] = f[p]
            hx[size] = p
            size += 1
    for start in range(size // 2 - 1, -1, -1):  # heapify
        _ws_sift_down(hc, hx, start, size)
    while size > 0:
        c = hc[0]
        s = hx[0] >> 32
        p = hx[0] & 0xFFFFFFFF
        size -= 1
        if size > 0:  # the last element to the root, sifted down
            hc[0] = hc[size]
            hx[0] = hx[size]
            _ws_sift_down(hc, hx, 0, size)
        i = p // w
        j = p - i * w
        for t in range(4):  # raster order: up, left, right, down
            if t == 0:
                if i == 0:
                    continue
                q = p - w
            elif t == 1:
                if j == 0:
                    continue
                q = p - 1
            elif t == 2:
                if j == w - 1:
                    continue
                q = p + 1
            else:
                if i == h - 1:
                    continue
                q = p + w
            if state[q] != 1:  # outside the domain, or reached already
                continue
            state[q] = 3
            out[q] = out[p]
            if f[q] > c:
                nc = f[q]
                ns = np.int64(1)
            else:
                nc = c
                ns = s + 1
            if size == cap:  # grow the heap
                cap *= 2
                hc2 = np.empty(cap, dtype=np.float64)
                hx2 = np.empty(cap, dtype=np.int64)
                hc2[:size] = hc[:size]
                hx2[:size] = hx[:size]
                hc, hx = hc2, hx2
            _ws_sift_up(hc, hx, size, nc, (ns << 32) | q)  # push
            size += 1


@njit(cache=True, nogil=True, boundscheck=False)
def image_stats(a, out, nans):  # pragma: no cover - compiled
    """``ops.image_stats`` of ``a`` (N, C, M) in one pass: per plane its largest and smallest
    value other than NaN, its count of NaN or infinite values, and (``nans``) of NaN values."""
    n, c, m = a.shape
    for i in range(n):
        for k in range(c):
            hi = a[i, k, 0]
            lo = hi
            bad = 0
            nan = 0
            for j in range(m):
                v = a[i, k, j]
                if v != v:  # (NaN; integers never)
                    nan += 1
                    continue
                if v - v != 0:  # (infinite: inf - inf is NaN)
                    bad += 1
                if v > hi or hi != hi:
                    hi = v
                if v < lo or lo != lo:
                    lo = v
            out[0, i, k] = hi
            out[1, i, k] = lo
            out[2, i, k] = bad + nan
            nans[i, k] = nan
