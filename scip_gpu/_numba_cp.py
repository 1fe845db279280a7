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
        # the deviations |v - med| in ascending order, as far as their median needs: a merge
        # of the values below the median (walked down) and those above it (walked up)
        up = 0
        while up < n and srt[up] <= med:
            up += 1
        down = up - 1
        need = min(int(np.floor(n * 0.5)) + 2, n)
        for k in range(need):
            if down >= 0 and (up >= n or med - srt[down] <= srt[up] - med):
                dev[k] = med - srt[down]
                down -= 1
            else:
                dev[k] = srt[up] - med
                up += 1
        dsrt = dev
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
    dist = np.empty((h, w), dtype=np.float64)
    vals = np.empty(h * w, dtype=np.float64)
    for m in range(m_planes):
        # the plane cut to the foreground's bounding box and a one-pixel ring of background
        # (every distance is that of the whole plane: see cp_radial)
        r0, r1, c0, c1, n = _plane_bbox(padded[m])
        if n == 0:
            continue
        r0 = max(r0 - 1, 0)
        c0 = max(c0 - 1, 0)
        r1 = min(r1 + 1, h)
        c1 = min(c1 + 1, w)
        de = dist[: r1 - r0, : c1 - c0]
        _edt_plane(padded[m, r0:r1, c0:c1], de)  # the ring is background: every distance is finite
        lab = 0
        n = 0
        for i in range(r1 - r0):
            for q in range(c1 - c0):
                if labels[m, r0 + i, c0 + q] > 0:
                    lab = labels[m, r0 + i, c0 + q]
                    vals[n] = de[i, q]
                    n += 1
        if n == 0:
            continue
        tot = 0.0
        top = vals[0]
        for k in range(n):
            tot += vals[k]
            if vals[k] > top:
                top = vals[k]
        # the two middle values (NumPy's median) by selection rather than a sort
        part = np.partition(vals[:n], n // 2)
        hi = part[n // 2]
        lo = hi
        if n % 2 == 0:
            lo = part[0]
            for k in range(1, n // 2):
                if part[k] > lo:
                    lo = part[k]
        out[0, lab] = top
        out[1, lab] = tot / n
        out[2, lab] = (lo + hi) / 2


@njit(cache=True, nogil=True, boundscheck=False)
def _entropy_term(p):  # pragma: no cover - compiled
    if p > 0:
        return -p * np.log2(p)
    return 0.0


@njit(cache=True, nogil=True, boundscheck=False)
def cp_haralick(q, scale, levels, out):  # pragma: no cover - compiled
    # q (M, H, W) int32 gray levels, 0 outside the object; out (M, 4, 13) float64. Per plane and
    # direction: dense symmetric counts over levels 1..maxv-1, then mahotas' 13 features
    # (features.cp_texture.haralick_planes). NaN for a plane with a direction without pairs.
    m_planes, h, w = q.shape
    dys = (0, 1, 1, 1)
    dxs = (1, 1, 0, -1)
    C = np.zeros((levels, levels), dtype=np.float64)
    px = np.zeros(levels, dtype=np.float64)
    py = np.zeros(levels, dtype=np.float64)
    pp = np.zeros(2 * levels, dtype=np.float64)
    pm = np.zeros(levels, dtype=np.float64)
    for m in range(m_planes):
        top = 0
        for i in range(h):
            for j in range(w):
                if q[m, i, j] > top:
                    top = q[m, i, j]
        maxv = top + 1
        bad = False
        for d in range(4):
            dy = dys[d] * scale
            dx = dxs[d] * scale
            for a in range(maxv):
                for b in range(maxv):
                    C[a, b] = 0.0
            total = 0.0
            for i in range(max(0, -dy), min(h, h - dy)):
                for j in range(max(0, -dx), min(w, w - dx)):
                    a = q[m, i, j]
                    b = q[m, i + dy, j + dx]
                    if a > 0 and b > 0:
                        C[a, b] += 1.0
                        C[b, a] += 1.0
                        total += 2.0
            if total == 0:
                bad = True
                break
            for k in range(maxv):
                px[k] = 0.0
                py[k] = 0.0
                pm[k] = 0.0
            for k in range(2 * maxv):
                pp[k] = 0.0
            asm = 0.0
            idm = 0.0
            sij = 0.0
            ent = 0.0
            for a in range(1, maxv):
                for b in range(1, maxv):
                    c = C[a, b]
                    if c == 0:
                        continue
                    p = c / total
                    px[b] += p
                    py[a] += p
                    pp[a + b] += p
                    pm[abs(a - b)] += p
                    asm += p * p
                    idm += p / (1.0 + (a - b) * (a - b))
                    sij += a * b * p
                    ent += _entropy_term(p)
            ux = 0.0
            uy = 0.0
            vx = 0.0
            vy = 0.0
            hx = 0.0
            hy = 0.0
            for k in range(maxv):
                ux += px[k] * k
                uy += py[k] * k
                vx += px[k] * k * k
                vy += py[k] * k * k
                hx += _entropy_term(px[k])
                hy += _entropy_term(py[k])
            vx -= ux * ux
            vy -= uy * uy
            sx = np.sqrt(vx)
            sy = np.sqrt(vy)
            contrast = 0.0
            dsq = 0.0
            dsum = 0.0
            dent = 0.0
            for k in range(maxv):
                contrast += k * k * pm[k]
                dsq += pm[k] * pm[k]
                dsum += pm[k]
                dent += _entropy_term(pm[k])
            savg = 0.0
            ssq = 0.0
            sent = 0.0
            for k in range(2 * maxv):
                savg += k * pp[k]
                ssq += k * k * pp[k]
                sent += _entropy_term(pp[k])
            hxy1 = 0.0
            for a in range(1, maxv):
                for b in range(1, maxv):
                    c = C[a, b]
                    if c == 0:
                        continue
                    p = c / total
                    lx = np.log2(px[a]) if px[a] > 0 else 0.0
                    ly = np.log2(py[b]) if py[b] > 0 else 0.0
                    hxy1 -= p * (lx + ly)
            if sx == 0 or sy == 0:
                corr = 1.0
            else:
                corr = (sij - ux * uy) / sx / sy
            hmax = max(hx, hy)
            im1 = ent - hxy1 if hmax == 0 else (ent - hxy1) / hmax
            im2 = np.sqrt(max(0.0, 1.0 - np.exp(-2.0 * (hx + hy - ent))))
            o = out[m, d]
            o[0] = asm
            o[1] = contrast
            o[2] = corr
            o[3] = vx
            o[4] = idm
            o[5] = savg
            o[6] = ssq - savg * savg
            o[7] = sent
            o[8] = ent
            o[9] = dsq / maxv - (dsum / maxv) ** 2
            o[10] = dent
            o[11] = im1
            o[12] = im2
        if bad:
            for d in range(4):
                for k in range(13):
                    out[m, d, k] = np.nan


@njit(cache=True, nogil=True, boundscheck=False)
def cp_colocalization(x, view, pa, pb, thr_pct, out):  # pragma: no cover - compiled
    # x (N, C, P) float64; view (N, P) bool; pairs (pa[q], pb[q]); out (N, Q, 9) float64
    # (features.cp_colocalization.pair_colocalization): the object's pixels gathered once per
    # channel, dense ranks from one argsort per channel, then the sums of every pair.
    n, c, p = x.shape
    nq = pa.shape[0]
    vals = np.empty((c, p), dtype=np.float64)
    ranks = np.empty((c, p), dtype=np.int64)
    top = np.empty(c, dtype=np.float64)
    rmax = np.empty(c, dtype=np.int64)
    mean = np.empty(c, dtype=np.float64)
    ssq = np.empty(c, dtype=np.float64)
    for i in range(n):
        k = 0
        for j in range(p):
            if view[i, j]:
                for ch in range(c):
                    vals[ch, k] = x[i, ch, j]
                k += 1
        if k == 0:
            for q in range(nq):
                for f in range(9):
                    out[i, q, f] = np.nan
            continue
        for ch in range(c):
            order = np.argsort(vals[ch, :k])  # dense ranks: the order among equal values does not matter
            r = 0
            ranks[ch, order[0]] = 0
            top[ch] = vals[ch, order[k - 1]]
            for t in range(1, k):
                if vals[ch, order[t]] != vals[ch, order[t - 1]]:
                    r += 1
                ranks[ch, order[t]] = r
            rmax[ch] = r
            # the channel's mean and sum of squared deviations (the same sums for every pair)
            mu = 0.0
            for t in range(k):
                mu += vals[ch, t]
            mu /= k
            sq = 0.0
            for t in range(k):
                d = vals[ch, t] - mu
                sq += d * d
            mean[ch] = mu
            ssq[ch] = sq
        for q in range(nq):
            a = pa[q]
            b = pb[q]
            ma = mean[a]
            mb = mean[b]
            saa = ssq[a]
            sbb = ssq[b]
            sab = 0.0
            ta = thr_pct / 100 * top[a]
            tb = thr_pct / 100 * top[b]
            for t in range(k):
                da = vals[a, t] - ma
                db = vals[b, t] - mb
                sab += da * db
            ra_max = rmax[a]
            rb_max = rmax[b]
            big_r = max(ra_max, rb_max) + 1
            fpsq = 0.0
            spsq = 0.0
            prod = 0.0
            tot_a = 0.0
            tot_b = 0.0
            sum_a = 0.0
            sum_b = 0.0
            rw_a = 0.0
            rw_b = 0.0
            anyb = False
            for t in range(k):
                va = vals[a, t]
                vb = vals[b, t]
                above_a = va >= ta
                above_b = vb >= tb
                if above_a:
                    tot_a += va
                if above_b:
                    tot_b += vb
                if above_a and above_b:
                    anyb = True
                    fpsq += va * va
                    spsq += vb * vb
                    prod += va * vb
                    sum_a += va
                    sum_b += vb
                    wgt = (big_r - abs(ranks[a, t] - ranks[b, t])) / float(big_r)
                    rw_a += va * wgt
                    rw_b += vb * wgt
            o = out[i, q]
            # a constant channel (one dense rank): r undefined, the slope too for a constant
            # first channel, 0 for a constant second one (its deviations are rounding noise)
            if ra_max == 0 or rb_max == 0:
                o[0] = np.nan
            else:
                o[0] = sab / np.sqrt(saa * sbb) if saa * sbb > 0 else np.nan
            if ra_max == 0:
                o[1] = np.nan
            elif rb_max == 0:
                o[1] = 0.0
            else:
                o[1] = sab / saa if saa > 0 else np.nan
            if anyb:
                pd = np.sqrt(fpsq * spsq)
                o[2] = prod / pd if pd > 0 else np.nan
                o[3] = prod / fpsq if fpsq > 0 else np.nan
                o[4] = prod / spsq if spsq > 0 else np.nan
                o[5] = sum_a / tot_a if tot_a != 0 else np.nan
                o[6] = sum_b / tot_b if tot_b != 0 else np.nan
                o[7] = rw_a / tot_a if tot_a != 0 else np.nan
                o[8] = rw_b / tot_b if tot_b != 0 else np.nan
            else:
                for f in range(2, 9):
                    o[f] = 0.0


@njit(cache=True, nogil=True, boundscheck=False)
def _edt_plane(fg, out):  # pragma: no cover - compiled
    # exact Euclidean distance of every pixel to the nearest False pixel of fg (H, W); pixels
    # beyond the plane do not count; a plane without any False pixel gets `inf`
    h, w = fg.shape
    big = (h + w) * (h + w) + 1
    g = np.empty((h, w), dtype=np.int64)
    for j in range(w):
        run = big
        for i in range(h):
            if fg[i, j]:
                run = run + 1 if run < big else big
            else:
                run = 0
            g[i, j] = run
        run = big
        for i in range(h - 1, -1, -1):
            if fg[i, j]:
                run = run + 1 if run < big else big
            else:
                run = 0
            if run < g[i, j]:
                g[i, j] = run
    v = np.empty(w, dtype=np.int64)
    z = np.empty(w + 1, dtype=np.float64)
    for i in range(h):
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
                if sx <= z[k]:
                    k -= 1
                    continue
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
            if g[i, p] >= big:
                out[i, q] = np.inf
            else:
                out[i, q] = np.sqrt(float((q - p) * (q - p) + g[i, p] * g[i, p]))


@njit(cache=True, nogil=True, boundscheck=False)
def _plane_bbox(view):  # pragma: no cover - compiled
    # bounding rows/cols [r0, r1), [c0, c1) of the True pixels of view (H, W) and their count
    h, w = view.shape
    r0 = h
    r1 = 0
    c0 = w
    c1 = 0
    n = 0
    for i in range(h):
        row = 0
        for j in range(w):
            if view[i, j]:
                row += 1
                if j < c0:
                    c0 = j
                if j >= c1:
                    c1 = j + 1
        if row:
            n += row
            if i < r0:
                r0 = i
            r1 = i + 1
    return r0, r1, c0, c1, n


@njit(cache=True, nogil=True, boundscheck=False)
def cp_radial(x, view, valid, bins, out):  # pragma: no cover - compiled
    # x (M, H, W) float64; view, valid (M, H, W) bool; out (M, 3 * bins)
    # (features.cp_radial.radial_planes): per plane a distance transform, the first pixel
    # farthest from the edge, Dijkstra over 8-neighbour steps, then the sums of every bin.
    # Each plane is cut to the object's bounding box and a one-pixel ring: every pixel of
    # the ring inside the image is background, and it is at least as close to any object
    # pixel as any background pixel beyond it (clamping a point to the box moves it closer),
    # so the distances to the edge are those of the whole plane.
    m_planes, h, w = x.shape
    fg = np.empty((h, w), dtype=np.bool_)
    d_edge = np.empty((h, w), dtype=np.float64)
    dist = np.empty((h, w), dtype=np.float64)
    # bucket queue: entries (key, pixel, next entry of the bucket), a pixel entered at most 8
    # times; bucket floor(d) for d below the longest path, at most 1.5 per pixel
    ekey = np.empty(8 * h * w + 1, dtype=np.float64)
    eval_ = np.empty(8 * h * w + 1, dtype=np.int64)
    enext = np.empty(8 * h * w + 1, dtype=np.int64)
    nb_max = 2 * h * w + 2
    head = np.full(nb_max, -1, dtype=np.int64)  # every plane empties the buckets it fills
    s2 = np.sqrt(2.0)
    hist = np.zeros(bins + 1)
    num = np.zeros(bins + 1)
    wsum = np.zeros((bins + 1, 8))
    wcnt = np.zeros((bins + 1, 8))
    for m in range(m_planes):
        vm = view[m]
        r0, r1, c0, c1, n_obj = _plane_bbox(vm)
        if n_obj == 0:
            for k in range(out.shape[1]):
                out[m, k] = np.nan
            continue
        r0 = max(r0 - 1, 0)
        c0 = max(c0 - 1, 0)
        r1 = min(r1 + 1, h)
        c1 = min(c1 + 1, w)
        hh = r1 - r0
        ww = c1 - c0
        any_bg = False
        for i in range(hh):
            for j in range(ww):
                bg = valid[m, r0 + i, c0 + j] and not vm[r0 + i, c0 + j]
                fg[i, j] = not bg
                if bg:
                    any_bg = True
        fgc = fg[:hh, :ww]
        de = d_edge[:hh, :ww]
        _edt_plane(fgc, de)
        far = float(4 * (h + w))
        best = -1.0
        ci = 0
        cj = 0
        for i in range(hh):
            for j in range(ww):
                if not any_bg:
                    de[i, j] = far
                if vm[r0 + i, c0 + j] and de[i, j] > best:
                    best = de[i, j]
                    ci = i
                    cj = j
                dist[i, j] = np.inf
        dist[ci, cj] = 0.0
        # Dijkstra with a bucket queue of width 1: a step is at least 1 long, so no pixel of
        # bucket floor(d) can shorten another of the same bucket, and the buckets are taken in
        # order, each in any order (entries made stale by a shorter path are skipped); the
        # distances are the smallest sums over all paths, whatever the order, as with a heap
        ekey[0] = 0.0
        eval_[0] = ci * ww + cj
        enext[0] = -1
        head[0] = 0
        n_e = 1
        top_b = 0
        b = 0
        while b <= top_b:
            e = head[b]
            if e < 0:
                b += 1
                continue
            head[b] = enext[e]
            d = ekey[e]
            idx = eval_[e]
            i = idx // ww
            j = idx % ww
            if d > dist[i, j]:
                continue
            for di in range(-1, 2):
                for dj in range(-1, 2):
                    if di == 0 and dj == 0:
                        continue
                    a = i + di
                    bb = j + dj
                    if a < 0 or a >= hh or bb < 0 or bb >= ww or not vm[r0 + a, c0 + bb]:
                        continue
                    nd = d + (s2 if di != 0 and dj != 0 else 1.0)
                    if nd < dist[a, bb]:
                        dist[a, bb] = nd
                        nb_ = int(nd)
                        ekey[n_e] = nd
                        eval_[n_e] = a * ww + bb
                        enext[n_e] = head[nb_]
                        head[nb_] = n_e
                        n_e += 1
                        if nb_ > top_b:
                            top_b = nb_
        hist[:] = 0.0
        num[:] = 0.0
        wsum[:, :] = 0.0
        wcnt[:, :] = 0.0
        for i in range(hh):
            for j in range(ww):
                if not vm[r0 + i, c0 + j] or not np.isfinite(dist[i, j]):
                    continue
                nd = dist[i, j] / (dist[i, j] + de[i, j] + 0.001)
                b = int(nd * bins)
                if b > bins:
                    b = bins
                v = x[m, r0 + i, c0 + j]
                hist[b] += v
                num[b] += 1.0
                wedge = (1 if i > ci else 0) + (2 if j > cj else 0) + (4 if abs(i - ci) > abs(j - cj) else 0)
                wsum[b, wedge] += v
                wcnt[b, wedge] += 1.0
        htot = 0.0
        ntot = 0.0
        for b in range(bins + 1):
            htot += hist[b]
            ntot += num[b]
        eps = np.finfo(np.float64).eps
        for b in range(bins):
            frac = hist[b] / htot if htot != 0 else (np.nan if hist[b] == 0 else np.inf)
            out[m, b] = frac
            out[m, bins + b] = frac / (num[b] / ntot + eps)
            k = 0
            mu = 0.0
            for q in range(8):
                if wcnt[b, q] > 0:
                    k += 1
                    mu += wsum[b, q] / wcnt[b, q]
            if k == 0:
                out[m, 2 * bins + b] = 0.0
                continue
            mu /= k
            var = 0.0
            for q in range(8):
                if wcnt[b, q] > 0:
                    dd = wsum[b, q] / wcnt[b, q] - mu
                    var += dd * dd
            sd = np.sqrt(var / k)
            out[m, 2 * bins + b] = sd / mu if mu != 0 else (np.nan if sd == 0 else np.inf)


@njit(cache=True, nogil=True, boundscheck=False)
def cp_feret(vr, vc, nv, fmin, fmax):  # pragma: no cover - compiled
    # vr, vc (L, V) vertex tables in polygon order, nv (L,) vertex counts; the arithmetic of
    # features.cp_sizeshape.feret_from_vertices, without its (L, V, V) temporaries
    nl1 = vr.shape[0]
    for lab in range(nl1):
        k = nv[lab]
        best = 0.0
        for a in range(k):
            for b in range(k):
                dr = vr[lab, a] - vr[lab, b]
                dc = vc[lab, a] - vc[lab, b]
                d2 = dr * dr + dc * dc
                if d2 > best:
                    best = d2
        fmax[lab] = np.sqrt(best)
        wmin = np.inf
        for i in range(k):
            nxt = i + 1 if i + 1 < k else 0
            er = vr[lab, nxt] - vr[lab, i]
            ec = vc[lab, nxt] - vc[lab, i]
            elen = np.sqrt(er * er + ec * ec)
            if not elen > 0:
                continue
            cmax = 0.0
            for v in range(k):
                cross = abs(er * (vc[lab, v] - vc[lab, i]) - ec * (vr[lab, v] - vr[lab, i]))
                if cross > cmax:
                    cmax = cross
            width = cmax / elen
            if width < wmin:
                wmin = width
        fmin[lab] = 0.0 if np.isinf(wmin) else wmin


@njit(cache=True, nogil=True, boundscheck=False)
def _costes_r(fa, fb, k, tf, ts):  # pragma: no cover - compiled
    # Pearson's r of the pixels where fa < tf or fb < ts (the background of thresholds tf, ts);
    # NaN with fewer than 3 of them or a constant channel among them (scipy's pearsonr)
    m = 0
    sa = 0.0
    sb = 0.0
    mna = np.inf
    mxa = -np.inf
    mnb = np.inf
    mxb = -np.inf
    for t in range(k):
        va = fa[t]
        vb = fb[t]
        if va < tf or vb < ts:
            m += 1
            sa += va
            sb += vb
            mna = min(mna, va)
            mxa = max(mxa, va)
            mnb = min(mnb, vb)
            mxb = max(mxb, vb)
    if m < 3 or mxa - mna == 0 or mxb - mnb == 0:
        return np.nan
    ma = sa / m
    mb = sb / m
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for t in range(k):
        va = fa[t]
        vb = fb[t]
        if va < tf or vb < ts:
            da = va - ma
            db = vb - mb
            sab += da * db
            saa += da * da
            sbb += db * db
    return sab / np.sqrt(saa * sbb)


@njit(cache=True, nogil=True, boundscheck=False)
def _costes_one(fa, fb, k, scale, max_iter):  # pragma: no cover - compiled
    # CellProfiler's "Faster" Costes (cp_measure's bisection_costes and _costes_pair) of one
    # object's k pixels: (C1, C2), NaN where undefined
    if k < 3:
        return np.nan, np.nan
    nnz = 0
    sx = 0.0
    sy = 0.0
    sz = 0.0
    mnx = np.inf
    mxx = -np.inf
    mny = np.inf
    mxy = -np.inf
    for t in range(k):
        va = fa[t]
        vb = fb[t]
        if not (np.isfinite(va) and np.isfinite(vb)) or va < 0 or va > 1 or vb < 0 or vb > 1:
            return np.nan, np.nan
        if va > 0 or vb > 0:
            nnz += 1
            sx += va
            sy += vb
            sz += va + vb
            mnx = min(mnx, va)
            mxx = max(mxx, va)
            mny = min(mny, vb)
            mxy = max(mxy, vb)
    if nnz < 3 or mxx - mnx == 0 or mxy - mny == 0:
        return np.nan, np.nan
    xmean = sx / nnz
    ymean = sy / nnz
    zmean = sz / nnz
    vx = 0.0
    vy = 0.0
    vz = 0.0
    for t in range(k):
        va = fa[t]
        vb = fb[t]
        if va > 0 or vb > 0:
            vx += (va - xmean) ** 2
            vy += (vb - ymean) ** 2
            vz += ((va + vb) - zmean) ** 2
    xvar = vx / (nnz - 1)
    yvar = vy / (nnz - 1)
    zvar = vz / (nnz - 1)
    covar = 0.5 * (zvar - (xvar + yvar))
    denom = 2 * covar
    num = (yvar - xvar) + np.sqrt((yvar - xvar) * (yvar - xvar) + 4 * (covar * covar))
    if abs(covar) <= 8 * np.finfo(np.float64).eps * max(xvar, yvar):
        return np.nan, np.nan
    a = num / denom
    b = ymean - a * xmean
    if not (np.isfinite(a) and np.isfinite(b)):
        return np.nan, np.nan
    left = 1.0
    right = float(scale)
    mid = ((right - left) // (6 / 5)) + left
    lastmid = 0.0
    valid = np.nan
    it = 0
    while lastmid != mid:
        it += 1
        if it > max_iter:
            return np.nan, np.nan
        tf = mid / scale
        ts = (a * tf) + b
        r = _costes_r(fa, fb, k, tf, ts)
        if not np.isfinite(r) or r < 0:
            left = mid - 1
        else:
            right = mid + 1
            valid = mid
        lastmid = mid
        divisor = 6 / 5 if right - left > 6 else 2.0
        mid = ((right - left) // divisor) + left
    if not np.isfinite(valid):
        return np.nan, np.nan
    tf = (valid - 1) / scale
    ts = (a * tf) + b
    if not np.isfinite(_costes_r(fa, fb, k, tf, ts)):
        return np.nan, np.nan
    tot_a = 0.0
    tot_b = 0.0
    sum_a = 0.0
    sum_b = 0.0
    for t in range(k):
        va = fa[t]
        vb = fb[t]
        if va >= tf:
            tot_a += va
        if vb >= ts:
            tot_b += vb
        if va > tf and vb > ts:
            sum_a += va
            sum_b += vb
    if tot_a <= 0 or tot_b <= 0:
        return np.nan, np.nan
    return sum_a / tot_a, sum_b / tot_b


@njit(cache=True, nogil=True, boundscheck=False)
def cp_costes(x, view, pa, pb, scale, max_iter, out):  # pragma: no cover - compiled
    # x (N, C, P) float64; view (N, P) bool; pairs (pa[q], pb[q]); out (N, Q, 2) float64
    # (features.cp_colocalization.costes_pairs): the object's pixels gathered once, then
    # CellProfiler's bisection per pair
    n, c, p = x.shape
    nq = pa.shape[0]
    vals = np.empty((c, p), dtype=np.float64)
    for i in range(n):
        k = 0
        for j in range(p):
            if view[i, j]:
                for ch in range(c):
                    vals[ch, k] = x[i, ch, j]
                k += 1
        for q in range(nq):
            c1, c2 = _costes_one(vals[pa[q]], vals[pb[q]], k, scale, max_iter)
            out[i, q, 0] = c1
            out[i, q, 1] = c2


@njit(cache=True, nogil=True, boundscheck=False)
def _gran_interp(img, n0, n1, r, c):  # pragma: no cover - compiled
    # scipy.ndimage.map_coordinates(order=1, mode="constant") of img[:n0, :n1] at (r, c); the
    # same operations as features.cp_granularity._bilinear
    if r < 0 or r > n0 - 1 or c < 0 or c > n1 - 1:
        return 0.0
    lr = np.floor(r)
    lc = np.floor(c)
    fr = r - lr
    fc = c - lc
    r0 = int(lr)
    c0 = int(lc)
    r1 = min(r0 + 1, n0 - 1)
    c1 = min(c0 + 1, n1 - 1)
    top = img[r0, c0] * (1.0 - fc) + img[r0, c1] * fc
    bottom = img[r1, c0] * (1.0 - fc) + img[r1, c1] * fc
    return top * (1.0 - fr) + bottom * fr


@njit(cache=True, nogil=True, boundscheck=False)
def _gran_minmax(src, dst, n0, n1, dy, dx, minimum):  # pragma: no cover - compiled
    # grey erosion (minimum) or dilation of src[:n0, :n1] with the footprint offsets (dy, dx),
    # pixels beyond the grid left out
    for i in range(n0):
        for j in range(n1):
            best = np.inf if minimum else -np.inf
            for k in range(dy.shape[0]):
                ii = i + dy[k]
                jj = j + dx[k]
                if ii < 0 or ii >= n0 or jj < 0 or jj >= n1:
                    continue
                v = src[ii, jj]
                if minimum:
                    if v < best:
                        best = v
                elif v > best:
                    best = v
            dst[i, j] = best


@njit(cache=True, nogil=True, boundscheck=False)
def _gran_reconstruct(rec, mask, n0, n1):  # pragma: no cover - compiled
    # reconstruction by dilation (4-neighbours) of rec under mask, in place: raster and
    # anti-raster scans until a pair of scans changes nothing
    changed = True
    while changed:
        changed = False
        for i in range(n0):
            for j in range(n1):
                v = rec[i, j]
                if i > 0 and rec[i - 1, j] > v:
                    v = rec[i - 1, j]
                if j > 0 and rec[i, j - 1] > v:
                    v = rec[i, j - 1]
                if v > mask[i, j]:
                    v = mask[i, j]
                if v != rec[i, j]:
                    rec[i, j] = v
                    changed = True
        for i in range(n0 - 1, -1, -1):
            for j in range(n1 - 1, -1, -1):
                v = rec[i, j]
                if i < n0 - 1 and rec[i + 1, j] > v:
                    v = rec[i + 1, j]
                if j < n1 - 1 and rec[i, j + 1] > v:
                    v = rec[i, j + 1]
                if v > mask[i, j]:
                    v = mask[i, j]
                if v != rec[i, j]:
                    rec[i, j] = v
                    changed = True


@njit(cache=True, nogil=True, boundscheck=False)
def cp_granularity(x, view, sizes, scales, ok, s, t, dy, dx, out):  # pragma: no cover - compiled
    # x (M, H, W) float64; view (M, H, W) bool; sizes (M, 6) int64: h, w, nh, nw, bh, bw;
    # scales (M, 4) float64: back_up_r, back_up_c, up_r, up_c (features.cp_granularity.
    # grid_geometry); dy, dx: the background disk's offsets; out (M, L) float64
    m_planes = x.shape[0]
    length = out.shape[1]
    p = max(1, sizes[:, 2].max())
    q = max(1, sizes[:, 3].max())
    bp = max(1, sizes[:, 4].max())
    bq = max(1, sizes[:, 5].max())
    sub = np.empty((p, q))
    pix = np.empty((p, q))
    ero = np.empty((p, q))
    tmp = np.empty((p, q))
    rec = np.empty((p, q))
    wts = np.empty((p, q))
    back = np.empty((bp, bq))
    back2 = np.empty((bp, bq))
    cy = np.array([-1, 0, 0, 0, 1], dtype=np.int64)
    cx = np.array([0, -1, 0, 1, 0], dtype=np.int64)
    eps = np.finfo(np.float64).eps
    for m in range(m_planes):
        h, w, nh, nw, bh, bw = sizes[m, 0], sizes[m, 1], sizes[m, 2], sizes[m, 3], sizes[m, 4], sizes[m, 5]
        cnt = 0
        total = 0.0
        for i in range(h):
            for j in range(w):
                if view[m, i, j]:
                    cnt += 1
                    total += x[m, i, j]
        if cnt == 0 or not ok[m]:
            for k in range(length):
                out[m, k] = np.nan
            continue
        # 1. resample
        xm = x[m]
        for a in range(nh):
            for b in range(nw):
                if s < 1:
                    sub[a, b] = _gran_interp(xm, h, w, a / s, b / s)
                else:
                    sub[a, b] = xm[a, b]
        # 2. background
        if t < 1:
            for a in range(bh):
                for b in range(bw):
                    back[a, b] = _gran_interp(sub, nh, nw, a / t, b / t)
            _gran_minmax(back, back2, bh, bw, dy, dx, True)
            _gran_minmax(back2, back, bh, bw, dy, dx, False)
            for a in range(nh):
                for b in range(nw):
                    v = sub[a, b] - _gran_interp(back, bh, bw, a * scales[m, 0], b * scales[m, 1])
                    pix[a, b] = 0.0 if v < 0 else v
        else:
            _gran_minmax(sub, tmp, nh, nw, dy, dx, True)
            _gran_minmax(tmp, ero, nh, nw, dy, dx, False)
            for a in range(nh):
                for b in range(nw):
                    v = sub[a, b] - ero[a, b]
                    pix[a, b] = 0.0 if v < 0 else v
        # 3. the object's weights on the resampled grid
        for a in range(nh):
            for b in range(nw):
                wts[a, b] = 0.0
        for i in range(h):
            r = i * scales[m, 2]
            if r < 0 or r > nh - 1:
                continue
            lr = np.floor(r)
            fr = r - lr
            r0 = int(lr)
            r1 = min(r0 + 1, nh - 1)
            for j in range(w):
                if not view[m, i, j]:
                    continue
                c = j * scales[m, 3]
                if c < 0 or c > nw - 1:
                    continue
                lc = np.floor(c)
                fc = c - lc
                c0 = int(lc)
                c1 = min(c0 + 1, nw - 1)
                wts[r0, c0] += (1 - fr) * (1 - fc)
                wts[r0, c1] += (1 - fr) * fc
                wts[r1, c0] += fr * (1 - fc)
                wts[r1, c1] += fr * fc
        # 4. the spectrum
        current = total / cnt
        start = max(current, eps)
        for a in range(nh):
            for b in range(nw):
                ero[a, b] = pix[a, b]
        for k in range(length):
            _gran_minmax(ero, tmp, nh, nw, cy, cx, True)
            for a in range(nh):
                for b in range(nw):
                    ero[a, b] = tmp[a, b]
                    rec[a, b] = tmp[a, b]
            _gran_reconstruct(rec, pix, nh, nw)
            acc = 0.0
            for a in range(nh):
                for b in range(nw):
                    acc += wts[a, b] * rec[a, b]
            new = acc / cnt
            out[m, k] = (current - new) * 100.0 / start
            current = new


@njit(cache=True, nogil=True, boundscheck=False)
def _hull_convex(ai, aj, bi, bj, ci, cj):  # pragma: no cover - compiled
    # centrosome's CONVEX: does a -> b -> c turn left (x is j, y is i); a U-turn at the end counts
    cross = (bj - aj) * (ci - bi) - (cj - bj) * (bi - ai)
    if cross > 0:
        return True
    if cross < 0:
        return False
    return bj > aj and bj > cj


@njit(cache=True, nogil=True, boundscheck=False)
def _centrosome_hull(mask, lower, upper, hi, hj):  # pragma: no cover - compiled
    # centrosome._convex_hull.convex_hull_ijv for one object: the top (min row) envelope over
    # the columns rightwards, then the bottom (max row) one leftwards; returns the vertex count
    h, w = mask.shape
    start = -1
    end = -1
    for j in range(w):
        lower[j] = h + 1
        upper[j] = -1
        for i in range(h):
            if mask[i, j]:
                if lower[j] > i:
                    lower[j] = i
                upper[j] = i
        if upper[j] >= 0:
            if start < 0:
                start = j
            end = j
    if start < 0:
        return 0
    npix = 0
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                npix += 1
    k = 0
    for j in range(start, end + 1):
        if lower[j] < h + 1:
            while k >= 2 and not _hull_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], lower[j], j):
                k -= 1
            hi[k] = lower[j]
            hj[k] = j
            k += 1
    for j in range(end, start, -1):
        if upper[j] > -1:
            while k >= 2 and not _hull_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], upper[j], j):
                k -= 1
            if npix > k:  # centrosome writes into the pixel list: at most npix entries
                hi[k] = upper[j]
                hj[k] = j
                k += 1
    while k >= 2 and not _hull_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], upper[start], start):
        k -= 1
    if lower[start] != upper[start]:
        hi[k] = upper[start]
        hj[k] = start
        k += 1
    return k


@njit(cache=True, nogil=True, boundscheck=False)
def _angle_less(d, c, d2, c2):  # pragma: no cover - compiled
    # atan2(c, d) < atan2(c2, d2) for c, c2 >= 0, exactly (features.cp_zernike._angle_less)
    if c == 0 and c2 == 0:
        return d > 0 and d2 < 0
    return d * c2 - c * d2 > 0


@njit(cache=True, nogil=True, boundscheck=False)
def _chrystal(hi, hj, nv, res):  # pragma: no cover - compiled
    # centrosome.cpmorphology.minimum_enclosing_circle for one hull: res = (ci, cj, r), the same
    # steps and float formulas, the angle tests exact (features.cp_zernike._chrystal)
    if nv == 0:
        res[0] = np.nan
        res[1] = np.nan
        res[2] = 0.0
        return
    if nv == 1:
        res[0] = float(hi[0])
        res[1] = float(hj[0])
        res[2] = 0.0
        return
    if nv == 2:
        mi = (float(hi[0]) + float(hi[1])) / 2
        mj = (float(hj[0]) + float(hj[1])) / 2
        di = mi - hi[0]
        dj = mj - hj[0]
        res[0] = mi
        res[1] = mj
        res[2] = np.sqrt(di ** 2 + dj ** 2)
        return
    s0 = 0
    s1 = 1
    while True:
        s0i = float(hi[s0])
        s0j = float(hj[s0])
        s1i = float(hi[s1])
        s1j = float(hj[s1])
        # the vertex of the smallest angle S0-V-S1 (the first on ties) and the triangle's angles
        # against a right angle, by exact integer predicates (kernels/zernike.cu zn_chrystal)
        pos = -1
        bdt = 0
        bcr = 0
        for v in range(nv):
            if v == s0 or v == s1:
                continue
            ai = np.int64(hi[s0]) - np.int64(hi[v])
            aj = np.int64(hj[s0]) - np.int64(hj[v])
            bi = np.int64(hi[s1]) - np.int64(hi[v])
            bj = np.int64(hj[s1]) - np.int64(hj[v])
            dt = ai * bi + aj * bj
            cr = abs(ai * bj - aj * bi)
            if pos < 0 or _angle_less(dt, cr, bdt, bcr):
                pos = v
                bdt = dt
                bcr = cr
        s1_ok = ((np.int64(hi[s0]) - hi[s1]) * (np.int64(hi[pos]) - hi[s1])
                 + (np.int64(hj[s0]) - hj[s1]) * (np.int64(hj[pos]) - hj[s1])) >= 0
        s0_ok = ((np.int64(hi[s1]) - hi[s0]) * (np.int64(hi[pos]) - hi[s0])
                 + (np.int64(hj[s1]) - hj[s0]) * (np.int64(hj[pos]) - hj[s0])) >= 0
        if bdt <= 0:  # the angle at V is right or obtuse: S0-S1 is the diameter
            res[0] = (s0i + s1i) / 2
            res[1] = (s0j + s1j) / 2
            res[2] = np.sqrt((s0i - s1i) ** 2 + (s0j - s1j) ** 2) / 2
            return
        if s1_ok and s0_ok:
            y0 = s0i
            x0 = s0j
            y1 = s1i
            x1 = s1j
            yv = float(hi[pos])
            xv = float(hj[pos])
            d = 2 * (x0 * (y1 - yv) + x1 * (yv - y0) + xv * (y0 - y1))
            q0 = y0 ** 2 + x0 ** 2
            q1 = y1 ** 2 + x1 ** 2
            qv = yv ** 2 + xv ** 2
            cx = (q0 * (y1 - yv) + q1 * (yv - y0) + qv * (y0 - y1)) / d
            cy = (q0 * (xv - x1) + q1 * (x0 - xv) + qv * (x1 - x0)) / d
            res[0] = cy
            res[1] = cx
            res[2] = np.sqrt((y0 - cy) ** 2 + (x0 - cx) ** 2)
            return
        if not s0_ok:
            s0 = pos
        else:
            s1 = pos


@njit(cache=True, nogil=True, boundscheck=False)
def _sum4(a, b, n, mul):  # pragma: no cover - compiled
    # sum of a[:n] (* b[:n] when mul) in four interleaved partial sums, ((s0 + s1) + (s2 + s3))
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    t = 0
    if mul:
        while t + 4 <= n:
            s0 += a[t] * b[t]
            s1 += a[t + 1] * b[t + 1]
            s2 += a[t + 2] * b[t + 2]
            s3 += a[t + 3] * b[t + 3]
            t += 4
        while t < n:
            s0 += a[t] * b[t]
            t += 1
    else:
        while t + 4 <= n:
            s0 += a[t]
            s1 += a[t + 1]
            s2 += a[t + 2]
            s3 += a[t + 3]
            t += 4
        while t < n:
            s0 += a[t]
            t += 1
    return (s0 + s1) + (s2 + s3)


@njit(cache=True, nogil=True, boundscheck=False)
def cp_zernike(masks, weights, use_weights, lut, nidx, midx, real, imag, circle, count):  # pragma: no cover - compiled
    # masks (M, H, W) bool; weights (M, H, W) float64 (read when use_weights); lut (K, L);
    # nidx, midx (K,) int64; real, imag (M, K); circle (M, 3) = (ci, cj, r); count (M,)
    m_planes, h, w = masks.shape
    k_n = nidx.shape[0]
    lower = np.empty(w, dtype=np.int64)
    upper = np.empty(w, dtype=np.int64)
    hi = np.empty(h * w + 2, dtype=np.int64)
    hj = np.empty(h * w + 2, dtype=np.int64)
    res = np.empty(3, dtype=np.float64)
    mmax = 0
    for k in range(k_n):
        if midx[k] > mmax:
            mmax = midx[k]
    zr = np.empty((max(mmax, 1) + 1, h * w), dtype=np.float64)
    zi = np.empty((max(mmax, 1) + 1, h * w), dtype=np.float64)
    py = np.empty(h * w, dtype=np.float64)
    px = np.empty(h * w, dtype=np.float64)
    pr2 = np.empty(h * w, dtype=np.float64)
    pw = np.empty(h * w, dtype=np.float64)
    sv = np.empty(h * w, dtype=np.float64)
    acc_r = np.empty(k_n, dtype=np.float64)
    acc_i = np.empty(k_n, dtype=np.float64)
    nterms = np.empty(k_n, dtype=np.int64)
    for k in range(k_n):
        nterms[k] = (nidx[k] - midx[k]) // 2 + 1
    for p in range(m_planes):
        nv = _centrosome_hull(masks[p], lower, upper, hi, hj)
        _chrystal(hi, hj, nv, res)
        circle[p, 0] = res[0]
        circle[p, 1] = res[1]
        circle[p, 2] = res[2]
        cnt = 0
        for k in range(k_n):
            real[p, k] = 0.0
            imag[p, k] = 0.0
        for i in range(h):
            for j in range(w):
                if masks[p, i, j]:
                    cnt += 1
        count[p] = cnt
        r = res[2]
        if r == 0:
            for k in range(k_n):
                real[p, k] = np.nan
                imag[p, k] = np.nan
            continue
        # the pixels inside the circle, in raster order, then every polynomial over all of them
        # (loops over pixels the compiler vectorises; each sum in 4 interleaved partial sums)
        npx = 0
        for i in range(h):
            for j in range(w):
                if not masks[p, i, j]:
                    continue
                ym = (i - res[0]) / r
                xm = (j - res[1]) / r
                r2 = xm * xm + ym * ym
                if r2 > 1:
                    continue
                py[npx] = ym
                px[npx] = xm
                pr2[npx] = r2
                pw[npx] = weights[p, i, j] if use_weights else 1.0
                npx += 1
        for t in range(npx):
            zr[1, t] = py[t]
            zi[1, t] = px[t]
        for q in range(2, mmax + 1):
            for t in range(npx):
                zr[q, t] = zr[q - 1, t] * py[t] - zi[q - 1, t] * px[t]
                zi[q, t] = zr[q - 1, t] * px[t] + zi[q - 1, t] * py[t]
        for k in range(k_n):
            c0 = lut[k, 0]
            for t in range(npx):
                sv[t] = c0
            for c in range(1, nterms[k]):
                cc = lut[k, c]
                for t in range(npx):
                    v = sv[t] * pr2[t]
                    sv[t] = v + cc
            if use_weights:
                for t in range(npx):
                    sv[t] = sv[t] * pw[t]
            mm = midx[k]
            if mm == 0:
                acc_r[k] = _sum4(sv, sv, npx, False)
                acc_i[k] = 0.0
            else:
                acc_r[k] = _sum4(sv, zr[mm], npx, True)
                acc_i[k] = _sum4(sv, zi[mm], npx, True)
        for k in range(k_n):
            real[p, k] = acc_r[k]
            imag[p, k] = acc_i[k]
