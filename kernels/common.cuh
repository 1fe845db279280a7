// Shared device code of every kernel in kernels/: block primitives, workspaces and the
// per-plane filters, written once and used by the mask, shape, intensity and texture kernels.
//
// Conventions (all kernels):
// - one thread block of SG_THREADS threads per plane (object x channel, or object), looping
//   over planes with a grid stride, so the grid can be capped;
// - a plane is copied once into a per-block workspace: dynamic shared memory, or, for planes
//   too large for it, a slice of a global scratch buffer (`sg_workspace`), the same code for
//   both;
// - every filter reproduces the arithmetic of its numba twin in scip_gpu/_numba_kernels.py
//   operation for operation (the module is compiled with --fmad=false), so per-pixel results
//   are bit-identical to the CPU path;
// - no warp intrinsics: tests/cuda_sim runs these sources on the CPU.
#ifndef SG_COMMON_CUH
#define SG_COMMON_CUH

#define SG_THREADS 256

typedef long long i64;
typedef unsigned long long u64;

#ifdef CUDA_SIM
#define SG_DYNAMIC_SMEM() (sim_dynamic_shared())
#else
extern __shared__ __align__(16) unsigned char sg_smem_[];
#define SG_DYNAMIC_SMEM() (sg_smem_)
#endif

// Phase profiling (compiled with -DSG_PROFILE only; benchmarks/profile_kernels.py): thread 0
// of every block adds the cycles of each phase of a plane (ended by a barrier) to
// sg_prof[kernel * 16 + phase], and counts planes in sg_prof[kernel * 16 + 15].
#ifdef SG_PROFILE
extern "C" {
__device__ unsigned long long sg_prof[8 * 16];
}
#define SG_PROF_START() long long sg_prof_t = clock64()
#define SG_PROF_MARK(kernel, phase)                                                           \
    do {                                                                                       \
        __syncthreads();                                                                       \
        if (threadIdx.x == 0) {                                                                \
            const long long sg_now = clock64();                                                \
            atomicAdd(&sg_prof[(kernel) * 16 + (phase)], (unsigned long long)(sg_now - sg_prof_t)); \
            sg_prof_t = sg_now;                                                                \
        }                                                                                      \
    } while (0)
#define SG_PROF_COUNT(kernel) \
    do { if (threadIdx.x == 0) atomicAdd(&sg_prof[(kernel) * 16 + 15], 1ULL); } while (0)
// the same with a named timer, for the phases of a shared device function (its own "kernel" slot)
#define SG_PROF_SUB_START(t) long long t = clock64()
#define SG_PROF_SUB(t, kernel, phase)                                                         \
    do {                                                                                       \
        __syncthreads();                                                                       \
        if (threadIdx.x == 0) {                                                                \
            const long long sg_now = clock64();                                                \
            atomicAdd(&sg_prof[(kernel) * 16 + (phase)], (unsigned long long)(sg_now - (t)));  \
            t = sg_now;                                                                        \
        }                                                                                      \
    } while (0)
#else
#define SG_PROF_START()
#define SG_PROF_MARK(kernel, phase)
#define SG_PROF_COUNT(kernel)
#define SG_PROF_SUB_START(t)
#define SG_PROF_SUB(t, kernel, phase)
#endif

__device__ __forceinline__ double sg_nan() { return __longlong_as_double(0x7ff8000000000000LL); }
__device__ __forceinline__ double sg_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ int sg_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int sg_max(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ i64 sg_min64(i64 a, i64 b) { return a < b ? a : b; }
__device__ __forceinline__ i64 sg_max64(i64 a, i64 b) { return a > b ? a : b; }
__device__ __forceinline__ double sg_fmin(double a, double b) { return a < b ? a : b; }
__device__ __forceinline__ double sg_fmax(double a, double b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------
// Workspace: dynamic shared memory, or a per-block slice of a global scratch buffer

// `ws_bytes` > 0: the block's workspace is scratch[blockIdx.x * ws_bytes ...] (global memory);
// 0: dynamic shared memory.
__device__ __forceinline__ unsigned char* sg_workspace(unsigned char* scratch, i64 ws_bytes) {
    if (ws_bytes > 0) return scratch + (i64)blockIdx.x * ws_bytes;
    return SG_DYNAMIC_SMEM();
}

// Bump allocator over a workspace; every array is 16-byte aligned. The host computes the same
// sizes (scip_gpu.gpu_kernels.workspace_bytes) from the same order of `take` calls.
struct SgArena {
    unsigned char* p;
    __device__ explicit SgArena(unsigned char* base) : p(base) {}
    template <class T>
    __device__ T* take(i64 n) {
        T* r = reinterpret_cast<T*>(p);
        p += ((n * (i64)sizeof(T) + 15) / 16) * 16;
        return r;
    }
};

__device__ __forceinline__ int sg_next_pow2(int n) {
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

// p / w for a plane's width w without an integer division (a runtime divisor costs about 25
// instructions on a GPU, once per pixel in most loops): q = (p m) >> 40 with
// m = floor(2^40 / w) + 1, exact for 0 <= p < 2^24 and 1 <= w <= 2^16 (p m / 2^40 = p / w + p e / 2^40
// with 0 < e <= 1, and p e / 2^40 < 2^-16 <= 1 / w keeps the fractional part of p / w below 1;
// p m < 2^64); other p or w take the division.
struct SgDivW {
    u64 m;
    int w;
    __device__ explicit SgDivW(int w_) : m(w_ >= 1 && w_ <= 65536 ? (1ull << 40) / (u64)w_ + 1 : 0), w(w_) {}
    __device__ __forceinline__ int div(int p) const {
        return (m != 0 && (unsigned int)p < (1u << 24)) ? (int)(((u64)(unsigned int)p * m) >> 40) : p / w;
    }
};

// Pixel of a plane of the given dtype code (0: uint8, 1: uint16, 2: float32, 3: float64) as a
// double (sg_load_int: the integer codes only).
__device__ __forceinline__ double sg_load_px(const void* base, i64 idx, int dtype) {
    if (dtype == 0) return (double)reinterpret_cast<const unsigned char*>(base)[idx];
    if (dtype == 1) return (double)reinterpret_cast<const unsigned short*>(base)[idx];
    if (dtype == 2) return (double)reinterpret_cast<const float*>(base)[idx];
    return reinterpret_cast<const double*>(base)[idx];
}
// The element at `offset` of an array of the given dtype code.
__device__ __forceinline__ const void* sg_px_at(const void* base, i64 offset, int dtype) {
    return (const unsigned char*)base + offset * (dtype == 0 ? 1 : dtype == 1 ? 2 : dtype == 2 ? 4 : 8);
}
__device__ __forceinline__ int sg_load_int(const void* base, i64 idx, int dtype) {
    if (dtype == 0) return (int)reinterpret_cast<const unsigned char*>(base)[idx];
    return (int)reinterpret_cast<const unsigned short*>(base)[idx];
}

// ---------------------------------------------------------------------------------------------
// Block reductions and scans (every thread of the block must call them)

// One reduction buffer per kernel, shared by every block reduction (they never overlap: each
// ends with a barrier).
__device__ __forceinline__ u64* sg_reduce_buffer() {
    __shared__ u64 buf[SG_THREADS];
    return buf;
}

template <class T, class Op>
__device__ T sg_block_reduce(T x, Op op) {
    T* buf = reinterpret_cast<T*>(sg_reduce_buffer());
    const int t = threadIdx.x;
    buf[t] = x;
    __syncthreads();
    for (int s = SG_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] = op(buf[t], buf[t + s]);
        __syncthreads();
    }
    T r = buf[0];
    __syncthreads();
    return r;
}

struct SgAdd { template <class T> __device__ T operator()(T a, T b) const { return a + b; } };
struct SgMin { template <class T> __device__ T operator()(T a, T b) const { return b < a ? b : a; } };
struct SgMax { template <class T> __device__ T operator()(T a, T b) const { return b > a ? b : a; } };

__device__ __forceinline__ i64 sg_block_sum_i64(i64 x) { return sg_block_reduce(x, SgAdd()); }
__device__ __forceinline__ double sg_block_min(double x) { return sg_block_reduce(x, SgMin()); }
__device__ __forceinline__ double sg_block_max(double x) { return sg_block_reduce(x, SgMax()); }
__device__ __forceinline__ i64 sg_block_min_i64(i64 x) { return sg_block_reduce(x, SgMin()); }
__device__ __forceinline__ i64 sg_block_max_i64(i64 x) { return sg_block_reduce(x, SgMax()); }

// In-place ascending bitonic sort of keys[0..n), n a power of two. Each step's n / 2
// compare-exchanges are dealt to the threads as pairs (pair q: the element i whose bit j is 0,
// made by inserting a 0 at bit j of q, and i + j), so that no thread walks the elements whose
// partner comes before them (half of the iterations, and half of a warp's lanes for j < 32, in
// an element-per-iteration loop). The network, and so the result, is the same.
template <class K>
__device__ void sg_bitonic_sort(K* keys, int n) {
    const int pairs = n >> 1;
    for (int k = 2; k <= n; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int q = threadIdx.x; q < pairs; q += SG_THREADS) {
                const int i = ((q & ~(j - 1)) << 1) | (q & (j - 1));
                const int l = i | j;
                const K a = keys[i], b = keys[l];
                const bool up = (i & k) == 0;
                if ((a > b) == up) {
                    keys[i] = b;
                    keys[l] = a;
                }
            }
            __syncthreads();
        }
    }
}

// Exclusive prefix sum over the block of one int per thread (thread order); *total gets the
// sum (every thread must call it). Two levels of 16: threads 0..15 scan 16 values each, thread 0
// scans their 16 sums: 3 barriers and ~32 dependent steps, instead of a 256-step serial scan.
// The same over caller-provided shared arrays (val: SG_THREADS values, grp: 17), for any
// integer type: returns thread t's exclusive prefix, *total the sum.
template <class T>
__device__ T sg_block_exclusive_sum_in(T v, T* val, T* grp, T* total) {
    static_assert(SG_THREADS == 256, "two levels of 16");
    const int t = threadIdx.x;
    val[t] = v;
    __syncthreads();
    if (t < 16) {
        T acc = 0;
        for (int k = 0; k < 16; ++k) {
            const T x = val[16 * t + k];
            val[16 * t + k] = acc;
            acc += x;
        }
        grp[t + 1] = acc;
    }
    __syncthreads();
    if (t == 0) {
        grp[0] = 0;
        for (int k = 1; k <= 16; ++k) grp[k] += grp[k - 1];
    }
    __syncthreads();
    const T r = val[t] + grp[t >> 4];
    *total = grp[16];
    __syncthreads();
    return r;
}

__device__ int sg_block_exclusive_sum(int v, int* total) {
    __shared__ int val[SG_THREADS];
    __shared__ int grp[17];
    return sg_block_exclusive_sum_in(v, val, grp, total);
}

#define SG_RADIX_BITS 4
#define SG_RADIX_DIGITS (1 << SG_RADIX_BITS)
// counter (digit d, thread t) lives at SG_RADIX_AT(d * SG_THREADS + t): one int of padding per
// 32, so that the scan's reads of 16 consecutive counters per thread hit different banks
#define SG_RADIX_AT(i) ((i) + ((i) >> 5))
// ints of scratch sg_radix_sort_u16_keys needs beside its second key buffer
#define SG_RADIX_COUNTS SG_RADIX_AT(SG_RADIX_DIGITS * SG_THREADS)

// Stable ascending sort of keys[0..n) (n < 65536) by their upper 16 bits, whose values lie in
// [vmin, vmax]: least-significant-digit radix sort of (key >> 16) - vmin, 4 bits per pass,
// only as many passes as vmax - vmin has digits (0 when all values are equal: already in
// order). Keys of the form value << 16 | pixel index, starting in index order, end ordered by
// (value, index): the order a bitonic sort of the whole keys gives (the keys are distinct).
//
// A pass is a block counting sort: thread t counts the digits of its chunk of consecutive
// keys in its own counters (digit, t) (no atomics; chunks of an odd length, so that a warp's
// loads of its 32 chunks' k-th keys hit 32 different banks), one exclusive scan
// of the 16 x 256 counters in (digit, thread) order gives every (digit, thread) its first
// output slot, and each thread scatters its chunk in order (so the pass is stable). Per
// 4096-key plane and pass, per thread: 16 counter clears, 17 key loads + 17 counter
// read-modify-writes, 16 + 32 accesses to scan, 17 key loads + counter updates + 17 stores:
// ~180 shared accesses and 6 barriers; a 12-bit range takes 3 passes (~550 accesses, 18
// barriers; ~140 k per plane) where the bitonic sort of 4096 keys takes 78 stages of 8
// compare-exchanges per thread (~1,900 accesses, 78 barriers; ~490 k per plane). Counts only:
// not yet timed on a GPU.
//
// alt: n keys of scratch, counts: SG_RADIX_COUNTS ints. The result is in keys (after an odd
// number of passes it is copied back from alt: 2 accesses per key).
__device__ void sg_radix_sort_u16_keys(unsigned int* keys, unsigned int* alt, int* counts, int n,
                                                 int vmin, int vmax) {
    const int t = threadIdx.x;
    const int cs = ((n + SG_THREADS - 1) / SG_THREADS) | 1;
    const int a = sg_min(t * cs, n), b = sg_min(a + cs, n);
    const int range = vmax - vmin;
    unsigned int* src = keys;
    unsigned int* dst = alt;
    #pragma unroll 1
    for (int shift = 0; shift < 16 && (range >> shift) > 0; shift += SG_RADIX_BITS) {
        #pragma unroll 1
        for (int d = 0; d < SG_RADIX_DIGITS; ++d) counts[SG_RADIX_AT(d * SG_THREADS + t)] = 0;
        for (int k = a; k < b; ++k) {
            const int d = ((int)(src[k] >> 16) - vmin) >> shift & (SG_RADIX_DIGITS - 1);
            counts[SG_RADIX_AT(d * SG_THREADS + t)] += 1;
        }
        __syncthreads();
        // exclusive scan of the counters in (digit, thread) order: thread t takes the 16
        // consecutive ones [16 t, 16 t + 16)
        int sum = 0;
        #pragma unroll 1
        for (int k = 0; k < SG_RADIX_DIGITS; ++k) sum += counts[SG_RADIX_AT(SG_RADIX_DIGITS * t + k)];
        int total;
        int base = sg_block_exclusive_sum(sum, &total);
        #pragma unroll 1
        for (int k = 0; k < SG_RADIX_DIGITS; ++k) {
            int* c = counts + SG_RADIX_AT(SG_RADIX_DIGITS * t + k);
            const int x = *c;
            *c = base;
            base += x;
        }
        __syncthreads();
        for (int k = a; k < b; ++k) {
            const unsigned int key = src[k];
            const int d = ((int)(key >> 16) - vmin) >> shift & (SG_RADIX_DIGITS - 1);
            dst[counts[SG_RADIX_AT(d * SG_THREADS + t)]++] = key;
        }
        __syncthreads();
        unsigned int* tmp = src;
        src = dst;
        dst = tmp;
    }
    if (src != keys) {
        for (int k = t; k < n; k += SG_THREADS) keys[k] = src[k];
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Connected components: lock-free union-find over a plane (Playne & Hawick's scheme). After
// `sg_label`, parent[i] is the root of pixel i's component, the component's first pixel in
// raster order (so ordering roots gives scipy.ndimage.label's numbering), or -1 for pixels not
// labelled.

__device__ __forceinline__ int sg_find(volatile int* parent, int x) {
    int p = parent[x];
    while (p != x) {
        x = p;
        p = parent[x];
    }
    return x;
}

__device__ void sg_union(int* parent, int a, int b) {
    volatile int* vp = parent;
    bool done = false;
    while (!done) {
        a = sg_find(vp, a);
        b = sg_find(vp, b);
        if (a < b) {
            const int old = atomicMin(&parent[b], a);
            done = old == b;
            b = old;
        } else if (b < a) {
            const int old = atomicMin(&parent[a], b);
            done = old == a;
            a = old;
        } else {
            done = true;
        }
    }
}

// Label the pixels of an h x w plane (row stride w) where `fg[i] == value`, 8- or
// 4-connected.
// Every pixel starts pointing at the first pixel of its horizontal run (one thread per row),
// so unions are needed across rows only and a find walks runs, not pixels.
__device__ void sg_label(const unsigned char* fg, unsigned char value, int h, int w, bool eight,
                         int* parent) {
    const int n = h * w;
    SG_PROF_SUB_START(sg_lt);
    for (int r = threadIdx.x; r < h; r += SG_THREADS) {
        int start = -1;
        for (int c = 0; c < w; ++c) {
            const int i = r * w + c;
            if (fg[i] == value) {
                if (start < 0) start = i;
                parent[i] = start;
            } else {
                start = -1;
                parent[i] = -1;
            }
        }
    }
    __syncthreads();
    SG_PROF_SUB(sg_lt, 3, 0);
#ifdef SG_LEGACY_LABEL
    // every pixel unites with each of its neighbours above (up to 3 unions, 6 finds, per pixel)
    const SgDivW dw(w);
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (fg[i] != value) continue;
        const int r = dw.div(i), c = i - r * w;
        if (r > 0) {
            if (fg[i - w] == value) sg_union(parent, i, i - w);
            if (eight) {
                if (c > 0 && fg[i - w - 1] == value) sg_union(parent, i, i - w - 1);
                if (c + 1 < w && fg[i - w + 1] == value) sg_union(parent, i, i - w + 1);
            }
        }
    }
    __syncthreads();
    volatile int* vp = parent;
    for (int i = threadIdx.x; i < n; i += SG_THREADS)
        if (vp[i] >= 0) parent[i] = sg_find(vp, i);
    __syncthreads();
#else
    // One union per pair of touching runs (run R = columns [a, b] of row r, run R' = [a', b'] of
    // row r - 1), made at one pixel of R chosen by where R' starts:
    //   a' <  a  (8-conn.: a' <= a - 1 and R' reaches a - 1): at R's start a, with a - 1 above;
    //   a' == a (or a' < a, 4-conn.): at a, with a above (a - 1 above is background);
    //   a < a' <= b: at column a', where R' starts (above: set, above-left: background);
    //   a' == b + 1 (8-conn. only): at R's end b, with b + 1 above (b above is background).
    // The cases are exclusive and cover every R' touching R, so the unions performed connect
    // exactly the runs the per-pixel unions connected (pixels of a run share their run start as
    // parent from the start), and sg_union is the same lock-free operation: the components, and
    // their roots (the smallest index of each, as atomicMin links a larger root under a smaller
    // one), are the same whatever the threads' order. Only redundant unions are skipped: a
    // blob's run pairs instead of its pixels (64x64 masks: ~1-2 unions per run instead of up to
    // 3 per pixel).
    const SgDivW dw(w);
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (fg[i] != value) continue;
        const int r = dw.div(i), c = i - r * w;
        if (r == 0) continue;
        const bool left = c > 0 && fg[i - 1] == value;  // i continues a run
        const bool up = fg[i - w] == value;
        const bool up_left = c > 0 && fg[i - w - 1] == value;
        if (!left) {  // i = a, R's start
            if (eight && up_left) sg_union(parent, i, i - w - 1);
            else if (up) sg_union(parent, i, i - w);
        } else if (up && !up_left) {  // a run above starts at c, inside R
            sg_union(parent, i, i - w);
        }
        if (eight && c + 1 < w && fg[i + 1] != value && !up && fg[i - w + 1] == value)
            sg_union(parent, i, i - w + 1);  // i = b, R's end; a run above starts at b + 1
    }
    __syncthreads();
    SG_PROF_SUB(sg_lt, 3, 1);
    // Flattening in two steps, each race-free: (1) every run start s (parent[s] == s or a root
    // reached by finds) stores its root; a find only reads, and every store writes a tree's
    // root into an entry of that tree, so a find overlapping a store still ends at the root;
    // (2) after the barrier, every other pixel (its parent its run start since the first pass:
    // a non-start pixel is never a root, so no union changed it) copies its run start's root.
    // Step 2 reads only run-start entries, final since the barrier, and writes only non-start
    // entries, which no thread reads in step 2. Finds walk from run starts only.
    volatile int* vp = parent;
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (fg[i] != value) continue;
        const int c = i - dw.div(i) * w;
        if (c == 0 || fg[i - 1] != value) parent[i] = sg_find(vp, i);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (fg[i] != value) continue;
        const int c = i - dw.div(i) * w;
        if (c > 0 && fg[i - 1] == value) parent[i] = parent[parent[i]];
    }
    __syncthreads();
#endif
    SG_PROF_SUB(sg_lt, 3, 2);
    SG_PROF_COUNT(3);
}

// remove_small_holes(hole_area) then remove_small_objects(min_size) of the h x w mask `m`
// (in place; both 4-connected), as the numba fill_and_clean. `parent`, `size`: n ints each.
// Component sizes: size[root] += the component's pixels. Each thread counts its pixels (t,
// t + 256, ...: in a 64-wide plane, every fourth row of one column) in a running count per root,
// adding it with one atomic when the root changes: ~2-3 atomics per thread instead of one per
// pixel, all of them on the root of the background or of the cell otherwise (same-address
// atomics serialise).
__device__ void sg_component_sizes(const int* parent, int n, int* size) {
    for (int i = threadIdx.x; i < n; i += SG_THREADS) size[i] = 0;
    __syncthreads();
    int cur = -1, cnt = 0;
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        const int root = parent[i];
        if (root != cur) {
            if (cur >= 0) atomicAdd(&size[cur], cnt);
            cur = root;
            cnt = 0;
        }
        ++cnt;
    }
    if (cur >= 0) atomicAdd(&size[cur], cnt);
    __syncthreads();
}

__device__ void sg_fill_and_clean(unsigned char* m, int h, int w, double hole_area, double min_size,
                                  int* parent, int* size) {
    const int n = h * w;
    SG_PROF_SUB_START(sg_ft);
    for (int stage = 0; stage < 2; ++stage) {
        const unsigned char value = stage == 1;  // holes (background) first, then objects
        sg_label(m, value, h, w, false, parent);
        SG_PROF_SUB(sg_ft, 4, 3 * stage);
        sg_component_sizes(parent, n, size);
        SG_PROF_SUB(sg_ft, 4, 3 * stage + 1);
        const double limit = stage == 0 ? hole_area : min_size;
        for (int i = threadIdx.x; i < n; i += SG_THREADS)
            if (parent[i] >= 0 && (double)size[parent[i]] < limit) m[i] = !value;
        __syncthreads();
        SG_PROF_SUB(sg_ft, 4, 3 * stage + 2);
    }
    SG_PROF_COUNT(4);
}

// SCIP's border rule on the h x w mask `m` (in place): 8-connected components with more than
// int(0.25 * min(h, w)) pixels on the image's edges (a corner pixel once per edge) are
// removed. Returns the number of components left (the same in every thread).
__device__ int sg_border_rule(unsigned char* m, int h, int w, int* parent, int* count) {
    const int n = h * w;
    SG_PROF_SUB_START(sg_bt);
    sg_label(m, 1, h, w, true, parent);
    SG_PROF_SUB(sg_bt, 5, 0);
    for (int i = threadIdx.x; i < n; i += SG_THREADS) count[i] = 0;
    __syncthreads();
    const SgDivW dw(w);
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        if (parent[i] < 0) continue;
        const int r = dw.div(i), c = i - r * w;
        const int e = (r == 0) + (r == h - 1) + (c == 0) + (c == w - 1);
        if (e) atomicAdd(&count[parent[i]], e);
    }
    __syncthreads();
    SG_PROF_SUB(sg_bt, 5, 1);
    const int limit = (int)(0.25 * (double)sg_min(h, w));
    int kept = 0;
    for (int i = threadIdx.x; i < n; i += SG_THREADS) {
        const int root = parent[i];
        if (root < 0) continue;
        const bool keep = count[root] <= limit;
        if (!keep) m[i] = 0;
        kept += keep && root == i;
    }
    kept = (int)sg_block_sum_i64(kept);
    SG_PROF_SUB(sg_bt, 5, 2);
    SG_PROF_COUNT(5);
    return kept;
}

// ---------------------------------------------------------------------------------------------
// Filters on h x w planes of doubles (row stride w), bit-identical to the numba kernels

// Round to float32 (F32: the filters of float32 planes, whose every pass SciPy and the numba
// kernels store as float32) or keep the double.
template <bool F32>
__device__ __forceinline__ double sg_store(double v) {
    if constexpr (F32) return (double)(float)v;
    else return v;
}

// scipy.ndimage.gaussian_filter (mode 'nearest') with the symmetric weights wt[0..2r]:
// the vertical pass into tmp, then the horizontal pass into out (out may alias src); each
// pass's values rounded to float32 when F32.
template <bool F32 = false>
__device__ void sg_gaussian(const double* src, double* tmp, double* out, int h, int w,
                            const double* wt, int r) {
    const int n = h * w;
    const SgDivW dw(w);
    for (int p = threadIdx.x; p < n; p += SG_THREADS) {
        const int i = dw.div(p), j = p - i * w;
        double acc = src[p] * wt[r];
        for (int k = r; k > 0; --k) {
            const int a = i - k < 0 ? 0 : i - k;
            const int b = i + k >= h ? h - 1 : i + k;
            acc += (src[a * w + j] + src[b * w + j]) * wt[r - k];
        }
        tmp[p] = sg_store<F32>(acc);
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n; p += SG_THREADS) {
        const int i = dw.div(p), j = p - i * w;
        const double* row = tmp + i * w;
        double acc = row[j] * wt[r];
        for (int k = r; k > 0; --k) {
            const int a = j - k < 0 ? 0 : j - k;
            const int b = j + k >= w ? w - 1 : j + k;
            acc += (row[a] + row[b]) * wt[r - k];
        }
        out[p] = sg_store<F32>(acc);
    }
    __syncthreads();
}

// skimage.filters.sobel (mode 'reflect') of one pixel, as the numba _sobel_px.
__device__ __forceinline__ double sg_sobel_px(const double* f, int w, int ip, int i, int ib, int jp, int j,
                                              int jb) {
    const double top = 0.25 * f[ip * w + jp] + 0.5 * f[ip * w + j] + 0.25 * f[ip * w + jb];
    const double bottom = 0.25 * f[ib * w + jp] + 0.5 * f[ib * w + j] + 0.25 * f[ib * w + jb];
    const double left = 0.25 * f[ip * w + jp] + 0.5 * f[i * w + jp] + 0.25 * f[ib * w + jp];
    const double right = 0.25 * f[ip * w + jb] + 0.5 * f[i * w + jb] + 0.25 * f[ib * w + jb];
    const double gr = top - bottom;
    const double gc = left - right;
    return sqrt(gr * gr + gc * gc) * (1.0 / sqrt(2.0));
}

template <bool F32 = false>
__device__ void sg_sobel(const double* f, double* out, int h, int w) {
    const int n = h * w;
    const SgDivW dw(w);
    for (int p = threadIdx.x; p < n; p += SG_THREADS) {
        const int i = dw.div(p), j = p - i * w;
        const int ip = i > 0 ? i - 1 : 0, ib = i < h - 1 ? i + 1 : h - 1;
        const int jp = j > 0 ? j - 1 : 0, jb = j < w - 1 ? j + 1 : w - 1;
        out[p] = sg_store<F32>(sg_sobel_px(f, w, ip, i, ib, jp, j, jb));
    }
    __syncthreads();
}

// Half-widths of the rows of disk(r) (skimage.morphology.disk: x^2 + y^2 <= r^2): half[k] for
// the row dy = k - r, written by threads 0..2r (r <= 31); the caller synchronises after.
__device__ __forceinline__ void sg_disk_half_widths(int* half, int r) {
    if ((int)threadIdx.x < 2 * r + 1) {
        const int dy = (int)threadIdx.x - r;
        int a = 0;
        while ((a + 1) * (a + 1) + dy * dy <= r * r) ++a;
        half[threadIdx.x] = a;
    }
}

// binary_erosion(m, footprint of centred rows: half[k] the half-width of row k - r), outside
// the plane counting as foreground (border_value=True), as the numba erosion_rows:
// run[p] = 1 + the largest a with m[row, j-a..j+a] all set (0 where m is unset).
__device__ void sg_erosion_rows(const unsigned char* m, unsigned char* out, int* run, int h, int w,
                                const int* half, int r) {
    // (a run that reaches the row's end counts beyond it: any start above every half-width
    // will do; h + w + 1 was not for extents with h + w < r, e.g. a 1x1 plane eroded by a
    // disk of radius 6 lost its pixel, where the numba twin's padded-plane sentinel kept it)
    const int big = 1 << 20;
    for (int i = threadIdx.x; i < h; i += SG_THREADS) {
        const unsigned char* row = m + i * w;
        int* rr = run + i * w;
        int c = big;
        for (int j = 0; j < w; ++j) {
            c = row[j] ? c + 1 : 0;
            rr[j] = c;
        }
        c = big;
        for (int j = w - 1; j >= 0; --j) {
            c = row[j] ? c + 1 : 0;
            rr[j] = sg_min(rr[j], c);
        }
    }
    __syncthreads();
    const int n = h * w;
    const SgDivW dw(w);
    for (int p = threadIdx.x; p < n; p += SG_THREADS) {
        const int i = dw.div(p), j = p - i * w;
        bool keep = run[p] != 0;
        for (int k = 0; keep && k < 2 * r + 1; ++k) {
            const int ii = i + k - r;
            if (ii >= 0 && ii < h && run[ii * w + j] <= half[k]) keep = false;
        }
        out[p] = keep;
    }
    __syncthreads();
}

#endif  // SG_COMMON_CUH
