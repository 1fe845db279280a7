// skimage.filters.sobel of every plane of a batch (ops.sobel), for the inputs the fused
// texture kernel does not take (float pixels: e.g. the illumination-corrected fields' cells,
// whose texture family runs the array-namespace form: this replaces its reflect refill and
// four 1-D correlations, ~60 CuPy launches of a dozen kinds per batch).
//
// Reference semantics: scip_gpu.ops.sobel; arithmetic of its numba twin
// (_numba_kernels.sobel_planes: sg_sobel_px, the same nine products in the same order, in
// double; a float32 result rounded once at the end), so the values are bit-identical to the
// CPU path's. Pixels: dtype code 0 uint8, 1 uint16, 2 float32, 3 float64, times `scale`
// (``ops.as_float``: 1 / the type's maximum for unsigned ints, 1 for floats). The result
// (float64, or float32 where out_f32) is 0 outside each extent.
//
// One block per plane; workspace for H x W planes: the plane and its Sobel map as doubles.

__device__ __forceinline__ double flt_load(const void* base, i64 idx, int dtype) {
    if (dtype == 2) return (double)reinterpret_cast<const float*>(base)[idx];
    if (dtype == 3) return reinterpret_cast<const double*>(base)[idx];
    return sg_load_px(base, idx, dtype);
}

extern "C" __global__ void
sobel_planes(const void* __restrict__ x, const int dtype, const double scale, const long long* __restrict__ extents,
             const int M, const int H, const int W, void* __restrict__ out, const int out_f32,
             unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* f = arena.take<double>(cap);
    double* s = arena.take<double>(cap);
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        const int n = h * w;
        if (n > 0) {
            const SgDivW dw(w);
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                const int i = dw.div(p), j = p - i * w;
                const double v = flt_load(x, (i64)m * cap + (i64)i * W + j, dtype);
                f[p] = dtype >= 2 ? v : v * scale;
            }
            __syncthreads();
            sg_sobel(f, s, h, w);
        }
        for (int p = threadIdx.x; p < cap; p += SG_THREADS) {
            const int i = p / W, j = p - i * W;
            const double v = (i < h && j < w) ? s[i * w + j] : 0.0;
            if (out_f32) reinterpret_cast<float*>(out)[(i64)m * cap + p] = (float)v;
            else reinterpret_cast<double*>(out)[(i64)m * cap + p] = v;
        }
        __syncthreads();
    }
}

// texture.sobel_view_statistics: (M, 4) nanmean, nanstd, nanmax, nanmin of each plane's Sobel
// map `sob` (float64, (M, H, W)) over the pixels of its extent whose eight neighbours
// (reflected at the extent's border) all lie in `view`: what the Sobel map of
// where(view, x, nan) holds. The values are gathered in raster order (a block scan of the
// threads' counts) and summed sequentially by one thread (tex_sum of texture.cu: the values,
// then the squared deviations from the mean), the order of the numba sobel_view_statistics,
// so the statistics are bit-identical to it. NaN for a plane with no such pixel.
// Workspace for H x W planes: the gathered values (H W doubles, 16-byte aligned).
extern "C" __global__ void
sobel_view_stats(const double* __restrict__ sob, const unsigned char* __restrict__ view,
                 const long long* __restrict__ extents, const int M, const int H, const int W,
                 double* __restrict__ out, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* vals = arena.take<double>(cap);
    __shared__ double res[4];
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        const int n = h * w;
        const unsigned char* vw = view + (i64)m * cap;
        const double* sm = sob + (i64)m * cap;
        const int cs = (n + SG_THREADS - 1) / SG_THREADS;  // each thread a run of raster positions
        const int a = sg_min((int)threadIdx.x * cs, n), b = sg_min(a + cs, n);
        int count = 0;
        for (int pass = 0; pass < 2; ++pass) {
            int at = 0;
            if (pass == 1) {
                int total = 0;
                at = sg_block_exclusive_sum(count, &total);
                if (threadIdx.x == 0) res[0] = (double)total;
            }
            for (int p = a; p < b; ++p) {
                const int i = p / w, j = p - i * w;
                bool ok = true;
                for (int di = -1; di <= 1 && ok; ++di) {
                    int ii = i + di;
                    ii = ii < 0 ? 0 : (ii >= h ? h - 1 : ii);
                    for (int dj = -1; dj <= 1; ++dj) {
                        if (di == 0 && dj == 0) continue;
                        int jj = j + dj;
                        jj = jj < 0 ? 0 : (jj >= w ? w - 1 : jj);
                        if (!vw[ii * W + jj]) { ok = false; break; }
                    }
                }
                if (!ok) continue;
                if (pass == 0) ++count;
                else vals[at++] = sm[i * W + j];
            }
        }
        __syncthreads();
        double* o = out + (i64)m * 4;
        if (threadIdx.x == 0) {
            const int k = (int)res[0];
            if (k == 0) {
                for (int q = 0; q < 4; ++q) o[q] = sg_nan();
            } else {
                double mx = -sg_inf(), mn = sg_inf();
                for (int q = 0; q < k; ++q) {
                    mx = vals[q] > mx ? vals[q] : mx;  // (numba's max(mx, v), min(mn, v))
                    mn = vals[q] < mn ? vals[q] : mn;
                }
                const double mean = tex_sum(vals, k, 0.0, 0) / k;
                o[0] = mean;
                o[1] = sqrt(tex_sum(vals, k, mean, 1) / k);
                o[2] = mx;
                o[3] = mn;
            }
        }
        __syncthreads();
    }
}
