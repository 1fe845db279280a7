// CellProfiler's MeasureTexture (stage cp_texture.haralick): mahotas' 13 Haralick features of
// every plane in 4 directions at one scale, up to 256 gray levels, one thread block per plane.
//
// Reference semantics: scip_gpu.features.cp_texture.haralick_planes; the arithmetic is that of
// the numba kernel scip_gpu/_numba_cp.py: cp_haralick, operation for operation (--fmad=false),
// with every sum taken over the same terms in the same order, so the values are
// bit-identical to the CPU path up to the last bit of log2 / exp (the GPU's and the C
// library's differ by at most an ulp or two).
//
// The numba kernel fills a dense (levels x levels) matrix; 256 levels need 256 KiB, so here a
// direction's matrix is kept sparse, as its non-zero entries in the numba loop's order:
// 1. every pixel pair (p, p + offset) with both levels > 0 gives the keys (a, b) and (b, a)
//    (a shared counter hands out the slots); a block merge sort (cpa_merge_sort) orders them
//    row-major, and a run-length pass (one block scan) lists the distinct entries (a, b) by
//    the ends of their runs (the counts): the non-zero entries of the symmetric matrix in the
//    order of the numba double loop;
// 2. the marginals px = py (the matrix is symmetric: px[b], summed over a ascending, is row
//    b in column order): one thread per row sums its contiguous entries;
// 3. the sum and difference distributions pp[a + b] and pm[|a - b|], one thread per bin,
//    each summing its entries in the numba order (a ascending, then b), found by binary
//    searches in the rows;
// 4. one thread per sequential chain (lane 0 of each warp): the sums over the entries (ASM,
//    IDM, sum of a b p, entropy, HXY1), over the marginals, over pm and over pp; thread 0
//    writes the 13 values. A plane with a direction without pairs gets NaN in all four directions.
//
// Workspace for H x W planes (cap = H W): the levels (cap bytes), the keys and the sort's
// scratch (2 cap uint32 each; after the sort the entries' run ends go to the one not holding
// the sorted keys, and an entry's (a, b) is read off its run's last key). 64 x 64: 69,632
// bytes.

#define CPH_L 256   // most gray levels
#define CPH_NF 13   // features

__device__ __forceinline__ double cph_entropy_term(double p) { return p > 0 ? -p * log2(p) : 0.0; }

// Entry u of the list: its key a << 8 | b, the last of its run in the sorted keys.
__device__ __forceinline__ unsigned int cph_ab(const unsigned int* sorted, const unsigned int* eend, int u) {
    return sorted[eend[u] - 1];
}

// The entry (a, b) of the entry list, or -1: a binary search in row a's entries
// [start[a], start[a + 1]).
__device__ __forceinline__ int cph_find(const unsigned int* sorted, const unsigned int* eend, const int* start,
                                        int a, int b) {
    int lo = start[a], hi = start[a + 1];
    const unsigned int key = ((unsigned int)a << 8) | (unsigned int)b;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (cph_ab(sorted, eend, mid) < key) lo = mid + 1; else hi = mid;
    }
    return lo < start[a + 1] && cph_ab(sorted, eend, lo) == key ? lo : -1;
}

__device__ __forceinline__ double cph_p(const unsigned int* eend, int u, double total) {
    return (double)(eend[u] - (u ? eend[u - 1] : 0u)) / total;
}

extern "C" __global__ void
cp_haralick_planes(const int* __restrict__ q, const int H, const int W, const int M, const int scale,
                   double* __restrict__ out, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned char* qv = arena.take<unsigned char>(cap);
    unsigned int* keys = arena.take<unsigned int>(2 * (i64)cap);
    unsigned int* alt = arena.take<unsigned int>(2 * (i64)cap);
    __shared__ double px[CPH_L], lpx[CPH_L], pp[2 * CPH_L], pm[CPH_L];
    __shared__ int start[CPH_L + 1];
    __shared__ int s_top, s_nk[4], s_bad;  // the largest level; pair keys per direction
    // chain results: 0 asm, 1 idm, 2 sij, 3 ent, 4 hxy1, 5 ux, 6 vx, 7 hx, 8 contrast, 9 dsq,
    // 10 dsum, 11 dent, 12 savg, 13 ssq, 14 sent
    __shared__ double r[15];
    const int t = threadIdx.x;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        double* o = out + (i64)m * 4 * CPH_NF;
        int top = 0;
        if (t == 0) {
            s_bad = 0;
            s_top = 0;
            for (int d = 0; d < 4; ++d) s_nk[d] = 0;
        }
        __syncthreads();
        for (int p = t; p < cap; p += SG_THREADS) {
            const int v = q[(i64)m * cap + p];
            qv[p] = (unsigned char)v;
            top = sg_max(top, v);
        }
        atomicMax(&s_top, top);
        __syncthreads();
        const int maxv = s_top + 1;  // the largest level + 1 (mahotas' size of the matrix)
        for (int d = 0; d < 4; ++d) {
            // mahotas' directions (0, 1), (1, 1), (1, 0), (1, -1), times the scale. (No
            // barrier here: the previous direction last read the keys, entries, marginals and
            // chain results that this one writes before barriers that follow.)
            const int dy = (d == 0 ? 0 : 1) * scale, dx = (d == 2 ? 0 : d == 3 ? -1 : 1) * scale;
            // 1. the pair keys (a, b) and (b, a) of the pairs of levels > 0, sorted; the
            // distinct entries and their run ends
            const int i1 = H - dy, j0 = sg_max(0, -dx), j1 = sg_min(W, W - dx);
            for (int p = t; p < cap; p += SG_THREADS) {
                const int i = p / W, j = p - i * W;
                if (i >= i1 || j < j0 || j >= j1) continue;
                const unsigned int a = qv[p], b = qv[p + dy * W + dx];
                if (a > 0 && b > 0) {
                    const int k = atomicAdd(&s_nk[d], 2);
                    keys[k] = (a << 8) | b;
                    keys[k + 1] = (b << 8) | a;
                }
            }
            __syncthreads();
            const int nk = s_nk[d];
            if (nk == 0) {  // (the same in every thread)
                if (t == 0) s_bad = 1;
                break;
            }
            const double total = (double)nk;  // the numba total: 2.0 per pair
            const unsigned int* sorted = cpa_merge_sort(keys, alt, nk);
            // the entries: the end of each run of equal keys, in the buffer the sort left free
            unsigned int* eend = sorted == keys ? alt : keys;
            int U;
            {
                const int cs = (nk + SG_THREADS - 1) / SG_THREADS;
                const int a = sg_min(t * cs, nk), b = sg_min(a + cs, nk);
                int starts = 0;
                for (int k = a; k < b; ++k) starts += k == 0 || sorted[k] != sorted[k - 1];
                int cur = sg_block_exclusive_sum(starts, &U) - 1;
                for (int k = a; k < b; ++k) {
                    const unsigned int e = sorted[k];
                    cur += k == 0 || e != sorted[k - 1];
                    if (k == nk - 1 || e != sorted[k + 1]) eend[cur] = (unsigned int)(k + 1);
                }
            }
            __syncthreads();
            // 2. row starts; the marginals px = py (row k's entries are contiguous, in column
            // order: the terms of px[k] in the numba order)
            for (int k = t; k <= maxv; k += SG_THREADS) {
                int lo = 0, hi = U;
                while (lo < hi) {
                    const int mid = (lo + hi) >> 1;
                    if ((cph_ab(sorted, eend, mid) >> 8) < (unsigned int)k) lo = mid + 1; else hi = mid;
                }
                start[k] = lo;
            }
            __syncthreads();
            for (int k = t; k < maxv; k += SG_THREADS) {
                double s = 0.0;
                for (int u = start[k]; u < start[k + 1]; ++u) s += cph_p(eend, u, total);
                px[k] = s;
                lpx[k] = s > 0 ? log2(s) : 0.0;
            }
            // 3. pp[a + b] (bins 0 .. 2 maxv - 1) and pm[|a - b|] (bins 2 maxv .. 3 maxv - 1),
            // each over its entries in the numba loop order (a ascending, then b)
            for (int bin = t; bin < 3 * maxv; bin += SG_THREADS) {
                double s = 0.0;
                if (bin < 2 * maxv) {
                    for (int a = sg_max(1, bin - maxv + 1); a <= sg_min(maxv - 1, bin - 1); ++a) {
                        const int u = cph_find(sorted, eend, start, a, bin - a);
                        if (u >= 0) s += cph_p(eend, u, total);
                    }
                    pp[bin] = s;
                } else {
                    const int dd = bin - 2 * maxv;
                    for (int a = 1; a < maxv; ++a) {
                        if (a - dd >= 1) {
                            const int u = cph_find(sorted, eend, start, a, a - dd);
                            if (u >= 0) s += cph_p(eend, u, total);
                        }
                        if (dd > 0 && a + dd < maxv) {
                            const int u = cph_find(sorted, eend, start, a, a + dd);
                            if (u >= 0) s += cph_p(eend, u, total);
                        }
                    }
                    pm[dd] = s;
                }
            }
            __syncthreads();
            // 4. the sequential chains, one thread each (different warps)
            if (t == 0 || t >= 160) {  // warps 0, 5, 6, 7 (lane 0): ASM, IDM, sum a b p, entropy
                const int which = t == 0 ? 0 : (t - 128) >> 5;
                if ((t & 31) == 0) {
                    double acc = 0.0;
                    for (int u = 0; u < U; ++u) {
                        const double p = cph_p(eend, u, total);
                        if (which == 0) {
                            acc += p * p;
                        } else if (which == 3) {
                            acc += cph_entropy_term(p);
                        } else {
                            const unsigned int e = cph_ab(sorted, eend, u);
                            const int a = (int)(e >> 8), b = (int)(e & 0xFF);
                            if (which == 1) acc += p / (1.0 + (double)((a - b) * (a - b)));
                            else acc += (double)(a * b) * p;
                        }
                    }
                    r[which] = acc;
                }
            } else if (t == 32) {
                double hxy1 = 0.0;
                for (int u = 0; u < U; ++u) {
                    const double p = cph_p(eend, u, total);
                    const unsigned int e = cph_ab(sorted, eend, u);
                    hxy1 -= p * (lpx[e >> 8] + lpx[e & 0xFF]);
                }
                r[4] = hxy1;
            } else if (t == 64) {
                double ux = 0.0, vx = 0.0, hx = 0.0;
                for (int k = 0; k < maxv; ++k) {
                    ux += px[k] * (double)k;
                    vx += px[k] * (double)k * (double)k;
                    hx += cph_entropy_term(px[k]);
                }
                r[5] = ux;
                r[6] = vx - ux * ux;
                r[7] = hx;
            } else if (t == 96) {
                double contrast = 0.0, dsq = 0.0, dsum = 0.0, dent = 0.0;
                for (int k = 0; k < maxv; ++k) {
                    contrast += (double)(k * k) * pm[k];
                    dsq += pm[k] * pm[k];
                    dsum += pm[k];
                    dent += cph_entropy_term(pm[k]);
                }
                r[8] = contrast;
                r[9] = dsq;
                r[10] = dsum;
                r[11] = dent;
            } else if (t == 128) {
                double savg = 0.0, ssq = 0.0, sent = 0.0;
                for (int k = 0; k < 2 * maxv; ++k) {
                    savg += (double)k * pp[k];
                    ssq += (double)(k * k) * pp[k];
                    sent += cph_entropy_term(pp[k]);
                }
                r[12] = savg;
                r[13] = ssq;
                r[14] = sent;
            }
            __syncthreads();
            if (t == 0) {
                // px == py: ux == uy, vx == vy, hx == hy (the same sums of the same terms)
                const double ux = r[5], vx = r[6], hx = r[7], ent = r[3], hxy1 = r[4];
                const double sx = sqrt(vx);
                const double corr = sx == 0 ? 1.0 : (r[2] - ux * ux) / sx / sx;
                const double hmax = hx;
                const double im1 = hmax == 0 ? ent - hxy1 : (ent - hxy1) / hmax;
                const double e2 = 1.0 - exp(-2.0 * (hx + hx - ent));
                const double im2 = sqrt(e2 > 0.0 ? e2 : 0.0);  // max(0.0, e2)
                const double mv = (double)maxv;
                const double dm = r[10] / mv;
                double* od = o + d * CPH_NF;
                od[0] = r[0];
                od[1] = r[8];
                od[2] = corr;
                od[3] = vx;
                od[4] = r[1];
                od[5] = r[12];
                od[6] = r[13] - r[12] * r[12];
                od[7] = r[14];
                od[8] = ent;
                od[9] = r[9] / mv - dm * dm;
                od[10] = r[11];
                od[11] = im1;
                od[12] = im2;
            }
        }
        __syncthreads();
        if (s_bad)
            for (int k = t; k < 4 * CPH_NF; k += SG_THREADS) o[k] = sg_nan();
        __syncthreads();
    }
}
