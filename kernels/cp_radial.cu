// CellProfiler's radial intensity distribution (stage cp_radial.planes: FracAtD, MeanFrac,
// RadialCV): the twin of `cp_radial` in scip_gpu/_numba_cp.py.
//
// One block per plane (grid-stride loop):
// 1. the object (view) and the background (valid and not view) of the plane; an empty object
//    gives a NaN row;
// 2. the exact distance to the nearest background pixel (cp_edt.cuh; `far` everywhere for a
//    plane without background);
// 3. the centre: the object pixel farthest from the edge, the first in raster order on ties
//    (one block maximum of distance << 32 | ~index);
// 4. the geodesic distance from the centre inside the object, 8-neighbour steps of 1 and
//    sqrt(2): the numba kernel runs Dijkstra's algorithm, this kernel relaxes every pixel
//    against its 8 neighbours (Jacobi rounds between two buffers, one barrier a round) until no
//    value changes. Both give, for every pixel, the minimum over all paths from the centre of
//    the path's steps summed in path order in floating point (rounding is monotone, so that
//    path cost is isotone and both algorithms find its minimum: Dijkstra because a popped
//    pixel's value cannot be lowered by a later one, the relaxation because its fixed point is
//    no larger than any path's cost and each value it holds is some path's cost): the same
//    doubles, bit for bit, whichever of several equally short paths each one follows;
// 5. every object pixel reached gets its bin (distance / (distance + edge distance + 0.001)
//    times the bin count) and wedge around the centre; the intensity sums of every bin and of
//    every (bin, wedge) are summed in raster order, each by its own thread (the numba kernel's
//    order, so bit-identical); thread 0 computes the 3 x bins values from them.

#define CPR_MAX_BINS 16

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
    // the transform's g, v, z, and after it the two geodesic distance buffers
    int* g = ar.take<int>(n);
    int* v = ar.take<int>(n);
    double* z = ar.take<double>((i64)h * (w + 1));
    double* dist0 = reinterpret_cast<double*>(g);
    double* dist1 = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(g) + ((8 * (i64)n + 15) / 16) * 16);
    __shared__ double hist[CPR_MAX_BINS + 1], num[CPR_MAX_BINS + 1];
    __shared__ double wsum[(CPR_MAX_BINS + 1) * 8], wcnt[(CPR_MAX_BINS + 1) * 8];
    __shared__ int changed[3];
    const double far = (double)(4 * (h + w));
    const double s2 = 1.4142135623730951;  // sqrt(2.0), correctly rounded
    const int nout = 3 * bins;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const i64 base = (i64)m * n;
        double* o = out + (i64)m * nout;
        i64 counts = 0;  // object pixels | background pixels << 32
        for (int p = t; p < n; p += SG_THREADS) {
            const bool in = view[base + p] != 0;
            const bool bg = valid[base + p] != 0 && !in;
            obj[p] = in;
            fg[p] = !bg;
            counts += (i64)in + ((i64)bg << 32);
        }
        counts = sg_block_sum_i64(counts);  // (ends with a barrier)
        const i64 n_obj = counts & 0xffffffffLL;
        const bool any_bg = (counts >> 32) > 0;
        if (n_obj == 0) {
            for (int k = t; k < nout; k += SG_THREADS) o[k] = sg_nan();
            continue;
        }
        cpe_edt_sq(fg, h, w, g, v, z, d2);
        // 3. the centre: largest distance (all `far` without background), then smallest index
        i64 key = -1;
        for (int p = t; p < n; p += SG_THREADS)
            if (obj[p]) key = sg_max64(key, ((i64)(any_bg ? d2[p] : 0) << 32) | (i64)(0xffffffffu - (unsigned)p));
        key = sg_block_max_i64(key);
        const int c = (int)(0xffffffffu - (unsigned)(key & 0xffffffffLL));
        const int ci = c / w, cj = c - ci * w;
        // 4. geodesic distance from the centre (g, v, z are free now)
        for (int p = t; p < n; p += SG_THREADS) dist0[p] = p == c ? 0.0 : sg_inf();
        if (t < 3) changed[t] = 0;
        __syncthreads();
        double* cur = dist0;
        double* nxt = dist1;
        for (int round = 0;; ++round) {
            int moved = 0;
            for (int p = t; p < n; p += SG_THREADS) {
                double best = cur[p];
                if (obj[p]) {
                    const int i = p / w, j = p - i * w;
                    for (int di = -1; di <= 1; ++di) {
                        const int a = i + di;
                        if (a < 0 || a >= h) continue;
                        for (int dj = -1; dj <= 1; ++dj) {
                            const int b = j + dj;
                            if ((di == 0 && dj == 0) || b < 0 || b >= w) continue;
                            const double nd = cur[a * w + b] + ((di != 0 && dj != 0) ? s2 : 1.0);
                            if (nd < best) best = nd;
                        }
                    }
                    if (best < cur[p]) moved = 1;
                }
                nxt[p] = best;
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
                const double de = any_bg ? cpe_dist(d2[p]) : far;
                const double nd = d / (d + de + 0.001);
                int b = (int)(nd * (double)bins);
                if (b > bins) b = bins;
                const int i = p / w, j = p - i * w;
                const int di = i - ci, dj = j - cj;
                const int wedge = (i > ci ? 1 : 0) + (j > cj ? 2 : 0) + ((di < 0 ? -di : di) > (dj < 0 ? -dj : dj) ? 4 : 0);
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
                    s += x[base + p];
                    cn += 1.0;
                }
            hist[t] = s;
            num[t] = cn;
        } else if (t >= 32 && t < 32 + 8 * (bins + 1)) {
            const int slot = t - 32;
            double s = 0.0, cn = 0.0;
            for (int p = 0; p < n; ++p)
                if (fg[p] == slot) {
                    s += x[base + p];
                    cn += 1.0;
                }
            wsum[slot] = s;
            wcnt[slot] = cn;
        }
        __syncthreads();
        if (t == 0) {
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
        __syncthreads();  // (hist, wsum and the workspace are reused by the next plane)
    }
}
