// Texture family: GLCM properties and Sobel statistics of every (object, channel) plane, both
// views (the channel's own mask, the object's combined mask), one thread block per plane.
//
// Reference semantics: scip_gpu.features.texture (compute_texture, texture_planes); the
// arithmetic is that of the numba kernels (scip_gpu/_numba_kernels.py: masked_range,
// glcm_props, sobel_planes, sobel_view_statistics) and of NumPy's mean/std over the 4 angles,
// so every value is bit-identical to the CPU path (the module is compiled with --fmad=false).
// Values are the raw pixel values (uint8/uint16), exact as doubles.
//
// Steps, per plane:
// 1. load the plane (as uint16) and its views (bit v of fl[p]: in view v; v = 0 the channel's
//    mask, 1 the combined mask, both restricted to the extent); per view min, max and pixel
//    count (integer atomics);
// 2. per view the 16 quantisation edges, numpy.histogram_bin_edges with numpy.linspace's
//    arithmetic (edge_k = k * step + lo, edge_15 = hi; a constant view widened by +-0.5), kept
//    as the integer thresholds floor(edge_k) + 1;
// 3. per pixel: both views' levels (the number of edges strictly below the value:
//    numpy.digitize(right=True)), its views, and its "ring" bits: the views whose masked Sobel
//    map is finite there (all 8 neighbours, reflected at the extent's border, in the view; the
//    centre has weight 0), packed into lv[p];
// 4. one-sided co-occurrence counts half[v][k][a][b] of in-view pixel pairs (p, p + offset_k)
//    with p + offset_k inside the extent, for the 4 distinct offsets (2,2), (2,-2), (4,4),
//    (4,-4) (SCIP's angles pi/4, 3pi/4 and their negations 5pi/4, 7pi/4 at distances 3 and 5:
//    a symmetric matrix is half[a][b] + half[b][a]), by shared-memory atomics; the ring pixels
//    of each view as bit masks of 32-pixel chunks;
// 5. a block scan of the chunks' counts; every ring pixel's Sobel value (of the raw plane, the
//    numba _sobel_px's value) goes to its raster-order place in its views' lists;
// 6. concurrently: threads 0 and 32 sum each view's list sequentially (the values, then the
//    squared deviations from the mean), as sobel_view_statistics; lanes 0..7 of warps 2 and 3
//    compute the six graycoprops properties of the 8 matrices, each sum in the numba loop
//    order; warps 4 and 5 find partial maxima and minima of the lists;
// 7. per view, property and distance the mean and the population std over the 4 angles
//    (matrices A, B, A, B: NumPy's sequential sums over that axis); the Sobel max and min.
//
// Output: per plane 56 values (mask view 28, combined view 28; per view for each property
// mean_d3, mean_d5, std_d3, std_d5, then Sobel mean, std, max, min). Row `obj` of the output
// starts at out + obj * ld, channel c at + c * 56. Objects with usable == 0 and empty views:
// NaN; a view without a finite Sobel value: NaN Sobel statistics.
//
// Workspace for H x W planes (cap = H W, cap8 = cap rounded up to 8), in this order: px (cap
// uint16), fl (cap8 + 16 bytes: the views; from step 4 the chunks' ring masks and counts),
// half (2 x 4 x 256 uint32), sob (cap8 doubles: the Sobel lists; until step 5 lv, cap uint16).
// 64 x 64 planes: 53264 bytes (+ 2.9 KiB static), so 4 blocks fit an SM of an H100.

#define TEX_NL 16     // grey levels (quantisation edges)
#define TEX_NOFF 4    // distinct offsets
#define TEX_NPROP 6   // graycoprops properties
#define TEX_NVIEW 28  // values per view

// Number of the ascending edges strictly below the integer x, from the integer thresholds
// ie[k] = floor(edge_k) + 1 (edge_k < x <=> ie[k] <= x), for x <= edge_15.
__device__ __forceinline__ int tex_level(int x, const int* ie) {
    int l = 0;
    if (ie[l + 7] <= x) l += 8;
    if (ie[l + 3] <= x) l += 4;
    if (ie[l + 1] <= x) l += 2;
    if (ie[l] <= x) l += 1;
    return l;
}

__device__ __forceinline__ int tex_popc(unsigned x) {
#ifdef CUDA_SIM
    return __builtin_popcount(x);
#else
    return __popc(x);
#endif
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

// skimage.filters.sobel (mode 'reflect') of pixel (i, j) of the h x w uint16 plane f, equal
// to the numba _sobel_px / sg_sobel_px: for integer values their smoothed differences
// gr = top - bottom, gc = left - right are exact multiples of 1/4 and gr^2 + gc^2 is exactly
// (gr4^2 + gc4^2) / 16 with the integers gr4 = 4 gr, gc4 = 4 gc; then the same sqrt and scaling.
__device__ __forceinline__ double tex_sobel_px(const unsigned short* f, int h, int w, int i, int j) {
    const int ip = i > 0 ? i - 1 : 0, ib = i < h - 1 ? i + 1 : h - 1;
    const int jp = j > 0 ? j - 1 : 0, jb = j < w - 1 ? j + 1 : w - 1;
    const int a = f[ip * w + jp], b = f[ip * w + j], c = f[ip * w + jb];
    const int d = f[i * w + jp], e = f[i * w + jb];
    const int g = f[ib * w + jp], k = f[ib * w + j], l = f[ib * w + jb];
    const int gr4 = (a + 2 * b + c) - (g + 2 * k + l);
    const int gc4 = (a + 2 * d + g) - (c + 2 * e + l);
    const long long q = (long long)gr4 * gr4 + (long long)gc4 * gc4;  // < 2^38
    return sqrt((double)q * 0.0625) * (1.0 / sqrt(2.0));
}

// The float path's twins: the number of the ascending (double) edges strictly below x (x <=
// edge_15; numba glcm_props' level), and the Sobel value of pixel (i, j) of a float32 plane,
// the numba _sobel_px on the values as doubles (sg_sobel_px's arithmetic).
__device__ __forceinline__ int tex_level_f(double x, const double* e) {
    int l = 0;
    if (e[l + 7] < x) l += 8;
    if (e[l + 3] < x) l += 4;
    if (e[l + 1] < x) l += 2;
    if (e[l] < x) l += 1;
    return l;
}

__device__ __forceinline__ double tex_sobel_px_f(const float* f, int h, int w, int i, int j) {
    const int ip = i > 0 ? i - 1 : 0, ib = i < h - 1 ? i + 1 : h - 1;
    const int jp = j > 0 ? j - 1 : 0, jb = j < w - 1 ? j + 1 : w - 1;
    const double top = 0.25 * (double)f[ip * w + jp] + 0.5 * (double)f[ip * w + j] + 0.25 * (double)f[ip * w + jb];
    const double bottom = 0.25 * (double)f[ib * w + jp] + 0.5 * (double)f[ib * w + j] + 0.25 * (double)f[ib * w + jb];
    const double left = 0.25 * (double)f[ip * w + jp] + 0.5 * (double)f[i * w + jp] + 0.25 * (double)f[ib * w + jp];
    const double right = 0.25 * (double)f[ip * w + jb] + 0.5 * (double)f[i * w + jb] + 0.25 * (double)f[ib * w + jb];
    const double gr = top - bottom;
    const double gc = left - right;
    return sqrt(gr * gr + gc * gc) * (1.0 / sqrt(2.0));
}

// graycoprops of the symmetric matrix hp[a][b] + hp[b][a] (16 x 16 one-sided counts, tot in
// all) in the loop order of the numba glcm_props, in two parts that run in two threads: role 0
// the contrast, dissimilarity and homogeneity (res[0..2]); role 1 the ASM, energy and
// correlation (res[3..5]; the means, then the variances and covariance). Each sum is that of
// the numba loop, term by term: a bin with a zero count contributes +-0 to sums that are never
// -0, so skipping it changes no bit.
__device__ void tex_graycoprops(const unsigned int* hp, unsigned int tot, double* res, int role) {
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
#pragma unroll 2
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

// Sequential sum of x[0..n) (pass 0) or of (x[k] - mean)^2 (pass 1), in order, one dependent
// addition per value, as the numba loops of sobel_view_statistics. x: 16-byte aligned.
__device__ double tex_sum(const double* x, int n, double mean, int pass) {
    double s = 0.0;
    const tex_pair* q = reinterpret_cast<const tex_pair*>(x);
    int k = 0;
#pragma unroll 1
    for (; k + 8 <= n; k += 8, q += 4) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const tex_pair y = q[e];
            if (pass == 0) {
                s += y.a;
                s += y.b;
            } else {
                const double da = y.a - mean, db = y.b - mean;
                s += da * da;
                s += db * db;
            }
        }
    }
#pragma unroll 1
    for (; k < n; ++k) {
        const double d = pass == 0 ? x[k] : x[k] - mean;
        s += pass == 0 ? d : d * d;
    }
    return s;
}

// The kernel over the per-block workspace `base` (inlined into the two entry points, so that
// the shared-memory variant addresses its workspace as shared memory).
template <bool F32>  // F32: float32 pixels (the float path: double edges, Sobel in double); else uint8/16
__device__ __forceinline__ void
tex_planes(const void* pixels, const int dtype, const int C, const int H, const int W,
           const long long* __restrict__ extents, const int M, const unsigned char* __restrict__ mask,
           const unsigned char* __restrict__ combined, const unsigned char* __restrict__ usable,
           double* __restrict__ out, const long long ld, unsigned char* base) {
    const int cap = H * W;
    const int cap8 = (cap + 7) & ~7;
    SgArena arena(base);
    // (the plane: uint16 values, or float32 ones for F32; the same place in the workspace)
    unsigned short* px = F32 ? nullptr : arena.take<unsigned short>(cap);
    float* pxf = F32 ? arena.take<float>(cap) : nullptr;
    unsigned char* fl = arena.take<unsigned char>(cap8 + 16);
    unsigned int* half = arena.take<unsigned int>(2 * TEX_NOFF * TEX_NL * TEX_NL);
    double* sob = arena.take<double>(cap8);
    // steps 3-4: levels (bits 0-7), views (8-9) and ring bits (10-11) per pixel, in the space
    // of the Sobel lists
    unsigned short* lv = reinterpret_cast<unsigned short*>(sob);
    // steps 4-5: per view the ring pixels of each 32-pixel chunk (bit masks) and their prefix
    // counts, in the space of fl (16 bytes per chunk)
    unsigned int* rmask = reinterpret_cast<unsigned int*>(fl);
    unsigned int* rpre = rmask + 2 * ((cap + 31) >> 5);
    __shared__ int s_lo[2], s_hi[2], s_n[2];
    __shared__ int s_iedge[2][TEX_NL];
    __shared__ unsigned int s_flo[2], s_fhi[2];  // (F32: order bits of the views' extreme values)
    __shared__ double s_dedge[2][TEX_NL];         // (F32: the edges)
    // per thread: the ring pixels of its chunks (view 1 << 32 | view 0), scanned; in step 6 the
    // partial Sobel maxima and minima
    __shared__ u64 s_part[SG_THREADS + 1];
    __shared__ u64 s_group[33];
    __shared__ double s_props[2][TEX_NOFF][TEX_NPROP];
    __shared__ unsigned int s_tot[2 * TEX_NOFF];
    const int t = threadIdx.x;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / C;
        double* o = out + (i64)obj * ld + (i64)(m - obj * C) * 2 * TEX_NVIEW;
        if (!usable[obj]) {
            for (int k = t; k < 2 * TEX_NVIEW; k += SG_THREADS) o[k] = sg_nan();
            continue;  // the same in every thread
        }
        const int h = (int)extents[2 * obj], w = (int)extents[2 * obj + 1];
        const int n = h * w;
        const int nch = (n + 31) >> 5;                            // 32-pixel chunks
        const int cpt = (nch + SG_THREADS - 1) / SG_THREADS;      // chunks per thread

        // 1. plane, views, per-view range
        if (t < 2) {
            s_lo[t] = 0x7fffffff;
            s_hi[t] = -1;
            s_n[t] = 0;
            s_flo[t] = 0xffffffffu;
            s_fhi[t] = 0u;
        }
        if (t < 2 * TEX_NOFF) s_tot[t] = 0;
        for (int k = t; k < 2 * TEX_NOFF * TEX_NL * TEX_NL; k += SG_THREADS) half[k] = 0;
        __syncthreads();
        {
            const void* plane = dtype == 0 ? (const void*)((const unsigned char*)pixels + (i64)m * cap)
                                           : (const void*)((const unsigned short*)pixels + (i64)m * cap);
            const unsigned char* mk = mask + (i64)m * cap;
            const unsigned char* cb = combined + (i64)obj * cap;
            int lo0 = 0x7fffffff, hi0 = -1, n0 = 0, lo1 = 0x7fffffff, hi1 = -1, n1 = 0;
            unsigned int flo0 = 0xffffffffu, fhi0 = 0u, flo1 = 0xffffffffu, fhi1 = 0u;
            if (t < n) {
                const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
                int i = t / w, j = t - (t / w) * w;
                for (int p = t; p < n; p += SG_THREADS) {
                    const int idx = i * W + j;
                    int f = (mk[idx] != 0) | ((cb[idx] != 0) << 1);
                    if constexpr (F32) {
                        const float x = reinterpret_cast<const float*>(pixels)[(i64)m * cap + idx];
                        if (x != x) f = 0;  // (a NaN pixel is in no view, as texture_planes' reference)
                        fl[p] = (unsigned char)f;
                        const unsigned int ob = int_f32_order(x);
                        pxf[p] = x;
                        if (f & 1) {
                            flo0 = ob < flo0 ? ob : flo0;
                            fhi0 = ob > fhi0 ? ob : fhi0;
                            ++n0;
                        }
                        if (f & 2) {
                            flo1 = ob < flo1 ? ob : flo1;
                            fhi1 = ob > fhi1 ? ob : fhi1;
                            ++n1;
                        }
                    } else {
                        fl[p] = (unsigned char)f;
                        const int v = sg_load_int(plane, idx, dtype);
                        px[p] = (unsigned short)v;
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
                if constexpr (F32) {
                    atomicMin(&s_flo[0], flo0);
                    atomicMax(&s_fhi[0], fhi0);
                } else {
                    atomicMin(&s_lo[0], lo0);
                    atomicMax(&s_hi[0], hi0);
                }
                atomicAdd(&s_n[0], n0);
            }
            if (n1) {
                if constexpr (F32) {
                    atomicMin(&s_flo[1], flo1);
                    atomicMax(&s_fhi[1], fhi1);
                } else {
                    atomicMin(&s_lo[1], lo1);
                    atomicMax(&s_hi[1], hi1);
                }
                atomicAdd(&s_n[1], n1);
            }
        }
        __syncthreads();

        // 2. quantisation edges (numpy.histogram_bin_edges via linspace_rows' arithmetic; the
        // step is never zero for integer values)
        if (t < 2 * TEX_NL) {
            const int v = t / TEX_NL, k = t - v * TEX_NL;
            const bool has = s_n[v] > 0;
            double lo, hi;
            if constexpr (F32) {
                lo = has ? (double)int_f32_value(s_flo[v]) : 0.0;
                hi = has ? (double)int_f32_value(s_fhi[v]) : 0.0;
            } else {
                lo = has ? (double)s_lo[v] : 0.0;
                hi = has ? (double)s_hi[v] : 0.0;
            }
            if (lo == hi) {
                lo = lo - 0.5;
                hi = hi + 0.5;
            }
            const double delta = hi - lo;
            const double step = delta / (double)(TEX_NL - 1);
            if constexpr (F32) {  // (linspace_rows: the zero-step form where the step is zero)
                const double e = k == TEX_NL - 1 ? hi
                                 : (step == 0.0 ? ((double)k / (double)(TEX_NL - 1)) * delta : (double)k * step) + lo;
                s_dedge[v][k] = e;
            } else {
                const double e = k == TEX_NL - 1 ? hi : (double)k * step + lo;
                s_iedge[v][k] = (int)floor(e) + 1;  // integer values: edge < x <=> floor(edge) + 1 <= x
            }
        }
        __syncthreads();

        // 3. per pixel: levels, views and ring bits
        if (t < n) {
            const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
            int i = t / w, j = t - (t / w) * w;
            for (int p = t; p < n; p += SG_THREADS) {
                const int f = fl[p];
                int l0, l1;
                if constexpr (F32) {
                    const double x = (double)pxf[p];
                    l0 = (f & 1) ? tex_level_f(x, s_dedge[0]) : 0;
                    l1 = (f & 2) ? tex_level_f(x, s_dedge[1]) : 0;
                } else {
                    const int x = px[p];
                    l0 = (f & 1) ? tex_level(x, s_iedge[0]) : 0;
                    l1 = (f & 2) ? tex_level(x, s_iedge[1]) : 0;
                }
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

        // 4. one-sided pair counts (pixels strided over the threads); the ring pixels of each
        // view as bit masks of 32-pixel chunks (in the space of fl, no longer read), counted
        {
            if (t < n) {
                const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
                int i = t / w, j = t - (t / w) * w;
                for (int p = t; p < n; p += SG_THREADS) {
                    const int L = lv[p];
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
                    i += di;
                    j += dj;
                    if (j >= w) {
                        j -= w;
                        ++i;
                    }
                }
            }
            u64 nu = 0;
            for (int c = t * cpt; c < sg_min((t + 1) * cpt, nch); ++c) {
                unsigned m0 = 0, m1 = 0;
                const int e1 = sg_min(32, n - 32 * c);
                for (int e = 0; e < e1; ++e) {
                    const unsigned r = lv[32 * c + e] >> 10;
                    m0 |= (r & 1u) << e;
                    m1 |= (r >> 1) << e;
                }
                rmask[c] = m0;
                rmask[nch + c] = m1;
                nu += (u64)tex_popc(m0) | ((u64)tex_popc(m1) << 32);
            }
            s_part[t + 1] = nu;
        }
        __syncthreads();

        // 5. exclusive scan of the per-thread counts (32 groups of 8; both views at once), then
        // the prefix of every chunk
        if (t < 32) {
            u64 s = 0;
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
        } else if (t >= 64 && t < 64 + 8 * 2 * TEX_NOFF) {  // the pairs of each matrix, by 8 threads
            const unsigned int* hp = half + ((t - 64) << 5);
            unsigned int q = 0;
            for (int k = 0; k < 32; ++k) q += hp[k];
            atomicAdd(&s_tot[(t - 64) >> 3], q);
        }
        __syncthreads();
        if (t < 32) {
            const u64 add = s_group[t];
            for (int k = 1; k <= SG_THREADS / 32; ++k) s_part[t * (SG_THREADS / 32) + k] += add;
            if (t == 0) s_part[0] = 0;
        }
        __syncthreads();
        {
            u64 pre = s_part[t];
            for (int c = t * cpt; c < sg_min((t + 1) * cpt, nch); ++c) {
                rpre[c] = (unsigned)(pre & 0xffffffffu);
                rpre[nch + c] = (unsigned)(pre >> 32);
                pre += (u64)tex_popc(rmask[c]) | ((u64)tex_popc(rmask[nch + c]) << 32);
            }
        }
        const int ns0 = (int)(s_part[SG_THREADS] & 0xffffffffu), ns1 = (int)(s_part[SG_THREADS] >> 32);
        __syncthreads();
        // each view's Sobel values in raster order: view 0's list at sob[0..), view 1's after it
        // (16-byte aligned) when both fit, else one view after the other (two rounds); the
        // values of the ring pixels (strided over the threads) go to their places in the lists
        const int base1 = (ns0 + 1) & ~1;
        const bool both = base1 + ns1 <= cap8;
        for (int round = 0; round < (both ? 1 : 2); ++round) {
            const int vm = both ? 3 : 1 << round;  // the views of this round
            const int b1 = both ? base1 : 0;
            {
                if (t < n) {
                    const int di = SG_THREADS / w, dj = SG_THREADS - di * w;
                    int i = t / w, j = t - (t / w) * w;
                    for (int p = t; p < n; p += SG_THREADS) {
                        const int c = p >> 5;
                        const unsigned below = (1u << (p & 31)) - 1u, bit = below + 1u;
                        const unsigned m0 = (vm & 1) ? rmask[c] : 0u, m1 = (vm & 2) ? rmask[nch + c] : 0u;
                        if ((m0 | m1) & bit) {
                            double x;
                            if constexpr (F32) x = tex_sobel_px_f(pxf, h, w, i, j);
                            else x = tex_sobel_px(px, h, w, i, j);
                            if (m0 & bit) sob[rpre[c] + tex_popc(m0 & below)] = x;
                            if (m1 & bit) sob[b1 + rpre[nch + c] + tex_popc(m1 & below)] = x;
                        }
                        i += di;
                        j += dj;
                        if (j >= w) {
                            j -= w;
                            ++i;
                        }
                    }
                }
            }
            __syncthreads();

            // 6. Sobel statistics (threads 0, 32: sequential sums in raster order) and, in the
            // first round, the GLCM properties (warps 2 and 3, lanes 0..7), concurrently
            if ((t == 0 || t == 32) && (vm >> (t >> 5)) & 1) {
                const int v = t >> 5;
                const int cnt = v ? ns1 : ns0;
                const double* x = sob + (v ? b1 : 0);
                double* os = o + v * TEX_NVIEW + 4 * TEX_NPROP;
                if (cnt == 0) {
                    os[0] = os[1] = os[2] = os[3] = sg_nan();
                } else {
                    const double mean = tex_sum(x, cnt, 0.0, 0) / (double)cnt;
                    const double var = tex_sum(x, cnt, mean, 1);
                    os[0] = mean;
                    os[1] = sqrt(var / (double)cnt);
                }
            } else if (((t >> 5) == 4 || (t >> 5) == 5) && ((vm >> (t >> 5 & 1)) & 1)) {
                // warp 4 (view 0), warp 5 (view 1): partial max and min of the view's values
                // (bit patterns of values >= +0 order as the values), in s_part (free now)
                const int v = (t >> 5) & 1;
                const double* x = sob + (v ? b1 : 0);
                const int cnt = v ? ns1 : ns0;
                u64 mx = 0ull, mn = 0x7ff0000000000000ull;  // +0, +inf
#pragma unroll 1
                for (int k = t & 31; k < cnt; k += 32) {
                    const u64 b = (u64)__double_as_longlong(x[k]);
                    mx = b > mx ? b : mx;
                    mn = b < mn ? b : mn;
                }
                s_part[2 * (t - 128)] = mx;
                s_part[2 * (t - 128) + 1] = mn;
            } else if (round == 0 && (t & 31) < 2 * TEX_NOFF && (t >> 5) >= 2 && (t >> 5) < 4) {
                const int k = t & 31;  // matrix: view k / 4, offset k % 4
                tex_graycoprops(half + (k << 8), s_tot[k], s_props[k / TEX_NOFF][k % TEX_NOFF], (t >> 5) - 2);
            }
            __syncthreads();
        }

        // 7. max and min of the Sobel values (from the 32 partial ones per view) and the mean
        // and std of the properties over the angles pi/4, 3pi/4, 5pi/4, 7pi/4: matrices A, B,
        // A, B with A = offset (d', d'), B = (d', -d')
        if (t >= 2 * 2 * TEX_NPROP && t < 2 * 2 * TEX_NPROP + 4) {
            const int v = (t - 2 * 2 * TEX_NPROP) >> 1, mn = t & 1;
            const u64* part = s_part + 64 * v + mn;
            u64 b = part[0];
            for (int q = 1; q < 32; ++q) {
                const u64 e = part[2 * q];
                b = mn ? (e < b ? e : b) : (e > b ? e : b);
            }
            o[v * TEX_NVIEW + 4 * TEX_NPROP + 2 + mn] = (v ? ns1 : ns0) ? __longlong_as_double((long long)b) : sg_nan();
        }
        if (t < 2 * 2 * TEX_NPROP) {
            const int v = t / (2 * TEX_NPROP), r = t - v * (2 * TEX_NPROP);
            const int d = r / TEX_NPROP, pr = r - d * TEX_NPROP;
            double* ov = o + v * TEX_NVIEW + pr * 4;
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

// Entry points: the workspace in dynamic shared memory (`ws_bytes` is then 0), or in a slice
// of the global scratch buffer per block; scip_gpu/_gpu_texture.py launches the one that
// scip_gpu.gpu_kernels.launch's choice of workspace calls for.
extern "C" __global__ void
texture_planes(const void* pixels, const int dtype, const int C, const int H, const int W,
               const long long* __restrict__ extents, const int M,
               const unsigned char* __restrict__ mask,      // (N, C, H, W)
               const unsigned char* __restrict__ combined,  // (N, H, W)
               const unsigned char* __restrict__ usable,    // (N,)
               double* __restrict__ out, const long long ld,
               unsigned char* scratch, const long long ws_bytes) {
    if (ws_bytes != 0) {  // launched with a global workspace: that is texture_planes_global's
#ifdef CUDA_SIM
        __builtin_trap();
#else
        __trap();
#endif
    }
    tex_planes<false>(pixels, dtype, C, H, W, extents, M, mask, combined, usable, out, ld, SG_DYNAMIC_SMEM());
}

extern "C" __global__ void
texture_planes_global(const void* pixels, const int dtype, const int C, const int H, const int W,
                      const long long* __restrict__ extents, const int M,
                      const unsigned char* __restrict__ mask, const unsigned char* __restrict__ combined,
                      const unsigned char* __restrict__ usable, double* __restrict__ out, const long long ld,
                      unsigned char* scratch, const long long ws_bytes) {
    tex_planes<false>(pixels, dtype, C, H, W, extents, M, mask, combined, usable, out, ld,
                      sg_workspace(scratch, ws_bytes));
}

// float32 pixels (the same two entry points; dtype unused)
extern "C" __global__ void
texture_planes_f32(const void* pixels, const int dtype, const int C, const int H, const int W,
                   const long long* __restrict__ extents, const int M, const unsigned char* __restrict__ mask,
                   const unsigned char* __restrict__ combined, const unsigned char* __restrict__ usable,
                   double* __restrict__ out, const long long ld, unsigned char* scratch, const long long ws_bytes) {
    if (ws_bytes != 0) {
#ifdef CUDA_SIM
        __builtin_trap();
#else
        __trap();
#endif
    }
    tex_planes<true>(pixels, dtype, C, H, W, extents, M, mask, combined, usable, out, ld, SG_DYNAMIC_SMEM());
}

extern "C" __global__ void
texture_planes_f32_global(const void* pixels, const int dtype, const int C, const int H, const int W,
                          const long long* __restrict__ extents, const int M, const unsigned char* __restrict__ mask,
                          const unsigned char* __restrict__ combined, const unsigned char* __restrict__ usable,
                          double* __restrict__ out, const long long ld, unsigned char* scratch,
                          const long long ws_bytes) {
    tex_planes<true>(pixels, dtype, C, H, W, extents, M, mask, combined, usable, out, ld,
                     sg_workspace(scratch, ws_bytes));
}
