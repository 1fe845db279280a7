// CellProfiler's Zernike moments (families cp_zernike and cp_radial_zernike): one thread block
// per plane (one object each).
//
// Reference semantics: scip_gpu.features.cp_zernike.zernike_sums; the numba twin is
// scip_gpu/_numba_cp.py: cp_zernike (_centrosome_hull, _chrystal):
//
// 1. every thread takes columns: the top (min row) and bottom (max row) pixel of each column,
//    and the pixel count (block reduction);
// 2. thread 0 builds centrosome's convex hull from them (the top envelope rightwards, the
//    bottom one leftwards, collinear points dropped) and runs Chrystal's algorithm with
//    centrosome's steps and circle formulas, its angle tests made exact (integer predicates
//    instead of acos, whose last bit differs between a GPU and the CPU's libm and used to pick
//    another formula for the same circle on ties and right angles: a 1-ulp radius moves pixels
//    on the circle in or out of the unit disk), operation for operation as the numba twin:
//    the circle is bit-identical on every platform;
// 3. every thread takes pixels (raster index t, t + 256, ...) and adds its terms of the 30
//    moments (Horner's scheme in rho^2, powers of z = y + i x by repeated products, as the
//    twin); the 256 partial sums of each moment are added in thread order by one thread (another
//    order than the twin's raster order: the sums agree to rounding, not to the bit).
//
// Output per plane p: real[p * K + k], imag[p * K + k] (NaN where the radius is 0),
// circle[p * 3 + {0, 1, 2}] = (centre row, centre column, radius), count[p].

#define ZN_K 30
#define ZN_TERMS 5
#define ZN_MMAX 9
#define ZN_CH 12  // partial sums gathered per round (2 * ZN_K = 60 of them)

__device__ __forceinline__ bool zn_convex(int ai, int aj, int bi, int bj, int ci, int cj) {
    const int cross = (bj - aj) * (ci - bi) - (cj - bj) * (bi - ai);
    if (cross > 0) return true;
    if (cross < 0) return false;
    return bj > aj && bj > cj;  // a U-turn at the end of the points
}

// centrosome._convex_hull.convex_hull_ijv of one object from its column envelopes; returns the
// vertex count
__device__ int zn_hull(const int* lower, const int* upper, int h, int w, int npix, int* hi, int* hj) {
    int start = -1, end = -1;
    for (int j = 0; j < w; ++j) {
        if (upper[j] >= 0) {
            if (start < 0) start = j;
            end = j;
        }
    }
    if (start < 0) return 0;
    int k = 0;
    for (int j = start; j <= end; ++j) {
        if (lower[j] < h + 1) {
            while (k >= 2 && !zn_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], lower[j], j)) --k;
            hi[k] = lower[j];
            hj[k] = j;
            ++k;
        }
    }
    for (int j = end; j > start; --j) {
        if (upper[j] > -1) {
            while (k >= 2 && !zn_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], upper[j], j)) --k;
            if (npix > k) {
                hi[k] = upper[j];
                hj[k] = j;
                ++k;
            }
        }
    }
    while (k >= 2 && !zn_convex(hi[k - 2], hj[k - 2], hi[k - 1], hj[k - 1], upper[start], start)) --k;
    if (lower[start] != upper[start]) {
        hi[k] = upper[start];
        hj[k] = start;
        ++k;
    }
    return k;
}

__device__ __forceinline__ double zn_sq(double x) { return x * x; }

// atan2(c, d) < atan2(c2, d2) for c, c2 >= 0 (angles in [0, pi]), exactly: the sign of the cross
// product, except for two angles on the axis (0 and pi), which it cannot tell apart. Products of
// up to 4 L^4 for coordinates below L: exact in int64 for L < 39,000.
__device__ __forceinline__ bool zn_angle_less(i64 d, i64 c, i64 d2, i64 c2) {
    if (c == 0 && c2 == 0) return d > 0 && d2 < 0;
    return d * c2 - c * d2 > 0;
}

// centrosome.cpmorphology.minimum_enclosing_circle of one hull: res = (ci, cj, r)
__device__ void zn_chrystal(const int* hi, const int* hj, int nv, double* res) {
    if (nv == 0) {
        res[0] = sg_nan(); res[1] = sg_nan(); res[2] = 0.0;
        return;
    }
    if (nv == 1) {
        res[0] = (double)hi[0]; res[1] = (double)hj[0]; res[2] = 0.0;
        return;
    }
    if (nv == 2) {
        const double mi = ((double)hi[0] + (double)hi[1]) / 2;
        const double mj = ((double)hj[0] + (double)hj[1]) / 2;
        const double di = mi - (double)hi[0];
        const double dj = mj - (double)hj[0];
        res[0] = mi; res[1] = mj; res[2] = sqrt(zn_sq(di) + zn_sq(dj));
        return;
    }
    int s0 = 0, s1 = 1;
    while (true) {
        const double s0i = (double)hi[s0], s0j = (double)hj[s0];
        const double s1i = (double)hi[s1], s1j = (double)hj[s1];
        // the vertex V with the smallest angle S0-V-S1 (the first on ties), by exact integer
        // predicates: the angle atan2(cr, dt) of a = S0 - V, b = S1 - V (dt = a.b, cr = |a x b|)
        // is smaller than atan2(cr', dt') when dt cr' - cr dt' > 0 (both in the upper half-plane)
        i64 bdt = 0, bcr = 0;
        int pos = -1;
        for (int v = 0; v < nv; ++v) {
            if (v == s0 || v == s1) continue;
            const i64 ai = (i64)hi[s0] - hi[v], aj = (i64)hj[s0] - hj[v];
            const i64 bi = (i64)hi[s1] - hi[v], bj = (i64)hj[s1] - hj[v];
            const i64 dt = ai * bi + aj * bj;
            i64 cr = ai * bj - aj * bi;
            cr = cr < 0 ? -cr : cr;
            if (pos < 0 || zn_angle_less(dt, cr, bdt, bcr)) {
                pos = v; bdt = dt; bcr = cr;
            }
        }
        // the angles of the triangle at V, S1 and S0 against a right angle, exactly
        const bool v_right_or_obtuse = bdt <= 0;
        const bool s1_acute_or_right =
            ((i64)hi[s0] - hi[s1]) * ((i64)hi[pos] - hi[s1]) + ((i64)hj[s0] - hj[s1]) * ((i64)hj[pos] - hj[s1]) >= 0;
        const bool s0_acute_or_right =
            ((i64)hi[s1] - hi[s0]) * ((i64)hi[pos] - hi[s0]) + ((i64)hj[s1] - hj[s0]) * ((i64)hj[pos] - hj[s0]) >= 0;
        if (v_right_or_obtuse) {
            res[0] = (s0i + s1i) / 2;
            res[1] = (s0j + s1j) / 2;
            res[2] = sqrt(zn_sq(s0i - s1i) + zn_sq(s0j - s1j)) / 2;
            return;
        }
        if (s1_acute_or_right && s0_acute_or_right) {
            const double y0 = s0i, x0 = s0j, y1 = s1i, x1 = s1j;
            const double yv = (double)hi[pos], xv = (double)hj[pos];
            const double d = 2 * (x0 * (y1 - yv) + x1 * (yv - y0) + xv * (y0 - y1));
            const double q0 = zn_sq(y0) + zn_sq(x0), q1 = zn_sq(y1) + zn_sq(x1), qv = zn_sq(yv) + zn_sq(xv);
            const double cx = (q0 * (y1 - yv) + q1 * (yv - y0) + qv * (y0 - y1)) / d;
            const double cy = (q0 * (xv - x1) + q1 * (x0 - xv) + qv * (x1 - x0)) / d;
            res[0] = cy;
            res[1] = cx;
            res[2] = sqrt(zn_sq(y0 - cy) + zn_sq(x0 - cx));
            return;
        }
        if (!s0_acute_or_right) s0 = pos; else s1 = pos;
    }
}

// masks (M, H, W) uint8; weights (M, H, W) float64, read when use_weights; lut (K, ZN_TERMS)
// float64; nidx, midx (K) int32. Workspace (SgArena, host mirror in scip_gpu._gpu_zernike):
// lower, upper (W int32), hull rows and columns (2 W + 2 int32 each), the circle (3 float64),
// the threads' partial sums (ZN_CH x SG_THREADS float64).
extern "C" __global__ void
cp_zernike_planes(const unsigned char* __restrict__ masks, const double* __restrict__ weights, int use_weights,
                  int m_planes, int h, int w, const double* __restrict__ lut, const int* __restrict__ nidx,
                  const int* __restrict__ midx, double* real, double* imag, double* circle, double* count,
                  unsigned char* scratch, i64 ws_bytes) {
    SgArena arena(sg_workspace(scratch, ws_bytes));
    int* lower = arena.take<int>(w);
    int* upper = arena.take<int>(w);
    int* hi = arena.take<int>(2 * w + 2);
    int* hj = arena.take<int>(2 * w + 2);
    double* res = arena.take<double>(3);
    double* part = arena.take<double>(ZN_CH * SG_THREADS);
    const int t = threadIdx.x;
    const i64 plane = (i64)h * w;
    for (int p = blockIdx.x; p < m_planes; p += gridDim.x) {
        const unsigned char* mk = masks + p * plane;
        i64 npix = 0;
        for (int j = t; j < w; j += SG_THREADS) {
            int lo = h + 1, up = -1;
            for (int i = 0; i < h; ++i) {
                if (mk[(i64)i * w + j]) {
                    if (lo > i) lo = i;
                    up = i;
                    ++npix;
                }
            }
            lower[j] = lo;
            upper[j] = up;
        }
        npix = sg_block_sum_i64(npix);  // ends with a barrier: the envelopes are written
        if (t == 0) {
            const int nv = zn_hull(lower, upper, h, w, (int)(npix < 0x7fffffff ? npix : 0x7fffffff), hi, hj);
            zn_chrystal(hi, hj, nv, res);
            circle[p * 3 + 0] = res[0];
            circle[p * 3 + 1] = res[1];
            circle[p * 3 + 2] = res[2];
            count[p] = (double)npix;
        }
        __syncthreads();
        const double ci = res[0], cj = res[1], r = res[2];
        double acc_r[ZN_K], acc_i[ZN_K];
        for (int k = 0; k < ZN_K; ++k) { acc_r[k] = 0.0; acc_i[k] = 0.0; }
        if (r != 0) {
            double zr[ZN_MMAX + 1], zi[ZN_MMAX + 1];
            for (i64 idx = t; idx < plane; idx += SG_THREADS) {
                if (!mk[idx]) continue;
                const int i = (int)(idx / w), j = (int)(idx % w);
                const double ym = ((double)i - ci) / r;
                const double xm = ((double)j - cj) / r;
                const double r2 = xm * xm + ym * ym;
                if (r2 > 1) continue;
                const double wt = use_weights ? weights[p * plane + idx] : 1.0;
                zr[1] = ym;
                zi[1] = xm;
                for (int q = 2; q <= ZN_MMAX; ++q) {
                    zr[q] = zr[q - 1] * ym - zi[q - 1] * xm;
                    zi[q] = zr[q - 1] * xm + zi[q - 1] * ym;
                }
                for (int k = 0; k < ZN_K; ++k) {
                    double s = 0.0;
                    const int nt = (nidx[k] - midx[k]) / 2 + 1;
                    for (int c = 0; c < nt; ++c) {
                        s = s * r2;
                        s = s + lut[k * ZN_TERMS + c];
                    }
                    if (use_weights) s = s * wt;
                    const int mm = midx[k];
                    if (mm == 0) {
                        acc_r[k] += s;
                    } else {
                        acc_r[k] += s * zr[mm];
                        acc_i[k] += s * zi[mm];
                    }
                }
            }
        }
        // the threads' partial sums, ZN_CH values at a time: thread q < ZN_CH adds value q of
        // threads 0, 1, ..., 255 in that order (two barriers per chunk, not one reduction each)
        for (int c0 = 0; c0 < 2 * ZN_K; c0 += ZN_CH) {
            for (int q = 0; q < ZN_CH; ++q) {
                const int v = c0 + q;
                part[q * SG_THREADS + t] = v < ZN_K ? acc_r[v] : acc_i[v - ZN_K];
            }
            __syncthreads();
            if (t < ZN_CH) {
                double s = 0.0;
                for (int u = 0; u < SG_THREADS; ++u) s += part[t * SG_THREADS + u];
                const int v = c0 + t;
                if (v < ZN_K) real[p * ZN_K + v] = r != 0 ? s : sg_nan();
                else imag[p * ZN_K + v - ZN_K] = r != 0 ? s : sg_nan();
            }
            __syncthreads();
        }
    }
}
