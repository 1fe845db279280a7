// Costes' automatic thresholds (stage cp_colocalization.costes): CellProfiler's "Faster"
// bisection (cp_measure's bisection_costes) and the Manders coefficients above the thresholds
// found (C1, C2) of every channel pair of every object, one thread block per object.
//
// Reference semantics: scip_gpu.features.cp_colocalization.costes_pairs; the arithmetic is
// that of the numba kernel scip_gpu/_numba_cp.py: cp_costes / _costes_one / _costes_r,
// operation for operation (--fmad=false; Python's float floor division as numba compiles it),
// so the values are bit-identical to the CPU path:
//
// 1. the object's pixels (view) are gathered once per channel in pixel order (one block scan
//    gives every pixel its place), as cp_colocalization_objects does;
// 2. one thread per pair (pairs spread over the warps) runs _costes_one over the gathered
//    pixels: the finiteness / range check, the orthogonal regression over the non-zero pixels,
//    the bisection (each candidate threshold's below-threshold Pearson r from two sequential
//    passes in raster order, as the numba kernel sums), and C1 / C2.
//
// Every sum runs in the numba kernel's raster order on the pair's one thread: bit-identical
// values rather than a block reduction (whose tree order numba would have to emulate); the
// parallelism is over objects (blocks) and pairs (threads).
//
// Output (N, Q, 2): per object and pair (C1, C2); NaN where cp_measure's Costes is undefined.
//
// Workspace for C channels of P pixels: the gathered values (C P doubles). 3 channels of
// 64 x 64: 98,304 bytes (more channels or pixels: global scratch).

// Python's float floor division a // b (CPython's float_floor_div, numba's real_divmod).
__device__ __forceinline__ double cpc_floordiv(double vx, double wx) {
    double mod = fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod != 0.0) {
        if ((wx < 0) != (mod < 0)) {
            mod += wx;
            div -= 1.0;
        }
    }
    double floordiv;
    if (div != 0.0) {
        floordiv = floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
        floordiv = copysign(0.0, vx / wx);
    }
    return floordiv;
}

// Pearson's r of the pixels where fa < tf or fb < ts; NaN with fewer than 3 of them or a
// constant channel among them (_costes_r).
__device__ double cpc_costes_r(const double* fa, const double* fb, int k, double tf, double ts) {
    int m = 0;
    double sa = 0.0, sb = 0.0;
    double mna = sg_inf(), mxa = -sg_inf(), mnb = sg_inf(), mxb = -sg_inf();
    for (int t = 0; t < k; ++t) {
        const double va = fa[t], vb = fb[t];
        if (va < tf || vb < ts) {
            ++m;
            sa += va;
            sb += vb;
            mna = sg_fmin(mna, va);
            mxa = sg_fmax(mxa, va);
            mnb = sg_fmin(mnb, vb);
            mxb = sg_fmax(mxb, vb);
        }
    }
    if (m < 3 || mxa - mna == 0.0 || mxb - mnb == 0.0) return sg_nan();
    const double ma = sa / (double)m, mb = sb / (double)m;
    double sab = 0.0, saa = 0.0, sbb = 0.0;
    for (int t = 0; t < k; ++t) {
        const double va = fa[t], vb = fb[t];
        if (va < tf || vb < ts) {
            const double da = va - ma, db = vb - mb;
            sab += da * db;
            saa += da * da;
            sbb += db * db;
        }
    }
    return sab / sqrt(saa * sbb);
}

// (C1, C2) of one pair of one object's k pixels (_costes_one); false where undefined.
__device__ bool cpc_costes_one(const double* fa, const double* fb, int k, double scale, int max_iter,
                               double* c1, double* c2) {
    if (k < 3) return false;
    int nnz = 0;
    double sx = 0.0, sy = 0.0, sz = 0.0;
    double mnx = sg_inf(), mxx = -sg_inf(), mny = sg_inf(), mxy = -sg_inf();
    for (int t = 0; t < k; ++t) {
        const double va = fa[t], vb = fb[t];
        if (!(isfinite(va) && isfinite(vb)) || va < 0 || va > 1 || vb < 0 || vb > 1) return false;
        if (va > 0 || vb > 0) {
            ++nnz;
            sx += va;
            sy += vb;
            sz += va + vb;
            mnx = sg_fmin(mnx, va);
            mxx = sg_fmax(mxx, va);
            mny = sg_fmin(mny, vb);
            mxy = sg_fmax(mxy, vb);
        }
    }
    if (nnz < 3 || mxx - mnx == 0.0 || mxy - mny == 0.0) return false;
    const double xmean = sx / (double)nnz, ymean = sy / (double)nnz, zmean = sz / (double)nnz;
    double vx = 0.0, vy = 0.0, vz = 0.0;
    for (int t = 0; t < k; ++t) {
        const double va = fa[t], vb = fb[t];
        if (va > 0 || vb > 0) {
            const double dx = va - xmean, dy = vb - ymean, dz = (va + vb) - zmean;
            vx += dx * dx;
            vy += dy * dy;
            vz += dz * dz;
        }
    }
    const double xvar = vx / (double)(nnz - 1), yvar = vy / (double)(nnz - 1), zvar = vz / (double)(nnz - 1);
    const double covar = 0.5 * (zvar - (xvar + yvar));
    const double denom = 2.0 * covar;
    const double num = (yvar - xvar) + sqrt((yvar - xvar) * (yvar - xvar) + 4.0 * (covar * covar));
    // 8 * eps (float64), as the numba kernel's 8 * np.finfo(np.float64).eps
    if (fabs(covar) <= 8.0 * 2.220446049250313e-16 * (yvar > xvar ? yvar : xvar)) return false;
    const double a = num / denom;
    const double b = ymean - a * xmean;
    if (!(isfinite(a) && isfinite(b))) return false;
    const double step = 6.0 / 5.0;
    double left = 1.0, right = scale;
    double mid = cpc_floordiv(right - left, step) + left;
    double lastmid = 0.0, valid = sg_nan();
    int it = 0;
    while (lastmid != mid) {
        if (++it > max_iter) return false;
        const double tf = mid / scale;
        const double ts = (a * tf) + b;
        const double r = cpc_costes_r(fa, fb, k, tf, ts);
        if (!isfinite(r) || r < 0) {
            left = mid - 1.0;
        } else {
            right = mid + 1.0;
            valid = mid;
        }
        lastmid = mid;
        const double divisor = right - left > 6.0 ? step : 2.0;
        mid = cpc_floordiv(right - left, divisor) + left;
    }
    if (!isfinite(valid)) return false;
    const double tf = (valid - 1.0) / scale;
    const double ts = (a * tf) + b;
    if (!isfinite(cpc_costes_r(fa, fb, k, tf, ts))) return false;
    double tot_a = 0.0, tot_b = 0.0, sum_a = 0.0, sum_b = 0.0;
    for (int t = 0; t < k; ++t) {
        const double va = fa[t], vb = fb[t];
        if (va >= tf) tot_a += va;
        if (vb >= ts) tot_b += vb;
        if (va > tf && vb > ts) {
            sum_a += va;
            sum_b += vb;
        }
    }
    if (tot_a <= 0 || tot_b <= 0) return false;
    *c1 = sum_a / tot_a;
    *c2 = sum_b / tot_b;
    return true;
}

extern "C" __global__ void
cp_costes_objects(const double* __restrict__ x, const unsigned char* __restrict__ view, const int C, const int P,
                  const int N, const int* __restrict__ pa, const int* __restrict__ pb, const int Q,
                  const double scale, const int max_iter, double* __restrict__ out, unsigned char* scratch,
                  const long long ws_bytes) {
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* vals = arena.take<double>((i64)C * P);
    const int t = threadIdx.x;
    const int cs = (P + SG_THREADS - 1) / SG_THREADS;
    const int a0 = sg_min(t * cs, P), b0 = sg_min(a0 + cs, P);
    for (int i = blockIdx.x; i < N; i += gridDim.x) {
        // 1. gather the object's pixels
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
        __syncthreads();
        // 2. one thread per pair: pairs 0..7 on lane 0 of warps 0..7, then lane 1, ...
        double* o = out + (i64)i * Q * 2;
        for (int qq = (t & 31) * 8 + (t >> 5); qq < Q; qq += SG_THREADS) {
            double c1 = sg_nan(), c2 = sg_nan();
            if (!cpc_costes_one(vals + (i64)pa[qq] * P, vals + (i64)pb[qq] * P, k, scale, max_iter, &c1, &c2)) {
                c1 = sg_nan();
                c2 = sg_nan();
            }
            o[(i64)qq * 2] = c1;
            o[(i64)qq * 2 + 1] = c2;
        }
        __syncthreads();
    }
}
