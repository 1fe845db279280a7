// Batched masked statistics: the 11 intensity statistics of many segments at once.
//
// Reference semantics: scip_gpu.stats.compact_statistics (NumPy). Input is the compact layout
// built by scip_gpu.stats.view_members: the members of segment 0 in ascending order, then
// those of segment 1, ...; starts[s] and n[s] locate segment s. One thread block per segment:
// block reductions give the sum and the central moments (two passes, as NumPy/SciPy), thread 0
// picks the quantiles (numpy.percentile, linear) and the MAD (median of |x - median|, found
// by a k-th-of-two-sorted-lists search over the V-shaped sequence |x - median|).
//
// Output columns (as scip_gpu.stats.STATISTICS): mean, median, max, min, std, mad,
// lower_quartile, upper_quartile, sum, skewness, kurtosis. Empty segments give NaN.
// No host synchronisation happens inside; the launch is asynchronous on the current stream.

#define NSTAT 11

__device__ __forceinline__ double nan_value() { return __longlong_as_double(0x7ff8000000000000ULL); }
__device__ __forceinline__ double neg_inf() { return __longlong_as_double(0xfff0000000000000ULL); }

// numpy's _lerp: a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5
__device__ __forceinline__ double lerp_np(double a, double b, double t) {
    double diff = b - a;
    return (t >= 0.5) ? (b - diff * (1.0 - t)) : (a + diff * t);
}

__device__ double quantile_sorted(const double* v, long long n, double q) {
    double virt = (double)(n - 1) * q;
    long long lo = (long long)floor(virt);
    long long hi = lo + 1 < n - 1 ? lo + 1 : n - 1;
    return lerp_np(v[lo], v[hi], virt - (double)lo);
}

// k-th smallest (0-based) of |v - c| where v is ascending; split = #(v <= c)
__device__ double kth_vshape(const double* v, long long n, long long split, double c, long long k) {
    long long a = split, t = k + 1;
    long long lo = t - (n - split) > 0 ? t - (n - split) : 0;
    long long hi = t < a ? t : a;
    while (lo < hi) {
        long long mid = (lo + hi) / 2;
        long long j = t - mid;
        double A_mid = c - v[split - 1 - mid];
        double B_j1 = v[split + j - 1] - c;
        if (mid < a && j > 0 && B_j1 > A_mid) lo = mid + 1; else hi = mid;
    }
    long long j = t - lo;
    double left = lo > 0 ? c - v[split - lo] : neg_inf();
    double right = j > 0 ? v[split + j - 1] - c : neg_inf();
    return left > right ? left : right;
}

template <int BLOCK>
__device__ double block_sum(double x, double* buf) {
    buf[threadIdx.x] = x;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    double r = buf[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void masked_statistics(const double* __restrict__ values,
                                             const long long* __restrict__ starts,
                                             const long long* __restrict__ counts,
                                             const int n_segments,
                                             double* __restrict__ out) {
    const int BLOCK = 256;
    __shared__ double buf[BLOCK];
    const int seg = blockIdx.x;
    if (seg >= n_segments) return;
    const long long n = counts[seg];
    double* o = out + (long long)seg * NSTAT;
    if (n == 0) {
        if (threadIdx.x < NSTAT) o[threadIdx.x] = nan_value();
        return;
    }
    const double* v = values + starts[seg];
    double s = 0.0;
    for (long long i = threadIdx.x; i < n; i += BLOCK) s += v[i];
    const double total = block_sum<BLOCK>(s, buf);
    const double mean = total / (double)n;
    double s2 = 0.0, s3 = 0.0, s4 = 0.0;
    for (long long i = threadIdx.x; i < n; i += BLOCK) {
        double d = v[i] - mean, d2 = d * d;
        s2 += d2;
        s3 += d2 * d;
        s4 += d2 * d2;
    }
    const double m2 = block_sum<BLOCK>(s2, buf) / (double)n;
    const double m3 = block_sum<BLOCK>(s3, buf) / (double)n;
    const double m4 = block_sum<BLOCK>(s4, buf) / (double)n;
    if (threadIdx.x != 0) return;
    const double q0 = v[0], q4 = v[n - 1];
    const double q1 = quantile_sorted(v, n, 0.25);
    const double q2 = quantile_sorted(v, n, 0.5);
    const double q3 = quantile_sorted(v, n, 0.75);
    // split: members <= median (binary search in the ascending segment)
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) / 2;
        if (v[mid] <= q2) lo = mid + 1; else hi = mid;
    }
    const long long split = lo;
    const long long k_lo = (n - 1) / 2, k_hi = n / 2 < n - 1 ? n / 2 : n - 1;
    const double mad_lo = kth_vshape(v, n, split, q2, k_lo);
    const double mad_hi = kth_vshape(v, n, split, q2, k_hi);
    const double mad = lerp_np(mad_lo, mad_hi, k_lo == k_hi ? 0.0 : 0.5);
    const double eps = 2.220446049250313e-16;
    const bool zero = m2 <= (eps * mean) * (eps * mean);
    o[0] = mean;
    o[1] = q2;
    o[2] = q4;
    o[3] = q0;
    o[4] = sqrt(m2);
    o[5] = mad;
    o[6] = q1;
    o[7] = q3;
    o[8] = total;
    o[9] = zero ? nan_value() : m3 / (m2 * sqrt(m2));  // (not pow: sqrt and * are exact-rounded everywhere)
    o[10] = zero ? nan_value() : m4 / (m2 * m2) - 3.0;
}
