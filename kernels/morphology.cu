// Binary erosion by a disk of every plane of a batch (ops.binary_erosion_disk): what the fused
// intensity kernel does for its edge views, as a stage of its own for the inputs that kernel
// does not take (float pixels: e.g. the illumination-corrected fields' cells, whose intensity
// family runs the array-namespace form, with this erosion instead of ~35 CuPy launches).
//
// Reference semantics: scip_gpu.ops.binary_erosion_disk; arithmetic of its numba twin
// (_numba_kernels.erosion_rows): the disk as the union of its rows, each a run-length test
// (sg_erosion_rows); outside the image counts as foreground; False outside each extent.
//
// One block per plane: the extent copied compact into the workspace, eroded there
// (sg_erosion_rows), written back at the planes' row stride W with zeros beyond the extent.
// Workspace for H x W planes: the plane (H W bytes), run lengths (H W ints), the result (H W
// bytes).
extern "C" __global__ void
erosion_disk_planes(const unsigned char* __restrict__ mask, const long long* __restrict__ extents,
                    const int M, const int H, const int W, const int r, unsigned char* __restrict__ out,
                    unsigned char* scratch, const long long ws_bytes) {
    const int cap = H * W;
    SgArena arena(sg_workspace(scratch, ws_bytes));
    unsigned char* plane = arena.take<unsigned char>(cap);
    int* run = arena.take<int>(cap);
    unsigned char* eroded = arena.take<unsigned char>(cap);
    __shared__ int half[64];
    sg_disk_half_widths(half, r);
    __syncthreads();
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        const int h = (int)extents[2 * m], w = (int)extents[2 * m + 1];
        const unsigned char* src = mask + (i64)m * cap;
        unsigned char* dst = out + (i64)m * cap;
        const int n = h * w;
        if (n > 0) {
            const SgDivW dw(w);
            for (int p = threadIdx.x; p < n; p += SG_THREADS) {
                const int i = dw.div(p), j = p - i * w;
                plane[p] = src[i * W + j] != 0;
            }
            __syncthreads();
            sg_erosion_rows(plane, eroded, run, h, w, half, r);
        }
        for (int p = threadIdx.x; p < cap; p += SG_THREADS) {
            const int i = p / W, j = p - i * W;
            dst[p] = (i < h && j < w) ? eroded[i * w + j] : 0;
        }
        __syncthreads();
    }
}
