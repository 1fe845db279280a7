// Texture family: GLCM properties and Sobel statistics of every (object, channel) plane, both
// views (the channel's own mask, the object's combined mask), one thread block per plane.
//
// Reference semantics: scip_gpu.features.texture (compute_texture, texture_planes); the
// arithmetic is that of the numba kernels (scip_gpu/_numba_kernels.py: masked_range,
// glcm_props, sobel_planes, sobel_view_statistics) and of NumPy's mean/std over the 4 angles,
// so every value is bit-identical to the CPU path (the module is compiled with --fmad=false).
// Values are the raw pixel values as doubles (exact for uint8/uint16).
//
// Steps, per plane:
// 1. load the plane (as uint16) and its views (bit v of fl[p]: in view v; v = 0 the channel's
//    mask, 1 the combined mask, both restricted to the extent); per view min, max and pixel
//    count (integer atomics: the values are integers);
// 2. per view the 16 quantisation edges, numpy.histogram_bin_edges with numpy.linspace's
//    arithmetic (edge_k = k * step + lo, edge_15 = hi; a constant view widened by +-0.5);
// 3. per pixel: both views' levels (number of edges strictly below the value:
//    numpy.digitize(right=True)), its views, and its "ring" bits: the views whose Sobel map is
//    finite there (all 8 neighbours, reflected at the extent's border, in the view; the centre
//    has weight 0), packed into lv[p] (16 bits);
// 4. one-sided co-occurrence counts half[v][k][a][b] of in-view pixel pairs (p, p + offset_k)
//    with p + offset_k inside the extent, for the 4 distinct offsets (2,2), (2,-2), (4,4),
//    (4,-4) (SCIP's angles pi/4, 3pi/4 and their negations 5pi/4, 7pi/4 at distances 3 and 5:
//    a symmetric matrix is half[a][b] + half[b][a]), by shared-memory atomics over consecutive
//    chunks of pixels, one per thread; each thread also counts its ring pixels;
// 5. a block scan of those counts; the ring pixels are compacted in raster order, then their
//    Sobel values (of the raw plane, sg_sobel_px's arithmetic) computed in parallel, with a
//    view tag per entry; per view max, min and count of the values;
// 6. concurrently: threads 0 and 32 sum each view's Sobel values sequentially in raster order,
//    then the squared deviations from the mean (as sobel_view_statistics); threads 64..71
//    compute the six graycoprops properties of the 8 matrices in the numba loop order;
// 7. per view, property and distance the mean and the population std over the 4 angles
//    (matrices A, B, A, B: NumPy's sequential sums over that axis).
//
// Output: per plane 56 values (mask view 28, combined view 28; per view for each property
// mean_d3, mean_d5, std_d3, std_d5, then Sobel mean, std, max, min). Row `obj` of the output
// starts at out + obj * ld, channel c at + c * 56. Objects with usable == 0 and empty views:
// NaN; a view without a finite Sobel value: NaN Sobel statistics.
//
// Workspace for H x W planes (cap = H W, cap8 = cap rounded up to 8), in this order: px (cap
// uint16), fl (cap8 bytes: views, then ring bits, then the list's tags), half (2 x 4 x 256
// uint32), sob (cap8 doubles: the Sobel list; until step 5 it holds lv, cap uint16).

#define TEX_NL 16     // grey levels (quantisation edges)
#define TEX_NOFF 4    // distinct offsets
#define TEX_NPROP 6   // graycoprops properties
#define TEX_NVIEW 28  // values per view

// Number of the ascending edges e[0..15] strictly below x, for x <= e[15].
__device__ __forceinline__ int tex_level(double x, const double* e) {
    int l = 0;
    if (e[l + 7] < x) l += 8;
    if (e[l + 3] < x) l += 4;
    if (e[l + 1] < x) l += 2;
    if (e[l] < x) l += 1;
    return l;
}

// View bits (bit v: view v) for which all 8 neighbours of (i, j), reflected at the border of
// the h x w plane (the centre itself where a neighbour reflects onto it), are in the view, as
// the numba sobel_view_statistics.
__device__ __forceinline__ int tex_ring(const unsigned char* fl, int h, int w, int i, int j) {
    const int ip = i > 0 ? i - 1 : 0, ib = i < h - 1 ? i + 1 : h - 1;
    const int jp = j > 0 ? j - 1 : 0, jb = j < w - 1 ? j + 1 : w - 1;
    const unsigned char* a = fl + ip * w;
    const unsigned char* b = fl + i * w;
    const unsigned char* c = fl + ib * w;
    return a[jp] & a[j] & a[jb] & b[jp] & b[jb] & c[jp] & c[j] & c[jb] & 3;
}

// skimage.filters.sobel (mode 'reflect') of pixel (i, j) of the h x w uint16 plane f, with the
// arithmetic of the numba _sobel_px / sg_sobel_px (the values convert to doubles exactly).
__device__ __forceinline__ double tex_sobel_px(const unsigned short* f, int h, int w, int i, int j) {
    const int ip = i > 0 ? i - 1 : 0, ib = i < h - 1 ? i + 1 : h - 1;
    const int jp = j > 0 ? j - 1 : 0, jb = j < w - 1 ? j + 1 : w - 1;
    const double a = (double)f[ip * w + jp], b = (double)f[ip * w + j], c = (double)f[ip * w + jb];
    const double d = (double)f[i * w + jp], e = (double)f[i * w + jb];
    const double g = (double)f[ib * w + jp], k = (double)f[ib * w + j], l = (double)f[ib * w + jb];
    const double top = 0.25 * a + 0.5 * b + 0.25 * c;
    const double bottom = 0.25 * g + 0.5 * k + 0.25 * l;
    const double left = 0.25 * a + 0.5 * d + 0.25 * g;
    const double right = 0.25 * c + 0.5 * e + 0.25 * l;
    const double gr = top - bottom;
    const double gc = left - right;
    return sqrt(gr * gr + gc * gc) * (1.0 / sqrt(2.0));
}

// graycoprops of the symmetric matrix hp[a][b] + hp[b][a] (16 x 16 one-sided counts) in the
// loop order of the numba glcm_props, in two parts that run in two threads: role 0 the
// contrast, dissimilarity and homogeneity (res[0..2]); role 1 the ASM, energy and correlation
// (res[3..5]; the means, then the variances and covariance). Each sum is that of the numba
// loop, term by term: a bin with a zero count contributes +-0 to sums that are never -0, so
// skipping it changes no bit.
__device__ void tex_graycoprops(const unsigned int* hp, double* res, int role) {
    unsigned int tot = 0;
    for (int q = 0; q < TEX_NL * TEX_NL; ++q) tot += hp[q];
    const double total = 2.0 * (double)tot;  // the (exact) sum of the symmetric counts
    const double norm = total > 0.0 ? 1.0 / total : 0.0;
    if (role == 0) {
        double contrast = 0.0, dissim = 0.0, homog = 0.0;
        for (int i = 0; i < TEX_NL; ++i)
#pragma unroll 4
            for (int j = 0; j < TEX_NL; ++j) {
                const unsigned int cnt = hp[i * TEX_NL + j] + hp[j * TEX_NL + i];
                if (cnt == 0) continue;
                const double p = (double)cnt * norm;
                const double d = (double)(i - j);
                contrast += p * d * d;
                dissim += p * fabs(d);
                homog += p / (1.0 + d * d);
            }
        res[0] = contrast;
        res[1] = dissim;
        res[2] = homog;
        return;
    }
    double asm_ = 0.0, mi = 0.0, mj = 0.0;
    for (int i = 0; i < TEX_NL; ++i)
#pragma unroll 4
        for (int j = 0; j < TEX_NL; ++j) {
            const unsigned int cnt = hp[i * TEX_NL + j] + hp[j * TEX_NL + i];
            if (cnt == 0) continue;
            const double p = (double)cnt * norm;
            asm_ += p * p;
            mi += p * (double)i;
            mj += p * (double)j;
        }
    double vi = 0.0, vj = 0.0, cov = 0.0;
    for (int i = 0; i < TEX_NL; ++i)
#pragma unroll 4
        for (int j = 0; j < TEX_NL; ++j) {
            const unsigned int cnt = hp[i * TEX_NL + j] + hp[j * TEX_NL + i];
            if (cnt == 0) continue;
            const double p = (double)cnt * norm;
            const double di = (double)i - mi, dj = (double)j - mj;
            vi += p * di * di;
            vj += p * dj * dj;
            cov += p * di * dj;
        }
    const double si = sqrt(vi), sj = sqrt(vj);
    res[3] = sqrt(asm_);
    res[4] = (si < 1e-15 || sj < 1e-15) ? 1.0 : cov / (si * sj);
    res[5] = asm_;
}

struct __align__(16) tex_pair { double a, b; };

// Sequential sum, in list order, of view v's Sobel values (pass 0) or of their squared
// deviations from `mean` (pass 1): sob[0..u) the compacted values, bit v of tag[k] the views of
// entry k (tag[u .. u rounded up to 8) is 0). One dependent addition per entry of the view,
// as the numba loop over the view's values.
__device__ double tex_chain(const double* sob, const unsigned char* tag, int u, int v, double mean, int pass) {
    const unsigned s0 = 1u << v, s1 = s0 << 8, s2 = s0 << 16, s3 = s0 << 24;
    double s = 0.0;
#pragma unroll 1
    for (int k0 = 0; k0 < u; k0 += 8) {
        const u64 tw = *reinterpret_cast<const u64*>(tag + k0);
        const tex_pair* q = reinterpret_cast<const tex_pair*>(sob + k0);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const tex_pair x = q[e];
            const unsigned bits = (unsigned)(tw >> (32 * (e >> 1)));
            const bool in_a = bits & ((e & 1) ? s2 : s0);
            const bool in_b = bits & ((e & 1) ? s3 : s1);
            double ta = x.a, tb = x.b;
            if (pass != 0) {
                ta = (x.a - mean) * (x.a - mean);
                tb = (x.b - mean) * (x.b - mean);
            }
            // the selection on the term, not on the sum: one dependent addition per entry
            s += in_a ? ta : 0.0;
            s += in_b ? tb : 0.0;
        }
    }
    return s;
}

extern "C" __global__ void
texture_planes(const void* pixels, const int dtype, const int C, const int H, const int W,
               const long long* __restrict__ extents, const int M,
               const unsigned char* __restrict__ mask,      // (N, C, H, W)
               const unsigned char* __restrict__ combined,  // (N, H, W)
               const unsigned char* __restrict__ usable,    // (N,)
               double* __restrict__ out, const long long ld,
               unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    const int cap8 = (cap + 7) & ~7;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned short* px = arena.take<unsigned short>(cap);
    unsigned char* fl = arena.take<unsigned char>(cap8);
    unsigned int* half = arena.take<unsigned int>(2 * TEX_NOFF * TEX_NL * TEX_NL);
    double* sob = arena.take<double>(cap8);
    // step 3-4: levels (bits 0-7), views (8-9), ring bits (10-11) per pixel;
    // step 5: (pixel, tag) of the list entries before their values
    unsigned short* lv = reinterpret_cast<unsigned short*>(sob);
    int* slot = reinterpret_cast<int*>(sob);
    __shared__ int s_lo[2], s_hi[2], s_n[2], s_ns[2];
    __shared__ u64 s_smax[2], s_smin[2];
    __shared__ double s_edges[2][TEX_NL];
    __shared__ int s_part[SG_THREADS + 1];
    __shared__ int s_group[33];
    __shared__ double s_props[2][TEX_NOFF][TEX_NPROP];
    const int t = threadIdx.x;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / C;
        if (!usable[obj]) {
            double* o = out + (i64)obj * ld + (i64)(m - obj * C) * 2 * TEX_NVIEW;
            for (int k = t; k < 2 * TEX_NVIEW; k += SG_THREADS) o[k] = sg_nan();
            continue;  // the same in every thread
        }
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        const int n = h * w;

        // 1. plane, views, per-view range
        if (t < 2) {
            s_lo[t] = 0x7fffffff;
            s_hi[t] = -1;
            s_n[t] = 0;
            s_ns[t] = 0;
            s_smax[t] = 0ull;                   // +0.0 (Sobel values are >= +0)
            s_smin[t] = 0x7ff0000000000000ull;  // +inf
        }
        for (int k = t; k < 2 * TEX_NOFF * TEX_NL * TEX_NL; k += SG_THREADS) half[k] = 0;
        __syncthreads();
        {
            const void* plane = dtype == 0 ? (const void*)((const unsigned char*)pixels + (i64)m * cap)
                                           : (const void*)((const unsigned short*)pixels + (i64)m * cap);
            const unsigned char* mk = mask + (i64)m * cap;
            const unsigned char* cb = combined + (i64)obj * cap;
            int lo0 = 0x7fffffff, hi0 = -1, n0 = 0, lo1 = 0x7fffffff, hi1 = -1, n1 = 0;
            if (t < n) {
                const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
                int i = t / w, j = t - (t / w) * w;
                for (int p = t; p < n; p += SG_THREADS) {
                    const int idx = i * W + j;
                    const int v = sg_load_int(plane, idx, dtype);
                    const int f = (mk[idx] != 0) | ((cb[idx] != 0) << 1);
                    px[p] = (unsigned short)v;
                    fl[p] = (unsigned char)f;
                    if (f & 1) {
                        lo0 = sg_min(lo0, v);
                        hi0 = sg_max(hi0, v);
                        ++n0;
                    }
                    if (f & 2) {
                        lo1 = sg_min(lo1, v);
                        hi1 = sg_max(hi1, v);
                        ++n1;
                    }
                    i += di;
                    j += dj;
                    if (j >= w) {
                        j -= w;
                        ++i;
                    }
                }
            }
            if (n0) {
                atomicMin(&s_lo[0], lo0);
                atomicMax(&s_hi[0], hi0);
                atomicAdd(&s_n[0], n0);
            }
            if (n1) {
                atomicMin(&s_lo[1], lo1);
                atomicMax(&s_hi[1], hi1);
                atomicAdd(&s_n[1], n1);
            }
        }
        __syncthreads();

        // 2. quantisation edges (numpy.histogram_bin_edges via linspace_rows' arithmetic; the
        // step is never zero for integer values)
        if (t < 2 * TEX_NL) {
            const int v = t / TEX_NL, k = t - v * TEX_NL;
            const bool has = s_n[v] > 0;
            double lo = has ? (double)s_lo[v] : 0.0, hi = has ? (double)s_hi[v] : 0.0;
            if (lo == hi) {
                lo = lo - 0.5;
                hi = hi + 0.5;
            }
            const double step = (hi - lo) / (double)(TEX_NL - 1);
            s_edges[v][k] = k == TEX_NL - 1 ? hi : (double)k * step + lo;
        }
        __syncthreads();

        // 3. per pixel: levels, views and ring bits
        if (t < n) {
            const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
            int i = t / w, j = t - (t / w) * w;
            for (int p = t; p < n; p += SG_THREADS) {
                const int f = fl[p];
                const double x = (double)px[p];
                const int l0 = (f & 1) ? tex_level(x, s_edges[0]) : 0;
                const int l1 = (f & 2) ? tex_level(x, s_edges[1]) : 0;
                lv[p] = (unsigned short)(l0 | (l1 << 4) | (f << 8) | (tex_ring(fl, h, w, i, j) << 10));
                i += di;
                j += dj;
                if (j >= w) {
                    j -= w;
                    ++i;
                }
            }
        }
        __syncthreads();

        // 4. one-sided pair counts over this thread's chunk; its ring pixels: counted, and their
        // ring bits kept in fl (no longer read as views)
        const int chunk = (n + SG_THREADS - 1) / SG_THREADS;
        const int a0 = sg_min(t * chunk, n), a1 = sg_min(a0 + chunk, n);
        {
            int nu = 0;
            if (a0 < a1) {
                int i = a0 / w, j = a0 - (a0 / w) * w;
                for (int p = a0; p < a1; ++p) {
                    const int L = lv[p];
                    const int ring = L >> 10;
                    fl[p] = (unsigned char)ring;
                    nu += ring != 0;
                    if (L & 0x300) {
                        const bool r2 = i + 2 < h, r4 = i + 4 < h;
#pragma unroll
                        for (int k = 0; k < TEX_NOFF; ++k) {
                            const int dr = k < 2 ? 2 : 4;
                            const int dc = (k & 1) ? -dr : dr;
                            const bool ok = (k < 2 ? r2 : r4) && ((k & 1) ? j >= dr : j + dr < w);
                            if (!ok) continue;
                            const int Q = lv[p + dr * w + dc];
                            const int g = L & Q;
                            if (g & 0x100) atomicAdd(&half[(k << 8) | ((L & 15) << 4) | (Q & 15)], 1u);
                            if (g & 0x200) atomicAdd(&half[((TEX_NOFF + k) << 8) | (L & 0xf0) | ((Q >> 4) & 15)], 1u);
                        }
                    }
                    if (++j == w) {
                        j = 0;
                        ++i;
                    }
                }
            }
            s_part[t + 1] = nu;
        }
        __syncthreads();

        // 5. exclusive scan of the per-thread counts (32 groups of 8) ...
        if (t < 32) {
            int s = 0;
            for (int k = 1; k <= SG_THREADS / 32; ++k) {
                s += s_part[t * (SG_THREADS / 32) + k];
                s_part[t * (SG_THREADS / 32) + k] = s;
            }
            s_group[t + 1] = s;
        }
        __syncthreads();
        if (t == 0) {
            s_group[0] = 0;
            for (int g = 1; g <= 32; ++g) s_group[g] += s_group[g - 1];
        }
        __syncthreads();
        if (t < 32) {
            const int base = s_group[t];
            for (int k = 1; k <= SG_THREADS / 32; ++k) s_part[t * (SG_THREADS / 32) + k] += base;
            if (t == 0) s_part[0] = 0;
        }
        __syncthreads();
        // ... the ring pixels in raster order (pixel, ring bits) over the levels ...
        if (a0 < a1) {
            int pos = s_part[t];
            for (int p = a0; p < a1; ++p) {
                const int r = fl[p];
                if (r) {
                    slot[2 * pos] = p;
                    slot[2 * pos + 1] = r;
                    ++pos;
                }
            }
        }
        __syncthreads();
        // ... then their Sobel values and tags (fl[k], 0 up to a multiple of 8); per view max,
        // min (the bit patterns of values >= +0 are ordered as the values) and count
        const int u = s_part[SG_THREADS];
        {
            u64 mx0 = 0ull, mn0 = 0x7ff0000000000000ull, mx1 = 0ull, mn1 = 0x7ff0000000000000ull;
            int c0 = 0, c1 = 0;
            for (int k = t; k < u; k += SG_THREADS) {
                const int p = slot[2 * k], r = slot[2 * k + 1];
                const int i = p / w;
                const double x = tex_sobel_px(px, h, w, i, p - i * w);
                sob[k] = x;
                fl[k] = (unsigned char)r;
                const u64 b = (u64)__double_as_longlong(x);
                if (r & 1) {
                    mx0 = b > mx0 ? b : mx0;
                    mn0 = b < mn0 ? b : mn0;
                    ++c0;
                }
                if (r & 2) {
                    mx1 = b > mx1 ? b : mx1;
                    mn1 = b < mn1 ? b : mn1;
                    ++c1;
                }
            }
            if (t < ((u + 7) & ~7) - u) fl[u + t] = 0;
            if (c0) {
                atomicMax(&s_smax[0], mx0);
                atomicMin(&s_smin[0], mn0);
                atomicAdd(&s_ns[0], c0);
            }
            if (c1) {
                atomicMax(&s_smax[1], mx1);
                atomicMin(&s_smin[1], mn1);
                atomicAdd(&s_ns[1], c1);
            }
        }
        __syncthreads();

        // 6. Sobel statistics (threads 0, 32: sequential sums in raster order) and GLCM
        // properties (threads 64..71), concurrently
        if (t == 0 || t == 32) {
            const int v = t >> 5;
            const int cnt = s_ns[v];
            const double mean = tex_chain(sob, fl, u, v, 0.0, 0) / (double)cnt;
            const double var = tex_chain(sob, fl, u, v, mean, 1);
            double* os = out + (i64)obj * ld + (i64)(m - obj * C) * 2 * TEX_NVIEW + v * TEX_NVIEW + 4 * TEX_NPROP;
            if (cnt == 0) {
                os[0] = os[1] = os[2] = os[3] = sg_nan();
            } else {
                os[0] = mean;
                os[1] = sqrt(var / (double)cnt);
                os[2] = __longlong_as_double((long long)s_smax[v]);
                os[3] = __longlong_as_double((long long)s_smin[v]);
            }
        } else if ((t & 31) < 2 * TEX_NOFF && (t >> 5) >= 2 && (t >> 5) < 4) {
            const int k = t & 31;  // matrix: view k / 4, offset k % 4
            tex_graycoprops(half + (k << 8), s_props[k / TEX_NOFF][k % TEX_NOFF], (t >> 5) - 2);
        }
        __syncthreads();

        // 7. mean and std over the angles pi/4, 3pi/4, 5pi/4, 7pi/4: matrices A, B, A, B with
        // A = offset (d', d'), B = (d', -d')
        if (t < 2 * 2 * TEX_NPROP) {
            const int v = t / (2 * TEX_NPROP), r = t - v * (2 * TEX_NPROP);
            const int d = r / TEX_NPROP, pr = r - d * TEX_NPROP;
            double* ov = out + (i64)obj * ld + (i64)(m - obj * C) * 2 * TEX_NVIEW + v * TEX_NVIEW + pr * 4;
            if (s_n[v] == 0) {
                ov[d] = sg_nan();
                ov[2 + d] = sg_nan();
            } else {
                const double A = s_props[v][2 * d][pr], B = s_props[v][2 * d + 1][pr];
                const double mean = (((A + B) + A) + B) / 4.0;
                const double ea = A - mean, eb = B - mean;
                const double var = (((ea * ea + eb * eb) + ea * ea) + eb * eb) / 4.0;
                ov[d] = mean;
                ov[2 + d] = sqrt(var);
            }
        }
        __syncthreads();
    }
}
