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

// Plane m of x (dtype code, times `scale`) over its h x w extent, as doubles into f.
__device__ void flt_load_plane(const void* x, int dtype, double scale, i64 base, int W, int h, int w, double* f) {
    const SgDivW dw(w);
    for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
        const int i = dw.div(p), j = p - i * w;
        f[p] = sg_load_px(x, base + (i64)i * W + j, dtype) * scale;  // (scale 1 for floats: exact)
    }
    __syncthreads();
}

// The h x w result s into plane `base` of out (H x W, float32 where out_f32, else float64),
// 0 outside the extent.
__device__ void flt_store_plane(const double* s, int h, int w, int H, int W, void* out, i64 base, int out_f32) {
    for (int p = threadIdx.x; p < H * W; p += SG_THREADS) {
        const int i = p / W, j = p - i * W;
        const double v = (i < h && j < w) ? s[i * w + j] : 0.0;
        if (out_f32) reinterpret_cast<float*>(out)[base + p] = (float)v;
        else reinterpret_cast<double*>(out)[base + p] = v;
    }
    __syncthreads();
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
        if (h * w > 0) {
            flt_load_plane(x, dtype, scale, (i64)m * cap, W, h, w, f);
            sg_sobel(f, s, h, w);
        }
        flt_store_plane(s, h, w, H, W, out, (i64)m * cap, out_f32);
    }
}

// ops.gaussian of every plane (skimage.filters.gaussian, mode 'nearest', inside each extent):
// scipy's symmetric correlation with the weights wt[0..2r], the vertical pass then the
// horizontal one, in double (the numba gaussian_planes), each pass rounded to float32 for
// float32 planes (out_f32: SciPy's float32 gaussian_filter stores every pass as float32). Pixels
// as sobel_planes. Workspace for H x W planes: the plane and the first pass as doubles.
extern "C" __global__ void
gaussian_planes(const void* __restrict__ x, const int dtype, const double scale, const long long* __restrict__ extents,
                const int M, const int H, const int W, const double* __restrict__ wt, const int r,
                void* __restrict__ out, const int out_f32, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* f = arena.take<double>(cap);
    double* t = arena.take<double>(cap);
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        if (h * w > 0) {
            flt_load_plane(x, dtype, scale, (i64)m * cap, W, h, w, f);
            if (out_f32) sg_gaussian<true>(f, t, f, h, w, wt, r);
            else sg_gaussian<false>(f, t, f, h, w, wt, r);
        }
        flt_store_plane(f, h, w, H, W, out, (i64)m * cap, out_f32);
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
