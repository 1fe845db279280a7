// Intensity family: the 11 statistics of every view of every (object, channel) plane, one
// thread block per plane.
//
// Reference semantics: scip_gpu.features.intensity (compute_intensity, compute_raw) and
// scip_gpu.stats.compact_statistics; the arithmetic is that of the numba kernels
// (scip_gpu/_numba_kernels.py: radix_argsort_u16, sorted_view_statistics, sorted_stats,
// erosion_rows), so the values are bit-identical up to the last bit of pow():
//
// 1. the plane's pixels are sorted once (keys value << 16 | pixel index: a stable order, as
//    the CPU's radix sort), by a block radix sort of the values (sg_radix_sort_u16_keys), or,
//    compiled with -DSG_LEGACY_SORT, by a bitonic sort of the keys padded to a power of two
//    (the same order: the keys are distinct);
// 2. views (mode 0): the channel's mask, its inner rim (mask XOR erosion by disk(edge_width)),
//    the combined mask and its rim; (mode 1, the raw set): the whole plane;
// 3. each view's members are compacted in sorted order (one block scan for all views, four
//    16-bit counters packed in 64 bits: planes have fewer than 65536 pixels), then
//    INT_LANES threads per view sum the central moments (member i into partial sum i mod
//    INT_LANES, ascending i; the partial sums then added as a pairwise tree: the order of the
//    numba sorted_stats), and one thread per view reads the quantiles and the MAD off the
//    sorted members;
// 4. the background-corrected views follow from the uncorrected ones by a shift.
//
// Output (mode 0): per plane 88 values, views in the order mask, bgcorr, edge, bgcorr_edge,
// combined, combined_bgcorr, combined_edge, combined_bgcorr_edge, statistics in the order of
// scip_gpu.stats.STATISTICS; (mode 1) 11 values. Row `obj` of the output starts at
// out + obj * ld + col0, channel c at + c * (88 or 11). Objects with usable == 0: NaN.

#define INT_NSTAT 11

__device__ __forceinline__ double int_lerp(double a, double b, double t) {
    const double d = b - a;
    return t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
}

template <class T>  // (T: the members' type, unsigned short or float; the arithmetic is in double)
__device__ __forceinline__ double int_quantile(const T* v, int n, double q) {
    const double virt = (double)(n - 1) * q;
    const int lo = (int)floor(virt);
    const int hi = lo + 1 < n - 1 ? lo + 1 : n - 1;
    return int_lerp((double)v[lo], (double)v[hi], virt - (double)lo);
}

// k-th smallest (0-based) of |v - c| over ascending values v(0..n) (``get(i)`` as a double);
// split = #(v <= c): the merge of c - v(split - 1), c - v(split - 2), ... and v(split) - c, ...
// (each ascending; c - v is exactly |v - c| for v <= c), found by a binary search.
template <class Get>
__device__ double sg_kth_vshape(const Get& get, int n, int split, double c, int k) {
    const int t = k + 1;
    int lo = t - (n - split) > 0 ? t - (n - split) : 0;
    int hi = t < split ? t : split;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        const int j = t - mid;
        const double a_mid = c - get(split - 1 - mid);
        const double b_j1 = get(split + j - 1) - c;
        if (mid < split && j > 0 && b_j1 > a_mid) lo = mid + 1; else hi = mid;
    }
    const int j = t - lo;
    const double left = lo > 0 ? c - get(split - lo) : -sg_inf();
    const double right = j > 0 ? get(split + j - 1) - c : -sg_inf();
    return left > right ? left : right;
}

template <class T>
struct IntValues {  // members as doubles
    const T* v;
    __device__ double operator()(int i) const { return (double)v[i]; }
};

template <class T>
__device__ double int_kth_vshape(const T* v, int n, int split, double c, int k) {
    return sg_kth_vshape(IntValues<T>{v}, n, split, c, k);
}

#define INT_LANES 16  // partial sums per view of the central moments (numba: MOMENT_LANES)

// Partial sums of the central moments of v[0..n) about `mean`: lane l of INT_LANES takes
// members l, l + INT_LANES, ... in ascending order (the numba central_moment_sums' order).
template <class T>
__device__ void int_moment_lane(const T* v, int n, double mean, int lane, double* m) {
    double m2 = 0.0, m3 = 0.0, m4 = 0.0;
    for (int i = lane; i < n; i += INT_LANES) {
        const double e = (double)v[i] - mean;
        const double e2 = e * e;
        m2 += e2;
        m3 += e2 * e;
        m4 += e2 * e2;
    }
    m[lane] = m2;
    m[INT_LANES + lane] = m3;
    m[2 * INT_LANES + lane] = m4;
}

// The 11 statistics of the ascending v[0..n), as the numba sorted_stats (one thread); `total`,
// the sum of the (integer) values, is exact in any order and comes from a block reduction;
// `m` holds the INT_LANES partial sums of each central moment (int_moment_lane), added here as
// the numba kernel adds them (a pairwise tree).
template <class T>
__device__ void int_sorted_stats(const T* v, int n, double total, double* m, double* o) {
    if (n == 0) {
        for (int k = 0; k < INT_NSTAT; ++k) o[k] = sg_nan();
        return;
    }
    const double mean = total / n;
    for (int k = 0; k < 3; ++k)
        for (int off = INT_LANES / 2; off > 0; off /= 2)
            for (int j = 0; j < off; ++j) m[k * INT_LANES + j] += m[k * INT_LANES + j + off];
    double m2 = m[0], m3 = m[INT_LANES], m4 = m[2 * INT_LANES];
    m2 /= n;
    m3 /= n;
    m4 /= n;
    const double med = int_quantile(v, n, 0.5);
    int a = 0, b = n;  // split: members <= median
    while (a < b) {
        const int mid = (a + b) / 2;
        if ((double)v[mid] <= med) a = mid + 1; else b = mid;
    }
    const int k_lo = (n - 1) / 2, k_hi = n / 2 < n - 1 ? n / 2 : n - 1;
    const double d_lo = int_kth_vshape(v, n, a, med, k_lo);
    const double d_hi = int_kth_vshape(v, n, a, med, k_hi);
    const double mad = int_lerp(d_lo, d_hi, k_lo == k_hi ? 0.0 : 0.5);
    const double z = 2.220446049250313e-16 * mean;
    const bool zero = m2 <= z * z;
    o[0] = mean;
    o[1] = med;
    o[2] = (double)v[n - 1];
    o[3] = (double)v[0];
    o[4] = sqrt(m2);
    o[5] = mad;
    o[6] = int_quantile(v, n, 0.25);
    o[7] = int_quantile(v, n, 0.75);
    o[8] = total;
    o[9] = zero ? sg_nan() : m3 / (m2 * sqrt(m2));  // (not pow: sqrt and * are exact-rounded everywhere)
    o[10] = zero ? sg_nan() : m4 / (m2 * m2) - 3.0;
}

// What both kernels keep in shared memory besides their workspace.
struct IntShared {
    int half[64];                        // the disk's row half-widths (the edge views)
    int count[4];                        // members per view
    double total[4];                     // their sums
    double stats[4 * INT_NSTAT];         // the 11 statistics per view
    double moments[4 * 3 * INT_LANES];   // the partial sums of the central moments
};

// The start of both kernels: the disk's half-widths (mode 0: the edge views), then a barrier;
// returns the views per plane (mode 0: 4; mode 1, the raw set: 1).
__device__ __forceinline__ int int_begin(IntShared& sh, int mode, int r) {
    if (mode == 0) sg_disk_half_widths(sh.half, r);
    __syncthreads();
    return mode == 0 ? 4 : 1;
}

// The head of both kernels' plane loop: plane m's object, extent and output (`o`); false for an
// object that is not usable (mode 0: its values NaN, written here).
__device__ __forceinline__ bool int_plane(int m, int C, const long long* extents, int mode, const unsigned char* usable,
                                          double* out, long long ld, long long col0, int& obj, int& h, int& w,
                                          double*& o) {
    obj = m / C;
    const int c = m - obj * C;
    h = (int)extents[2 * obj];
    w = (int)extents[2 * obj + 1];
    const int per = mode == 0 ? 8 * INT_NSTAT : INT_NSTAT;
    o = out + (i64)obj * ld + col0 + (i64)c * per;
    if (mode == 0 && !usable[obj]) {
        for (int k = threadIdx.x; k < per; k += SG_THREADS) o[k] = sg_nan();
        return false;
    }
    return true;
}

// Step 2 of both kernels: the views of one plane as h x w planes (row stride w): the channel's
// mask and its inner rim (XOR its erosion by disk(r)), the combined mask and its rim.
__device__ __forceinline__ void int_views(const unsigned char* mk, const unsigned char* cb, int W, int h, int w,
                                          int cap, const SgDivW& dwp, const int* half, int r,
                                          unsigned char* views, int* run) {
    const int n = h * w;
    for (int p = threadIdx.x; p < n; p += SG_THREADS) {
        const int i = dwp.div(p), j = p - i * w;
        views[p] = mk[i * W + j];
        views[2 * cap + p] = cb[i * W + j];
    }
    __syncthreads();
    for (int v = 0; v < 2; ++v) {
        unsigned char* base = views + 2 * v * (i64)cap;
        sg_erosion_rows(base, base + cap, run, h, w, half, r);
        for (int p = threadIdx.x; p < n; p += SG_THREADS) base[cap + p] ^= base[p];
        __syncthreads();
    }
}

// Step 4 of both kernels: INT_LANES threads per view sum the moments, then one thread per view
// (each view in its own warps) finishes; members of view v at members + v * cap (T: unsigned
// short or float).
template <class T>
__device__ __forceinline__ void int_view_stats(const T* members, int cap, int nv, const int* count,
                                               const double* total, double* moments, double* stats) {
    const int v = threadIdx.x / (SG_THREADS / 4), lane = threadIdx.x % (SG_THREADS / 4);
    if (v < nv && lane < INT_LANES && count[v] > 0)
        int_moment_lane(members + (i64)v * cap, count[v], total[v] / count[v], lane, moments + v * 3 * INT_LANES);
    __syncthreads();
    if (v < nv && lane == 0)
        int_sorted_stats(members + (i64)v * cap, count[v], total[v], moments + v * 3 * INT_LANES,
                         stats + v * INT_NSTAT);
    __syncthreads();
}

// Step 5 of both kernels: the plane's output (mode 1: the 11 statistics; mode 0: the 8 views,
// the background-corrected ones a shift of the location statistics and the sum).
__device__ __forceinline__ void int_write(double* o, int mode, const double* stats, const int* count, double bg,
                                          double cbg) {
    if (mode == 1) {
        for (int k = threadIdx.x; k < INT_NSTAT; k += SG_THREADS) o[k] = stats[k];
        return;
    }
    for (int k = threadIdx.x; k < 8 * INT_NSTAT; k += SG_THREADS) {
        const int view = k / INT_NSTAT, s = k - view * INT_NSTAT;
        const int v = view / 2;
        double x = stats[v * INT_NSTAT + s];
        if (view & 1) {
            const double shift = v < 2 ? bg : cbg;
            if (s <= 3 || s == 6 || s == 7) x = x - shift;
            else if (s == 8) x = x - (double)count[v] * shift;
        }
        o[k] = x;
    }
}

// Workspace for H x W planes: keys (H W u32; next_pow2(H W) for the legacy bitonic sort), four
// view masks (H W bytes each), members (4 x H W u16; the erosion's run lengths live there
// first, then the radix sort's second key buffer and counters: at least 4 H W bytes rounded to
// 16 + 4 SG_RADIX_COUNTS); mode 1 (the raw set): keys and one members array (H W u16, at least
// the radix sort's scratch).
extern "C" __global__ void
intensity_views(const void* pixels, const int dtype, const int C, const int H, const int W,
                const long long* __restrict__ extents, const int M, const int mode,
                const unsigned char* __restrict__ mask, const unsigned char* __restrict__ combined,
                const double* __restrict__ background, const double* __restrict__ combined_background,
                const unsigned char* __restrict__ usable, const int edge_width,
                double* __restrict__ out, const long long ld, const long long col0,
                unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W, np2 = sg_next_pow2(cap);
    SgArena arena(sg_workspace(scratch, ws_bytes));
#ifdef SG_LEGACY_SORT
    unsigned int* keys = arena.take<unsigned int>(np2);
    unsigned char* views = arena.take<unsigned char>(mode == 0 ? 4 * (i64)cap : 0);
    unsigned short* members = arena.take<unsigned short>((mode == 0 ? 4 : 1) * (i64)cap);
#else
    unsigned int* keys = arena.take<unsigned int>(cap);
    unsigned char* views = arena.take<unsigned char>(mode == 0 ? 4 * (i64)cap : 0);
    const i64 alt_bytes = (4 * (i64)cap + 15) / 16 * 16;
    unsigned short* members = arena.take<unsigned short>(
        sg_max64((mode == 0 ? 4 : 1) * (i64)cap, (alt_bytes + 4 * (i64)SG_RADIX_COUNTS + 1) / 2));
    unsigned int* alt = reinterpret_cast<unsigned int*>(members);  // free while sorting
    int* radix_counts = reinterpret_cast<int*>(reinterpret_cast<unsigned char*>(members) + alt_bytes);
    (void)np2;
#endif
    __shared__ IntShared sh;
    const int nv = int_begin(sh, mode, edge_width), r = edge_width;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        int obj, h, w;
        double* o;
        if (!int_plane(m, C, extents, mode, usable, out, ld, col0, obj, h, w, o)) continue;
        const int n = h * w;
        const void* px = dtype == 0 ? (const void*)((const unsigned char*)pixels + (i64)m * cap)
                                    : (const void*)((const unsigned short*)pixels + (i64)m * cap);
        SG_PROF_START();
        const SgDivW dwp(w);  // (p / w without a division per pixel)
        // 1. sort the plane: keys value << 16 | index (ties in pixel order, as a stable sort)
#ifdef SG_LEGACY_SORT
        const int n2 = sg_next_pow2(n);
        for (int p = threadIdx.x; p < n2; p += SG_THREADS) {
            unsigned int key = 0xFFFFFFFFu;
            if (p < n) {
                const int i = dwp.div(p), j = p - i * w;
                key = ((unsigned int)sg_load_int(px, (i64)i * W + j, dtype) << 16) | (unsigned int)p;
            }
            keys[p] = key;
        }
#else
        i64 vmin = 65535, vmax = 0;
        for (int p = threadIdx.x; p < n; p += SG_THREADS) {
            const int i = dwp.div(p), j = p - i * w;
            const int v = sg_load_int(px, (i64)i * W + j, dtype);
            keys[p] = ((unsigned int)v << 16) | (unsigned int)p;
            vmin = sg_min64(vmin, v);
            vmax = sg_max64(vmax, v);
        }
        vmin = sg_block_min_i64(vmin);
        vmax = sg_block_max_i64(vmax);
#endif
        // 2. the views, as h x w planes (row stride w)
        if (mode == 0)
            int_views(mask + (i64)m * cap, combined + (i64)obj * cap, W, h, w, cap, dwp, sh.half, r, views,
                      reinterpret_cast<int*>(members));
        __syncthreads();
        SG_PROF_MARK(2, 0);
#ifdef SG_LEGACY_SORT
        sg_bitonic_sort(keys, n2);
        const unsigned int* sorted = keys;
#else
        sg_radix_sort_u16_keys(keys, alt, radix_counts, n, (int)vmin, (int)vmax);
        const unsigned int* sorted = keys;  // (members, holding alt, is written next)
#endif
        SG_PROF_MARK(2, 1);
        // 3. compact each view's members in sorted order: one scan of 4 packed 16-bit counters
        {
            __shared__ u64 part[SG_THREADS];
            const int t = threadIdx.x;
            const int cs = (n + SG_THREADS - 1) / SG_THREADS;
            const int a = sg_min(t * cs, n), b = sg_min(a + cs, n);
            u64 s = 0;
            i64 tot[4] = {0, 0, 0, 0};  // the views' sums of (integer) values: exact in any order
            for (int k = a; k < b; ++k) {
                const unsigned int key = sorted[k];
                const int idx = (int)(key & 0xFFFFu);
                const i64 value = (i64)(key >> 16);
                for (int v = 0; v < nv; ++v) {
                    const int in = mode == 0 ? views[(i64)v * cap + idx] : 1;
                    s += (u64)in << (16 * v);
                    tot[v] += in ? value : 0;
                }
            }
            // exclusive scan of the threads' packed counts in two levels of 16 (threads 0..15
            // scan 16 each, thread 0 the 16 group sums): ~32 dependent steps, not 256
            __shared__ u64 grp[17];
            u64 all = 0;
            s = sg_block_exclusive_sum_in(s, part, grp, &all);
            for (int k = a; k < b; ++k) {
                const unsigned int key = sorted[k];
                const int idx = (int)(key & 0xFFFFu);
                const unsigned short value = (unsigned short)(key >> 16);
                for (int v = 0; v < nv; ++v) {
                    if (mode == 0 && !views[(i64)v * cap + idx]) continue;
                    members[(i64)v * cap + (int)((s >> (16 * v)) & 0xFFFFu)] = value;
                    s += (u64)1 << (16 * v);
                }
            }
            if (t < nv) sh.count[t] = (int)((all >> (16 * t)) & 0xFFFFu);
            for (int v = 0; v < nv; ++v) {
                const i64 sum = sg_block_sum_i64(tot[v]);
                if (t == 0) sh.total[v] = (double)sum;
            }
            __syncthreads();
        }
        SG_PROF_MARK(2, 2);
        // 4. statistics: INT_LANES threads per view sum the moments, then one thread per view
        //    (each view in its own warps) finishes
        int_view_stats(members, cap, nv, sh.count, sh.total, sh.moments, sh.stats);
        SG_PROF_MARK(2, 3);
        int_write(o, mode, sh.stats, sh.count, mode == 0 ? background[m] : 0.0, mode == 0 ? combined_background[m] : 0.0);
        __syncthreads();
        SG_PROF_MARK(2, 4);
        SG_PROF_COUNT(2);
    }
}

// ---------------------------------------------------------------------------------------------
// float32 planes (the illumination-corrected fields' cells, float zarr stores): the same views,
// statistics and output as intensity_views, read off one sort per plane of the keys
// order(value) << 16 | pixel index (order: the float's bits made to sort as the values do;
// a bitonic sort of the keys padded to a power of two), members kept as floats. The CPU
// path (numba sorted_view_statistics) sums the members sequentially in ascending order: so
// does one thread per view here (integer values were summed exactly in any order), then the
// moments and statistics are int_moment_lane / int_sorted_stats on float members.
// Workspace for H x W planes: keys (next_pow2(H W) u64), four view masks (mode 0: H W bytes
// each), members (4 x H W floats in mode 0, the erosion's run lengths there first; H W in
// mode 1).

// The order bits of a float32 value (ascending as the values); every NaN, whatever its sign
// bit and payload, the largest (NumPy sorts NaN last: x86's 0/0 has the sign bit set, which
// the plain bits would put below -inf). It decodes to a NaN.
__device__ __forceinline__ unsigned int int_f32_order(float v) {
    if (v != v) return 0xFFFFFFFFu;
    const unsigned int b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float int_f32_value(unsigned int o) {
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

extern "C" __global__ void
intensity_views_f32(const float* __restrict__ pixels, const int C, const int H, const int W,
                    const long long* __restrict__ extents, const int M, const int mode,
                    const unsigned char* __restrict__ mask, const unsigned char* __restrict__ combined,
                    const double* __restrict__ background, const double* __restrict__ combined_background,
                    const unsigned char* __restrict__ usable, const int edge_width,
                    double* __restrict__ out, const long long ld, const long long col0,
                    unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W, np2 = sg_next_pow2(cap);
    SgArena arena(sg_workspace(scratch, ws_bytes));
    u64* keys = arena.take<u64>(np2);
    unsigned char* views = arena.take<unsigned char>(mode == 0 ? 4 * (i64)cap : 0);
    float* members = arena.take<float>((mode == 0 ? 4 : 1) * (i64)cap);
    __shared__ IntShared sh;
    const int nv = int_begin(sh, mode, edge_width), r = edge_width;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        int obj, h, w;
        double* o;
        if (!int_plane(m, C, extents, mode, usable, out, ld, col0, obj, h, w, o)) continue;
        const int n = h * w;
        const float* px = pixels + (i64)m * cap;
        const SgDivW dwp(w);
        // 1. the keys, padded to a power of two with the largest key
        const int n2 = sg_next_pow2(n);
        for (int p = threadIdx.x; p < n2; p += SG_THREADS) {
            u64 key = ~0ull;
            if (p < n) {
                const int i = dwp.div(p), j = p - i * w;
                key = ((u64)int_f32_order(px[(i64)i * W + j]) << 16) | (u64)p;
            }
            keys[p] = key;
        }
        // 2. the views, as h x w planes (row stride w)
        if (mode == 0)
            int_views(mask + (i64)m * cap, combined + (i64)obj * cap, W, h, w, cap, dwp, sh.half, r, views,
                      reinterpret_cast<int*>(members));
        __syncthreads();
        sg_bitonic_sort(keys, n2);
        // 3. each view's members in sorted order (one scan of 4 packed 16-bit counters)
        {
            __shared__ u64 part[SG_THREADS];
            const int t = threadIdx.x;
            const int cs = (n + SG_THREADS - 1) / SG_THREADS;
            const int a = sg_min(t * cs, n), b = sg_min(a + cs, n);
            u64 s = 0;
            for (int k = a; k < b; ++k) {
                const int idx = (int)(keys[k] & 0xFFFFu);
                for (int v = 0; v < nv; ++v) s += (u64)(mode == 0 ? views[(i64)v * cap + idx] : 1) << (16 * v);
            }
            __shared__ u64 grp[17];
            u64 all = 0;
            s = sg_block_exclusive_sum_in(s, part, grp, &all);
            for (int k = a; k < b; ++k) {
                const u64 key = keys[k];
                const int idx = (int)(key & 0xFFFFu);
                const float value = int_f32_value((unsigned int)(key >> 16));
                for (int v = 0; v < nv; ++v) {
                    if (mode == 0 && !views[(i64)v * cap + idx]) continue;
                    members[(i64)v * cap + (int)((s >> (16 * v)) & 0xFFFFu)] = value;
                    s += (u64)1 << (16 * v);
                }
            }
            if (t < nv) sh.count[t] = (int)((all >> (16 * t)) & 0xFFFFu);
            __syncthreads();
            if (t < nv) {  // the sum in ascending order, one addition at a time (numba's order)
                const float* mv = members + (i64)t * cap;
                double acc = 0.0;
                for (int k = 0; k < sh.count[t]; ++k) acc += (double)mv[k];
                sh.total[t] = acc;
            }
            __syncthreads();
        }
        // 4. statistics, as intensity_views
        int_view_stats(members, cap, nv, sh.count, sh.total, sh.moments, sh.stats);
        int_write(o, mode, sh.stats, sh.count, mode == 0 ? background[m] : 0.0, mode == 0 ? combined_background[m] : 0.0);
        __syncthreads();
    }
}
