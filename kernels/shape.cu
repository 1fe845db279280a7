// Shape family: SCIP's 59 region properties (skimage 0.20 regionprops, mean over the
// 8-connected components) of every binary plane, one thread block per plane:
//
//   plane (object x {combined, channel 0..C-1}) -> padded by one background pixel
//   -> 8-connected labels (union-find; roots = first pixels in raster order = the CPU's
//      numbering) -> compact component numbers 0..K-1 in raster order of the roots
//   -> 2x2 window and border-pixel bitmasks (Euler / Crofton / perimeter patterns)
//   -> if some component has a hole: 8-connected background labels and, for every component,
//      the background component around it (the containment tree of the filled area)
//   -> components in chunks of SHP_CK (any count): bounding boxes and areas, row records,
//      raw moments, convex hull rows, Feret diameter, central moments, pattern sums, the
//      59 properties, and their sums in component order.
//
// Reference semantics: scip_gpu.features.shape.compute_shape (stage ``shape.block``); every
// floating-point sum is done in the CPU path's order (record_power_sums, label_moment_sums,
// pattern_sums, _mean_per_plane), the second-order moments and the hull in exact integer
// arithmetic as there, and hypot is glibc's (no-FMA) algorithm; m00 ** 2.5 and m00 ** 4 come
// from tables the host computes with NumPy. Only atan2 (orientation) is the device's own.
//
// Inputs: mask (N, C, H, W) uint8, combined (N, H, W) uint8, extents (N, 2), usable (N,) uint8;
// coefs: EULER_COEFS_8 (16), CROFTON_COEFS_4 (16), PERIMETER_WEIGHTS (50); pow25, pow4:
// k ** 2.5 and k ** 4 for k = 0..H*W. Output: out (N, 59 * (C + 1)) float64.
// Planes are at most 65536 pixels once padded (labels pack two 15/16-bit fields).

#define SHP_CK 16         // components per chunk
#define SHP_SLOT 60       // doubles per component slot (the 59 properties)
#define SHP_NPROPS 59
#define SHP_SENTINEL 32000  // above every doubled column (Feret chains' missing points)
#define SHP_IDX 0x7fff      // component number bits of a foreground label entry

// per-component int fields (ci[f * SHP_CK + c])
#define SHP_MINR 0
#define SHP_MAXR 1
#define SHP_MINC 2
#define SHP_MAXC 3
#define SHP_AREA 4
#define SHP_FILLED 5
#define SHP_EULER 6
#define SHP_ROFF 7
#define SHP_CONVEX 8
#define SHP_FERET 9
#define SHP_NVL 10
#define SHP_NVR 11
#define SHP_NCI 12
// per-component double fields (cd[f * SHP_CK + c])
#define SHP_CR 0
#define SHP_CC 1
#define SHP_CROFTON 2
#define SHP_PERIM 3
#define SHP_NCD 4
// per-record short fields (rsh[f * rcap + r])
#define SHP_LEFT 0
#define SHP_RIGHT 1
#define SHP_A 2
#define SHP_B 3
#define SHP_COUNT 4
#define SHP_NRS 5

#ifdef CUDA_SIM
#define SHP_NOINLINE
#else
#define SHP_NOINLINE __noinline__
#endif

__device__ __forceinline__ i64 shp_r16(i64 n) { return ((n + 15) / 16) * 16; }

// Bytes of the chunk arrays for records capacity rcap (the host mirrors this).
__device__ __forceinline__ i64 shp_chunk_bytes(int rcap) {
    const int scap = 2 * rcap + SHP_CK;
    return shp_r16(8LL * SHP_CK * SHP_SLOT) + shp_r16(8LL * SHP_NCD * SHP_CK) + shp_r16(4LL * SHP_NCI * SHP_CK) +
           shp_r16(8LL * 3 * rcap) + shp_r16(2LL * SHP_NRS * rcap) + shp_r16(2LL * 4 * scap);
}

__device__ __forceinline__ int shp_ffs64(u64 x) {
#ifdef CUDA_SIM
    return __builtin_ffsll((long long)x);
#else
    return __ffsll((long long)x);
#endif
}

// Bits lo..hi (inclusive, 0 <= lo <= hi <= 63) set.
__device__ __forceinline__ u64 shp_bits(int lo, int hi) { return (~0ULL << lo) & (~0ULL >> (63 - hi)); }

// Bits j - 1, j, j + 1 (bits 0, 1, 2 of the result) of a bitmask row (1 <= j, j + 1 inside it).
__device__ __forceinline__ int shp_bits3(const u64* row, int j) {
    const int lo = j - 1, wd = lo >> 6, sh = lo & 63;
    u64 v = row[wd] >> sh;
    if (sh > 61) v |= row[wd + 1] << (64 - sh);
    return (int)(v & 7ULL);
}

// ceil(a / b) for b > 0 (Python's -((-a) // b)).
__device__ __forceinline__ int shp_ceildiv(int a, int b) {
    int q = a / b;
    if (q * b != a && a > 0) ++q;
    return q;
}

// Exclusive prefix sum of one int per thread; *total gets the sum (every thread must call).
__device__ int shp_scan(int v, int* total) {
    __shared__ int buf[SG_THREADS];
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int off = 1; off < SG_THREADS; off <<= 1) {
        const int add = t >= off ? buf[t - off] : 0;
        __syncthreads();
        buf[t] += add;
        __syncthreads();
    }
    const int incl = buf[t];
    *total = buf[SG_THREADS - 1];
    __syncthreads();
    return incl - v;
}

// glibc's hypot (2.35+, the variant without FMA that x86-64 builds use): Borges' corrected
// sqrt(x^2 + y^2), operation for operation.
__device__ double shp_hypot_kernel(double ax, double ay) {
    double h = sqrt(ax * ax + ay * ay);
    double t1, t2;
    if (h <= 2.0 * ay) {
        const double delta = h - ay;
        t1 = ax * (2.0 * delta - ax);
        t2 = (delta - 2.0 * (ax - ay)) * delta;
    } else {
        const double delta = h - ax;
        t1 = 2.0 * delta * (ax - 2.0 * ay);
        t2 = (4.0 * delta - ay) * ay + delta * delta;
    }
    h -= (t1 + t2) / (2.0 * h);
    return h;
}

__device__ double shp_hypot(double x, double y) {
    if (!isfinite(x) || !isfinite(y)) {
        if (isinf(x) || isinf(y)) return sg_inf();
        return x + y;
    }
    x = fabs(x);
    y = fabs(y);
    const double ax = x < y ? y : x, ay = x < y ? x : y;
    const double scale = 0x1p-600;
    if (ax > 0x1p+511) {
        if (ay <= ax * 0x1p-54) return ax + ay;
        return shp_hypot_kernel(ax * scale, ay * scale) / scale;
    }
    if (ay < 0x1p-459) {
        if (ax >= ay / 0x1p-54) return ax + ay;
        return shp_hypot_kernel(ax / scale, ay / scale) * scale;
    }
    if (ay <= ax * 0x1p-54) return ax + ay;
    return shp_hypot_kernel(ax, ay);
}

// ---------------------------------------------------------------------------------------------
// Background labels with the component numbers kept: entries of background pixels hold
// -1 - parent (union-find, the smaller pixel index the root), foreground entries stay >= 0.

__device__ __forceinline__ int shp_bg_find(volatile int* lab, int x) {
    int p = -1 - lab[x];
    while (p != x) {
        x = p;
        p = -1 - lab[x];
    }
    return x;
}

__device__ void shp_bg_union(int* lab, int a, int b) {
    volatile int* vl = lab;
    bool done = false;
    while (!done) {
        a = shp_bg_find(vl, a);
        b = shp_bg_find(vl, b);
        if (a < b) {
            const int old = -1 - atomicMax(&lab[b], -1 - a);
            done = old == b;
            b = old;
        } else if (b < a) {
            const int old = -1 - atomicMax(&lab[a], -1 - b);
            done = old == a;
            a = old;
        } else {
            done = true;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convex hull chains (features.shape._chains / _hull_rows / _feret)
//
// A component of height hh has 2 hh + 1 chain positions: 2k the half row above its row k,
// 2k + 1 row k. The left chain holds doubled left ends, the right chain the negated doubled
// right ends (so both are lower hulls); u are the per-row values (negated for the right side).

__device__ __forceinline__ int shp_chain_x(const short* v, int hh, int t, bool neg, bool feret) {
    const int k = t >> 1;
    if (t & 1) return 2 * (neg ? -(int)v[k] : (int)v[k]) - 1;
    const int kp = k > 0 ? k - 1 : 0, kc = k < hh - 1 ? k : hh - 1;
    const int up = neg ? -(int)v[kp] : (int)v[kp];
    const int uc = neg ? -(int)v[kc] : (int)v[kc];
    if (feret && k >= 1 && k <= hh - 1 && up == uc) return SHP_SENTINEL;
    return 2 * (up < uc ? up : uc);
}

// Andrew's monotone chain (the numba lower_hull_flags' pop rule: collinear points go) over the
// points (i, x) for i = 0 .. len - 1 for which point(i, x) is true: the lower hull's vertices
// in st_t / st_x; returns their number.
template <class Point>
__device__ __forceinline__ int shp_monotone_chain(int len, Point point, short* st_t, short* st_x) {
    int sp = 0;
    int ia = 0, xa = 0, ib = 0, xb = 0;  // the top two entries
    for (int i = 0; i < len; ++i) {
        int xc;
        if (!point(i, xc)) continue;
        while (sp >= 2 && (xb - xa) * (i - ib) >= (xc - xb) * (ib - ia)) {
            --sp;
            ib = ia;
            xb = xa;
            if (sp >= 2) {
                ia = st_t[sp - 2];
                xa = st_x[sp - 2];
            }
        }
        st_t[sp] = (short)i;
        st_x[sp] = (short)xc;
        ++sp;
        ia = ib;
        xa = xb;
        ib = i;
        xb = xc;
    }
    return sp;
}

// The lower hull of the chain of row ends (shp_chain_x, 2 hh + 1 points).
__device__ int shp_lower_hull(const short* v, int hh, bool neg, bool feret, short* st_t, short* st_x) {
    return shp_monotone_chain(
        2 * hh + 1, [&](int i, int& x) { x = shp_chain_x(v, hh, i, neg, feret); return true; }, st_t, st_x);
}

// Column of the hull image's boundary in every row: ceil(g(2k + 1) / 2), g the hull through the
// vertices (exact integer interpolation, as _minorant_ceil_half); negated for the right side.
__device__ void shp_hull_rows(const short* st_t, const short* st_x, int hh, bool neg, short* out) {
    int j = 0;
    for (int k = 0; k < hh; ++k) {
        const int t = 2 * k + 1;
        while (st_t[j + 1] <= t) ++j;  // the last vertex (2 hh) is beyond every row
        const int t0 = st_t[j], x0 = st_x[j];
        int num = x0, den = 1;
        if (t0 != t) {
            const int t1 = st_t[j + 1], x1 = st_x[j + 1];
            den = t1 - t0;
            num = x0 * den + (x1 - x0) * (t - t0);
        }
        const int c = shp_ceildiv(num, 2 * den);
        out[k] = (short)(neg ? -c : c);
    }
}

// ---------------------------------------------------------------------------------------------
// The 59 properties of one component (features.shape._moment_props, _inertia, _hu_moments,
// _hull_props), written over its slot sl: raw moments are already at 20..35, central ones at
// 36..51. Four separate functions (not inlined): each keeps few values live, so the kernel's
// register budget stays that of its other phases.

// Inertia tensor, its eigenvalues, eccentricity and axis lengths (sl[2], 7, 8, 14..19).
__device__ SHP_NOINLINE void shp_props_inertia(double* sl, const double* pow4, int area) {
    const double m00 = sl[20];
    const i64 n0 = (i64)m00, m01 = (i64)sl[21], m02 = (i64)sl[22], m10 = (i64)sl[24], m11 = (i64)sl[25],
              m20 = (i64)sl[28];
    const i64 q20 = n0 * m20 - m10 * m10, q02 = n0 * m02 - m01 * m01, q11 = n0 * m11 - m10 * m01;
    const double mu20 = sl[44], mu02 = sl[38], mu11 = sl[41];
    const double s = mu20 + mu02;
    const double a = (s - mu20) / m00;
    const double cc = (s - mu02) / m00;
    const double b = -mu11 / m00;
    sl[14] = a;
    sl[15] = b;
    sl[16] = b;
    sl[17] = cc;
    const double mean = (a + cc) / 2;
    const double disc = shp_hypot((a - cc) / 2, b);
    const double l1 = mean + disc;
    const double det = ((double)q20 * (double)q02 - (double)q11 * (double)q11) / pow4[area];
    const double l2 = disc <= mean / 2 ? mean - disc : (l1 > 0 ? det / l1 : 0.0);
    const double l1c = (l1 >= 0.0 || isnan(l1)) ? l1 : 0.0;  // numpy.maximum(l1, 0)
    const double l2c = (l2 >= 0.0 || isnan(l2)) ? l2 : 0.0;
    sl[18] = l1c;
    sl[19] = l2c;
    sl[2] = l1c == 0 ? 0.0 : sqrt(1 - l2c / l1c);
    sl[7] = 4 * sqrt(l1c);
    sl[8] = 4 * sqrt(l2c);
}

// Orientation (scikit-image 0.20's rule) from the inertia tensor (sl[9]).
__device__ SHP_NOINLINE void shp_props_orientation(double* sl) {
    const double a = sl[14], b = sl[15], cc = sl[17];
    const double pi = 3.141592653589793;
    sl[9] = a - cc == 0 ? (b < 0 ? -(pi / 4) : pi / 4) : 0.5 * atan2(-2 * b, cc - a);
}

// Area, convex area, equivalent diameter, Euler number, Feret diameter, filled area,
// perimeters, solidity, extent.
__device__ SHP_NOINLINE void shp_props_scalar(double* sl, const int* ci, const double* cd, int c) {
    const double pi = 3.141592653589793;
    const double m00 = sl[20];
    const int area = ci[SHP_AREA * SHP_CK + c];
    const int hgt = ci[SHP_MAXR * SHP_CK + c] - ci[SHP_MINR * SHP_CK + c] + 1;
    const int wid = ci[SHP_MAXC * SHP_CK + c] - ci[SHP_MINC * SHP_CK + c] + 1;
    const int convex = ci[SHP_CONVEX * SHP_CK + c];
    sl[0] = m00;
    sl[1] = (double)convex;
    sl[3] = sqrt(4 * m00 / pi);
    sl[4] = (double)ci[SHP_EULER * SHP_CK + c];
    sl[5] = sqrt((double)ci[SHP_FERET * SHP_CK + c] / 4.0);
    sl[6] = (double)(area + ci[SHP_FILLED * SHP_CK + c]);
    sl[10] = cd[SHP_PERIM * SHP_CK + c];
    sl[11] = cd[SHP_CROFTON * SHP_CK + c];
    sl[12] = m00 / (double)convex;
    sl[13] = m00 / (double)(hgt * wid);
}

// Hu moments from nu_pq = mu_pq / m00 ** ((p + q) / 2 + 1) (sl[52..58]).
__device__ SHP_NOINLINE void shp_props_hu(double* sl, const double* pow25, int area) {
    const double m00 = sl[20];
    const double d2 = m00 * m00, d3 = pow25[area];
    const double n20 = sl[44] / d2, n02 = sl[38] / d2, n11 = sl[41] / d2;
    const double n30 = sl[48] / d3, n03 = sl[39] / d3, n21 = sl[45] / d3, n12 = sl[42] / d3;
    double t0 = n30 + n12;
    double t1 = n21 + n03;
    double q0 = t0 * t0;
    double q1 = t1 * t1;
    const double n4 = 4 * n11;
    const double hs = n20 + n02;
    const double hd = n20 - n02;
    sl[52] = hs;
    sl[53] = hd * hd + n4 * n11;
    sl[55] = q0 + q1;
    sl[57] = hd * (q0 - q1) + n4 * t0 * t1;
    t0 = t0 * (q0 - 3 * q1);
    t1 = t1 * (3 * q0 - q1);
    q0 = n30 - 3 * n12;
    q1 = 3 * n21 - n03;
    sl[54] = q0 * q0 + q1 * q1;
    sl[56] = q0 * t0 + q1 * t1;
    sl[58] = q1 * t0 - q0 * t1;
}

// ---------------------------------------------------------------------------------------------
// The kernel: its state lives in a volatile shared context that every phase reads afresh, so
// that nothing but the loop counters stays in registers from one phase to the next.

struct ShpCtx {
    int* lab;             // labels: component number (| background around << 15), or < 0
    unsigned char* fg;    // the padded plane
    u64* wmask;           // 2x2 windows with a pattern contribution (by top-left pixel)
    u64* bmask;           // border pixels
    int* rootpix;         // root pixel of every component (before the chunk loop)
    double* slot;         // per component of the chunk: the 59 properties
    double* cd;           // per component: SHP_NCD doubles
    int* ci;              // per component: SHP_NCI ints
    double* rs;           // per record: 3 power sums
    short* rsh;           // per record: SHP_NRS shorts
    short* st;            // hull stacks: t and x of the left and right chains
    const double* coefs;  // Euler (16), Crofton (16), perimeter (50) coefficients
    int rcap, scap;       // record and chain capacity of a chunk
    int h, w, hp, wp, n, words;  // the plane (hp x wp padded)
    int K, E, holed;      // components, Euler number of the plane, some component has a hole
    int c0, nC0, nC, R;   // the chunk: first component, candidates, components, records
};

// The per-chunk arrays (component slots and fields, row records, hull stacks) carved out of
// `region` (shp_chunk_bytes(rcap) bytes) for up to rcap row records.
__device__ void shp_take_chunk(volatile ShpCtx& X, unsigned char* region, int rcap, const double* coefs) {
    SgArena sub(region);
    X.slot = sub.take<double>(SHP_CK * SHP_SLOT);
    X.cd = sub.take<double>(SHP_NCD * SHP_CK);
    X.ci = sub.take<int>(SHP_NCI * SHP_CK);
    X.rs = sub.take<double>(3 * rcap);
    X.rsh = sub.take<short>(SHP_NRS * rcap);
    X.st = sub.take<short>(4 * (2 * rcap + SHP_CK));
    X.coefs = coefs;
    X.rcap = rcap;
    X.scap = 2 * rcap + SHP_CK;
}

// 1. the padded plane; bitmasks cleared
__device__ void shp_load(volatile ShpCtx& X, const unsigned char* src, int W) {
    unsigned char* fg = X.fg;
    u64* wmask = X.wmask;
    u64* bmask = X.bmask;
    const int h = X.h, w = X.w, wp = X.wp, n = X.n, nw = X.hp * X.words;
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        const int r = i / wp, c = i - r * wp;
        fg[i] = (r >= 1 && r <= h && c >= 1 && c <= w) ? (src[(r - 1) * W + (c - 1)] != 0) : 0;
    }
    for (int i = threadIdx.x; i < nw; i += SG_THREADS) {
        wmask[i] = 0;
        bmask[i] = 0;
    }
}

// The window and border bitmasks of the padded plane X.fg (cleared before), the plane's Euler
// number added into X.E (shared by shape_props and cp_sizeshape_planes)
__device__ __forceinline__ void shp_patterns(volatile ShpCtx& X, const unsigned char* fg, int n, int wp, int hp,
                                             int words) {
    const int t = threadIdx.x;
    u64* wmask = X.wmask;
    u64* bmask = X.bmask;
    const double* euler_c = X.coefs;
    int e = 0;
    const int nw = (hp - 1) * (wp - 1);
    for (int q = t; q < nw; q += SG_THREADS) {  // window with top-left pixel (i, j)
        const int i = q / (wp - 1), j = q - i * (wp - 1);
        const int p = i * wp + j;
        const int code = fg[p + wp + 1] + 2 * fg[p + 1] + 4 * fg[p + wp] + 8 * fg[p];
        if (code != 0 && code != 4 && code != 15) {
            atomicOr(&wmask[i * words + (j >> 6)], 1ULL << (j & 63));
            e += (int)euler_c[code];
        }
    }
    for (int q = t; q < n; q += SG_THREADS) {  // border pixels (never on the frame)
        if (!fg[q]) continue;
        if (fg[q - wp] && fg[q + wp] && fg[q - 1] && fg[q + 1]) continue;
        const int i = q / wp, j = q - i * wp;
        atomicOr(&bmask[i * words + (j >> 6)], 1ULL << (j & 63));
    }
    if (e) atomicAdd((int*)&X.E, e);
}

// 2. component numbers in raster order of the roots (each thread a run of pixels; roots get
//    -2 - number first), the window and border bitmasks and the plane's Euler number
__device__ void shp_number(volatile ShpCtx& X) {
    int* lab = X.lab;
    const unsigned char* fg = X.fg;
    int* rootpix = X.rootpix;
    const int n = X.n, wp = X.wp, hp = X.hp, words = X.words;
    const int t = threadIdx.x;
    const int per = (n + SG_THREADS - 1) / SG_THREADS;
    const int a0 = sg_min(t * per, n), a1 = sg_min(a0 + per, n);
    int roots = 0;
    for (int i = a0; i < a1; ++i) roots += lab[i] == i;
    int K;
    int next = shp_scan(roots, &K);
    for (int i = a0; i < a1; ++i)
        if (lab[i] == i) {
            rootpix[next] = i;
            lab[i] = -2 - next;
            ++next;
        }
    if (t == 0) X.K = K;
    shp_patterns(X, fg, n, wp, hp, words);
    __syncthreads();
    for (int i = a0; i < a1; ++i) {
        const int v = lab[i];
        if (v >= 0) lab[i] = -2 - lab[v];
    }
    __syncthreads();
    for (int i = a0; i < a1; ++i) {
        const int v = lab[i];
        if (v <= -2) lab[i] = -2 - v;
    }
}

// 3. holes: 8-connected background labels; every foreground entry gets, above its component
//    number, the background component around the component (features.shape._filled_area's
//    containment tree; the exterior is pixel 0's)
__device__ void shp_holes(volatile ShpCtx& X) {
    int* lab = X.lab;
    const int n = X.n, wp = X.wp;
    for (int i = threadIdx.x; i < n; i += SG_THREADS)
        if (lab[i] < 0) lab[i] = -1 - i;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (lab[i] >= 0) continue;
        const int r = i / wp, c = i - r * wp;
        if (c > 0 && lab[i - 1] < 0) shp_bg_union(lab, i, i - 1);
        if (r > 0) {
            if (lab[i - wp] < 0) shp_bg_union(lab, i, i - wp);
            if (c > 0 && lab[i - wp - 1] < 0) shp_bg_union(lab, i, i - wp - 1);
            if (c + 1 < wp && lab[i - wp + 1] < 0) shp_bg_union(lab, i, i - wp + 1);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += SG_THREADS)
        if (lab[i] < 0) lab[i] = -1 - shp_bg_find(lab, i);
    __syncthreads();
    const int* rootpix = X.rootpix;
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        const int v = lab[i];
        if (v < 0) continue;
        const int around = -1 - lab[rootpix[v] - wp];  // the background just above the root
        lab[i] = v | (around << 15);
    }
}

// Empty the per-component fields of slot t (bounding box, area, filled area, Feret) before a
// chunk of components is measured.
__device__ __forceinline__ void shp_reset_slot(int* ci, int t) {
    ci[SHP_MINR * SHP_CK + t] = 1 << 30;
    ci[SHP_MAXR * SHP_CK + t] = -1;
    ci[SHP_MINC * SHP_CK + t] = 1 << 30;
    ci[SHP_MAXC * SHP_CK + t] = -1;
    ci[SHP_AREA * SHP_CK + t] = 0;
    ci[SHP_FILLED * SHP_CK + t] = 0;
    ci[SHP_FERET * SHP_CK + t] = 0;
}

// 4a. bounding boxes and areas of the chunk's candidates (row segments, one flush per run of
//     a component); 4b. filled area: every pixel counts for the components enclosing its own
//     (a chain up the containment tree; only in planes with holes)
__device__ void shp_bbox(volatile ShpCtx& X) {
    const int* lab = X.lab;
    int* ci = X.ci;
    const int hp = X.hp, wp = X.wp, c0 = X.c0, nC0 = X.nC0;
    const int t = threadIdx.x;
    const int rows = hp - 2, cols = wp - 2;
    const int segs = sg_max(1, SG_THREADS / rows);
    const int seg = (cols + segs - 1) / segs;
    for (int it = t; it < rows * segs; it += SG_THREADS) {
        const int r = 1 + it / segs, s = it - (r - 1) * segs;
        const int j0 = 1 + s * seg, j1 = sg_min(j0 + seg, wp - 1);
        int cur = -1, cnt = 0, cmin = 0, cmax = 0;
        for (int j = j0; j <= j1; ++j) {
            int L = -1;
            if (j < j1) {
                const int v = lab[r * wp + j];
                L = v < 0 ? -1 : (v & SHP_IDX) - c0;
                if (L >= nC0) L = -1;
                if (L < 0) continue;
                if (L == cur) {
                    ++cnt;
                    cmax = j;
                    continue;
                }
            }
            if (cur >= 0) {  // another component, or the end of the segment: flush
                atomicAdd(&ci[SHP_AREA * SHP_CK + cur], cnt);
                atomicMin(&ci[SHP_MINR * SHP_CK + cur], r);
                atomicMax(&ci[SHP_MAXR * SHP_CK + cur], r);
                atomicMin(&ci[SHP_MINC * SHP_CK + cur], cmin);
                atomicMax(&ci[SHP_MAXC * SHP_CK + cur], cmax);
            }
            cur = L;
            cnt = 1;
            cmin = cmax = j;
        }
    }
    if (!X.holed) return;
    const int n = X.n;
    int lastL = -1, lastN = 0;
    for (int i = t; i < n; i += SG_THREADS) {
        const int v = lab[i];
        int B = v >= 0 ? (v >> 15) : -1 - v;
        bool first = true;
        while (B != 0) {
            const int u = lab[B - wp];  // the component just above the hole's root
            const int L = (u & SHP_IDX) - c0;
            if (L >= 0 && L < nC0) {
                if (first && L == lastL) {
                    ++lastN;
                } else if (first) {
                    if (lastN) atomicAdd(&ci[SHP_FILLED * SHP_CK + lastL], lastN);
                    lastL = L;
                    lastN = 1;
                } else {
                    atomicAdd(&ci[SHP_FILLED * SHP_CK + L], 1);
                }
            }
            first = false;
            B = u >> 15;
        }
    }
    if (lastN) atomicAdd(&ci[SHP_FILLED * SHP_CK + lastL], lastN);
}

// The chunk component of record r.
__device__ __forceinline__ int shp_rec_comp(const int* ci, int nC, int r) {
    int c = 0;
    while (c + 1 < nC && ci[SHP_ROFF * SHP_CK + c + 1] <= r) ++c;
    return c;
}

// 4d. row records (threads from `first`, step `step`): the column range, pixel count and power
//     sums of (col - minc) (record_power_sums with shift 0: exact); with `central`, the power
//     sums of (col - minc) - cc of the component instead (record_power_sums with shift cc)
__device__ void shp_records(volatile ShpCtx& X, bool central, int first, int step) {
    const int* lab = X.lab;
    const int* ci = X.ci;
    const double* cd = X.cd;
    double* rs = X.rs;
    short* rsh = X.rsh;
    const int rcap = X.rcap, wp = X.wp, c0 = X.c0, nC = X.nC, R = X.R;
    for (int r = first; r < R; r += step) {
        const int c = shp_rec_comp(ci, nC, r);
        const int row = ci[SHP_MINR * SHP_CK + c] + r - ci[SHP_ROFF * SHP_CK + c];
        const int minc = ci[SHP_MINC * SHP_CK + c];
        const int L = c0 + c;
        const double shift = central ? cd[SHP_CC * SHP_CK + c] : 0.0;
        const int j0 = central ? rsh[SHP_LEFT * rcap + r] : minc;
        const int j1 = central ? rsh[SHP_RIGHT * rcap + r] : ci[SHP_MAXC * SHP_CK + c];
        const int* row_lab = lab + row * wp;
        int cnt = 0, left = 0, right = 0;
        double s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int j = j0; j <= j1; ++j) {
            const int v = row_lab[j];
            if (v < 0 || (v & SHP_IDX) != L) continue;
            if (cnt == 0) left = j;
            right = j;
            ++cnt;
            const double x = central ? (double)(j - minc) - shift : (double)(j - minc);
            const double x2 = x * x;
            s1 += x;
            s2 += x2;
            s3 += x2 * x;
        }
        if (!central) {
            rsh[SHP_LEFT * rcap + r] = (short)left;
            rsh[SHP_RIGHT * rcap + r] = (short)right;
            rsh[SHP_COUNT * rcap + r] = (short)cnt;
        }
        rs[3 * r] = s1;
        rs[3 * r + 1] = s2;
        rs[3 * r + 2] = s3;
    }
}

// Moments of component c from its record sums, in label_moment_sums' order (records in order,
// y = k or k - cr): raw (all 16, into sl[20..35]) or central (p + q >= 3, into sl[36..51]).
__device__ void shp_moments(volatile ShpCtx& X, int c, bool central) {
    const int* ci = X.ci;
    const double* rs = X.rs;
    const short* cnt = X.rsh + SHP_COUNT * X.rcap;
    double* sl = X.slot + c * SHP_SLOT;
    const int rb = ci[SHP_ROFF * SHP_CK + c];
    const int hh = ci[SHP_MAXR * SHP_CK + c] - ci[SHP_MINR * SHP_CK + c] + 1;
    const double cr = central ? X.cd[SHP_CR * SHP_CK + c] : 0.0;
    const int base = central ? 36 : 20;
    for (int p = 0; p < 4; ++p) {
        double m0 = 0.0, m1 = 0.0, m2 = 0.0, m3 = 0.0;
        for (int k = 0; k < hh; ++k) {
            const int r = rb + k;
            const double s0 = (double)cnt[r], s1 = rs[3 * r], s2 = rs[3 * r + 1], s3 = rs[3 * r + 2];
            if (p == 0) {
                m0 += s0;
                m1 += s1;
                m2 += s2;
                m3 += s3;
            } else {
                const double a = central ? (double)k - cr : (double)k;
                const double a2 = a * a;
                const double f = p == 1 ? a : (p == 2 ? a2 : a2 * a);
                m0 += f * s0;
                m1 += f * s1;
                m2 += f * s2;
                m3 += f * s3;
            }
        }
        if (!central || p == 3) sl[base + 4 * p] = m0;
        if (!central || p >= 2) sl[base + 4 * p + 1] = m1;
        if (!central || p >= 1) sl[base + 4 * p + 2] = m2;
        sl[base + 4 * p + 3] = m3;
    }
    if (!central) {
        double* cd = X.cd;
        cd[SHP_CR * SHP_CK + c] = sl[24] / sl[20];  // M10 / max(M00, 1)
        cd[SHP_CC * SHP_CK + c] = sl[21] / sl[20];
        return;
    }
    // zeroth, first and second orders (features.shape._exact_second_order)
    const double m00 = sl[20];
    const i64 n0 = (i64)m00, m01 = (i64)sl[21], m02 = (i64)sl[22], m10 = (i64)sl[24], m11 = (i64)sl[25],
              m20 = (i64)sl[28];
    sl[36] = m00;
    sl[37] = 0.0;
    sl[40] = 0.0;
    sl[38] = (double)(n0 * m02 - m01 * m01) / m00;
    sl[44] = (double)(n0 * m20 - m10 * m10) / m00;
    sl[41] = (double)(n0 * m11 - m10 * m01) / m00;
}

// Hull chain of component c: the left (neg false) or right side of its rows (hull) or of its
// hull image's rows (Feret); the hull pass also writes the hull image's rows, the Feret pass
// the number of vertices.
__device__ void shp_chain(volatile ShpCtx& X, int c, bool neg, bool feret) {
    int* ci = X.ci;
    short* rsh = X.rsh;
    const int rcap = X.rcap, scap = X.scap;
    const int rb = ci[SHP_ROFF * SHP_CK + c];
    const int hh = ci[SHP_MAXR * SHP_CK + c] - ci[SHP_MINR * SHP_CK + c] + 1;
    short* tt = X.st + (neg ? 2 : 0) * scap + 2 * rb + c;
    short* xx = tt + scap;
    if (!feret) {
        shp_lower_hull(rsh + (neg ? SHP_RIGHT : SHP_LEFT) * rcap + rb, hh, neg, false, tt, xx);
        shp_hull_rows(tt, xx, hh, neg, rsh + (neg ? SHP_B : SHP_A) * rcap + rb);
        return;
    }
    if (!neg) {
        int convex = 0;
        for (int k = 0; k < hh; ++k) convex += rsh[SHP_B * rcap + rb + k] - rsh[SHP_A * rcap + rb + k] + 1;
        ci[SHP_CONVEX * SHP_CK + c] = convex;
    }
    const int nv = shp_lower_hull(rsh + (neg ? SHP_B : SHP_A) * rcap + rb, hh, neg, true, tt, xx);
    ci[(neg ? SHP_NVR : SHP_NVL) * SHP_CK + c] = nv;
}

// Euler number and Crofton perimeter of component c: its 2x2 windows in raster order.
__device__ void shp_crofton(volatile ShpCtx& X, int c) {
    const int* lab = X.lab;
    const unsigned char* fg = X.fg;
    const u64* wmask = X.wmask;
    const double* coefs = X.coefs;
    int* ci = X.ci;
    const int wp = X.wp, words = X.words, L = X.c0 + c;
    const int minr = ci[SHP_MINR * SHP_CK + c], maxr = ci[SHP_MAXR * SHP_CK + c];
    const int j0 = ci[SHP_MINC * SHP_CK + c] - 1, j1 = ci[SHP_MAXC * SHP_CK + c];
    double cro = 0.0;
    int eu = 0;
    for (int i = minr - 1; i <= maxr; ++i) {
        for (int wd = j0 >> 6; wd <= (j1 >> 6); ++wd) {
            u64 bits = wmask[i * words + wd] & shp_bits(sg_max(j0 - wd * 64, 0), sg_min(j1 - wd * 64, 63));
            while (bits) {
                const int j = wd * 64 + shp_ffs64(bits) - 1;
                bits &= bits - 1;
                const int p = i * wp + j;
                const int f00 = fg[p], f01 = fg[p + 1], f10 = fg[p + wp], f11 = fg[p + wp + 1];
                const int q = f00 ? p : (f01 ? p + 1 : (f10 ? p + wp : p + wp + 1));  // a foreground pixel
                if ((lab[q] & SHP_IDX) != L) continue;
                const int code = f11 + 2 * f01 + 4 * f10 + 8 * f00;
                cro += coefs[16 + code];
                eu += (int)coefs[code];
            }
        }
    }
    X.cd[SHP_CROFTON * SHP_CK + c] = cro;
    ci[SHP_EULER * SHP_CK + c] = eu;
}

// Perimeter of component c: its border pixels in raster order.
__device__ void shp_perimeter(volatile ShpCtx& X, int c) {
    const int* lab = X.lab;
    const u64* bmask = X.bmask;
    const double* perim_c = X.coefs + 32;
    const int* ci = X.ci;
    const int wp = X.wp, words = X.words, L = X.c0 + c;
    const int minr = ci[SHP_MINR * SHP_CK + c], maxr = ci[SHP_MAXR * SHP_CK + c];
    const int j0 = ci[SHP_MINC * SHP_CK + c], j1 = ci[SHP_MAXC * SHP_CK + c];
    double per = 0.0;
    for (int i = minr; i <= maxr; ++i) {
        for (int wd = j0 >> 6; wd <= (j1 >> 6); ++wd) {
            u64 bits = bmask[i * words + wd] & shp_bits(sg_max(j0 - wd * 64, 0), sg_min(j1 - wd * 64, 63));
            while (bits) {
                const int j = wd * 64 + shp_ffs64(bits) - 1;
                bits &= bits - 1;
                if ((lab[i * wp + j] & SHP_IDX) != L) continue;
                const int up = shp_bits3(bmask + (i - 1) * words, j), mid = shp_bits3(bmask + i * words, j);
                const int dn = shp_bits3(bmask + (i + 1) * words, j);
                const int four = ((up >> 1) & 1) + ((dn >> 1) & 1) + (mid & 1) + ((mid >> 2) & 1);
                const int diag = (up & 1) + ((up >> 2) & 1) + (dn & 1) + ((dn >> 2) & 1);
                per += perim_c[1 + 2 * four + 10 * diag];
            }
        }
    }
    X.cd[SHP_PERIM * SHP_CK + c] = per;
}

// Largest squared distance between the Feret vertices of each component (threads from
// `first`, step `step`; atomicMax per component).
__device__ void shp_feret_pairs(volatile ShpCtx& X, int first, int step) {
    int* ci = X.ci;
    const short* st = X.st;
    const int scap = X.scap, nC = X.nC;
    for (int c = 0; c < nC; ++c) {
        const int nl = ci[SHP_NVL * SHP_CK + c], nv = nl + ci[SHP_NVR * SHP_CK + c];
        const int so = 2 * ci[SHP_ROFF * SHP_CK + c] + c;
        const short* tl = st + so;
        const short* xl = st + scap + so;
        const short* tr = st + 2 * scap + so;
        const short* xr = st + 3 * scap + so;
        int best = 0;
        for (int i = first; i < nv; i += step) {
            const int ti = i < nl ? tl[i] : tr[i - nl], xi = i < nl ? xl[i] : -xr[i - nl];
            for (int j = i + 1; j < nv; ++j) {
                const int tj = j < nl ? tl[j] : tr[j - nl], xj = j < nl ? xl[j] : -xr[j - nl];
                const int dt = ti - tj, dx = xi - xj;
                best = sg_max(best, dt * dt + dx * dx);
            }
        }
        if (best > 0) atomicMax(&ci[SHP_FERET * SHP_CK + c], best);
    }
}

// Workspace (H x W planes, padded HP = H + 2, WP = W + 2): labels (HP WP ints), foreground
// (HP WP bytes), window and border bitmasks (HP * ceil(WP / 64) words each), and one region of
// max(4 * KMAX, chunk bytes) bytes: first the roots of the components (KMAX = the most
// 8-connected components an H x W plane holds), then the chunk arrays (records capacity 3 HP).
extern "C" __global__ void
shape_props(const unsigned char* __restrict__ mask, const unsigned char* __restrict__ combined,
            const long long* __restrict__ extents, const unsigned char* __restrict__ usable, const int N,
            const int C, const int H, const int W, const double* __restrict__ coefs,
            const double* __restrict__ pow25, const double* __restrict__ pow4, double* __restrict__ out,
            const long long ld, unsigned char* scratch, const long long ws_bytes) {
    __shared__ ShpCtx ctx;
    __shared__ double s_coefs[82];
    volatile ShpCtx& X = ctx;
    const int t = threadIdx.x, task = t >> 5, lane = t & 31;
    if (t < 82) s_coefs[t] = coefs[t];
    if (t == 0) {
        const int HP = H + 2, WP = W + 2, NP = HP * WP, WORDS = (WP + 63) >> 6;
        const int KMAX = ((H + 1) / 2) * ((W + 1) / 2);
        const int rcap = 3 * HP;
        SgArena arena(sg_workspace(scratch, ws_bytes));
        X.lab = arena.take<int>(NP);
        X.fg = arena.take<unsigned char>(NP);
        X.wmask = arena.take<u64>((i64)HP * WORDS);
        X.bmask = arena.take<u64>((i64)HP * WORDS);
        const i64 chunk = shp_chunk_bytes(rcap);
        unsigned char* region = arena.take<unsigned char>(chunk > 4LL * KMAX ? chunk : 4LL * KMAX);
        X.rootpix = reinterpret_cast<int*>(region);
        shp_take_chunk(X, region, rcap, s_coefs);
    }
    const int planes = N * (C + 1);
    for (int m = blockIdx.x; m < planes; m += gridDim.x) {
        const int obj = m / (C + 1), kp = m - obj * (C + 1);
        const int h = sg_min((int)extents[2 * obj], H), w = sg_min((int)extents[2 * obj + 1], W);
        if (!usable[obj] || h <= 0 || w <= 0) {
            if (t < SHP_NPROPS) out[(i64)obj * ld + (i64)kp * SHP_NPROPS + t] = sg_nan();
            continue;
        }
        __syncthreads();  // the previous plane is done with the context
        SG_PROF_START();
        if (t == 0) {
            X.h = h;
            X.w = w;
            X.hp = h + 2;
            X.wp = w + 2;
            X.n = (h + 2) * (w + 2);
            X.words = (w + 2 + 63) >> 6;
            X.E = 0;
        }
        __syncthreads();
        // 1. the padded plane; 8-connected labels (roots: first pixels in raster order)
        shp_load(X, kp == 0 ? combined + (i64)obj * H * W : mask + ((i64)obj * C + (kp - 1)) * H * W, W);
        __syncthreads();
        SG_PROF_MARK(6, 0);
        sg_label(X.fg, 1, X.hp, X.wp, true, X.lab);
        SG_PROF_MARK(6, 1);
        // 2. component numbers, pattern bitmasks
        shp_number(X);
        __syncthreads();
        if (t == 0) X.holed = X.E < X.K;  // every Euler number is <= 1: the plane's is K without holes
        __syncthreads();
        SG_PROF_MARK(6, 2);
        // 3. holes
        if (X.holed) {
            shp_holes(X);
            __syncthreads();
        }
        SG_PROF_MARK(6, 3);
        // 4. components in chunks
        double acc = 0.0;  // thread j < 59: sum of property j over the components so far
        for (int c0 = 0; c0 < X.K; c0 += X.nC) {
            if (t == 0) {
                X.c0 = c0;
                X.nC0 = sg_min(SHP_CK, X.K - c0);
            }
            if (t < SHP_CK) shp_reset_slot(X.ci, t);
            __syncthreads();
            shp_bbox(X);
            __syncthreads();
            // 4c. as many candidates as their row records fit
            if (t == 0) {
                int* ci = X.ci;
                const int nC0 = X.nC0, rcap = X.rcap;
                int R = 0, k = 0;
                for (; k < nC0; ++k) {
                    const int hh = ci[SHP_MAXR * SHP_CK + k] - ci[SHP_MINR * SHP_CK + k] + 1;
                    if (R + hh > rcap) break;
                    ci[SHP_ROFF * SHP_CK + k] = R;
                    R += hh;
                }
                X.nC = k;
                X.R = R;
            }
            __syncthreads();
            SG_PROF_MARK(6, 4);
            shp_records(X, false, t, SG_THREADS);  // 4d.
            __syncthreads();
            SG_PROF_MARK(6, 5);
            // 4e. one warp per task: raw moments | left hull | right hull | Euler and Crofton
            //     | perimeter
            if (lane < X.nC) {
                if (task == 0) shp_moments(X, lane, false);
                else if (task == 1 || task == 2) shp_chain(X, lane, task == 2, false);
                else if (task == 3) shp_crofton(X, lane);
                else if (task == 4) shp_perimeter(X, lane);
            }
            __syncthreads();
            SG_PROF_MARK(6, 6);
            // 4f. convex area and Feret chains (warps 0, 1) | central row sums (the others)
            if (task < 2) {
                if (lane < X.nC) shp_chain(X, lane, task == 1, true);
            } else {
                shp_records(X, true, t - 64, SG_THREADS - 64);
            }
            __syncthreads();
            SG_PROF_MARK(6, 7);
            // 4g. central moments (warp 0) | Feret diameters (the others)
            if (task == 0) {
                if (lane < X.nC) shp_moments(X, lane, true);
            } else {
                shp_feret_pairs(X, t - 32, SG_THREADS - 32);
            }
            __syncthreads();
            SG_PROF_MARK(6, 8);
            // 4h. the properties of each component, then their sums in component order
            if (t < X.nC) {
                double* sl = X.slot + t * SHP_SLOT;
                const int area = X.ci[SHP_AREA * SHP_CK + t];
                shp_props_inertia(sl, pow4, area);
                shp_props_orientation(sl);
                shp_props_scalar(sl, X.ci, X.cd, t);
                shp_props_hu(sl, pow25, area);
            }
            __syncthreads();
            if (t < SHP_NPROPS) {
                const double* slot = X.slot;
                const int nC = X.nC;
                for (int c = 0; c < nC; ++c) acc += slot[c * SHP_SLOT + t];
            }
            __syncthreads();
            SG_PROF_MARK(6, 9);
        }
        if (t < SHP_NPROPS) {
            const int K = X.K;
            out[(i64)obj * ld + (i64)kp * SHP_NPROPS + t] = K > 0 ? acc / (double)K : sg_nan();
        }
        SG_PROF_MARK(6, 10);
        SG_PROF_COUNT(6);
    }
}
