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
// 2. up to 256 pairs at a time, a group of gs = 256 / pairs threads per pair (3 pairs: 85);
//    the group's first thread runs the orthogonal regression over the non-zero pixels;
// 3. the bisection, speculatively: the search is a binary tree of candidates (after a bad
//    candidate, one without a defined non-negative background correlation, the window's left
//    end moves up, else its right end moves down), so the 2^d - 1 candidates it can reach in
//    its next d steps (d = 6 for 85 threads) are judged at once, one thread each (replaying
//    its node's path from the root with _costes_one's arithmetic); then the group's first
//    thread follows the verdicts d steps down: d steps of the search per round instead of 1;
// 4. the group's first thread checks the final background correlation and sums C1, C2.
//
// Every sum (a candidate's background Pearson r: two passes over the pixels) runs in the numba
// kernel's raster order on one thread, so the values are the CPU path's bit for bit; the
// parallelism is over objects (blocks), pairs (groups) and the candidates of d steps (threads).
// The candidates' passes read the same pixel at the same time in every thread (broadcasts).
//
// Output (N, Q, 2): per object and pair (C1, C2); NaN where cp_measure's Costes is undefined.
//
// Workspace for C channels of P pixels: the gathered values (C P doubles). 3 channels of
// 64 x 64: 98,304 bytes (more channels or pixels: global scratch); static shared memory for
// the groups' states (256 of each).

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

// The orthogonal regression B = a A + b over the non-zero pixels (_costes_one up to the
// bisection); false where Costes is undefined (fewer than 3 pixels or non-zero pixels, a pixel
// off [0, 1], a constant channel, a degenerate or non-finite regression).
__device__ bool cpc_regression(const double* fa, const double* fb, int k, double* a_out, double* b_out) {
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
    *a_out = a;
    *b_out = b;
    return true;
}

// One step of the bisection after the candidate mid was judged (bad: no defined non-negative
// background correlation), as _costes_one's loop body.
__device__ __forceinline__ void cpc_step(bool bad, double& left, double& right, double& mid, double& lastmid,
                                         double& valid) {
    if (bad) {
        left = mid - 1.0;
    } else {
        right = mid + 1.0;
        valid = mid;
    }
    lastmid = mid;
    const double divisor = right - left > 6.0 ? 6.0 / 5.0 : 2.0;
    mid = cpc_floordiv(right - left, divisor) + left;
}

// C1, C2 at the thresholds below the bisection's result (_costes_one's end); false where
// undefined.
__device__ bool cpc_manders(const double* fa, const double* fb, int k, double scale, double a, double b,
                            double valid, double* c1, double* c2) {
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

// Group states of the speculative bisection (one group of threads per pair)
#define CPC_RUNNING 0
#define CPC_DONE 1
#define CPC_FAILED 2

extern "C" __global__ void
cp_costes_objects(const double* __restrict__ x, const unsigned char* __restrict__ view, const int C, const int P,
                  const int N, const int* __restrict__ pa, const int* __restrict__ pb, const int Q,
                  const double scale, const int max_iter, double* __restrict__ out, unsigned char* scratch,
                  const long long ws_bytes) {
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* vals = arena.take<double>((i64)C * P);
    // per group (pair): the regression and the bisection's state at the root of its tree
    __shared__ double s_a[SG_THREADS], s_b[SG_THREADS], s_left[SG_THREADS], s_right[SG_THREADS];
    __shared__ double s_mid[SG_THREADS], s_last[SG_THREADS], s_valid[SG_THREADS];
    __shared__ int s_it[SG_THREADS];
    __shared__ unsigned char s_state[SG_THREADS];
    // per thread: its node's verdict (1: bad candidate)
    __shared__ unsigned char s_bad[SG_THREADS];
    const int t = threadIdx.x;
    const int cs = (P + SG_THREADS - 1) / SG_THREADS;
    const int a0 = sg_min(t * cs, P), b0 = sg_min(a0 + cs, P);
    for (int i = blockIdx.x; i < N; i += gridDim.x) {
        // 1. gather the object's pixels
        const int k = cpa_gather_object(x, view, i, C, P, a0, b0, vals);
        __syncthreads();
        double* o = out + (i64)i * Q * 2;
        // 2. up to 256 pairs at a time, a group of gs threads per pair; thread j of a group
        //    judges node j + 1 of the bisection's next d steps (heap order: node n's children
        //    2n after a bad candidate, 2n + 1 after a good one), all 2^d - 1 candidates the
        //    search can reach in d steps at once
        for (int q0 = 0; q0 < Q; q0 += SG_THREADS) {
            const int G = sg_min(Q - q0, SG_THREADS);
            const int gs = SG_THREADS / G;
            int d = 1;
            while ((2 << d) - 1 <= gs) ++d;  // the largest d with 2^d - 1 <= gs
            const int g = t / gs, j = t - g * gs;
            const bool member = g < G && j < (1 << d) - 1;
            const double* fa = vals;
            const double* fb = vals;
            if (g < G) {
                fa = vals + (i64)pa[q0 + g] * P;
                fb = vals + (i64)pb[q0 + g] * P;
            }
            // the regression, on the group's first thread
            if (member && j == 0) {
                double a = 0.0, b = 0.0;
                const bool ok = cpc_regression(fa, fb, k, &a, &b);
                s_a[g] = a;
                s_b[g] = b;
                s_left[g] = 1.0;
                s_right[g] = scale;
                s_mid[g] = cpc_floordiv(scale - 1.0, 6.0 / 5.0) + 1.0;
                s_last[g] = 0.0;
                s_valid[g] = sg_nan();
                s_it[g] = 0;
                s_state[g] = ok ? CPC_RUNNING : CPC_FAILED;
            }
            __syncthreads();
            bool any = true;
            while (any) {
                // every member judges its node's candidate, reached by replaying the decisions
                // of the node's path from the root
                if (member && s_state[g] == CPC_RUNNING) {
                    double left = s_left[g], right = s_right[g], mid = s_mid[g], lastmid = s_last[g];
                    double valid = s_valid[g];
                    int it = s_it[g];
                    const int node = j + 1;
                    int depth = 0;
                    while ((node >> (depth + 1)) != 0) ++depth;
                    bool reachable = true;
                    for (int l = depth - 1; l >= 0 && reachable; --l) {
                        if (lastmid == mid || ++it > max_iter) {
                            reachable = false;
                            break;
                        }
                        cpc_step(((node >> l) & 1) == 0, left, right, mid, lastmid, valid);
                    }
                    bool bad = true;
                    if (reachable && lastmid != mid && it + 1 <= max_iter) {
                        const double tf = mid / scale;
                        const double ts = (s_a[g] * tf) + s_b[g];
                        const double r = cpc_costes_r(fa, fb, k, tf, ts);
                        bad = !isfinite(r) || r < 0;
                    }
                    s_bad[t] = bad;
                }
                __syncthreads();
                // the group's first thread follows the verdicts d steps down its tree
                if (member && j == 0 && s_state[g] == CPC_RUNNING) {
                    double left = s_left[g], right = s_right[g], mid = s_mid[g], lastmid = s_last[g];
                    double valid = s_valid[g];
                    int it = s_it[g];
                    unsigned char state = CPC_RUNNING;
                    int node = 1;
                    for (int l = 0; l < d; ++l) {
                        if (lastmid == mid) {
                            state = CPC_DONE;
                            break;
                        }
                        if (++it > max_iter) {  // cp_measure: "bisection did not converge"
                            state = CPC_FAILED;
                            break;
                        }
                        const bool bad = s_bad[g * gs + node - 1] != 0;
                        cpc_step(bad, left, right, mid, lastmid, valid);
                        node = 2 * node + (bad ? 0 : 1);
                    }
                    if (state == CPC_RUNNING && lastmid == mid) state = CPC_DONE;
                    s_left[g] = left;
                    s_right[g] = right;
                    s_mid[g] = mid;
                    s_last[g] = lastmid;
                    s_valid[g] = valid;
                    s_it[g] = it;
                    s_state[g] = state;
                }
                __syncthreads();
                any = false;
                for (int h = 0; h < G; ++h) any = any || s_state[h] == CPC_RUNNING;
            }
            // C1, C2 on the group's first thread
            if (member && j == 0) {
                double c1 = sg_nan(), c2 = sg_nan();
                if (s_state[g] != CPC_DONE ||
                    !cpc_manders(fa, fb, k, scale, s_a[g], s_b[g], s_valid[g], &c1, &c2)) {
                    c1 = sg_nan();
                    c2 = sg_nan();
                }
                o[(i64)(q0 + g) * 2] = c1;
                o[(i64)(q0 + g) * 2 + 1] = c2;
            }
            __syncthreads();
        }
    }
}
