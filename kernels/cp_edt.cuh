// Exact Euclidean distance transform of one plane, shared by the CellProfiler kernels
// (cp_sizeshape.cu: radii, cp_radial.cu: distance to the edge).
//
// The twin of `_edt_plane` in scip_gpu/_numba_cp.py, operation for operation: a column pass
// (one thread per column: the distance along the column to the nearest background pixel, by a
// forward and a backward run, capped at `big`), then Felzenszwalb and Huttenlocher's lower
// envelope of parabolas along every row (one thread per row, its own envelope arrays v, z).
// The squared distances are integers (kept as such: `d2`), so the transform is exact; the only
// floating-point step, the abscissa of two parabolas' intersection, is computed and compared
// as the numba kernel does, so both pick the same parabola for every pixel. Workspace: 8 bytes
// per pixel (g, v) besides the output.

#ifndef CP_EDT_CUH
#define CP_EDT_CUH

// marks "no background pixel in reach" (numba: inf) in d2
#define CPE_INF_D2 0x7fffffff

// The abscissa where the parabolas of columns p < q of row g meet: the numba kernel's `sx`.
__device__ __forceinline__ double cpe_meet(const int* g, int p, int q) {
    const i64 fq = (i64)g[q] * g[q];
    const i64 fp = (i64)g[p] * g[p];
    return (double)((fq + (i64)q * q) - (fp + (i64)p * p)) / (2.0 * (double)(q - p));
}

// fg: h x w plane (row stride w), nonzero = foreground (distance wanted), 0 = background.
// g, v: h * w ints (the column distances; each row's envelope); d2 (out): h * w ints, the
// squared distance of every pixel to the nearest background pixel, CPE_INF_D2 where there is
// none. Every thread of the block must call it; it ends with a barrier.
//
// The numba kernel keeps the envelope's boundaries z[k] in an array; z[k] is always the meeting
// point of the envelope's parabolas v[k - 1] and v[k] (computed when v[k] was pushed, and
// neither changes while both are on the stack), so it is recomputed here from v by the same
// operations (the same double) instead of stored: 8 bytes less per pixel of workspace.
//
// Not inlined on the GPU: its row loop needs the most registers of the kernels that call it, and
// as a call they count only there (cp_radii: 54 registers instead of 72, cp_radial 92 instead
// of 110; ptxas -v, sm_90).
#ifdef CUDA_SIM
#define CPE_NOINLINE
#else
#define CPE_NOINLINE __noinline__
#endif
__device__ CPE_NOINLINE void cpe_edt_sq(const unsigned char* fg, int h, int w, int* g, int* v, int* d2) {
    const int big = (h + w) * (h + w) + 1;
    for (int j = threadIdx.x; j < w; j += SG_THREADS) {
        int run = big;
        for (int i = 0; i < h; ++i) {
            if (fg[(i64)i * w + j]) run = run < big ? run + 1 : big;
            else run = 0;
            g[(i64)i * w + j] = run;
        }
        run = big;
        for (int i = h - 1; i >= 0; --i) {
            if (fg[(i64)i * w + j]) run = run < big ? run + 1 : big;
            else run = 0;
            if (run < g[(i64)i * w + j]) g[(i64)i * w + j] = run;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < h; i += SG_THREADS) {
        const int* gi = g + (i64)i * w;
        int* vi = v + (i64)i * w;
        int k = 0;
        vi[0] = 0;  // z[0] = -inf, z[1] = inf
        for (int q = 1; q < w; ++q) {
            while (true) {
                const double sx = cpe_meet(gi, vi[k], q);
                if (k > 0 && sx <= cpe_meet(gi, vi[k - 1], vi[k])) {  // sx <= z[k]
                    k -= 1;
                    continue;
                }
                k += 1;
                vi[k] = q;  // z[k] = sx, z[k + 1] = inf
                break;
            }
        }
        const int top = k;
        k = 0;
        int* di = d2 + (i64)i * w;
        for (int q = 0; q < w; ++q) {
            while (k < top && cpe_meet(gi, vi[k], vi[k + 1]) < (double)q) k += 1;  // z[k + 1] < q
            const int p = vi[k];
            di[q] = gi[p] >= big ? CPE_INF_D2 : (q - p) * (q - p) + gi[p] * gi[p];
        }
    }
    __syncthreads();
}

// The distance of a squared distance, as the numba kernel computes it: sqrt(float(d2)).
__device__ __forceinline__ double cpe_dist(int d2) {
    return d2 == CPE_INF_D2 ? sg_inf() : sqrt((double)d2);
}

#endif
