// CellProfiler's Maximum/Mean/MedianRadius (stage cp_sizeshape.radii): the twin of
// `cp_plane_radii` in scip_gpu/_numba_cp.py.
//
// One block per padded plane (grid-stride loop): the exact distance transform of the plane
// (cp_edt.cuh, squared distances as integers), then over the plane's labelled pixels
// - the count, the last labelled pixel in raster order (whose label the plane's values go to,
//   as in the numba kernel) and the largest squared distance: shared atomics;
// - the median: the numba kernel sorts the distances and averages the elements (n - 1) / 2 and
//   n / 2. Here the squared distances (integers, ordered as their square roots) are not sorted:
//   the element of rank (n - 1) / 2 is the smallest value v with at least (n - 1) / 2 + 1
//   values <= v (a binary search over [0, max], one block count and one barrier per step), and
//   the element of rank n / 2 is v again or the next larger value present (one shared atomic
//   minimum). The same two elements, so the same double;
// - the mean: the distances summed in raster order by one thread (the numba kernel's order, so
//   the sum is bit-identical), divided by the count.

// padded: (M, h, w) uint8 planes (0 = background); labels: (M, h, w) int32 (> 0: the pixels
// measured; one label per plane), or, with `plane_labels`, not read: every foreground pixel of
// plane m measured, with label m + 1 (cp_sizeshape.block: no label image); out: (3, nl + 1)
// float64, rows maximum / mean / median, written at the plane's label (left as they are for
// planes without labelled pixels).
extern "C" __global__ void
cp_radii(const unsigned char* __restrict__ padded, const int* __restrict__ labels, int plane_labels, int M, int h,
         int w, int nl, double* __restrict__ out, unsigned char* scratch, i64 ws_bytes) {
    const int n = h * w;
    const int t = threadIdx.x;
    SgArena ar(sg_workspace(scratch, ws_bytes));
    int* g = ar.take<int>(n);
    int* v = ar.take<int>(n);
    int* d2 = ar.take<int>(n);
    const i64 stride = (i64)nl + 1;
    // block counts through shared atomics: a counter per call, rotating over 3 so that one
    // barrier a call suffices (the slot cleared in call k was last read before barrier k - 1)
    __shared__ int agg[4], cnt3[3];
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const unsigned char* fg = padded + (i64)m * n;
        const int* lb = plane_labels ? nullptr : labels + (i64)m * n;
        if (t == 0) {
            agg[0] = 0;
            agg[1] = -1;
            agg[2] = -1;
            agg[3] = 0x7fffffff;
        }
        if (t < 3) cnt3[t] = 0;
        cpe_edt_sq(fg, h, w, g, v, d2);  // (its barriers publish agg and cnt3)
        // the labelled pixels' squared distances; -1 for the others
        int cnt = 0, last = -1, top = -1;
        for (int p = t; p < n; p += SG_THREADS) {
            if (lb ? lb[p] > 0 : fg[p] != 0) {
                cnt += 1;
                last = p;
                top = sg_max(top, d2[p]);
            } else {
                d2[p] = -1;
            }
        }
        if (cnt) {
            atomicAdd(&agg[0], cnt);
            atomicMax(&agg[1], last);
            atomicMax(&agg[2], top);
        }
        __syncthreads();
        cnt = agg[0];
        last = agg[1];
        top = agg[2];
        if (cnt == 0) {  // (every thread: a block-wide value)
            __syncthreads();
            continue;
        }
        const int k1 = (cnt - 1) / 2, k2 = cnt / 2;
        int lo = 0, hi = top, c_hi = cnt;  // c_hi: the count of values <= hi
        for (int call = 0; lo < hi; ++call) {
            const int mid = lo + (hi - lo) / 2;
            int c = 0;
            for (int p = t; p < n; p += SG_THREADS) c += (d2[p] >= 0 && d2[p] <= mid) ? 1 : 0;
            if (c) atomicAdd(&cnt3[call % 3], c);
            if (t == 0) cnt3[(call + 1) % 3] = 0;
            __syncthreads();
            c = cnt3[call % 3];
            if (c >= k1 + 1) {
                hi = mid;
                c_hi = c;
            } else {
                lo = mid + 1;
            }
        }
        const int v1 = lo;
        int v2 = v1;
        if (c_hi < k2 + 1) {  // (then a larger value exists)
            int nxt = 0x7fffffff;
            for (int p = t; p < n; p += SG_THREADS)
                if (d2[p] > v1) nxt = sg_min(nxt, d2[p]);
            if (nxt != 0x7fffffff) atomicMin(&agg[3], nxt);
            __syncthreads();
            v2 = agg[3];
        }
        if (t == 0) {
            double tot = 0.0;
            for (int p = 0; p < n; ++p)
                if (d2[p] >= 0) tot += cpe_dist(d2[p]);
            const int lab = lb ? lb[last] : m + 1;
            out[lab] = cpe_dist(top);
            out[stride + lab] = tot / (double)cnt;
            out[2 * stride + lab] = (cpe_dist(v1) + cpe_dist(v2)) / 2.0;
        }
        __syncthreads();  // (agg, cnt3 and the workspace are reset for the next plane)
    }
}
