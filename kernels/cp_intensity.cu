// CellProfiler's MeasureObjectIntensity (stage cp_intensity.planes): the 19 intensity and
// location values of every plane, one thread block per plane.
//
// Reference semantics: scip_gpu.features.cp_intensity.plane_intensity; the arithmetic is that
// of the numba kernel scip_gpu/_numba_cp.py: cp_plane_intensity, operation for operation (the
// module is compiled with --fmad=false), so the values are bit-identical to the CPU path:
//
// 1. the plane (H x W doubles) and its view / edge flags are copied into the workspace; the
//    view's values go, as order-preserving 64-bit keys, to a key array in any order (a shared
//    counter hands out the slots);
// 2. concurrently, one thread per chain, each a sequential pass in raster order as the numba
//    loop: (warp 0) count, sum, min, first maximum, then the squared deviations from the mean;
//    (warp 1) the same over the edge; (warp 2) the row-weighted sums; (warp 3) the
//    column-weighted sums;
// 3. a block merge sort of the keys (cpa_merge_sort: ~9 barriers; ties are equal keys, so the
//    sorted values are those of numpy.sort), with the values' space as its scratch;
// 4. thread 0 reads the quartiles and the median off the sorted values, and the MAD's two
//    order statistics of |x - median| by a merge of the two sorted sides of the median
//    (no second sort), and writes the 19 values (NaN rows for empty views; NaN edge values
//    without edge pixels).
//
// Workspace for H x W planes (cap = H W): the values (cap doubles), the flags (cap bytes:
// bit 0 view, bit 1 edge), the keys (cap uint64). 64 x 64: 69,632 bytes.

#define CPI_NOUT 19

// Order-preserving map of a double to 64 bits (unsigned comparison of keys orders as the
// values, -0 before +0, NaN after +inf) and back.
__device__ __forceinline__ u64 cpa_key(double v) {
    const u64 b = (u64)__double_as_longlong(v);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
__device__ __forceinline__ double cpa_value(u64 k) {
    const u64 b = (k >> 63) ? (k & 0x7fffffffffffffffull) : ~k;
    return __longlong_as_double((long long)b);
}

// CellProfiler's quantile of the n ascending keys at fraction frac, as the numba _cp_quantile.
__device__ double cpa_quantile(const u64* s, int n, double frac) {
    const double pos = (double)n * frac;
    int lo = (int)floor(pos);
    if (lo > n - 1) lo = n - 1;
    int hi = lo + 1;
    if (hi > n - 1) hi = n - 1;
    const double f = pos - (double)lo;
    return cpa_value(s[lo]) * (1.0 - f) + cpa_value(s[hi]) * f;
}

struct CpaValues {  // the values of sorted keys
    const u64* s;
    __device__ double operator()(int i) const { return cpa_value(s[i]); }
};

// k-th smallest (0-based) of |v - c| over the ascending values v of keys s[0..n)
__device__ double cpa_kth_deviation(const u64* s, int n, int split, double c, int k) {
    return sg_kth_vshape(CpaValues{s}, n, split, c, k);
}

// Ascending sort of keys[0..n) with few barriers (block merge sort): every thread sorts its
// chunk of ceil(n / 256) consecutive keys (insertion sort), then ceil(log2(256)) rounds merge
// pairs of sorted runs, each thread writing its own chunk of the output after finding where
// it starts by a binary search along the merge path (ties taken from the left run first).
// One barrier per round (a bitonic sort of 4096 keys needs 78). `alt`: n keys of scratch.
// Returns the buffer (keys or alt) holding the sorted keys; every thread must call it.
template <class K>
__device__ K* cpa_merge_sort(K* keys, K* alt, int n) {
    const int t = threadIdx.x;
    const int c = (n + SG_THREADS - 1) / SG_THREADS;
    const int lo = sg_min(t * c, n), hi = sg_min(lo + c, n);
    for (int i = lo + 1; i < hi; ++i) {
        const K v = keys[i];
        int j = i - 1;
        while (j >= lo && keys[j] > v) {
            keys[j + 1] = keys[j];
            --j;
        }
        keys[j + 1] = v;
    }
    __syncthreads();
    K* src = keys;
    K* dst = alt;
    for (int w = c; w < n; w *= 2) {
        if (lo < hi) {
            const int s0 = lo / (2 * w) * (2 * w);  // the merged block [s0, e): runs [s0, m), [m, e)
            const int m = sg_min(s0 + w, n), e = sg_min(s0 + 2 * w, n);
            const int na = m - s0, nb = e - m;
            const K* A = src + s0;
            const K* B = src + m;
            const int o = lo - s0;  // outputs of the block before this thread's first
            int l = sg_max(0, o - nb), r = sg_min(o, na);
            while (l < r) {  // i = how many of the first o outputs come from A
                const int mid = (l + r) >> 1;
                if (A[mid] <= B[o - mid - 1]) l = mid + 1; else r = mid;
            }
            int i = l, j = o - l;
            for (int k = lo; k < hi; ++k) {
                if (j >= nb || (i < na && A[i] <= B[j])) dst[k] = A[i++];
                else dst[k] = B[j++];
            }
        }
        __syncthreads();
        K* tmp = src;
        src = dst;
        dst = tmp;
    }
    return src;
}

extern "C" __global__ void
cp_intensity_planes(const double* __restrict__ x, const unsigned char* __restrict__ view,
                    const unsigned char* __restrict__ edge, const int H, const int W, const int M,
                    double* __restrict__ out, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* vals = arena.take<double>(cap);  // (the sort's scratch once the chains have run)
    unsigned char* fl = arena.take<unsigned char>(cap);
    u64* keys = arena.take<u64>(cap);
    __shared__ int s_n;
    // chain results: 0 n, 1 s, 2 mn, 3 mx, 4 amax, 5 var, 6 ne, 7 es, 8 emn, 9 emx, 10 evar,
    // 11 sr, 12 wr, 13 sc, 14 wc, 15 q1, 16 med, 17 mad, 18 q3
    __shared__ double r[19];
    const int t = threadIdx.x;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const double* xm = x + (i64)m * cap;
        const unsigned char* vm = view + (i64)m * cap;
        const unsigned char* em = edge + (i64)m * cap;
        if (t == 0) s_n = 0;
        __syncthreads();
        // 1. plane, flags, keys of the view's values
        for (int p = t; p < cap; p += SG_THREADS) {
            const double v = xm[p];
            const int f = (vm[p] != 0) | ((em[p] != 0) << 1);
            vals[p] = v;
            fl[p] = (unsigned char)f;
            if (f & 1) keys[atomicAdd(&s_n, 1)] = cpa_key(v);
        }
        __syncthreads();
        const int n = s_n;
        double* o = out + (i64)m * CPI_NOUT;
        if (n == 0) {
            for (int k = t; k < CPI_NOUT; k += SG_THREADS) o[k] = sg_nan();
            __syncthreads();  // s_n is reset next
            continue;
        }
        // 2. the chains, in raster order
        if (t == 0) {
            int cnt = 0, amax = -1;
            double s = 0.0, mn = sg_inf(), mx = -sg_inf();
            for (int p = 0; p < cap; ++p) {
                if (!(fl[p] & 1)) continue;
                const double v = vals[p];
                ++cnt;
                s += v;
                if (v < mn) mn = v;
                if (v > mx) {
                    mx = v;
                    amax = p;
                }
            }
            const double mean = s / (double)cnt;
            double var = 0.0;
            for (int p = 0; p < cap; ++p) {
                if (!(fl[p] & 1)) continue;
                const double d = vals[p] - mean;
                var += d * d;
            }
            var /= (double)cnt;
            r[0] = (double)cnt;
            r[1] = s;
            r[2] = mn;
            r[3] = mx;
            r[4] = (double)amax;
            r[5] = var;
        } else if (t == 32) {
            int ne = 0;
            double es = 0.0, emn = sg_inf(), emx = -sg_inf();
            for (int p = 0; p < cap; ++p) {
                if (!(fl[p] & 2)) continue;
                const double v = vals[p];
                ++ne;
                es += v;
                if (v < emn) emn = v;
                if (v > emx) emx = v;
            }
            double evar = 0.0;
            if (ne > 0) {
                const double emean = es / (double)ne;
                for (int p = 0; p < cap; ++p) {
                    if (!(fl[p] & 2)) continue;
                    const double d = vals[p] - emean;
                    evar += d * d;
                }
                evar /= (double)ne;
            }
            r[6] = (double)ne;
            r[7] = es;
            r[8] = emn;
            r[9] = emx;
            r[10] = evar;
        } else if (t == 64 || t == 96) {
            // row- (warp 2) or column-weighted (warp 3) sums: sr += i, wr += v * i
            const bool rows = t == 64;
            double sr = 0.0, wr = 0.0;
            int i = 0, j = 0;
            for (int p = 0; p < cap; ++p) {
                if (fl[p] & 1) {
                    const int c = rows ? i : j;
                    sr += (double)c;
                    wr += vals[p] * (double)c;
                }
                if (++j == W) {
                    j = 0;
                    ++i;
                }
            }
            r[rows ? 11 : 13] = sr;
            r[rows ? 12 : 14] = wr;
        }
        __syncthreads();
        // 3. sort the view's values (the values' space is free now)
        const u64* sorted = cpa_merge_sort(keys, reinterpret_cast<u64*>(vals), n);
        // 4. the values, in the order of features.cp_intensity (INTENSITY, LOCATION)
        if (t == 0) {
            const double med = cpa_quantile(sorted, n, 0.5);
            int a = 0, b = n;  // split: values <= median
            while (a < b) {
                const int mid = (a + b) / 2;
                if (cpa_value(sorted[mid]) <= med) a = mid + 1; else b = mid;
            }
            // the numba _cp_quantile of the sorted deviations |x - median| at 0.5: the
            // deviations of ranks lo and hi
            const double pos = (double)n * 0.5;
            int lo = (int)floor(pos);
            if (lo > n - 1) lo = n - 1;
            int hi = lo + 1;
            if (hi > n - 1) hi = n - 1;
            const double f = pos - (double)lo;
            const double d_lo = cpa_kth_deviation(sorted, n, a, med, lo);
            const double d_hi = hi == lo ? d_lo : cpa_kth_deviation(sorted, n, a, med, hi);
            const double cnt = r[0], s = r[1];
            const double mean = s / cnt;
            const double cy = r[11] / cnt, cx = r[13] / cnt;
            double my, mxx;
            if (s != 0) {
                my = r[12] / s;
                mxx = r[14] / s;
            } else {
                my = sg_nan();
                mxx = sg_nan();
            }
            const double dy = my - cy, dx = mxx - cx;
            o[0] = s;
            o[1] = mean;
            o[2] = sqrt(r[5]);
            o[3] = r[2];
            o[4] = r[3];
            if (r[6] > 0) {
                o[5] = r[7];
                o[6] = r[7] / r[6];
                o[7] = sqrt(r[10]);
                o[8] = r[8];
                o[9] = r[9];
            } else {
                for (int k = 5; k < 10; ++k) o[k] = sg_nan();
            }
            o[10] = sqrt(dy * dy + dx * dx);
            o[11] = cpa_quantile(sorted, n, 0.25);
            o[12] = med;
            o[13] = d_lo * (1.0 - f) + d_hi * f;
            o[14] = cpa_quantile(sorted, n, 0.75);
            o[15] = mxx;
            o[16] = my;
            const int amax = (int)r[4];
            o[17] = (double)(amax % W);
            o[18] = (double)(amax / W);
        }
        __syncthreads();
    }
}
