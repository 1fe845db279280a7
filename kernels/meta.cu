// Meta columns of a batch's feature table: the empty flags of a mask and the number columns
// (regions, bounding box) written into the table as doubles. With these, a batch of the
// `scip` preset launches no kernel that CuPy generates: on a fresh machine each such kernel
// (a reduction, a negation, a converting copy) is compiled with NVRTC at its first use,
// seconds of the first batch; this module comes prebuilt.
//
// Reference semantics: scip_gpu.features.meta (compute_empty, compute_regions, compute_bbox).

// The empty flags: out[r * ld + j] = 1.0 where plane p = r * per_row + j (planes of
// plane_size bytes, back to back; p < n_planes) holds no nonzero byte, else 0.0. One block
// per plane.
extern "C" __global__ void
meta_empty(const unsigned char* __restrict__ planes, const long long n_planes, const long long plane_size,
           const int per_row, double* __restrict__ out, const long long ld) {
    for (i64 p = blockIdx.x; p < n_planes; p += gridDim.x) {
        const unsigned char* src = planes + p * plane_size;
        i64 any = 0;
        for (i64 i = threadIdx.x; i < plane_size; i += SG_THREADS) any |= src[i];
        any = sg_block_max_i64(any != 0 ? 1 : 0);
        if (threadIdx.x == 0) {
            const i64 r = p / per_row;
            out[r * ld + (p - r * per_row)] = any ? 0.0 : 1.0;
        }
    }
}

// Number columns into the table: out[r * ld + j] = (double)src[r * src_ld + j] for r < rows,
// j < cols; src of long long (kind 0) or double (kind 1). Each thread takes elements
// (grid-stride).
extern "C" __global__ void
meta_columns(const void* __restrict__ src, const int kind, const long long rows, const int cols,
             const long long src_ld, double* __restrict__ out, const long long ld) {
    const i64 n = rows * cols;
    for (i64 k = (i64)blockIdx.x * SG_THREADS + threadIdx.x; k < n; k += (i64)gridDim.x * SG_THREADS) {
        const i64 r = k / cols;
        const i64 j = k - r * cols;
        out[r * ld + j] = kind == 0 ? (double)static_cast<const long long*>(src)[r * src_ld + j]
                                    : static_cast<const double*>(src)[r * src_ld + j];
    }
}
