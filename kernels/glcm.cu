// Batched grey-level co-occurrence matrices with SCIP's quantisation and graycoprops.
//
// Reference semantics: scip_gpu.features.texture (quantise_scip, glcm_batched,
// graycoprops_batched). One thread block per plane (object x channel x view):
//   1. quantise on the fly: level = number of the plane's 16 bin edges strictly below the
//      pixel value (numpy.digitize(right=True)), 16 for pixels outside the view;
//   2. count symmetric co-occurrences of in-view pixel pairs (p, p + offset) inside the plane's
//      real extent, for each of K offsets, in shared memory (K * 16 * 16 ints);
//   3. normalise each matrix and compute contrast, dissimilarity, homogeneity, energy,
//      correlation (1 when a marginal std is below 1e-15) and ASM.
// Output: props[plane, k, 6], properties in that order. All-zero matrices give 0 for all but
// correlation (1), as scikit-image. No host synchronisation inside.

#define NL 16      // grey levels kept (0..15); level 16 marks pixels outside the view
#define NE 16      // bin edges per plane
#define MAXK 8     // offsets per launch
#define NPROP 6

extern "C" __global__ void glcm_props(const double* __restrict__ values,     // (M, H, W)
                                      const unsigned char* __restrict__ view,  // (M, H, W)
                                      const long long* __restrict__ extents,   // (M, 2)
                                      const double* __restrict__ edges,        // (M, NE)
                                      const int* __restrict__ offsets,         // (K, 2) row, col
                                      const int K, const int H, const int W, const int M,
                                      double* __restrict__ props) {            // (M, K, NPROP)
    __shared__ unsigned int counts[MAXK * NL * NL];
    __shared__ double e[NE];
    const int m = blockIdx.x;
    if (m >= M) return;
    for (int i = threadIdx.x; i < K * NL * NL; i += blockDim.x) counts[i] = 0;
    if (threadIdx.x < NE) e[threadIdx.x] = edges[(long long)m * NE + threadIdx.x];
    __syncthreads();
    const long long h = extents[2 * m], w = extents[2 * m + 1];
    const double* x = values + (long long)m * H * W;
    const unsigned char* vw = view + (long long)m * H * W;
    for (long long p = threadIdx.x; p < h * w; p += blockDim.x) {
        const int r = (int)(p / w), c = (int)(p % w);
        const long long idx = (long long)r * W + c;
        if (!vw[idx]) continue;
        int la = 0;
        const double xa = x[idx];
        for (int i = 0; i < NE; ++i) la += xa > e[i];
        for (int k = 0; k < K; ++k) {
            const int r2 = r + offsets[2 * k], c2 = c + offsets[2 * k + 1];
            if (r2 < 0 || c2 < 0 || r2 >= h || c2 >= w) continue;
            const long long idx2 = (long long)r2 * W + c2;
            if (!vw[idx2]) continue;
            int lb = 0;
            const double xb = x[idx2];
            for (int i = 0; i < NE; ++i) lb += xb > e[i];
            atomicAdd(&counts[(k * NL + la) * NL + lb], 1u);
            atomicAdd(&counts[(k * NL + lb) * NL + la], 1u);  // symmetric
        }
    }
    __syncthreads();
    if (threadIdx.x >= K) return;
    const int k = threadIdx.x;
    const unsigned int* P = counts + k * NL * NL;
    double total = 0.0;
    for (int i = 0; i < NL * NL; ++i) total += (double)P[i];
    const double norm = total > 0.0 ? 1.0 / total : 0.0;
    double contrast = 0.0, dissim = 0.0, homog = 0.0, asm_ = 0.0, mi = 0.0, mj = 0.0;
    for (int i = 0; i < NL; ++i)
        for (int j = 0; j < NL; ++j) {
            const double p = (double)P[i * NL + j] * norm;
            const double d = (double)(i - j);
            contrast += p * d * d;
            dissim += p * (d < 0 ? -d : d);
            homog += p / (1.0 + d * d);
            asm_ += p * p;
            mi += p * i;
            mj += p * j;
        }
    double vi = 0.0, vj = 0.0, cov = 0.0;
    for (int i = 0; i < NL; ++i)
        for (int j = 0; j < NL; ++j) {
            const double p = (double)P[i * NL + j] * norm;
            const double di = i - mi, dj = j - mj;
            vi += p * di * di;
            vj += p * dj * dj;
            cov += p * di * dj;
        }
    const double si = sqrt(vi), sj = sqrt(vj);
    double* o = props + ((long long)m * K + k) * NPROP;
    o[0] = contrast;
    o[1] = dissim;
    o[2] = homog;
    o[3] = sqrt(asm_);
    o[4] = (si < 1e-15 || sj < 1e-15) ? 1.0 : cov / (si * sj);
    o[5] = asm_;
}
