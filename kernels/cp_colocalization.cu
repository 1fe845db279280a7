// CellProfiler's MeasureColocalization (stage cp_colocalization.pairs): Pearson's r, the
// slope, overlap, K (both ways), Manders (both ways) and RWC (both ways) of every channel
// pair of every object, one thread block per object.
//
// Reference semantics: scip_gpu.features.cp_colocalization.pair_colocalization; the arithmetic
// is that of the numba kernel scip_gpu/_numba_cp.py: cp_colocalization, operation for
// operation (--fmad=false), so the values are bit-identical to the CPU path:
//
// 1. the object's pixels (view) are gathered once per channel in pixel order (one block scan
//    gives every pixel its place);
// 2. per channel, the dense rank of every pixel's value (the number of distinct values below
//    it, as the numba ranks from a sorted order): a block merge sort of the values as
//    order-preserving 64-bit keys (-0 taken as +0, which compare equal), a block scan of the
//    starts of runs of equal keys, and a binary search of each pixel's key; the channel's
//    maximum is the last sorted value, its number of distinct values the scan's total;
// 3. one thread per pair (pairs spread over the warps) runs the numba kernel's three
//    sequential passes over the gathered pixels: the means, the centred sums, and the
//    thresholded sums (threshold thr % of each channel's maximum).
//
// Output (N, Q, 9): per object and pair the values in the order of
// features.cp_colocalization.FEATURES; NaN for an object without pixels.
//
// Workspace for C channels of P pixels: the gathered values (C P doubles), their ranks (C P
// ints), the sort keys and the sort's scratch (P uint64 each; the dense ranks of the sorted
// positions go to the one not holding the result). 3 channels of 64 x 64: 212,992 bytes
// (1 block per H100 multiprocessor; more channels or pixels: global scratch).

// Gathers object i's pixels (view != 0), raster order, into vals (C rows of P): each thread
// its chunk [a0, b0) of the plane, placed by a block-wide exclusive sum. Returns their count
// (every thread). Shared by the colocalisation and Costes kernels.
__device__ int cpa_gather_object(const double* __restrict__ x, const unsigned char* __restrict__ view,
                                 const int i, const int C, const int P, const int a0, const int b0,
                                 double* vals) {
    const unsigned char* vw = view + (i64)i * P;
    int cnt = 0;
    for (int p = a0; p < b0; ++p) cnt += vw[p] != 0;
    int k;
    int pos = sg_block_exclusive_sum(cnt, &k);
    for (int p = a0; p < b0; ++p) {
        if (!vw[p]) continue;
        for (int ch = 0; ch < C; ++ch) vals[(i64)ch * P + pos] = x[((i64)i * C + ch) * P + p];
        ++pos;
    }
    return k;
}

extern "C" __global__ void
cp_colocalization_objects(const double* __restrict__ x, const unsigned char* __restrict__ view, const int C,
                          const int P, const int N, const int* __restrict__ pa, const int* __restrict__ pb,
                          const int Q, const double thr_pct, double* __restrict__ out, unsigned char* scratch,
                          const long long ws_bytes) {
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* vals = arena.take<double>((i64)C * P);
    int* ranks = arena.take<int>((i64)C * P);
    u64* keys = arena.take<u64>(P);
    u64* alt = arena.take<u64>(P);
    // per channel: the maximum and the number of distinct values (at most 64 channels)
    __shared__ double s_top[64];
    __shared__ int s_distinct[64];
    const int t = threadIdx.x;
    const int cs = (P + SG_THREADS - 1) / SG_THREADS;
    const int a0 = sg_min(t * cs, P), b0 = sg_min(a0 + cs, P);
    for (int i = blockIdx.x; i < N; i += gridDim.x) {
        // 1. gather the object's pixels
        const int k = cpa_gather_object(x, view, i, C, P, a0, b0, vals);
        double* o = out + (i64)i * Q * 9;
        if (k == 0) {
            for (int f = t; f < Q * 9; f += SG_THREADS) o[f] = sg_nan();
            continue;  // (the same in every thread)
        }
        __syncthreads();
        // 2. dense ranks per channel
        const int ck = (k + SG_THREADS - 1) / SG_THREADS;
        const int a1 = sg_min(t * ck, k), b1 = sg_min(a1 + ck, k);
        for (int ch = 0; ch < C; ++ch) {
            const double* v = vals + (i64)ch * P;
            for (int s = t; s < k; s += SG_THREADS) keys[s] = cpa_key(v[s] + 0.0);
            __syncthreads();
            const u64* sorted = cpa_merge_sort(keys, alt, k);
            int* dr = reinterpret_cast<int*>(sorted == keys ? alt : keys);  // the free buffer
            int starts = 0;
            for (int s = a1; s < b1; ++s) starts += s == 0 || sorted[s] != sorted[s - 1];
            int distinct;
            int rk = sg_block_exclusive_sum(starts, &distinct) - 1;
            for (int s = a1; s < b1; ++s) {
                rk += s == 0 || sorted[s] != sorted[s - 1];
                dr[s] = rk;
            }
            if (t == 0) {
                s_top[ch] = cpa_value(sorted[k - 1]);
                s_distinct[ch] = distinct;
            }
            __syncthreads();
            int* rc = ranks + (i64)ch * P;
            for (int s = t; s < k; s += SG_THREADS) {
                const u64 key = cpa_key(v[s] + 0.0);
                int lo = 0, hi = k;
                while (lo < hi) {
                    const int mid = (lo + hi) >> 1;
                    if (sorted[mid] < key) lo = mid + 1; else hi = mid;
                }
                rc[s] = dr[lo];
            }
            __syncthreads();
        }
        // 3. one thread per pair: pairs 0..7 on lane 0 of warps 0..7, then lane 1, ...
        for (int qq = (t & 31) * 8 + (t >> 5); qq < Q; qq += SG_THREADS) {
            const int a = pa[qq], b = pb[qq];
            const double* va = vals + (i64)a * P;
            const double* vb = vals + (i64)b * P;
            const int* ra = ranks + (i64)a * P;
            const int* rb = ranks + (i64)b * P;
            double ma = 0.0, mb = 0.0;
            for (int s = 0; s < k; ++s) {
                ma += va[s];
                mb += vb[s];
            }
            ma /= (double)k;
            mb /= (double)k;
            double sab = 0.0, saa = 0.0, sbb = 0.0;
            for (int s = 0; s < k; ++s) {
                const double da = va[s] - ma, db = vb[s] - mb;
                sab += da * db;
                saa += da * da;
                sbb += db * db;
            }
            const double ta = thr_pct / 100.0 * s_top[a];
            const double tb = thr_pct / 100.0 * s_top[b];
            // the largest ranks: the numbers of distinct values less one
            const int big_r = sg_max(s_distinct[a], s_distinct[b]);
            double fpsq = 0.0, spsq = 0.0, prod = 0.0, tot_a = 0.0, tot_b = 0.0, sum_a = 0.0, sum_b = 0.0;
            double rw_a = 0.0, rw_b = 0.0;
            bool anyb = false;
            for (int s = 0; s < k; ++s) {
                const double x_a = va[s], x_b = vb[s];
                const bool above_a = x_a >= ta, above_b = x_b >= tb;
                if (above_a) tot_a += x_a;
                if (above_b) tot_b += x_b;
                if (above_a && above_b) {
                    anyb = true;
                    fpsq += x_a * x_a;
                    spsq += x_b * x_b;
                    prod += x_a * x_b;
                    sum_a += x_a;
                    sum_b += x_b;
                    const int dd = ra[s] - rb[s];
                    const double wgt = (double)(big_r - (dd < 0 ? -dd : dd)) / (double)big_r;
                    rw_a += x_a * wgt;
                    rw_b += x_b * wgt;
                }
            }
            double* oq = o + (i64)qq * 9;
            // a constant channel (one distinct value): r undefined, the slope too for a constant
            // first channel, 0 for a constant second one (its deviations are rounding noise)
            const bool var_a = s_distinct[a] > 1, var_b = s_distinct[b] > 1;
            oq[0] = var_a && var_b && saa * sbb > 0 ? sab / sqrt(saa * sbb) : sg_nan();
            oq[1] = !var_a ? sg_nan() : !var_b ? 0.0 : saa > 0 ? sab / saa : sg_nan();
            if (anyb) {
                const double pd = sqrt(fpsq * spsq);
                oq[2] = pd > 0 ? prod / pd : sg_nan();
                oq[3] = fpsq > 0 ? prod / fpsq : sg_nan();
                oq[4] = spsq > 0 ? prod / spsq : sg_nan();
                oq[5] = tot_a != 0 ? sum_a / tot_a : sg_nan();
                oq[6] = tot_b != 0 ? sum_b / tot_b : sg_nan();
                oq[7] = tot_a != 0 ? rw_a / tot_a : sg_nan();
                oq[8] = tot_b != 0 ? rw_b / tot_b : sg_nan();
            } else {
                for (int f = 2; f < 9; ++f) oq[f] = 0.0;
            }
        }
        __syncthreads();
    }
}
