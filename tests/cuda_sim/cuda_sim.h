// A small CPU emulation of the CUDA features our kernels use, so that the kernel sources of
// kernels/ compile with g++ and run against their NumPy references on machines without a GPU.
//
// A launch runs its blocks one after the other. By default each block runs as blockDim.x
// fibers (ucontext) on the calling thread: a fiber runs until its __syncthreads() or its
// return, and when every fiber still running waits at the barrier, all are released. The
// order in which the fibers run alternates from one barrier phase to the next and from one
// block to the next (thread 0 first, or the last thread first), so a missing barrier between a
// write and another thread's read shows up as a wrong result in one direction or the other. Compiled with
// -DCUDA_SIM_OS_THREADS (SCIP_GPU_SIM_THREADS=os in tests/cuda_sim/sim.py), each block runs as
// blockDim.x std::threads synchronised by a std::barrier instead: threads then also interleave
// inside a phase (some races only show there), at the price of an OS context switch per thread
// and barrier (many times slower on a small machine).
//
// Function-scope __shared__ arrays become statics (blocks never overlap); dynamic shared memory
// is one buffer per launch, refilled with garbage (0xA5 bytes) before every block so that
// reading memory nothing wrote is caught. Threads that return early leave the block's barrier,
// as exited threads stop counting for __syncthreads on a GPU.
//
// Only 1-D grids and blocks. Warp intrinsics are not emulated: kernels must not use them.
#pragma once
#define CUDA_SIM 1
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>
#ifndef CUDA_SIM_OS_THREADS
#include <ucontext.h>
#endif

struct sim_dim3 { unsigned x = 1, y = 1, z = 1; };
#ifdef CUDA_SIM_OS_THREADS
inline thread_local sim_dim3 threadIdx, blockIdx;
inline std::barrier<>* sim_block_barrier = nullptr;
#else
inline sim_dim3 threadIdx, blockIdx;  // set by the scheduler before it resumes a fiber
struct sim_fiber {
    ucontext_t ctx;
    bool waiting = false, done = false;
};
inline std::vector<sim_fiber> sim_fibers;
inline std::vector<std::unique_ptr<char[]>> sim_stacks;
inline ucontext_t sim_scheduler;
inline unsigned sim_current = 0;
constexpr size_t sim_stack_bytes = 256 * 1024;
#endif
inline sim_dim3 blockDim, gridDim;
inline std::vector<unsigned char> sim_shared_buffer;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

#ifdef CUDA_SIM_OS_THREADS
inline void __syncthreads() { sim_block_barrier->arrive_and_wait(); }
#else
inline void __syncthreads() {
    sim_fiber& f = sim_fibers[sim_current];
    f.waiting = true;
    swapcontext(&f.ctx, &sim_scheduler);
}
#endif
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned char* sim_dynamic_shared() {
    return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(sim_shared_buffer.data()) + 15) & ~uintptr_t(15));
}

inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline long long __double_as_longlong(double v) { long long d; std::memcpy(&d, &v, 8); return d; }
inline unsigned int __float_as_uint(float v) { unsigned int d; std::memcpy(&d, &v, 4); return d; }
inline float __uint_as_float(unsigned int v) { float d; std::memcpy(&d, &v, 4); return d; }

template <class T> inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T> inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <class T> inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T> inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v); }
template <class T> inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v); }
template <class T> inline T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
    return expected;  // the old value either way
}
template <class T> inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {}
    return old;
}
template <class T> inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v > old && !a.compare_exchange_weak(old, v)) {}
    return old;
}

using std::atan2; using std::ceil; using std::exp; using std::fabs; using std::floor; using std::hypot;
using std::isfinite; using std::isinf; using std::isnan; using std::log; using std::pow; using std::sqrt;

// Run `body` (the kernel call) for every block of a 1-D launch.
#ifdef CUDA_SIM_OS_THREADS
template <class F>
void sim_run(unsigned grid, unsigned block, size_t shared_bytes, F&& body) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    sim_shared_buffer.assign(shared_bytes + 16, 0xA5);
    std::barrier<> start(block + 1), end(block + 1);
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::thread> pool;
    pool.reserve(block);
    for (unsigned t = 0; t < block; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                start.arrive_and_wait();
                blockIdx = {b, 0, 0};
                body();
                sim_block_barrier->arrive_and_drop();
                end.arrive_and_wait();
            }
        });
    for (unsigned b = 0; b < grid; ++b) {
        bar = std::make_unique<std::barrier<>>(block);
        sim_block_barrier = bar.get();
        std::fill(sim_shared_buffer.begin(), sim_shared_buffer.end(), 0xA5);
        start.arrive_and_wait();
        end.arrive_and_wait();
    }
    for (auto& t : pool) t.join();
}

#else
template <class F>
void sim_run(unsigned grid, unsigned block, size_t shared_bytes, F&& body) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    sim_shared_buffer.assign(shared_bytes + 16, 0xA5);
    static std::remove_reference_t<F>* s_body;
    s_body = &body;
    void (*entry)() = [] {
        (*s_body)();
        sim_fibers[sim_current].done = true;  // then back to the scheduler (uc_link)
    };
    sim_fibers.assign(block, sim_fiber{});
    while (sim_stacks.size() < block) sim_stacks.emplace_back(new char[sim_stack_bytes]);
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        std::fill(sim_shared_buffer.begin(), sim_shared_buffer.end(), 0xA5);
        for (unsigned t = 0; t < block; ++t) {
            sim_fiber& f = sim_fibers[t];
            f.waiting = f.done = false;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = sim_stacks[t].get();
            f.ctx.uc_stack.ss_size = sim_stack_bytes;
            f.ctx.uc_link = &sim_scheduler;
            makecontext(&f.ctx, entry, 0);
        }
        for (unsigned phase = 0;; ++phase) {
            unsigned running = 0;
            for (unsigned k = 0; k < block; ++k) {
                const unsigned t = (phase + b) % 2 ? block - 1 - k : k;
                sim_fiber& f = sim_fibers[t];
                if (f.done) continue;
                sim_current = t;
                threadIdx = {t, 0, 0};
                swapcontext(&sim_scheduler, &f.ctx);  // until its next barrier or its return
                running += !f.done;
            }
            if (running == 0) break;
            for (auto& f : sim_fibers) f.waiting = false;  // every running fiber waits: release
        }
    }
}
#endif

// Call a kernel with CUDA-style parameters: params[i] points to the value of argument i.
template <class... A, size_t... I>
void sim_call_impl(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_reference_t<A>*>(params[I])...);
}
template <class... A>
void sim_call(void (*f)(A...), void** params) {
    sim_call_impl(f, params, std::index_sequence_for<A...>{});
}

// The kernel's parameter list, for the launcher to check its arguments against (CuPy packs each
// argument by its own size: a 4-byte integer passed for an 8-byte parameter shifts every later
// parameter on a GPU, while a pointer to the value here would still read it right): one letter
// and one size digit per parameter, 'p' pointer, 'f' floating point, 'i' integer.
// A pointer's digit is the alignment its pointee needs (a GPU faults on a misaligned load;
// x86 does not).
template <class T> constexpr char sim_kind() {
    return std::is_pointer_v<T> ? 'p' : (std::is_floating_point_v<T> ? 'f' : 'i');
}
template <class T> constexpr int sim_digit() {
    if constexpr (std::is_pointer_v<T>) {
        using P = std::remove_cv_t<std::remove_pointer_t<T>>;
        if constexpr (std::is_void_v<P>) return 1;
        else return int(alignof(P));
    } else {
        return int(sizeof(T));
    }
}
template <class... A>
int sim_signature_of(void (*)(A...), char* out, int cap) {
    int k = 0;
    auto put = [&](char kind, int size) {
        if (k + 2 < cap) { out[k++] = kind; out[k++] = char('0' + size); }
    };
    (put(sim_kind<std::remove_cv_t<std::remove_reference_t<A>>>(),
         sim_digit<std::remove_cv_t<std::remove_reference_t<A>>>()), ...);
    out[k] = 0;
    return k;
}
