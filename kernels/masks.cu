// Mask methods, one thread block per (object, channel) plane, each method's whole chain fused:
//
//   mask_li:   gaussian(sigma) -> sobel -> gaussian(2 sigma) -> Li threshold -> fill/clean
//   mask_otsu: digitise (512 bins) -> x - median(disk 5) -> gaussian(0.5) -> sobel ->
//              min-max scaling -> median(disk 5) -> Otsu threshold -> fill/clean
//   mask_spot: white top-hat (disk) -> above the 0.99 quantile
//
// followed in the same kernel by the pre-mask filter verdict (`passed`) and SCIP's border rule
// (or the plain component count), and by the per-object `mask_combine` (main-channel rule,
// combined mask, bounding box, background levels).
//
// Reference semantics: scip_gpu.masks.methods.li / .otsu / .spot, scip_gpu.masks.compute_masks; the
// arithmetic is that of the numba kernels (scip_gpu/_numba_kernels.py: gaussian_planes,
// sobel_planes, li_rows, otsu_digitize_u16, median_disk_planes, scale_to_u16, otsu_int_rows,
// fill_and_clean, border_regions, outside_sums), so the masks are identical.
//
// Inputs: pixels (N, C, H, W) uint8 (dtype 0) or uint16 (dtype 1); li, otsu and combine also
// float32 (2) and float64 (3), with the CPU path's float arithmetic (float32 filter passes
// rounded to float32, as SciPy's gaussian_filter and the numba sobel store them; otsu always
// digitises floats); objects anchored top-left with their real (h, w) in extents (N, 2). Outputs: mask (N, C, H, W) uint8 (0 outside each
// extent), regions (N, C) int64.

// Write a plane's mask (0 outside the extent) and its region count; shared tail of the methods.
__device__ void sg_mask_tail(unsigned char* m8, int h, int w, bool passed, int remove_border, int* parent,
                             int* scratch_int, unsigned char* out, int H, int W, long long* regions) {
    int kept;
    if (!passed) {
        for (int i = threadIdx.x; i < h * w; i += SG_THREADS) m8[i] = 0;
        __syncthreads();
    }
    if (remove_border) {
        kept = sg_border_rule(m8, h, w, parent, scratch_int);
    } else {
        sg_label(m8, 1, h, w, true, parent);
        int roots = 0;
        for (int i = threadIdx.x; i < h * w; i += SG_THREADS) roots += parent[i] == i;
        kept = (int)sg_block_sum_i64(roots);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < H * W; p += SG_THREADS) {
        const int i = p / W, j = p - i * W;
        out[p] = (i < h && j < w) ? m8[i * w + j] : 0;
    }
    if (threadIdx.x == 0) *regions = kept;
    __syncthreads();
}

// The common end of the li and otsu methods: foreground = values above t, then
// remove_small_holes(h w / 4) and remove_small_objects(20) (4-connected).
template <class V>
__device__ void sg_foreground(const V* values, double t, unsigned char* m8, int h, int w, int* parent,
                              int* count) {
    for (int p = threadIdx.x; p < h * w; p += SG_THREADS) m8[p] = (double)values[p] > t;
    __syncthreads();
    sg_fill_and_clean(m8, h, w, (double)h * (double)w / 4.0, 20.0, parent, count);
}

// ---------------------------------------------------------------------------------------------
// Li

// Load the plane as doubles (x * scale) and run gaussian -> sobel -> gaussian; result in X.
// F32 (float32 pixels): every filter pass rounded to float32, as the CPU path stores it.
template <bool F32>
__device__ void sg_li_filters(const void* px, int dtype, int W, int h, int w, double scale,
                              const double* w1, int r1, const double* w2, int r2, double* X, double* Y) {
    const SgDivW dwp(w);  // (p / w without a division per pixel)
    for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
        const int i = dwp.div(p), j = p - i * w;
        Y[p] = sg_load_px(px, (i64)i * W + j, dtype) * scale;
    }
    __syncthreads();
    sg_gaussian<F32>(Y, X, Y, h, w, w1, r1);
    sg_sobel<F32>(Y, X, h, w);
    sg_gaussian<F32>(X, Y, X, h, w, w2, r2);
}

// skimage.filters.threshold_li of the n ascending values s[0..n), with the arithmetic of the
// numba li_rows (every thread calls it; the same value is returned to all). The shifted values
// v[k] = s[k] - s[0] and the smallest gap between them are computed in parallel (each the same
// doubles). The background sums are prefix sums of v in a blocked order (SG_THREADS chunks of
// ceil(n / SG_THREADS) values, chunk c summed in order by thread c; the chunk sums added in
// order by one thread; the background of k values is the sum of the chunks before k's chunk
// plus the values of k's chunk before k, summed in order): the order of the numba li_rows.
// The iteration is sequential (one thread; each step a binary search and at most one chunk's
// values). Needs no scratch beyond SG_THREADS + 1 static doubles.
__device__ double sg_threshold_li(const double* s, int n, int max_iter) {
    __shared__ double s_thr;
    __shared__ double chunk[SG_THREADS + 1];  // chunk sums, then the sums of the chunks before
    if (n == 0) return sg_nan();
    const double lo = s[0], top = s[n - 1];
    __syncthreads();  // every thread has read them before any returns (the caller reuses s)
    if (lo == top) return lo;
    const int cs = (n + SG_THREADS - 1) / SG_THREADS;
    double tol = sg_inf();
    {
        const int a = sg_min((int)threadIdx.x * cs, n), b = sg_min(a + cs, n);
        double acc = 0.0;
        for (int k = a; k < b; ++k) {
            const double v = s[k] - lo;
            acc = acc + v;
            if (k > 0) {
                const double g = v - (s[k - 1] - lo);
                if (g > 0 && g < tol) tol = g;
            }
        }
        chunk[threadIdx.x] = acc;
    }
    tol = sg_block_min(tol);  // (ends with a barrier: every chunk sum is written)
    if (threadIdx.x == 0) {
        double acc = 0.0;
        for (int c = 0; c < SG_THREADS; ++c) {
            const double t = chunk[c];
            chunk[c] = acc;
            acc = acc + t;
        }
        chunk[SG_THREADS] = acc;
        tol = tol / 2;
        const double total = acc;
        const double cntf = (double)n;
        double t_next = total / cntf;
        double t_curr = -2 * tol;
        for (int it = 0; it < max_iter; ++it) {
            if (!(fabs(t_next - t_curr) > tol)) break;
            t_curr = t_next;
            int a = 0, b = n;
            while (a < b) {
                const int mid = (a + b) / 2;
                if (s[mid] - lo <= t_curr) a = mid + 1; else b = mid;
            }
            const int k = a, c = k / cs;
            double part = 0.0;
            for (int j = c * cs; j < k; ++j) part = part + (s[j] - lo);
            const double sum_back = chunk[c] + part;
            const double mean_back = sum_back / (double)k;
            const double mean_fore = (total - sum_back) / (cntf - (double)k);
            if (mean_back == 0) break;
            t_next = (mean_back - mean_fore) / (log(mean_back) - log(mean_fore));
        }
        s_thr = t_next + lo;
    }
    __syncthreads();
    const double t = s_thr;
    __syncthreads();
    return t;
}

// Workspace of mask_li for H x W planes: X, Y (next_pow2(H W) + 1 doubles each), m8; the
// labelling's parent and count arrays live in Y once the threshold is known.
extern "C" __global__ void
mask_li(const void* pixels, const int dtype, const int C, const int H, const int W,
        const long long* __restrict__ extents, const int M,
        const double* __restrict__ weights, const int* __restrict__ radii, const int LW,
        const unsigned char* __restrict__ passed, const int remove_border, const int max_iter,
        unsigned char* __restrict__ mask, long long* __restrict__ regions,
        unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W, np2 = sg_next_pow2(cap);
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* X = arena.take<double>(np2 + 1);
    double* Y = arena.take<double>(np2 + 1);
    unsigned char* m8 = arena.take<unsigned char>(cap);
    int* parent = reinterpret_cast<int*>(Y);  // (2 cap ints fit in Y)
    int* count = parent + cap;
    // skimage's img_as_float of integer pixels; float pixels as they are
    const double scale = dtype == 0 ? 1.0 / 255.0 : (dtype == 1 ? 1.0 / 65535.0 : 1.0);
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / C, c = m - obj * C;
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        const int n = h * w;
        const void* px = sg_px_at(pixels, (i64)m * cap, dtype);
        const double* w1 = weights + (i64)c * 2 * LW;
        const double* w2 = w1 + LW;
        const int r1 = radii[2 * c], r2 = radii[2 * c + 1];
        const bool ok = passed[m] != 0;
        SG_PROF_START();
        if (ok) {
            if (dtype == 2) sg_li_filters<true>(px, dtype, W, h, w, scale, w1, r1, w2, r2, X, Y);
            else sg_li_filters<false>(px, dtype, W, h, w, scale, w1, r1, w2, r2, X, Y);
            SG_PROF_MARK(0, 0);
            // sort the values (Y), padded with +inf to a power of two
            const int n2 = sg_next_pow2(n);
            for (int p = threadIdx.x; p < n2; p += SG_THREADS) Y[p] = p < n ? X[p] : sg_inf();
            __syncthreads();
            sg_bitonic_sort(Y, n2);
            SG_PROF_MARK(0, 1);
            double t = sg_threshold_li(Y, n, max_iter);  // (X, the filtered plane, kept)
            if (dtype == 2) t = (double)(float)t;  // float32 planes: compared with the float32 threshold
            SG_PROF_MARK(0, 2);
            SG_PROF_MARK(0, 3);
            sg_foreground(X, t, m8, h, w, parent, count);
            SG_PROF_MARK(0, 4);
        }
        sg_mask_tail(m8, h, w, ok, remove_border, parent, count, mask + (i64)m * cap, H, W, regions + m);
        SG_PROF_MARK(0, 5);
        SG_PROF_COUNT(0);
    }
}

// ---------------------------------------------------------------------------------------------
// Otsu

#define SG_OTSU_BINS 514  // values of the Otsu chain stay in 0..513
#define SG_OTSU_SCAN (2 * SG_OTSU_BINS + 3 * SG_THREADS + 2)  // int64 scratch of sg_otsu_threshold

// skimage.filters.rank.median(x, disk(r)) of an h x w uint16 plane whose values are below
// SG_OTSU_BINS (the median is the element of rank pop // 2 of the in-plane neighbourhood, as
// the numba median_disk_planes; any algorithm finding that element gives the same plane).
//
// Two implementations, chosen at compile time (-DSG_LEGACY_MEDIAN selects the first, so that
// one GPU session can time both; SCIP_GPU_DEFINES, scip_gpu.gpu_kernels):
//
// - legacy: Huang's sliding 514-bin histogram, one thread per row (as the numba kernel). A
//   64x64 plane keeps 64 of the 256 threads busy (64 x 514 B of histograms), each walking a
//   dependent chain of ~5,700 shared-memory accesses per row: clearing 514 bytes, 46 window
//   increments (3 accesses each), the first median's walk up from bin 0 (~250 steps), then per
//   pixel 22 histogram updates (pixel load + read-modify-write) and the median's walk (~10).
// - default: a two-level search with every thread of the block. Work items are column strips
//   (column j, a run of consecutive rows; 64x64: 64 columns x 4 strips of 16 rows = 256 items,
//   one per thread); each slides a COARSE histogram down its strip (33 bins of 16 values,
//   8-bit counters, four per 32-bit word: 9 words = 36 B per thread, 9 KiB per block, laid out
//   word-major / thread-minor so that every access of a warp hits 32 different banks), walks
//   the coarse median (the bin holding rank pop // 2, usually 0-2 steps), then re-reads the
//   81-pixel window once and counts the values inside that bin in 16 8-bit counters held in
//   two registers, which give the exact median. Per output pixel (interior, r = 5): 22 pixel
//   loads + 22 word read-modify-writes for the slide, ~2 word loads for the walk, 81
//   independent pixel loads for the fine count, <= 16 register steps; per strip 9 stores +
//   81 x 3 accesses to start. Warps read consecutive columns of the plane, so the pixel loads
//   are conflict-free. Measured on an H100: 433 k and 383 k cycles per 64x64 plane for the two
//   medians (run 7) against 488 k and 506 k for the legacy form. Keeping the fine counts up to
//   date through the slide instead (recounting only when the median changes coarse bin, ~60 of
//   the ~130 loads per pixel gone) was timed in run 8 and gave nothing (22,954 against 23,124
//   objects/s for the recount, same machine): it was dropped.
//   Counter widths: a window holds at most (2r + 1)^2 pixels, 121 for r <= 5 and < 256 for
//   r <= 7, so 8-bit counters cannot overflow (the kernel calls r = 5).
//
// hist: `hist_bytes` bytes of scratch (SG_MEDIAN_HIST_BYTES(h) suffices for all threads).
#ifdef SG_LEGACY_MEDIAN
#define SG_MEDIAN_HIST_BYTES(h) ((i64)SG_OTSU_BINS * ((h) < SG_THREADS ? (h) : SG_THREADS))
__device__ void sg_median_disk(const unsigned short* x, unsigned short* out, int h, int w, int r,
                               unsigned char* hist, i64 hist_bytes) {
    __shared__ int half[32];
    if (threadIdx.x < 2 * r + 1) {
        const int dy = (int)threadIdx.x - r;
        int a = 0;
        while ((a + 1) * (a + 1) + dy * dy <= r * r) ++a;
        half[threadIdx.x] = a;
    }
    __syncthreads();
    const int lanes = (int)sg_min64((i64)SG_THREADS, hist_bytes / SG_OTSU_BINS);
    if ((int)threadIdx.x < lanes) {
        unsigned char* hs = hist + (i64)threadIdx.x * SG_OTSU_BINS;
        for (int i = threadIdx.x; i < h; i += lanes) {
            for (int v = 0; v < SG_OTSU_BINS; ++v) hs[v] = 0;
            int pop = 0;
            for (int dy = -r; dy <= r; ++dy) {
                const int rr = i + dy;
                if (rr < 0 || rr >= h) continue;
                const int a = half[dy + r];
                for (int dx = -a; dx <= a; ++dx)
                    if (dx >= 0 && dx < w) {
                        hs[x[rr * w + dx]] += 1;
                        ++pop;
                    }
            }
            int med = 0, below = 0;
            while (below + hs[med] <= pop / 2) {
                below += hs[med];
                ++med;
            }
            out[i * w] = (unsigned short)med;
            for (int j = 1; j < w; ++j) {
                for (int dy = -r; dy <= r; ++dy) {
                    const int rr = i + dy;
                    if (rr < 0 || rr >= h) continue;
                    const int a = half[dy + r];
                    const int c_out = j - 1 - a;
                    if (c_out >= 0) {
                        const int v = x[rr * w + c_out];
                        hs[v] -= 1;
                        --pop;
                        if (v < med) --below;
                    }
                    const int c_in = j + a;
                    if (c_in < w) {
                        const int v = x[rr * w + c_in];
                        hs[v] += 1;
                        ++pop;
                        if (v < med) ++below;
                    }
                }
                const int k = pop / 2;
                while (below > k) {
                    --med;
                    below -= hs[med];
                }
                while (below + hs[med] <= k) {
                    below += hs[med];
                    ++med;
                }
                out[i * w + j] = (unsigned short)med;
            }
        }
    }
    __syncthreads();
}
#else
#define SG_MED_NCB ((SG_OTSU_BINS + 15) / 16)  // coarse bins of 16 values: 33
#define SG_MED_WORDS ((SG_MED_NCB + 3) / 4)     // 8-bit counters, four per word: 9 words
#define SG_MEDIAN_HIST_BYTES(h) ((i64)SG_MED_WORDS * 4 * SG_THREADS)

// count of coarse bin b of the lane whose first word is hw (words SG_THREADS apart)
__device__ __forceinline__ int sg_med_count(const unsigned int* hw, int lanes, int b) {
    return (int)((hw[(b >> 2) * lanes] >> (8 * (b & 3))) & 0xFFu);
}

__device__ __forceinline__ void sg_med_add(unsigned int* hw, int lanes, int b, int d) {
    // d = +1 or -1; a counter never leaves 0..255, so no borrow or carry reaches its neighbour
    const unsigned int one = 1u << (8 * (b & 3));
    hw[(b >> 2) * lanes] += d > 0 ? one : 0u - one;
}

__device__ void sg_median_disk(const unsigned short* x, unsigned short* out, int h, int w, int r,
                               unsigned char* hist, i64 hist_bytes) {
    __shared__ int half[32];
    if (threadIdx.x < 2 * r + 1) {
        const int dy = (int)threadIdx.x - r;
        int a = 0;
        while ((a + 1) * (a + 1) + dy * dy <= r * r) ++a;
        half[threadIdx.x] = a;  // (the disk is symmetric: also the half-height of column dy)
    }
    __syncthreads();
    const int lanes = (int)sg_min64((i64)SG_THREADS, hist_bytes / (4 * SG_MED_WORDS));
    // items: (strip s, column j), item s * w + j; strips of `sh` rows, as many as fill the lanes
    const int strips = sg_max(1, sg_min(h, lanes / sg_max(w, 1)));
    const int sh = (h + strips - 1) / strips;
    const int items = ((h + sh - 1) / sh) * w;
    const int t = threadIdx.x;
    if (t < lanes) {
        unsigned int* hw = reinterpret_cast<unsigned int*>(hist) + t;
        for (int q = t; q < items; q += lanes) {
            const int s = q / w, j = q - s * w;
            const int i0 = s * sh, i1 = sg_min(h, i0 + sh);
            for (int b = 0; b < SG_MED_WORDS; ++b) hw[b * lanes] = 0;
            // window at (i0, j); `below`: its pixels in coarse bins below cmed
            const int cstart = x[i0 * w + j] >> 4;
            int pop = 0, below = 0;
            for (int dx = -r; dx <= r; ++dx) {
                const int jj = j + dx;
                if (jj < 0 || jj >= w) continue;
                const int a = half[dx + r];
                const int ra = sg_max(0, i0 - a), rb = sg_min(h - 1, i0 + a);
                for (int rr = ra; rr <= rb; ++rr) {
                    const int cb = x[rr * w + jj] >> 4;
                    sg_med_add(hw, lanes, cb, 1);
                    below += cb < cstart;
                }
                pop += rb - ra + 1;
            }
            int cmed = cstart;
            for (int i = i0; i < i1; ++i) {
                if (i > i0) {  // slide down one row: each column's top pixel leaves, a new bottom one enters
                    for (int dx = -r; dx <= r; ++dx) {
                        const int jj = j + dx;
                        if (jj < 0 || jj >= w) continue;
                        const int a = half[dx + r];
                        const int ro = i - 1 - a, ri = i + a;
                        if (ro >= 0) {
                            const int cb = x[ro * w + jj] >> 4;
                            sg_med_add(hw, lanes, cb, -1);
                            below -= cb < cmed;
                            --pop;
                        }
                        if (ri < h) {
                            const int cb = x[ri * w + jj] >> 4;
                            sg_med_add(hw, lanes, cb, 1);
                            below += cb < cmed;
                            ++pop;
                        }
                    }
                }
                // the coarse bin of rank k: below <= k < below + count(cmed)
                const int k = pop / 2;
                while (below > k) {
                    --cmed;
                    below -= sg_med_count(hw, lanes, cmed);
                }
                for (int c = sg_med_count(hw, lanes, cmed); below + c <= k; c = sg_med_count(hw, lanes, cmed)) {
                    below += c;
                    ++cmed;
                }
                // the exact value: count the window's values inside bin cmed (16 8-bit counters)
                u64 lo8 = 0, hi8 = 0;
                for (int dx = -r; dx <= r; ++dx) {
                    const int jj = j + dx;
                    if (jj < 0 || jj >= w) continue;
                    const int a = half[dx + r];
                    const int ra = sg_max(0, i - a), rb = sg_min(h - 1, i + a);
                    for (int rr = ra; rr <= rb; ++rr) {
                        const int v = x[rr * w + jj];
                        if ((v >> 4) == cmed) {
                            const int f = v & 15;
                            if (f < 8) lo8 += 1ull << (8 * f); else hi8 += 1ull << (8 * (f - 8));
                        }
                    }
                }
                int rem = k - below, f = 0;
                for (;; ++f) {
                    const int c = (int)(((f < 8 ? lo8 >> (8 * f) : hi8 >> (8 * (f - 8)))) & 0xFFu);
                    if (rem < c) break;
                    rem -= c;
                }
                out[i * w + j] = (unsigned short)(cmed * 16 + f);
            }
        }
    }
    __syncthreads();
}
#endif

// skimage.filters.threshold_otsu from the histogram of a plane's integer values (one bin per
// value, SG_OTSU_BINS bins), with the arithmetic of the numba otsu_int_rows: the weights and
// sums below each bin by an exact integer scan, the between-class variance of every bin in
// parallel, the first bin of the largest variance. Writes the threshold to *thr (all threads
// call it). scan: SG_OTSU_SCAN int64 of scratch.
__device__ void sg_otsu_threshold(const int* hist, i64* scan, double* thr) {
    const int t = threadIdx.x;
    const int per = (SG_OTSU_BINS + SG_THREADS - 1) / SG_THREADS;
    const int a = sg_min(t * per, SG_OTSU_BINS), b = sg_min(a + per, SG_OTSU_BINS);
    i64* W1 = scan;
    i64* S1 = scan + SG_OTSU_BINS;
    i64* part_w = S1 + SG_OTSU_BINS;  // SG_THREADS + 1 each
    i64* part_s = part_w + SG_THREADS + 1;
    i64* bi = part_s + SG_THREADS + 1;  // SG_THREADS
    i64 lo_bin = SG_OTSU_BINS, hi_bin = -1, w = 0, sw = 0;
    for (int i = a; i < b; ++i) {
        if (hist[i]) {
            lo_bin = sg_min64(lo_bin, i);
            hi_bin = i;
        }
        w += hist[i];
        sw += (i64)hist[i] * i;
        W1[i] = w;
        S1[i] = sw;
    }
    const i64 bmin = sg_block_min_i64(lo_bin), bmax = sg_block_max_i64(hi_bin);
    {  // inclusive scan: add the totals of the chunks before this thread's
        part_w[t + 1] = w;
        part_s[t + 1] = sw;
        if (t == 0) part_w[0] = part_s[0] = 0;
        __syncthreads();
        if (t == 0)
            for (int k = 1; k <= SG_THREADS; ++k) {
                part_w[k] += part_w[k - 1];
                part_s[k] += part_s[k - 1];
            }
        __syncthreads();
        for (int i = a; i < b; ++i) {
            W1[i] += part_w[t];
            S1[i] += part_s[t];
        }
        __syncthreads();
    }
    if (bmax < 0 || bmin == bmax) {  // no value, or one value only
        if (t == 0) *thr = bmax < 0 ? sg_nan() : (double)bmin;
        __syncthreads();
        return;
    }
    const i64 total_w = W1[bmax], total_s = S1[bmax];
    double best = -sg_inf();
    int arg = SG_OTSU_BINS;
    for (int i = sg_max(a, (int)bmin); i < b && i < bmax; ++i) {
        const i64 w1 = W1[i], s1 = S1[i];
        const i64 w2 = total_w - w1, s2 = total_s - s1;
        const double mean1 = (double)s1 / (double)w1;
        const double mean2 = (double)s2 / (double)w2;
        const double d = mean1 - mean2;
        const double var = (double)(w1 * w2) * (d * d);
        if (var > best) {  // ascending bins: the first of equal variances stays
            best = var;
            arg = i;
        }
    }
    // block arg-max: the largest variance, the smallest bin among equal ones
    double* bv = reinterpret_cast<double*>(sg_reduce_buffer());
    bv[t] = best;
    bi[t] = arg;
    __syncthreads();
    for (int step = SG_THREADS / 2; step > 0; step >>= 1) {
        if (t < step) {
            const double v2 = bv[t + step];
            const i64 i2 = bi[t + step];
            if (v2 > bv[t] || (v2 == bv[t] && i2 < bi[t])) {
                bv[t] = v2;
                bi[t] = i2;
            }
        }
        __syncthreads();
    }
    if (t == 0) *thr = (double)bi[0];
    __syncthreads();
}

// ops.median_disk of (M, H, W) uint8 (dtype 0) or uint16 (dtype 1) planes whose values are below
// SG_OTSU_BINS and radius r <= 7, each over its extent (the otsu kernel's median, as a stage of
// its own: the tests run it on edge-case extents in both variants). out: (M, H, W) uint16, 0
// outside the extents. Workspace: the plane and its median (H W u16 each), the histograms.
extern "C" __global__ void
median_disk_planes(const void* pixels, const int dtype, const int H, const int W,
                   const long long* __restrict__ extents, const int M, const int r,
                   unsigned short* __restrict__ out, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned short* A = arena.take<unsigned short>(cap);
    unsigned short* B = arena.take<unsigned short>(cap);
    unsigned char* hist = arena.take<unsigned char>(SG_MEDIAN_HIST_BYTES(H));
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        const void* px = dtype == 0 ? (const void*)((const unsigned char*)pixels + (i64)m * cap)
                                    : (const void*)((const unsigned short*)pixels + (i64)m * cap);
        const SgDivW dwp(w);  // (p / w without a division per pixel)
        for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
            const int i = dwp.div(p), j = p - i * w;
            A[p] = (unsigned short)sg_load_int(px, (i64)i * W + j, dtype);
        }
        __syncthreads();
        sg_median_disk(A, B, h, w, r, hist, SG_MEDIAN_HIST_BYTES(H));
        for (int p = threadIdx.x; p < cap; p += SG_THREADS) {
            const int i = p / W, j = p - i * W;
            out[(i64)m * cap + p] = (i < h && j < w) ? B[i * w + j] : (unsigned short)0;
        }
        __syncthreads();
    }
}

// The block labelling (sg_label) of (M, H, W) uint8 planes over their extents: out[m, i, j] =
// raster index (i * w + j, w the extent's width) of the root of the pixel's component (its
// first pixel), -1 for background and outside the extent; 8-connected when eight != 0, else
// 4-connected (what the masks' fill/clean, border rule and the shape kernel label with; the
// tests compare it with scipy.ndimage.label). Workspace: the plane and its parents.
extern "C" __global__ void
label_planes(const unsigned char* __restrict__ planes, const int H, const int W,
             const long long* __restrict__ extents, const int M, const int eight,
             int* __restrict__ out, unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned char* fg = arena.take<unsigned char>(cap);
    int* parent = arena.take<int>(cap);
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        const SgDivW dwp(w);  // (p / w without a division per pixel)
        for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
            const int i = dwp.div(p), j = p - i * w;
            fg[p] = planes[(i64)m * cap + (i64)i * W + j] != 0;
        }
        __syncthreads();
        sg_label(fg, 1, h, w, eight != 0, parent);
        for (int p = threadIdx.x; p < cap; p += SG_THREADS) {
            const int i = p / W, j = p - i * W;
            out[(i64)m * cap + p] = (i < h && j < w) ? parent[i * w + j] : -1;
        }
        __syncthreads();
    }
}

// Workspace of mask_otsu: R1, R2 (max(H W, 1798, SG_MEDIAN_HIST_BYTES(H) / 8) doubles each: 514
// min(H, 256) bytes for the legacy median, 9216 for the default one), m8 (H W); the labelling's
// parent and count arrays live in R1 at the end.
extern "C" __global__ void
mask_otsu(const void* pixels, const int dtype, const int C, const int H, const int W,
          const long long* __restrict__ extents, const int M,
          const double* __restrict__ g05, const unsigned char* __restrict__ passed,
          const int remove_border, unsigned char* __restrict__ mask, long long* __restrict__ regions,
          unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    // room for the median's histograms (every lane in one round) and Otsu's scan
    const int rcap = sg_max(sg_max(cap, SG_OTSU_SCAN), (int)((SG_MEDIAN_HIST_BYTES(H) + 7) / 8));
    SgArena arena(sg_workspace(scratch, ws_bytes));
    double* R1 = arena.take<double>(rcap);
    double* R2 = arena.take<double>(rcap);
    unsigned char* m8 = arena.take<unsigned char>(cap);
    int* parent = reinterpret_cast<int*>(R1);  // (2 cap ints fit in R1)
    int* count = parent + cap;
    __shared__ int ohist[SG_OTSU_BINS];
    __shared__ double s_xmax, s_thr;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / C;
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        const int n = h * w;
        const void* px = sg_px_at(pixels, (i64)m * cap, dtype);
        const bool ok = passed[m] != 0;
        SG_PROF_START();
        if (ok) {
            unsigned short* A = reinterpret_cast<unsigned short*>(R1);
            unsigned short* B = A + cap;
            // 1. digitise into 512 bins when the maximum exceeds 512 (numba otsu_digitize_u16);
            // float pixels always (methods.otsu_digitize: the rank filters need integers)
            const bool is_float = dtype >= 2;
            double dmin = sg_inf(), dmax = -sg_inf();
            const SgDivW dwp(w);  // (p / w without a division per pixel)
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                const int i = dwp.div(p), j = p - i * w;
                const double v = sg_load_px(px, (i64)i * W + j, dtype);
                dmin = sg_fmin(dmin, v);
                dmax = sg_fmax(dmax, v);
            }
            dmin = sg_block_min(dmin);
            dmax = sg_block_max(dmax);
            i64 top = 0;
            if (!is_float && dmax <= 512) {
                const i64 vmax = (i64)dmax;
                const SgDivW dwp(w);  // (p / w without a division per pixel)
                for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                    const int i = dwp.div(p), j = p - i * w;
                    A[p] = (unsigned short)sg_load_int(px, (i64)i * W + j, dtype);
                }
                top = sg_max64(vmax, 0);
            } else {
                double lo = dmin, hi = dmax;
                if (lo == hi) {
                    lo -= 0.5;
                    hi += 0.5;
                }
                const double step = (hi - lo) / 512;
                const double sc = 512 / (hi - lo);
                const SgDivW dwp(w);  // (p / w without a division per pixel)
                for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                    const int i = dwp.div(p), j = p - i * w;
                    const double v = sg_load_px(px, (i64)i * W + j, dtype);
                    int g = (int)floor((v - lo) * sc) + 1;
                    g = g < 0 ? 0 : (g > 513 ? 513 : g);
                    while (g > 0 && v < (g - 1 < 512 ? (double)(g - 1) * step + lo : hi)) --g;
                    while (g <= 512 && v >= (g < 512 ? (double)g * step + lo : hi)) ++g;
                    A[p] = (unsigned short)g;
                    top = sg_max64(top, g);
                }
                top = sg_block_max_i64(top);
            }
            if (threadIdx.x == 0) s_xmax = (double)top;
            __syncthreads();
            SG_PROF_MARK(1, 0);
            // 2. p = x - median(x, disk 5)
            sg_median_disk(A, B, h, w, 5, reinterpret_cast<unsigned char*>(R2), (i64)rcap * 8);
            SG_PROF_MARK(1, 1);
            for (int p = threadIdx.x; p < n; p += SG_THREADS) R2[p] = (double)A[p] - (double)B[p];
            __syncthreads();
            // 3. gaussian(0.5) -> sobel
            sg_gaussian(R2, R1, R2, h, w, g05, 2);  // g05: scipy's weights for sigma 0.5
            sg_sobel(R2, R1, h, w);
            SG_PROF_MARK(1, 2);
            // 4. min-max scaling to 0..xmax as uint16 (numba scale_to_u16)
            double lo = sg_inf(), hi = -sg_inf();
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                lo = sg_fmin(lo, R1[p]);
                hi = sg_fmax(hi, R1[p]);
            }
            lo = sg_block_min(lo);
            hi = sg_block_max(hi);
            const double span = hi - lo, xmax = s_xmax;
            unsigned short* A2 = reinterpret_cast<unsigned short*>(R2);
            unsigned short* B2 = A2 + cap;
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                double v = (R1[p] - lo) / span;
                v = v * xmax;
                A2[p] = isfinite(v) ? (unsigned short)v : (unsigned short)0;
            }
            __syncthreads();
            // 5. median(disk 5), Otsu threshold (numba otsu_int_rows), foreground
            SG_PROF_MARK(1, 3);
            sg_median_disk(A2, B2, h, w, 5, reinterpret_cast<unsigned char*>(R1), (i64)rcap * 8);
            SG_PROF_MARK(1, 4);
            for (int b = threadIdx.x; b < SG_OTSU_BINS; b += SG_THREADS) ohist[b] = 0;
            __syncthreads();
            for (int p = threadIdx.x; p < n; p += SG_THREADS) atomicAdd(&ohist[B2[p]], 1);
            __syncthreads();
            sg_otsu_threshold(ohist, reinterpret_cast<i64*>(R1), &s_thr);
            SG_PROF_MARK(1, 5);
            sg_foreground(B2, s_thr, m8, h, w, parent, count);
            SG_PROF_MARK(1, 6);
        }
        sg_mask_tail(m8, h, w, ok, remove_border, parent, count, mask + (i64)m * cap, H, W, regions + m);
        SG_PROF_MARK(1, 7);
        SG_PROF_COUNT(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Spot: white top-hat by disk(r) (grey erosion then dilation, mode 'reflect'), foreground above
// the 0.99 quantile of the top-hat (scip_gpu.masks.methods.spot, scipy.ndimage's arithmetic:
// integers, so exact)

__device__ __forceinline__ int sg_reflect(int i, int n) {  // d c b a | a b c d | d c b a, |offset| < n
    return i < 0 ? -i - 1 : (i >= n ? 2 * n - i - 1 : i);
}

// out = grey erosion (is_max 0) or dilation (1) of the h x w plane x by the disk with half-widths
// half[0..2r] (flat footprint, mode 'reflect')
__device__ void sg_grey_disk(const unsigned short* x, unsigned short* out, int h, int w, const int* half, int r,
                             bool is_max) {
    const SgDivW dwp(w);  // (p / w without a division per pixel)
    for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
        const int i = dwp.div(p), j = p - i * w;
        int best = is_max ? 0 : 65535;
        for (int k = 0; k <= 2 * r; ++k) {
            const int ii = sg_reflect(i + k - r, h);
            for (int dx = -half[k]; dx <= half[k]; ++dx) {
                const int v = x[ii * w + sg_reflect(j + dx, w)];
                best = is_max ? (v > best ? v : best) : (v < best ? v : best);
            }
        }
        out[p] = (unsigned short)best;
    }
    __syncthreads();
}

// Workspace of mask_spot: X, E, T (H W u16 each), keys (next_pow2(H W) u32), m8, parent.
extern "C" __global__ void
mask_spot(const void* pixels, const int dtype, const int C, const int H, const int W,
          const long long* __restrict__ extents, const int M, const int radius,
          const unsigned char* __restrict__ passed, const int remove_border,
          unsigned char* __restrict__ mask, long long* __restrict__ regions,
          unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W, np2 = sg_next_pow2(cap);
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned short* X = arena.take<unsigned short>(cap);
    unsigned short* E = arena.take<unsigned short>(cap);
    unsigned short* T = arena.take<unsigned short>(cap);
    unsigned int* keys = arena.take<unsigned int>(np2);
    unsigned char* m8 = arena.take<unsigned char>(cap);
    int* parent = arena.take<int>(cap);
    __shared__ int half[64];
    __shared__ double s_q;
    sg_disk_half_widths(half, radius);
    __syncthreads();
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / C;
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        const int n = h * w;
        const void* px = dtype == 0 ? (const void*)((const unsigned char*)pixels + (i64)m * cap)
                                    : (const void*)((const unsigned short*)pixels + (i64)m * cap);
        const bool ok = passed[m] != 0;
        if (ok) {
            const SgDivW dwp(w);  // (p / w without a division per pixel)
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                const int i = dwp.div(p), j = p - i * w;
                X[p] = (unsigned short)sg_load_int(px, (i64)i * W + j, dtype);
            }
            __syncthreads();
            sg_grey_disk(X, E, h, w, half, radius, false);
            sg_grey_disk(E, T, h, w, half, radius, true);
            const int n2 = sg_next_pow2(n);
            for (int p = threadIdx.x; p < n2; p += SG_THREADS) {
                unsigned int key = 0xFFFFFFFFu;
                if (p < n) {
                    T[p] = (unsigned short)(X[p] - T[p]);  // the top-hat (opening <= image: no wrap)
                    key = T[p];
                }
                keys[p] = key;
            }
            __syncthreads();
            sg_bitonic_sort(keys, n2);
            if (threadIdx.x == 0) {  // numpy.quantile(t, 0.99), linear
                const double virt = (double)(n - 1) * 0.99;
                const int lo = (int)floor(virt);
                const int hi = lo + 1 < n - 1 ? lo + 1 : n - 1;
                const double a = (double)keys[lo], b = (double)keys[hi], g = virt - (double)lo;
                const double d = b - a;
                s_q = g >= 0.5 ? b - d * (1.0 - g) : a + d * g;
            }
            __syncthreads();
            const double q = s_q;
            for (int p = threadIdx.x; p < n; p += SG_THREADS) m8[p] = (double)T[p] > q;
            __syncthreads();
        }
        sg_mask_tail(m8, h, w, ok, remove_border, parent, (int*)keys, mask + (i64)m * cap, H, W, regions + m);
    }
}

// ---------------------------------------------------------------------------------------------
// Per object: main-channel rule, combined mask, bounding box, background levels

// Background sums of one float plane (mask_combine): the pixels of the extent in raster order
// cut into SG_THREADS chunks of ceil(h w / SG_THREADS), each summed in order by one thread, the
// chunk sums added in order by thread 0: the order of the numba outside_sums (LI_CHUNKS), so
// the means are the same doubles. Every thread must call it.
__device__ void sg_combine_float_sums(const void* px, int dtype, int W, int h, int w, const unsigned char* mc,
                                      const unsigned char* cb, double (*s_chunk)[SG_THREADS],
                                      double* background, double* combined_background) {
    const int n = h * w, cs = (n + SG_THREADS - 1) / SG_THREADS;
    const int a = sg_min((int)threadIdx.x * cs, n), b = sg_min(a + cs, n);
    const SgDivW dwp(w);  // (p / w without a division per pixel)
    double s = 0.0, sc = 0.0;
    i64 k = 0, kc = 0;
    for (int p = a; p < b; ++p) {
        const int i = dwp.div(p), j = p - i * w;
        const i64 q = (i64)i * W + j;
        const double v = sg_load_px(px, q, dtype);
        if (!mc[q]) {
            s = s + v;
            ++k;
        }
        if (!cb[q]) {
            sc = sc + v;
            ++kc;
        }
    }
    s_chunk[0][threadIdx.x] = s;
    s_chunk[1][threadIdx.x] = sc;
    k = sg_block_sum_i64(k);  // (its barriers also publish the chunk sums)
    kc = sg_block_sum_i64(kc);
    if (threadIdx.x == 0) {
        double ts = 0.0, tc = 0.0;
        for (int t = 0; t < SG_THREADS; ++t) {
            ts = ts + s_chunk[0][t];
            tc = tc + s_chunk[1][t];
        }
        *background = k > 0 ? ts / (double)k : 0.0;
        *combined_background = tc / (double)kc;
    }
    __syncthreads();  // (s_chunk is reused by the next plane)
}

#define SG_COMBINE_PARAMS                                                                              \
    const void *pixels, const int dtype, const int C, const int H, const int W,                       \
        const long long *__restrict__ extents, const int N, unsigned char *__restrict__ mask,         \
        const long long *__restrict__ regions, const unsigned char *__restrict__ passed,              \
        const int main_channel,                                                                        \
        const unsigned char *__restrict__ in_combined, /* (C,) 1 for channels of the union */         \
        unsigned char *__restrict__ combined, double *__restrict__ bbox,                              \
        double *__restrict__ background, double *__restrict__ combined_background,                    \
        unsigned char *__restrict__ usable
#define SG_COMBINE_ARGS                                                                                \
    pixels, dtype, C, H, W, extents, N, mask, regions, passed, main_channel, in_combined, combined, bbox, \
        background, combined_background, usable

// FLOAT: float32/float64 pixels (dtype 2, 3; mask_combine_float), whose background sums take
// sg_combine_float_sums; integer pixels sum exactly in 64-bit integers (mask_combine).
template <bool FLOAT>
__device__ void sg_mask_combine(SG_COMBINE_PARAMS) {
    const int cap = H * W;
    __shared__ double s_chunk[FLOAT ? 2 : 1][FLOAT ? SG_THREADS : 1];  // the float planes' chunk sums
    for (int obj = blockIdx.x; obj < N; obj += gridDim.x) {
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        unsigned char* mk = mask + (i64)obj * C * cap;
        const bool use = passed[obj * C + main_channel] && regions[obj * C + main_channel] > 0;
        if (!use)
            for (int p = threadIdx.x; p < C * cap; p += SG_THREADS) mk[p] = 0;
        __syncthreads();
        int minr = H, minc = W, maxr = -1, maxc = -1;
        unsigned char* cb = combined + (i64)obj * cap;
        for (int p = threadIdx.x; p < cap; p += SG_THREADS) {
            unsigned char any = 0, comb = 0;
            for (int c = 0; c < C; ++c) {
                const unsigned char v = mk[(i64)c * cap + p];
                any |= v;
                comb |= v & in_combined[c];
            }
            cb[p] = comb;
            if (any) {
                const int i = p / W, j = p - i * W;
                minr = sg_min(minr, i);
                maxr = sg_max(maxr, i);
                minc = sg_min(minc, j);
                maxc = sg_max(maxc, j);
            }
        }
        minr = (int)sg_block_min_i64(minr);
        minc = (int)sg_block_min_i64(minc);
        maxr = (int)sg_block_max_i64(maxr);
        maxc = (int)sg_block_max_i64(maxc);
        if (threadIdx.x == 0) {
            double* bb = bbox + 4 * (i64)obj;
            const bool has = maxr >= 0;
            bb[0] = has ? (double)minr : sg_nan();
            bb[1] = has ? (double)minc : sg_nan();
            bb[2] = has ? (double)(maxr + 1) : sg_nan();
            bb[3] = has ? (double)(maxc + 1) : sg_nan();
            usable[obj] = use;
        }
        for (int c = 0; c < C; ++c) {
            const void* px = sg_px_at(pixels, ((i64)obj * C + c) * cap, dtype);
            const unsigned char* mc = mk + (i64)c * cap;
            if constexpr (FLOAT) {  // the sums in the numba outside_sums' order
                sg_combine_float_sums(px, dtype, W, h, w, mc, cb, s_chunk,
                                      background + (i64)obj * C + c, combined_background + (i64)obj * C + c);
                continue;
            }
            i64 s = 0, k = 0, sc = 0, kc = 0;
            const SgDivW dwp(w);  // (p / w without a division per pixel)
            for (int p = threadIdx.x; p < h * w; p += SG_THREADS) {
                const int i = dwp.div(p), j = p - i * w;
                const i64 q = (i64)i * W + j;
                const i64 v = sg_load_int(px, q, dtype);
                if (!mc[q]) {
                    s += v;
                    ++k;
                }
                if (!cb[q]) {
                    sc += v;
                    ++kc;
                }
            }
            s = sg_block_sum_i64(s);
            k = sg_block_sum_i64(k);
            sc = sg_block_sum_i64(sc);
            kc = sg_block_sum_i64(kc);
            if (threadIdx.x == 0) {
                background[(i64)obj * C + c] = k > 0 ? (double)s / (double)k : 0.0;
                combined_background[(i64)obj * C + c] = (double)sc / (double)kc;
            }
        }
        __syncthreads();
    }
}

extern "C" __global__ void mask_combine(SG_COMBINE_PARAMS) { sg_mask_combine<false>(SG_COMBINE_ARGS); }
extern "C" __global__ void mask_combine_float(SG_COMBINE_PARAMS) { sg_mask_combine<true>(SG_COMBINE_ARGS); }
