// CellProfiler's radial intensity distribution (stage cp_radial.planes: FracAtD, MeanFrac,
// RadialCV): the twin of `cp_radial` in scip_gpu/_numba_cp.py.
//
// One block per plane (grid-stride loop):
// 1. the object (view) and the background (valid and not view) of the plane; an empty object
//    gives a NaN row;
// 2. the exact distance to the nearest background pixel (cp_edt.cuh; `far` everywhere for a
//    plane without background);
// 3. the centre: the object pixel farthest from the edge, the first in raster order on ties
//    (one shared atomic maximum of distance << 32 | ~index);
// 4. the geodesic distance from the centre inside the object, 8-neighbour steps of 1 and
//    sqrt(2): the numba kernel runs Dijkstra's algorithm, this kernel relaxes every pixel
//    against its 8 neighbours until no value changes. Each thread owns one tile of the plane
//    (16 x 16 tiles) and, in a round, sweeps its tile forwards and backwards until the tile
//    settles, reading its own tile from this round's buffer and the other tiles from the
//    previous round's (two buffers, one barrier a round): as many rounds as the longest
//    shortest path crosses tiles, plus one. Both algorithms give, for every pixel, the minimum
//    over all paths from the centre of the path's steps summed in path order in floating point
//    (rounding is monotone, so the path cost is isotone and both find its minimum: Dijkstra
//    because a popped pixel's value cannot be lowered by a later one, the relaxation because
//    its fixed point is no larger than any path's cost and every value it holds is some path's
//    cost): the same doubles, bit for bit, whichever of several equally short paths (whose
//    sums may round differently) each pixel's minimum comes from;
// 5. every object pixel reached gets its bin (distance / (distance + edge distance + 0.001)
//    times the bin count) and wedge around the centre; the intensity sums of every bin and of
//    every (bin, wedge) are summed in raster order, each by its own thread (the numba kernel's
//    order, so bit-identical); thread 0 computes the 3 x bins values from them.

#define CPR_MAX_BINS 16

// Tiles of the geodesic relaxation: CPR_TILES x CPR_TILES, one a thread.
#define CPR_TILES 16  // (CPR_TILES * CPR_TILES == SG_THREADS)

// Relax object pixel (i, j) of the thread's tile [i0, i1) x [j0, j1) against its 8 neighbours:
// those in the tile from `nxt` (this round's values, written by this thread only), the others
// from `cur` (the previous round's, written by nobody this round). Whether it got lower.
__device__ __forceinline__ bool cpr_relax(const unsigned char* obj, const double* cur, double* nxt, int h, int w,
                                          int i, int j, int i0, int i1, int j0, int j1, double s2) {
    const int p = i * w + j;
    if (!obj[p]) return false;
    double best = nxt[p];
    for (int di = -1; di <= 1; ++di) {
        const int a = i + di;
        if (a < 0 || a >= h) continue;
        for (int dj = -1; dj <= 1; ++dj) {
            const int b = j + dj;
            if ((di == 0 && dj == 0) || b < 0 || b >= w) continue;
            const bool own = a >= i0 && a < i1 && b >= j0 && b < j1;
            const double nd = (own ? nxt : cur)[a * w + b] + ((di != 0 && dj != 0) ? s2 : 1.0);
            if (nd < best) best = nd;
        }
    }
    if (best < nxt[p]) {
        nxt[p] = best;
        return true;
    }
    return false;
}

// FracAtD, MeanFrac and RadialCV of one plane from its bin sums (out: 3 * bins values), in the
// numba kernel's order of operations (one thread).
__device__ __forceinline__ void cpr_values(const double* hist, const double* num, const double* wsum,
                                           const double* wcnt, int bins, double* o) {
    double htot = 0.0, ntot = 0.0;
    for (int b = 0; b <= bins; ++b) {
        htot += hist[b];
        ntot += num[b];
    }
    const double eps = 2.220446049250313e-16;  // np.finfo(np.float64).eps
    for (int b = 0; b < bins; ++b) {
        const double frac = htot != 0 ? hist[b] / htot : (hist[b] == 0 ? sg_nan() : sg_inf());
        o[b] = frac;
        o[bins + b] = frac / (num[b] / ntot + eps);
        int k = 0;
        double mu = 0.0;
        for (int q = 0; q < 8; ++q)
            if (wcnt[b * 8 + q] > 0) {
                k += 1;
                mu += wsum[b * 8 + q] / wcnt[b * 8 + q];
            }
        if (k == 0) {
            o[2 * bins + b] = 0.0;
            continue;
        }
        mu /= k;
        double var = 0.0;
        for (int q = 0; q < 8; ++q)
            if (wcnt[b * 8 + q] > 0) {
                const double dd = wsum[b * 8 + q] / wcnt[b * 8 + q] - mu;
                var += dd * dd;
            }
        const double sd = sqrt(var / k);
        o[2 * bins + b] = mu != 0 ? sd / mu : (sd == 0 ? sg_nan() : sg_inf());
    }
}

// x: (M, h, w) float64; view, valid: (M, h, w) uint8; out: (M, 3 * bins) float64.
extern "C" __global__ void
cp_radial(const double* __restrict__ x, const unsigned char* __restrict__ view, const unsigned char* __restrict__ valid,
          int M, int h, int w, int bins, double* __restrict__ out, unsigned char* scratch, i64 ws_bytes) {
    const int n = h * w;
    const int t = threadIdx.x;
    SgArena ar(sg_workspace(scratch, ws_bytes));
    unsigned char* obj = ar.take<unsigned char>(n);  // the object
    unsigned char* fg = ar.take<unsigned char>(n);   // not background; then each pixel's bin key
    int* d2 = ar.take<int>(n);
    // the transform's g and v, and after it the two buffers of the geodesic distance
    unsigned char* work = ar.take<unsigned char>(2 * 8 * (i64)n);
    int* g = reinterpret_cast<int*>(work);
    int* v = reinterpret_cast<int*>(work + ((4 * (i64)n + 15) / 16) * 16);
    double* dist0 = reinterpret_cast<double*>(work);
    double* dist1 = reinterpret_cast<double*>(work + 8 * (i64)n);
    __shared__ double hist[CPR_MAX_BINS + 1], num[CPR_MAX_BINS + 1];
    __shared__ double wsum[(CPR_MAX_BINS + 1) * 8], wcnt[(CPR_MAX_BINS + 1) * 8];
    __shared__ int changed[3], centre[2];
    const double far = (double)(4 * (h + w));
    const double s2 = 1.4142135623730951;  // sqrt(2.0), correctly rounded
    const int nout = 3 * bins;
    const int th = (h + CPR_TILES - 1) / CPR_TILES, tw = (w + CPR_TILES - 1) / CPR_TILES;
    // block counts and the centre's key through shared atomics; thread 0 resets them once every
    // thread has read them (after the next barrier), before the plane's last barrier
    __shared__ int agg_cnt[2];
    __shared__ unsigned long long agg_key;
    if (t == 0) {
        agg_cnt[0] = agg_cnt[1] = 0;
        agg_key = 0;
    }
    __syncthreads();
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const i64 base = (i64)m * n;
        int n_in = 0, n_bg = 0;
        for (int p = t; p < n; p += SG_THREADS) {
            const bool in = view[base + p] != 0;
            const bool bg = valid[base + p] != 0 && !in;
            obj[p] = in;
            fg[p] = !bg;
            n_in += in;
            n_bg += bg;
        }
        if (n_in) atomicAdd(&agg_cnt[0], n_in);
        if (n_bg) atomicAdd(&agg_cnt[1], n_bg);
        __syncthreads();
        const int n_obj = agg_cnt[0];
        const bool any_bg = agg_cnt[1] > 0;
        if (n_obj == 0) {  // (every thread: a block-wide value)
            for (int k = t; k < nout; k += SG_THREADS) out[(i64)m * nout + k] = sg_nan();
            __syncthreads();
            if (t == 0) agg_cnt[0] = agg_cnt[1] = 0;
            __syncthreads();
            continue;
        }
        cpe_edt_sq(fg, h, w, g, v, d2);
        // 3. the centre: largest distance (all `far` without background), then smallest index
        unsigned long long key = 0;
        for (int p = t; p < n; p += SG_THREADS)
            if (obj[p]) {
                const unsigned long long k =
                    ((unsigned long long)(any_bg ? d2[p] : 0) << 32) | (0xffffffffu - (unsigned)p);
                if (k > key) key = k;
            }
        if (key) atomicMax(&agg_key, key);
        __syncthreads();
        const int c = (int)(0xffffffffu - (unsigned)(agg_key & 0xffffffffULL));
        if (t == 0) {  // (kept in shared memory across the relaxation, out of registers)
            centre[0] = c;
            centre[1] = any_bg;
            agg_cnt[0] = agg_cnt[1] = 0;
        }
        // 4. geodesic distance from the centre (g and v are free now): rounds over tiles
        for (int p = t; p < n; p += SG_THREADS) dist0[p] = p == c ? 0.0 : sg_inf();
        if (t < 3) changed[t] = 0;
        __syncthreads();
        double* cur = dist0;
        double* nxt = dist1;
        const int i0 = sg_min((t / CPR_TILES) * th, h), i1 = sg_min(i0 + th, h);
        const int j0 = sg_min((t % CPR_TILES) * tw, w), j1 = sg_min(j0 + tw, w);
        for (int round = 0;; ++round) {
            for (int i = i0; i < i1; ++i)
                for (int j = j0; j < j1; ++j) nxt[i * w + j] = cur[i * w + j];
            int moved = 0;
            for (bool unsettled = true; unsettled;) {
                unsettled = false;
                for (int i = i0; i < i1; ++i)
                    for (int j = j0; j < j1; ++j)
                        unsettled |= cpr_relax(obj, cur, nxt, h, w, i, j, i0, i1, j0, j1, s2);
                for (int i = i1 - 1; i >= i0; --i)
                    for (int j = j1 - 1; j >= j0; --j)
                        unsettled |= cpr_relax(obj, cur, nxt, h, w, i, j, i0, i1, j0, j1, s2);
                moved |= unsettled;
            }
            if (moved) atomicExch(&changed[round % 3], 1);
            if (t == 0) changed[(round + 1) % 3] = 0;  // last read before the previous barrier
            __syncthreads();
            const int again = changed[round % 3];
            double* tmp = cur;
            cur = nxt;
            nxt = tmp;
            if (!again) break;
        }
        // 5. bin and wedge of every object pixel reached (the key replaces fg)
        for (int p = t; p < n; p += SG_THREADS) {
            unsigned char k = 255;
            const double d = cur[p];
            if (obj[p] && isfinite(d)) {
                const double de = centre[1] ? cpe_dist(d2[p]) : far;
                const double nd = d / (d + de + 0.001);
                int b = (int)(nd * (double)bins);
                if (b > bins) b = bins;
                const int i = p / w, j = p - i * w;
                const int ci = centre[0] / w, cj = centre[0] - ci * w;
                const int di = i - ci, dj = j - cj;
                const int wedge =
                    (i > ci ? 1 : 0) + (j > cj ? 2 : 0) + ((di < 0 ? -di : di) > (dj < 0 ? -dj : dj) ? 4 : 0);
                k = (unsigned char)(b * 8 + wedge);
            }
            fg[p] = k;
        }
        __syncthreads();
        // raster-order sums: thread b sums bin b, thread 32 + s the (bin, wedge) slot s
        if (t <= bins) {
            double s = 0.0, cn = 0.0;
            for (int p = 0; p < n; ++p)
                if (fg[p] != 255 && fg[p] / 8 == t) {
                    s += x[(i64)m * n + p];
                    cn += 1.0;
                }
            hist[t] = s;
            num[t] = cn;
        } else if (t >= 32 && t < 32 + 8 * (bins + 1)) {
            const int slot = t - 32;
            double s = 0.0, cn = 0.0;
            for (int p = 0; p < n; ++p)
                if (fg[p] == slot) {
                    s += x[(i64)m * n + p];
                    cn += 1.0;
                }
            wsum[slot] = s;
            wcnt[slot] = cn;
        }
        __syncthreads();
        if (t == 0) {
            cpr_values(hist, num, wsum, wcnt, bins, out + (i64)m * nout);
            agg_key = 0;
        }
        __syncthreads();  // (hist, wsum and the workspace are reused by the next plane)
    }
}
