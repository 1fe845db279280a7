"""The CPU emulation of CUDA (tests/cuda_sim) itself: barriers order the threads' shared-memory
accesses, a missing barrier gives wrong results (whichever thread's value is read), threads
that return early leave the barrier, blocks see fresh garbage in dynamic shared memory."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ..cuda_sim import sim

SOURCE = r"""
extern "C" __global__ void neighbour(const int shift, const int sync, int* out) {
    __shared__ int s[256];
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = 1000 * (int)blockIdx.x + t;
    if (sync) __syncthreads();
    out[blockIdx.x * n + t] = s[(t + shift + n) % n];
}
extern "C" __global__ void early_exit(const int keep, int* out) {
    __shared__ int total;
    if (threadIdx.x == 0) total = 0;
    __syncthreads();
    if ((int)threadIdx.x >= keep) return;  // these no longer count for the barriers below
    atomicAdd(&total, 1);
    __syncthreads();
    __syncthreads();
    out[threadIdx.x] = total;
}
extern "C" __global__ void garbage(int* out) {
    unsigned char* dyn = sim_dynamic_shared();  // (the emulation's extern __shared__ buffer)
    if (threadIdx.x == 0) { out[blockIdx.x] = dyn[3]; dyn[3] = 7; }
}
"""


@pytest.fixture(scope="module")
def mod():
    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    return sim.SimModule(SOURCE, ["neighbour", "early_exit", "garbage"])


@pytest.mark.parametrize("shift", [1, -1])
def test_barrier_orders_and_a_missing_one_is_caught(mod, shift):
    n, grid = 64, 2
    want = np.array([[1000 * b + (t + shift) % n for t in range(n)] for b in range(grid)])
    out = np.zeros(grid * n, dtype=np.int32)
    mod.get_function("neighbour")((grid,), (n,), (np.int32(shift), np.int32(1), out))
    np.testing.assert_array_equal(out.reshape(grid, n), want)
    out[:] = 0
    mod.get_function("neighbour")((grid,), (n,), (np.int32(shift), np.int32(0), out))
    if os.environ.get("SCIP_GPU_SIM_THREADS") != "os":  # (OS threads: only when they interleave so)
        assert (out.reshape(grid, n) != want).any()  # without the barrier some thread reads too early


def test_threads_returning_early_leave_the_barrier(mod):
    out = np.full(64, -1, dtype=np.int32)
    mod.get_function("early_exit")((1,), (64,), (np.int32(10), out))
    np.testing.assert_array_equal(out[:10], 10)
    assert (out[10:] == -1).all()


def test_every_block_starts_from_garbage_shared_memory(mod):
    out = np.zeros(3, dtype=np.int32)
    mod.get_function("garbage")((3,), (32,), (out,), shared_mem=16)
    np.testing.assert_array_equal(out, 0xA5)
