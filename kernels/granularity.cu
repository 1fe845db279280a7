// CellProfiler's MeasureGranularity: the granular spectrum of every (object, channel) plane,
// one thread block per plane.
//
// Reference semantics: scip_gpu.features.cp_granularity.granularity_planes; the arithmetic is
// that of the numba kernel (scip_gpu/_numba_cp.py: cp_granularity), operation for operation, so
// the values are bit-identical:
//
// 1. the grid sizes and scales of the plane from its extent, as grid_geometry computes them;
// 2. the image resampled to nh x nw and the background grid to bh x bw (bilinear, SciPy's
//    map_coordinates(order=1, mode="constant")), one thread per sample;
// 3. the background: grey erosion then dilation with disk(element_size) (offsets dy, dx),
//    pixels beyond the grid left out, brought back to nh x nw and subtracted (clipped at 0);
// 4. the object's weight image (the bilinear weights of its pixels on the resampled grid) and
//    its raw mean, summed by thread 0 in raster order (the numba kernel's order);
// 5. `length` times: grey erosion with the 3x3 cross, reconstruction by dilation under the
//    background-subtracted image (gran_reconstruct: row and column sweeps until stable; the
//    reconstruction is the same whatever the order), the weighted mean by thread 0.
//
// Workspace (SgArena order, gpu_kernels._ws_granularity): sub, pix, ero, rec, tmp, wts
// (cap doubles each, cap = the largest resampled grid), back, back2 (bcap doubles each).
// Planes that are empty or resample to fewer than 2 rows or columns: NaN.

__device__ __forceinline__ double gran_interp(const double* img, i64 stride, i64 n0, i64 n1, double r, double c) {
    if (r < 0 || r > (double)(n0 - 1) || c < 0 || c > (double)(n1 - 1)) return 0.0;
    const double lr = floor(r), lc = floor(c);
    const double fr = r - lr, fc = c - lc;
    const i64 r0 = (i64)lr, c0 = (i64)lc;
    const i64 r1 = sg_min64(r0 + 1, n0 - 1), c1 = sg_min64(c0 + 1, n1 - 1);
    const double top = img[r0 * stride + c0] * (1.0 - fc) + img[r0 * stride + c1] * fc;
    const double bottom = img[r1 * stride + c0] * (1.0 - fc) + img[r1 * stride + c1] * fc;
    return top * (1.0 - fr) + bottom * fr;
}

// dst = grey erosion (minimum != 0) or dilation of src (n0 x n1, row stride n1) with the
// offsets (dy, dx)[0..k), pixels beyond the grid left out; ends with a barrier.
__device__ void gran_minmax(const double* src, double* dst, i64 n0, i64 n1, const int* dy, const int* dx, int k,
                            int minimum) {
    for (i64 p = threadIdx.x; p < n0 * n1; p += SG_THREADS) {
        const i64 i = p / n1, j = p % n1;
        double best = minimum ? sg_inf() : -sg_inf();
        for (int q = 0; q < k; ++q) {
            const i64 ii = i + dy[q], jj = j + dx[q];
            if (ii < 0 || ii >= n0 || jj < 0 || jj >= n1) continue;
            const double v = src[ii * n1 + jj];
            if (minimum ? v < best : v > best) best = v;
        }
        dst[p] = best;
    }
    __syncthreads();
}

// Reconstruction by dilation (4-neighbours) of seed under mask (n0 x n1) into rec: rounds of
// sweeps along every row (one thread per row, both ways; the first round copies the seed's
// row first), then along every column, until a round changes nothing (few rounds: about one
// per turn of the longest geodesic path). Each sweep touches only its own row or column, so no
// two threads write the same pixel; the fixed point is the reconstruction whatever the order.
// `flags`: two shared ints, both 0 on entry (and again on return); two barriers per round, the
// last one ends the function.
__device__ void gran_reconstruct(const double* seed, double* rec, const double* mask, i64 n0, i64 n1, int* flags) {
    for (int round = 0;; ++round) {
        int mine = 0;
        for (i64 i = threadIdx.x; i < n0; i += SG_THREADS) {
            double* row = rec + i * n1;
            const double* mrow = mask + i * n1;
            if (round == 0)
                for (i64 j = 0; j < n1; ++j) row[j] = seed[i * n1 + j];
            for (i64 j = 1; j < n1; ++j) {
                const double v = sg_fmin(sg_fmax(row[j], row[j - 1]), mrow[j]);
                if (v != row[j]) { row[j] = v; mine = 1; }
            }
            for (i64 j = n1 - 2; j >= 0; --j) {
                const double v = sg_fmin(sg_fmax(row[j], row[j + 1]), mrow[j]);
                if (v != row[j]) { row[j] = v; mine = 1; }
            }
        }
        __syncthreads();
        // every thread has read flags[(round + 1) & 1] (in the previous round) by now
        if (threadIdx.x == 0) flags[(round + 1) & 1] = 0;
        for (i64 j = threadIdx.x; j < n1; j += SG_THREADS) {
            for (i64 i = 1; i < n0; ++i) {
                const double v = sg_fmin(sg_fmax(rec[i * n1 + j], rec[(i - 1) * n1 + j]), mask[i * n1 + j]);
                if (v != rec[i * n1 + j]) { rec[i * n1 + j] = v; mine = 1; }
            }
            for (i64 i = n0 - 2; i >= 0; --i) {
                const double v = sg_fmin(sg_fmax(rec[i * n1 + j], rec[(i + 1) * n1 + j]), mask[i * n1 + j]);
                if (v != rec[i * n1 + j]) { rec[i * n1 + j] = v; mine = 1; }
            }
        }
        if (mine) atomicOr(&flags[round & 1], 1);
        __syncthreads();
        if (!flags[round & 1]) {
            // flags[round & 1] is 0 already; flags[(round + 1) & 1] was cleared this round
            return;
        }
    }
}

extern "C" __global__ void
granularity_planes(const double* __restrict__ x, const unsigned char* __restrict__ view, int h_pad, int w_pad,
                   const i64* __restrict__ extents, int n_planes, double s, double t, const int* __restrict__ dy,
                   const int* __restrict__ dx, int n_offsets, int length, i64 cap, i64 bcap, double* out,
                   unsigned char* scratch, i64 ws_bytes) {
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* sub = arena.take<double>(cap);
    double* pix = arena.take<double>(cap);
    double* ero = arena.take<double>(cap);
    double* rec = arena.take<double>(cap);
    double* tmp = arena.take<double>(cap);
    double* wts = arena.take<double>(cap);
    double* back = arena.take<double>(bcap);
    double* back2 = arena.take<double>(bcap);
    __shared__ double sh_mean[2];  // the raw mean, then the previous step's mean
    __shared__ i64 sh_cnt;
    __shared__ int flags[2];  // gran_reconstruct's
    const int cy[5] = {-1, 0, 0, 0, 1};
    const int cx[5] = {0, -1, 0, 1, 0};
    const double eps = 2.220446049250313e-16;
    for (i64 m = blockIdx.x; m < n_planes; m += gridDim.x) {
        // 1. geometry (grid_geometry)
        const i64 h = extents[2 * m], w = extents[2 * m + 1];
        const i64 nh = s < 1 ? (i64)((double)h * s) : h;
        const i64 nw = s < 1 ? (i64)((double)w * s) : w;
        const double* xm = x + m * (i64)h_pad * w_pad;
        const unsigned char* vm = view + m * (i64)h_pad * w_pad;
        double* o = out + m * (i64)length;
        if (threadIdx.x == 0) {
            i64 cnt = 0;
            double total = 0.0;
            for (i64 i = 0; i < h; ++i)
                for (i64 j = 0; j < w; ++j)
                    if (vm[i * w_pad + j]) {
                        ++cnt;
                        total += xm[i * w_pad + j];
                    }
            sh_cnt = cnt;
            sh_mean[0] = cnt ? total / (double)cnt : 0.0;
            flags[0] = flags[1] = 0;
        }
        __syncthreads();
        const i64 cnt = sh_cnt;
        if (cnt == 0 || nh < 2 || nw < 2) {
            for (int k = threadIdx.x; k < length; k += SG_THREADS) o[k] = sg_nan();
            __syncthreads();
            continue;
        }
        i64 bh = nh, bw = nw;
        double back_up_r = 1.0, back_up_c = 1.0;
        if (t < 1) {
            const double bhf = (double)nh * t, bwf = (double)nw * t;
            bh = (i64)ceil(bhf);
            bw = (i64)ceil(bwf);
            back_up_r = (bhf - 1) / (double)(nh - 1);
            back_up_c = (bwf - 1) / (double)(nw - 1);
        }
        const double up_r = (double)(nh - 1) / (double)(h - 1);
        const double up_c = (double)(nw - 1) / (double)(w - 1);
        // 2. resample
        for (i64 p = threadIdx.x; p < nh * nw; p += SG_THREADS) {
            const i64 a = p / nw, b = p % nw;
            sub[p] = s < 1 ? gran_interp(xm, w_pad, h, w, (double)a / s, (double)b / s) : xm[a * w_pad + b];
        }
        __syncthreads();
        // 3. background
        if (t < 1) {
            for (i64 p = threadIdx.x; p < bh * bw; p += SG_THREADS) {
                const i64 a = p / bw, b = p % bw;
                back[p] = gran_interp(sub, nw, nh, nw, (double)a / t, (double)b / t);
            }
            __syncthreads();
            gran_minmax(back, back2, bh, bw, dy, dx, n_offsets, 1);
            gran_minmax(back2, back, bh, bw, dy, dx, n_offsets, 0);
            for (i64 p = threadIdx.x; p < nh * nw; p += SG_THREADS) {
                const i64 a = p / nw, b = p % nw;
                const double v = sub[p] - gran_interp(back, bw, bh, bw, (double)a * back_up_r, (double)b * back_up_c);
                pix[p] = v < 0 ? 0.0 : v;
            }
        } else {
            gran_minmax(sub, tmp, nh, nw, dy, dx, n_offsets, 1);
            gran_minmax(tmp, ero, nh, nw, dy, dx, n_offsets, 0);
            for (i64 p = threadIdx.x; p < nh * nw; p += SG_THREADS) {
                const double v = sub[p] - ero[p];
                pix[p] = v < 0 ? 0.0 : v;
            }
        }
        __syncthreads();
        // 4. the object's weights (thread 0, raster order)
        if (threadIdx.x == 0) {
            for (i64 p = 0; p < nh * nw; ++p) wts[p] = 0.0;
            for (i64 i = 0; i < h; ++i) {
                const double r = (double)i * up_r;
                if (r < 0 || r > (double)(nh - 1)) continue;
                const double lr = floor(r);
                const double fr = r - lr;
                const i64 r0 = (i64)lr, r1 = sg_min64(r0 + 1, nh - 1);
                for (i64 j = 0; j < w; ++j) {
                    if (!vm[i * w_pad + j]) continue;
                    const double c = (double)j * up_c;
                    if (c < 0 || c > (double)(nw - 1)) continue;
                    const double lc = floor(c);
                    const double fc = c - lc;
                    const i64 c0 = (i64)lc, c1 = sg_min64(c0 + 1, nw - 1);
                    wts[r0 * nw + c0] += (1 - fr) * (1 - fc);
                    wts[r0 * nw + c1] += (1 - fr) * fc;
                    wts[r1 * nw + c0] += fr * (1 - fc);
                    wts[r1 * nw + c1] += fr * fc;
                }
            }
            sh_mean[1] = sh_mean[0];
        }
        for (i64 p = threadIdx.x; p < nh * nw; p += SG_THREADS) ero[p] = pix[p];
        __syncthreads();
        const double start = sg_fmax(sh_mean[0], eps);
        // 5. the spectrum
        for (int k = 0; k < length; ++k) {
            gran_minmax(ero, tmp, nh, nw, cy, cx, 5, 1);
            gran_reconstruct(tmp, rec, pix, nh, nw, flags);
            double* sw = ero;  // the eroded image is the next step's
            ero = tmp;
            tmp = sw;
            // thread 0 reads rec before the next round of gran_reconstruct writes it (after
            // its first barrier), and only thread 0 touches sh_mean[1]: no barrier here
            if (threadIdx.x == 0) {
                double acc = 0.0;
                for (i64 p = 0; p < nh * nw; ++p) acc += wts[p] * rec[p];
                const double nw_mean = acc / (double)cnt;
                o[k] = (sh_mean[1] - nw_mean) * 100.0 / start;
                sh_mean[1] = nw_mean;
            }
        }
        __syncthreads();
    }
}
