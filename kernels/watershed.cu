// Marker-controlled watershed of one 2-D image (a field of view), on the device.
//
// Reference semantics: scip_gpu.ops.watershed (the keys, the parent rule and the labels are
// defined there); CPU twin: scip_gpu/_numba_kernels.py watershed_flood (a priority flood that
// reaches the same fixed point). Here the fixed point is reached by relaxation:
//
//   ws_relax:  one block per 32x32 tile (grid-stride over tiles), the tile's keys and a one-pixel
//              halo in shared memory, relaxed in place until the tile no longer changes; keys that
//              changed are written back and `changed` set. The host launches it until a launch
//              changes nothing. Keys only decrease and every key is always the cost of some path,
//              so any order of updates (threads, blocks, launches) ends at the same keys.
//   ws_parent: each pixel's parent: the neighbour, in raster order, of smallest key whose key
//              leads to the pixel's own (markers are their own parent, unreached pixels -1).
//   ws_jump:   parent = parent[parent] (shortens the chains; any interleaving keeps ancestors).
//   ws_labels: each pixel follows its chain to its marker and takes its label.
//
// A key is (C << 32) | S in one 64-bit word: C the flood level (the rank of the altitude, an
// order-preserving integer), S the steps at that level. One word is read and written at once,
// so threads that read a neighbour while it changes see an old or a new key, both valid.
//
// Inputs (flat, row-major, h * w < 2^32): key (u64, in/out), rank (u64), flags (u8: 1 domain,
// 2 marker in the domain), lab (int32 marker labels). Outputs: parent (int64), out (int32).

#define SG_WS_TILE 32
#define SG_WS_SPAN (SG_WS_TILE + 2)
#define SG_WS_INF 0xFFFFFFFFFFFFFFFFull

__device__ __forceinline__ unsigned long long sg_ws_cand(unsigned long long kq, unsigned long long r) {
    if (kq == SG_WS_INF) return SG_WS_INF;
    const unsigned long long cq = kq >> 32;
    if (r > cq) return (r << 32) | 1ull;
    return (cq << 32) | ((kq & 0xFFFFFFFFull) + 1ull);
}

extern "C" __global__ void
ws_relax(unsigned long long* key, const unsigned long long* rank, const unsigned char* flags, long long h,
         long long w, int* changed) {
    __shared__ unsigned long long ks[SG_WS_SPAN * SG_WS_SPAN];
    __shared__ unsigned int rs[SG_WS_TILE * SG_WS_TILE];
    __shared__ unsigned char fs[SG_WS_TILE * SG_WS_TILE];
    __shared__ int any;
    const long long tiles_x = (w + SG_WS_TILE - 1) / SG_WS_TILE;
    const long long tiles = tiles_x * ((h + SG_WS_TILE - 1) / SG_WS_TILE);
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long y0 = (tile / tiles_x) * SG_WS_TILE, x0 = (tile % tiles_x) * SG_WS_TILE;
        for (int i = threadIdx.x; i < SG_WS_SPAN * SG_WS_SPAN; i += SG_THREADS) {
            const long long y = y0 + i / SG_WS_SPAN - 1, x = x0 + i % SG_WS_SPAN - 1;
            ks[i] = (y >= 0 && y < h && x >= 0 && x < w) ? key[y * w + x] : SG_WS_INF;
        }
        for (int i = threadIdx.x; i < SG_WS_TILE * SG_WS_TILE; i += SG_THREADS) {
            const long long y = y0 + i / SG_WS_TILE, x = x0 + i % SG_WS_TILE;
            const bool in = y < h && x < w;
            fs[i] = in ? flags[y * w + x] : 0;
            rs[i] = in ? (unsigned int)rank[y * w + x] : 0u;
        }
        __syncthreads();
        for (;;) {
            if (threadIdx.x == 0) any = 0;
            __syncthreads();
            int mine = 0;
            for (int i = threadIdx.x; i < SG_WS_TILE * SG_WS_TILE; i += SG_THREADS) {
                if ((fs[i] & 3) != 1) continue;  // outside the domain, or a marker (fixed)
                const int c = (i / SG_WS_TILE + 1) * SG_WS_SPAN + i % SG_WS_TILE + 1;
                const unsigned long long r = rs[i], k = ks[c];
                unsigned long long best = k, v;
                v = sg_ws_cand(ks[c - SG_WS_SPAN], r);
                if (v < best) best = v;
                v = sg_ws_cand(ks[c - 1], r);
                if (v < best) best = v;
                v = sg_ws_cand(ks[c + 1], r);
                if (v < best) best = v;
                v = sg_ws_cand(ks[c + SG_WS_SPAN], r);
                if (v < best) best = v;
                if (best < k) {
                    ks[c] = best;
                    mine = 1;
                }
            }
            if (mine) any = 1;
            __syncthreads();
            const int go = any;
            __syncthreads();  // (every thread has read `any` before it is reset)
            if (!go) break;
        }
        int wrote = 0;
        for (int i = threadIdx.x; i < SG_WS_TILE * SG_WS_TILE; i += SG_THREADS) {
            if ((fs[i] & 3) != 1) continue;
            const long long g = (y0 + i / SG_WS_TILE) * w + x0 + i % SG_WS_TILE;
            const unsigned long long k = ks[(i / SG_WS_TILE + 1) * SG_WS_SPAN + i % SG_WS_TILE + 1];
            if (k != key[g]) {
                key[g] = k;
                wrote = 1;
            }
        }
        if (wrote) atomicExch(changed, 1);
        __syncthreads();  // (the shared tile is reloaded for the next tile)
    }
}

extern "C" __global__ void
ws_parent(const unsigned long long* key, const unsigned long long* rank, const unsigned char* flags, long long h,
          long long w, long long* parent) {
    const long long n = h * w;
    for (long long p = blockIdx.x * (long long)SG_THREADS + threadIdx.x; p < n; p += (long long)gridDim.x * SG_THREADS) {
        const unsigned char f = flags[p];
        const unsigned long long k = key[p];
        if (f & 2) {
            parent[p] = p;
            continue;
        }
        long long par = -1;
        if ((f & 1) && k != SG_WS_INF) {
            const long long i = p / w, j = p - i * w;
            const unsigned long long r = rank[p];
            unsigned long long best = SG_WS_INF;
            const long long q4[4] = {i > 0 ? p - w : -1, j > 0 ? p - 1 : -1, j < w - 1 ? p + 1 : -1,
                                     i < h - 1 ? p + w : -1};
            for (int t = 0; t < 4; ++t) {  // raster order: the first of equal keys wins
                const long long q = q4[t];
                if (q < 0) continue;
                const unsigned long long kq = key[q];
                if (kq < best && sg_ws_cand(kq, r) == k) {
                    best = kq;
                    par = q;
                }
            }
        }
        parent[p] = par;
    }
}

extern "C" __global__ void ws_jump(long long* parent, long long n) {
    for (long long p = blockIdx.x * (long long)SG_THREADS + threadIdx.x; p < n; p += (long long)gridDim.x * SG_THREADS) {
        const long long q = parent[p];
        if (q >= 0) parent[p] = parent[q];
    }
}

extern "C" __global__ void
ws_labels(const long long* parent, const int* lab, long long n, int* out) {
    for (long long p = blockIdx.x * (long long)SG_THREADS + threadIdx.x; p < n; p += (long long)gridDim.x * SG_THREADS) {
        long long q = parent[p];
        if (q < 0) {
            out[p] = 0;
            continue;
        }
        for (long long up = parent[q]; up != q; up = parent[q]) q = up;
        out[p] = lab[q];
    }
}
