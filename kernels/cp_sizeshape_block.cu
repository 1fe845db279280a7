// CellProfiler's AreaShape block (stage cp_sizeshape.block): every plane of [combined mask,
// channel masks] measured as ONE object (all its pixels, connected or not). Reference
// semantics: scip_gpu.features.cp_sizeshape.sizeshape_features.
//
// Two kernels, one block per plane each, and the radii kernel of cp_sizeshape.cu between them:
//   cp_sizeshape_pad: the padded planes (one pixel of background frame, the pixels outside the
//     object's extent cleared), read by cp_radii (with plane_labels: label m + 1 for plane m) and
//     cp_sizeshape_planes;
//   cp_sizeshape_planes: the other 77 values of each plane with the device functions of
//     shape.cu, the plane's foreground taken as component 0 of a one-component plane:
//     - the pattern bitmasks (shp_patterns), Euler number and Crofton perimeter (shp_crofton),
//       perimeter (shp_perimeter): the same windows and border pixels in the same raster order;
//     - bounding box and area (shp_bbox), row records and power sums (shp_records), raw and
//       central moments (shp_moments), inertia tensor and eigenvalues (shp_props_inertia), Hu
//       moments (shp_props_hu): the reference's order of summation, so the same doubles;
//     - rows of the bounding box without a pixel (an object in pieces) get the row ends of the
//       reference's _fill_empty_rows (a left end far right, a right end far left), which every
//       hull pass drops; the hull image's rows (shp_chain) give ConvexArea;
//     - filled area: the background labelled 8-connected (sg_label); the background pixels not
//       in the frame's component are the holes (the reference's containment tree of one label);
//     - Min/MaxFeretDiameter: the hull of the pixel centres (centre_hull_vertices: the lower hull
//       of the rows' left ends and of the negated right ends, collinear points popped), in
//       polygon order, measured as cp_feret measures it (the same operations: max and min of
//       the same doubles);
//     - orientation with CellProfiler's sign convention (the a = c case decided on the exact
//       integer second moments), normalized moments mu / m00 ** ((p + q) / 2 + 1).
// Only atan2 and pow (normalized moments of odd order) are the device's own.
//
// Planes: at most 65536 padded pixels and 4000 pixels a side (row ends and hull stacks are
// shorts; the host's `accepts` declines the others, which then take the reference).

#define CPS_NF 80  // len(features.cp_sizeshape.FEATURES)

// feature columns (FEATURES)
#define CPS_AREA 0
#define CPS_PERIMETER 1
#define CPS_FORMFACTOR 2
#define CPS_SOLIDITY 3
#define CPS_CONVEX 4
#define CPS_EXTENT 5
#define CPS_ECC 6
#define CPS_COMPACT 7
#define CPS_MAJOR 8
#define CPS_MINOR 9
#define CPS_ORIENT 10
#define CPS_EQDIAM 11
#define CPS_EULER 12
#define CPS_CX 13
#define CPS_CY 14
#define CPS_BBAREA 15
#define CPS_BBMINX 16
#define CPS_BBMAXX 17
#define CPS_BBMINY 18
#define CPS_BBMAXY 19
#define CPS_MAXRAD 20
#define CPS_MEANRAD 21
#define CPS_MEDRAD 22
#define CPS_FMIN 23
#define CPS_FMAX 24
#define CPS_FILLED 25
#define CPS_CROFTON 26
#define CPS_SPATIAL 27
#define CPS_CENTRAL 39
#define CPS_NORMAL 51
#define CPS_HU 67
#define CPS_INERTIA 74
#define CPS_EIG 78

// padded: (M, H + 2, W + 2) uint8 from mask (N, C, H, W), combined (N, H, W) and extents (N, 2);
// plane m = object * (C + 1) + k, k = 0 the combined mask.
extern "C" __global__ void
cp_sizeshape_pad(const unsigned char* __restrict__ mask, const unsigned char* __restrict__ combined,
                 const long long* __restrict__ extents, int N, int C, int H, int W,
                 unsigned char* __restrict__ padded) {
    const int hp = H + 2, wp = W + 2, n = hp * wp, P = C + 1;
    for (int m = blockIdx.x; m < N * P; m += gridDim.x) {
        const int obj = m / P, k = m - obj * P;
        const int eh = (int)sg_min64(extents[2 * obj], H), ew = (int)sg_min64(extents[2 * obj + 1], W);
        const unsigned char* src = k == 0 ? combined + (i64)obj * H * W : mask + ((i64)obj * C + (k - 1)) * H * W;
        for (int p = threadIdx.x; p < n; p += SG_THREADS) {
            const int r = p / wp - 1, c = p % wp - 1;
            const bool on = r >= 0 && c >= 0 && r < eh && c < ew && src[r * W + c] != 0;
            padded[(i64)m * n + p] = on ? 1 : 0;
        }
    }
}

// Lower hull (Andrew's monotone chain, the pop rule of shape.lower_hull: collinear points go)
// of the points (k, u[k]) of the rows k < hh with a pixel, u = v or -v (neg); rows without a
// pixel hold `skip` in v. The vertices go to st_t, st_x; returns their number.
__device__ int cps_centre_chain(const short* v, int hh, bool neg, int skip, short* st_t, short* st_x) {
    return shp_monotone_chain(
        hh,
        [&](int i, int& x) {
            if ((int)v[i] == skip) return false;
            x = neg ? -(int)v[i] : (int)v[i];
            return true;
        },
        st_t, st_x);
}

// The centre hull's polygon: the left chain downwards, then the right chain upwards, a vertex
// equal to its predecessor dropped, and the last one when it equals the first
// (centre_hull_vertices). Returns the number of vertices.
__device__ int cps_polygon(const short* lt, const short* lx, int nl, const short* rt, const short* rx, int nr,
                           short* pr, short* pc) {
    int k = 0;
    for (int i = 0; i < nl + nr; ++i) {
        const int r = i < nl ? lt[i] : rt[nl + nr - 1 - i];
        const int c = i < nl ? lx[i] : -rx[nl + nr - 1 - i];
        if (k > 0 && pr[k - 1] == r && pc[k - 1] == c) continue;
        pr[k] = (short)r;
        pc[k] = (short)c;
        ++k;
    }
    if (k > 1 && pr[k - 1] == pr[0] && pc[k - 1] == pc[0]) --k;
    return k;
}

// This thread's part of the Feret diameters of the polygon (pr, pc) of k vertices (cp_feret's
// operations): the largest squared vertex distance over its vertices a = t, t + SG_THREADS, ...
// and the smallest width over its edges.
struct CpsFeret {
    double best, wmin;
};

__device__ SHP_NOINLINE CpsFeret cps_feret_part(const short* pr, const short* pc, int k) {
    const int t = threadIdx.x;
    double best = 0.0, wmin = sg_inf();
    for (int a = t; a < k; a += SG_THREADS) {
        const double ra = pr[a], ca = pc[a];
        for (int b = 0; b < k; ++b) {
            const double dr = ra - (double)pr[b];
            const double dc = ca - (double)pc[b];
            const double d2 = dr * dr + dc * dc;
            if (d2 > best) best = d2;
        }
    }
    for (int i = t; i < k; i += SG_THREADS) {
        const int nxt = i + 1 < k ? i + 1 : 0;
        const double ri = pr[i], cc = pc[i];
        const double er = (double)pr[nxt] - ri;
        const double ec = (double)pc[nxt] - cc;
        const double elen = sqrt(er * er + ec * ec);
        if (!(elen > 0)) continue;
        double cmax = 0.0;
        for (int v = 0; v < k; ++v) {
            const double cross = fabs(er * ((double)pc[v] - cc) - ec * ((double)pr[v] - ri));
            if (cross > cmax) cmax = cross;
        }
        const double width = cmax / elen;
        if (width < wmin) wmin = width;
    }
    return {best, wmin};
}

// The values that follow from the moments, written to row `o` (thread 0; not inlined, as the
// property functions of shape.cu, so that the kernel's phases keep their register budget).
__device__ SHP_NOINLINE void cps_moment_values(const double* sl, double* o) {
    const double m00 = sl[20];
    for (int p = 0; p < 3; ++p)
        for (int q = 0; q < 4; ++q) {
            o[CPS_SPATIAL + 4 * p + q] = sl[20 + 4 * p + q];
            o[CPS_CENTRAL + 4 * p + q] = sl[36 + 4 * p + q];
        }
    for (int p = 0; p < 4; ++p)
        for (int q = 0; q < 4; ++q) {
            const int order = p + q;
            o[CPS_NORMAL + 4 * p + q] = order >= 2 ? sl[36 + 4 * p + q] / pow(m00, (double)order / 2 + 1) : sg_nan();
        }
    for (int k = 0; k < 7; ++k) o[CPS_HU + k] = sl[52 + k];
    o[CPS_INERTIA] = sl[14];
    o[CPS_INERTIA + 1] = sl[15];
    o[CPS_INERTIA + 2] = sl[16];
    o[CPS_INERTIA + 3] = sl[17];
    o[CPS_EIG] = sl[18];
    o[CPS_EIG + 1] = sl[19];
    o[CPS_ECC] = sl[2];
    o[CPS_MAJOR] = sl[7];
    o[CPS_MINOR] = sl[8];
    // orientation: cp_measure's rule, a = c decided on the exact products
    const i64 n0 = (i64)m00, m01 = (i64)sl[21], m02 = (i64)sl[22], m10 = (i64)sl[24], m11 = (i64)sl[25],
              m20 = (i64)sl[28];
    const i64 q20 = n0 * m20 - m10 * m10, q02 = n0 * m02 - m01 * m01, q11 = n0 * m11 - m10 * m01;
    const double pi = 3.141592653589793;
    const double a = sl[14], b = sl[15], c = sl[17];
    const double orient = q20 == q02 ? (q11 > 0 ? pi / 4 : -pi / 4) : 0.5 * atan2(-2 * b, c - a);
    o[CPS_ORIENT] = orient * (180 / pi);
    o[CPS_AREA] = m00;
    o[CPS_EQDIAM] = sqrt(4 * m00 / pi);
}

// The values of the bounding box, the hull, the patterns, the radii and the filled area.
__device__ SHP_NOINLINE void cps_other_values(volatile ShpCtx& X, const double* sl, int holes, double fmin,
                                              double fmax, const double* radii, i64 rstride, i64 lab,
                                              double* o) {
    const int* ci = X.ci;
    const double* cd = X.cd;
    const double pi = 3.141592653589793;
    const double m00 = sl[20];
    const int minr = ci[SHP_MINR * SHP_CK], maxr = ci[SHP_MAXR * SHP_CK];
    const int minc = ci[SHP_MINC * SHP_CK], maxc = ci[SHP_MAXC * SHP_CK];
    const double height = (double)(maxr - minr + 1), width = (double)(maxc - minc + 1);
    o[CPS_BBAREA] = height * width;
    o[CPS_EXTENT] = m00 / (height * width);
    // padded coordinates: one pixel of frame
    o[CPS_CY] = (double)(minr - 1) + sl[24] / m00;
    o[CPS_CX] = (double)(minc - 1) + sl[21] / m00;
    o[CPS_BBMINX] = (double)(minc - 1);
    o[CPS_BBMAXX] = (double)maxc;
    o[CPS_BBMINY] = (double)(minr - 1);
    o[CPS_BBMAXY] = (double)maxr;
    // convex area: the hull image's rows
    const short* A = X.rsh + SHP_A * X.rcap;
    const short* B = X.rsh + SHP_B * X.rcap;
    int convex = 0;
    for (int k = 0; k <= maxr - minr; ++k) convex += B[k] - A[k] + 1;
    o[CPS_CONVEX] = (double)convex;
    o[CPS_SOLIDITY] = m00 / (double)convex;
    const double per = cd[SHP_PERIM * SHP_CK];
    o[CPS_EULER] = (double)ci[SHP_EULER * SHP_CK];
    o[CPS_CROFTON] = cd[SHP_CROFTON * SHP_CK];
    o[CPS_PERIMETER] = per;
    o[CPS_FORMFACTOR] = per > 0 ? 4 * pi * m00 / (per * per) : sg_nan();
    const double q = 4 * pi * m00;
    o[CPS_COMPACT] = per * per / (q > 1.0 ? q : 1.0);  // 0 for a perimeter of 0, as CellProfiler
    o[CPS_MAXRAD] = radii[lab];
    o[CPS_MEANRAD] = radii[rstride + lab];
    o[CPS_MEDRAD] = radii[2 * rstride + lab];
    o[CPS_FMIN] = fmin;
    o[CPS_FMAX] = fmax;
    o[CPS_FILLED] = m00 + (double)holes;
}

// Workspace (h x w padded planes; rcap = h): labels (h w ints), the plane (h w bytes), window
// and border bitmasks (h ceil(w / 64) words each), the chunk arrays of shape.cu for one
// component (shp_chunk_bytes(rcap)), the centre hull's stacks (4 x rcap shorts) and polygon
// (2 x (2 rcap + 2) shorts), the output row (CPS_NF doubles).
//
// padded: (M, h, w) uint8 (cp_sizeshape_pad); usable: (N,) uint8; P = C + 1 planes per object;
// coefs, pow25, pow4 as shape_props; radii: (3, M + 1) float64 (cp_radii, labels m + 1);
// out: (N, P * CPS_NF) float64 (row stride ld doubles).
extern "C" __global__ void
cp_sizeshape_planes(const unsigned char* __restrict__ padded, const unsigned char* __restrict__ usable, int N,
                    int P, int h, int w, const double* __restrict__ coefs, const double* __restrict__ pow25,
                    const double* __restrict__ pow4, const double* __restrict__ radii, double* __restrict__ out,
                    long long ld, unsigned char* scratch, long long ws_bytes) {
    __shared__ ShpCtx ctx;
    __shared__ double s_coefs[82];
    __shared__ short* s_cs;   // centre stacks: left t, left x, right t, right x
    __shared__ short* s_poly;  // polygon rows, then columns
    __shared__ double* s_row;  // the output row
    __shared__ int s_nv[3];    // left and right chain vertices, polygon vertices
    volatile ShpCtx& X = ctx;
    const int t = threadIdx.x, task = t >> 5, lane = t & 31;
    const int n = h * w, words = (w + 63) >> 6, rcap = h;
    const int big = 4 * ((h > w ? h : w) + 4);  // _fill_empty_rows' row ends of empty rows
    if (t < 82) s_coefs[t] = coefs[t];
    if (t == 0) {
        SgArena arena(sg_workspace(scratch, ws_bytes));
        X.lab = arena.take<int>(n);
        X.fg = arena.take<unsigned char>(n);
        X.wmask = arena.take<u64>((i64)h * words);
        X.bmask = arena.take<u64>((i64)h * words);
        unsigned char* region = arena.take<unsigned char>(shp_chunk_bytes(rcap));
        s_cs = arena.take<short>(4 * rcap);
        s_poly = arena.take<short>(2 * (2 * rcap + 2));
        s_row = arena.take<double>(CPS_NF);
        X.rootpix = nullptr;
        shp_take_chunk(X, region, rcap, s_coefs);
        X.h = h - 2;
        X.w = w - 2;
        X.hp = h;
        X.wp = w;
        X.n = n;
        X.words = words;
        X.K = 1;
        X.holed = 0;
        X.c0 = 0;
        X.nC0 = 1;
        X.nC = 1;
    }
    const i64 M = (i64)N * P, rstride = M + 1;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int obj = m / P, kp = m - obj * P;
        double* orow = out + (i64)obj * ld + (i64)kp * CPS_NF;
        __syncthreads();  // the previous plane is done with the context (and the setup above)
        if (!usable[obj]) {
            if (t < CPS_NF) orow[t] = sg_nan();
            continue;
        }
        // 1. the plane, bitmasks cleared, its area
        const unsigned char* src = padded + (i64)m * n;
        unsigned char* fg = X.fg;
        i64 cnt = 0;
        for (int i = t; i < n; i += SG_THREADS) {
            fg[i] = src[i];
            cnt += src[i];
        }
        for (int i = t; i < h * words; i += SG_THREADS) {
            X.wmask[i] = 0;
            X.bmask[i] = 0;
        }
        if (t == 0) X.E = 0;
        cnt = sg_block_sum_i64(cnt);  // (ends with a barrier)
        if (cnt == 0) {
            if (t < CPS_NF) orow[t] = sg_nan();
            continue;
        }
        // 2. pattern bitmasks; holes: the background's 8-connected components
        shp_patterns(X, fg, n, w, h, words);
        // (sg_label writes only X.lab, which shp_patterns does not touch; its last barrier also
        // completes the bitmasks)
        sg_label(X.fg, 0, h, w, true, X.lab);
        int* lab = X.lab;
        i64 holes = 0;
        for (int i = t; i < n; i += SG_THREADS) holes += lab[i] > 0;  // the frame's root is pixel 0
        holes = sg_block_sum_i64(holes);
        for (int i = t; i < n; i += SG_THREADS) lab[i] = fg[i] ? 0 : -1;  // component 0
        if (t < SHP_CK) {
            shp_reset_slot(X.ci, t);
            X.ci[SHP_ROFF * SHP_CK + t] = 0;
        }
        __syncthreads();
        // 3. bounding box and area; row records
        shp_bbox(X);
        __syncthreads();
        if (t == 0) X.R = X.ci[SHP_MAXR * SHP_CK] - X.ci[SHP_MINR * SHP_CK] + 1;
        __syncthreads();
        shp_records(X, false, t, SG_THREADS);
        __syncthreads();
        const int hh = X.R;
        for (int r = t; r < hh; r += SG_THREADS) {
            short* rsh = X.rsh;
            if (rsh[SHP_COUNT * rcap + r] == 0) {  // a row without a pixel
                rsh[SHP_LEFT * rcap + r] = (short)big;
                rsh[SHP_RIGHT * rcap + r] = (short)(-big);
            }
        }
        __syncthreads();
        // 4. one thread per task: raw moments | hull image's left and right rows | Euler and
        //    Crofton | perimeter | centre hull's left and right chains
        if (lane == 0) {
            if (task == 0) shp_moments(X, 0, false);
            else if (task == 1 || task == 2) shp_chain(X, 0, task == 2, false);
            else if (task == 3) shp_crofton(X, 0);
            else if (task == 4) shp_perimeter(X, 0);
            else if (task == 5 || task == 6) {
                const bool neg = task == 6;
                short* cs = s_cs + (neg ? 2 : 0) * rcap;
                s_nv[neg ? 1 : 0] = cps_centre_chain(X.rsh + (neg ? SHP_RIGHT : SHP_LEFT) * rcap, hh, neg,
                                                     neg ? -big : big, cs, cs + rcap);
            }
        }
        __syncthreads();
        // 5. the centre hull's polygon (thread 0) | central row sums (the other warps)
        if (t == 0) {
            s_nv[2] = cps_polygon(s_cs, s_cs + rcap, s_nv[0], s_cs + 2 * rcap, s_cs + 3 * rcap, s_nv[1], s_poly,
                                  s_poly + 2 * rcap + 2);
        } else if (task > 0) {
            shp_records(X, true, t - 32, SG_THREADS - 32);
        }
        __syncthreads();
        // 6. central moments (thread 0) | Feret diameters (every thread: cp_feret's operations)
        if (t == 0) shp_moments(X, 0, true);
        const int k = s_nv[2];
        const CpsFeret fe = cps_feret_part(s_poly, s_poly + 2 * rcap + 2, k);
        double best = fe.best, wmin = fe.wmin;
        best = sg_block_max(best);  // (the reductions end with barriers: the moments are done)
        wmin = sg_block_min(wmin);
        // 7. the values
        if (t == 0) {
            double* sl = X.slot;
            const int area = X.ci[SHP_AREA * SHP_CK];
            shp_props_inertia(sl, pow4, area);
            shp_props_hu(sl, pow25, area);
            cps_moment_values(sl, s_row);
            cps_other_values(X, sl, (int)holes, isinf(wmin) ? 0.0 : wmin, sqrt(best), radii, rstride, (i64)m + 1,
                             s_row);
        }
        __syncthreads();
        if (t < CPS_NF) orow[t] = s_row[t];
    }
}
