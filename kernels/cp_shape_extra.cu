// CellProfiler AreaShape stages without a per-plane shape kernel: the Feret diameters of the
// centre hulls (stage cp_sizeshape.feret, twin of `cp_feret` in scip_gpu/_numba_cp.py) and the
// filled area of labels with holes (stage shape.filled_area, twin of `filled_area` in
// scip_gpu/_numba_kernels.py).

// ---------------------------------------------------------------------------------------------
// cp_feret: one team of CPF_TEAM threads per polygon (SG_THREADS / CPF_TEAM polygons per block,
// grid-stride loop over groups of polygons). Thread `lane` of a team takes the vertices
// a = lane, lane + CPF_TEAM, ... for the largest squared vertex distance (over every b) and the
// edges i = lane, ... for the largest distance of a vertex from the edge's line (over every v),
// each value with the numba kernel's operations (no fused multiply-adds: --fmad=false). The
// team's maximum and minimum are then taken through shared memory. A maximum or minimum of
// doubles does not depend on the order in which it is taken (the values are finite, the
// comparisons the numba kernel's), so the results are the numba kernel's bit for bit.

#define CPF_TEAM 32

// vr, vc: (L, V) float64 vertex tables in polygon order; nv: (L,) int64 vertex counts (<= V);
// fmin, fmax: (L,) float64.
extern "C" __global__ void
cp_feret(const double* __restrict__ vr, const double* __restrict__ vc, const i64* __restrict__ nv, int L, int V,
         double* __restrict__ fmin, double* __restrict__ fmax) {
    __shared__ double s_max[SG_THREADS], s_min[SG_THREADS];
    const int t = threadIdx.x;
    const int lane = t % CPF_TEAM;
    const int per_block = SG_THREADS / CPF_TEAM;
    for (int base = blockIdx.x * per_block; base < L; base += gridDim.x * per_block) {
        const int lab = base + t / CPF_TEAM;
        double best = 0.0, wmin = sg_inf();
        if (lab < L) {
            const double* r = vr + (i64)lab * V;
            const double* c = vc + (i64)lab * V;
            const int k = (int)nv[lab];
            for (int a = lane; a < k; a += CPF_TEAM) {
                const double ra = r[a], ca = c[a];
                for (int b = 0; b < k; ++b) {
                    const double dr = ra - r[b];
                    const double dc = ca - c[b];
                    const double d2 = dr * dr + dc * dc;
                    if (d2 > best) best = d2;
                }
            }
            for (int i = lane; i < k; i += CPF_TEAM) {
                const int nxt = i + 1 < k ? i + 1 : 0;
                const double ri = r[i], ci = c[i];
                const double er = r[nxt] - ri;
                const double ec = c[nxt] - ci;
                const double elen = sqrt(er * er + ec * ec);
                if (!(elen > 0)) continue;
                double cmax = 0.0;
                for (int v = 0; v < k; ++v) {
                    const double cross = fabs(er * (c[v] - ci) - ec * (r[v] - ri));
                    if (cross > cmax) cmax = cross;
                }
                const double width = cmax / elen;
                if (width < wmin) wmin = width;
            }
        }
        s_max[t] = best;
        s_min[t] = wmin;
        __syncthreads();
        for (int s = CPF_TEAM / 2; s > 0; s >>= 1) {
            if (lane < s) {
                s_max[t] = sg_fmax(s_max[t], s_max[t + s]);
                s_min[t] = sg_fmin(s_min[t], s_min[t + s]);
            }
            __syncthreads();
        }
        if (lane == 0 && lab < L) {
            fmax[lab] = sqrt(s_max[t]);
            const double w = s_min[t];
            fmin[lab] = isinf(w) ? 0.0 : w;
        }
        __syncthreads();  // (the team buffers are rewritten for the next group)
    }
}

// ---------------------------------------------------------------------------------------------
// cp_filled_area: one block per label (grid-stride loop over labels 1..nl; labels not in
// `holed` are skipped). The numba kernel fills the label's bounding box from its border with a
// stack; here the box's other pixels (not the label) are labelled as 8-connected components
// (sg_label, the union-find of every kernel), the components holding a border pixel of the box
// are marked, and the filled area is the box's pixel count minus the pixels of marked
// components: the same pixel set the flood reaches, so the same integer.
//
// Workspace (h x w at most: the box of a label inside its plane): the box's "other" flags
// (uint8), the union-find parents (int), the marks (uint8).

// labels: (M, h, w) int32, each label in one plane; owner: (nl + 1,) int64 the plane of each
// label; holed: (nl + 1,) uint8; out: (nl + 1,) float64 holding each label's area, replaced for
// the holed labels with pixels by their filled area.
extern "C" __global__ void
cp_filled_area(const int* __restrict__ labels, const i64* __restrict__ owner, const unsigned char* __restrict__ holed,
               int M, int h, int w, int nl, double* __restrict__ out, unsigned char* scratch, i64 ws_bytes) {
    const int n = h * w;
    const int t = threadIdx.x;
    SgArena ar(sg_workspace(scratch, ws_bytes));
    unsigned char* other = ar.take<unsigned char>(n);
    int* parent = ar.take<int>(n);
    unsigned char* mark = ar.take<unsigned char>(n);
    __shared__ int box[4];
    for (int lab = blockIdx.x + 1; lab <= nl; lab += gridDim.x) {
        const i64 m = owner[lab];
        if (!holed[lab] || m < 0 || m >= M) continue;  // (block-wide: every thread skips)
        const int* lb = labels + m * (i64)n;
        if (t == 0) {
            box[0] = h;
            box[1] = -1;
            box[2] = w;
            box[3] = -1;
        }
        __syncthreads();
        int r0 = h, r1 = -1, c0 = w, c1 = -1;
        for (int p = t; p < n; p += SG_THREADS) {
            if (lb[p] == lab) {
                const int i = p / w, j = p - i * w;
                r0 = sg_min(r0, i);
                r1 = sg_max(r1, i);
                c0 = sg_min(c0, j);
                c1 = sg_max(c1, j);
            }
        }
        if (r1 >= 0) {
            atomicMin(&box[0], r0);
            atomicMax(&box[1], r1);
            atomicMin(&box[2], c0);
            atomicMax(&box[3], c1);
        }
        __syncthreads();
        r0 = box[0];
        r1 = box[1];
        c0 = box[2];
        c1 = box[3];
        __syncthreads();  // (box is reset by the next label)
        if (r1 < 0) continue;  // no pixel: the area stays
        const int hh = r1 - r0 + 1, ww = c1 - c0 + 1, nb = hh * ww;
        for (int p = t; p < nb; p += SG_THREADS) {
            const int i = p / ww, j = p - i * ww;
            other[p] = lb[(r0 + i) * w + c0 + j] != lab ? 1 : 0;
            mark[p] = 0;
        }
        __syncthreads();
        sg_label(other, 1, hh, ww, true, parent);  // (ends with a barrier)
        for (int p = t; p < nb; p += SG_THREADS) {
            const int i = p / ww, j = p - i * ww;
            if (other[p] && (i == 0 || i == hh - 1 || j == 0 || j == ww - 1)) mark[parent[p]] = 1;
        }
        __syncthreads();
        i64 reached = 0;
        for (int p = t; p < nb; p += SG_THREADS)
            if (other[p] && mark[parent[p]]) reached += 1;
        reached = sg_block_sum_i64(reached);  // (ends with a barrier)
        if (t == 0) out[lab] = (double)((i64)nb - reached);
    }
}

// ---------------------------------------------------------------------------------------------
// cp_pattern_sums: Euler number, Crofton perimeter and perimeter sums of every label (stage
// shape.pattern_props, twin of `pattern_sums` in scip_gpu/_numba_kernels.py). One block per
// padded plane:
// 1. in parallel: each 2x2 window's code (0 where it is 0 or 15: no contribution) and label
//    (the largest of its four labels), each pixel's border flag, then each border pixel's
//    perimeter code 1 + 2 * four + 10 * diag (0 elsewhere);
// 2. the plane's labels lo..hi (block minimum and maximum) are dealt to the threads; a thread
//    adds up its label's contributions in raster order, windows for the Euler and Crofton sums,
//    border pixels for the perimeter: the numba kernel's order of summation for each sum, so the
//    same doubles. A label without a pixel in the plane is not written (each label lies in one
//    plane, as ops.label numbers them; the labels are > 0 exactly on the foreground).
//
// Workspace: window codes (uint8), window labels (int), border flags (uint8), perimeter codes
// (uint8), each (h - 1) x (w - 1) or h x w.

// padded: (M, h, w) uint8; labels: (M, h, w) int32; euler_c, crofton_c: (16,) float64;
// perim_w: (50,) float64; out: (3, nl + 1) float64 zeros, rows Euler / Crofton / perimeter.
extern "C" __global__ void
cp_pattern_sums(const unsigned char* __restrict__ padded, const int* __restrict__ labels, int M, int h, int w,
                int nl, const double* __restrict__ euler_c, const double* __restrict__ crofton_c,
                const double* __restrict__ perim_w, double* __restrict__ out, unsigned char* scratch, i64 ws_bytes) {
    const int n = h * w;
    const int t = threadIdx.x;
    SgArena ar(sg_workspace(scratch, ws_bytes));
    unsigned char* wcode = ar.take<unsigned char>(n);
    int* wlab = ar.take<int>(n);
    unsigned char* border = ar.take<unsigned char>(n);
    unsigned char* pcode = ar.take<unsigned char>(n);
    const i64 stride = (i64)nl + 1;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const unsigned char* x = padded + (i64)m * n;
        const int* lb = labels + (i64)m * n;
        int lo = 0x7fffffff, hi = 0;
        for (int p = t; p < n; p += SG_THREADS) {
            const int i = p / w, j = p - i * w;
            const int l = lb[p];
            if (l > 0) {
                lo = sg_min(lo, l);
                hi = sg_max(hi, l);
            }
            // window with top-left pixel (i, j)
            int code = 0, v = 0;
            if (i + 1 < h && j + 1 < w) {
                code = x[p + w + 1] + 2 * x[p + 1] + 4 * x[p + w] + 8 * x[p];
                v = sg_max(sg_max(l, lb[p + 1]), sg_max(lb[p + w], lb[p + w + 1]));
            }
            wcode[p] = (code == 15) ? 0 : (unsigned char)code;
            wlab[p] = v;
            border[p] = (i > 0 && i + 1 < h && j > 0 && j + 1 < w && x[p]
                         && !(x[p - w] && x[p + w] && x[p - 1] && x[p + 1])) ? 1 : 0;
        }
        lo = (int)sg_block_min_i64(lo);  // (the reductions end with barriers: border is complete)
        hi = (int)sg_block_max_i64(hi);
        for (int p = t; p < n; p += SG_THREADS) {
            unsigned char c = 0;
            if (border[p]) {
                const int four = border[p - w] + border[p + w] + border[p - 1] + border[p + 1];
                const int diag = border[p - w - 1] + border[p - w + 1] + border[p + w - 1] + border[p + w + 1];
                c = (unsigned char)(1 + 2 * four + 10 * diag);
            }
            pcode[p] = c;
        }
        __syncthreads();
        if (hi > 0) {
            for (int v = lo + t; v <= hi; v += SG_THREADS) {
                double e = 0.0, cr = 0.0, pe = 0.0;
                bool present = false;
                for (int p = 0; p < n; ++p) {
                    const int c = wcode[p];
                    if (c != 0 && wlab[p] == v) {
                        e += euler_c[c];
                        cr += crofton_c[c];
                    }
                }
                for (int p = 0; p < n; ++p) {
                    if (lb[p] != v) continue;
                    present = true;
                    if (pcode[p]) pe += perim_w[pcode[p]];
                }
                if (present) {
                    out[v] = e;
                    out[stride + v] = cr;
                    out[2 * stride + v] = pe;
                }
            }
        }
        __syncthreads();  // (the workspace is rewritten for the next plane)
    }
}
