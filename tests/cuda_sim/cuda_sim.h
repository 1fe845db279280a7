// A tiny CPU emulation of the CUDA features our kernels use, so that kernel sources can be
// compiled with g++ and run against their NumPy references on machines without a GPU.
// Each block runs as blockDim.x std::threads synchronised with a std::barrier; blocks run one
// after the other, so function-scope __shared__ arrays become plain statics.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct sim_dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local sim_dim3 threadIdx, blockIdx;
inline sim_dim3 blockDim, gridDim;
inline std::barrier<>* sim_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
inline void __syncthreads() { sim_barrier->arrive_and_wait(); }
inline double __longlong_as_double(unsigned long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v);
}
using std::floor; using std::pow; using std::sqrt;

template <class F>
void sim_launch(unsigned grid, unsigned block, F kernel) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        // threads that return early must leave the barrier's count
        std::barrier<> bar(block);
        sim_barrier = &bar;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < block; ++t)
            ts.emplace_back([&, b, t] { blockIdx.x = b; threadIdx.x = t; kernel(); });
        for (auto& t : ts) t.join();
    }
}
