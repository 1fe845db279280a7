"""Fixtures for the CUDA kernel tests.

``device`` runs a test twice: once with the kernel module emulated on the CPU
(``tests/cuda_sim``: the same sources compiled with g++, launched through the real wrappers of
``scip_gpu.gpu_kernels`` on NumPy-backed fake CuPy arrays), and once on a real GPU (marked
``gpu``: skipped without one). Either way the test compares the kernel with the CPU path.
"""

from __future__ import annotations

import pytest

from scip_gpu import gpu_kernels
from scip_gpu.backend import gpu_available

from .. import fake_cupy
from ..cuda_sim import sim


@pytest.fixture(scope="session")
def sim_module():
    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    return sim.shared_module()


@pytest.fixture(scope="session")
def sim_module_small_shared():
    """The emulated module with only 16 KiB of shared memory: every plane kernel takes its
    global-memory workspace variant."""
    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    return sim.sim_module(max_shared=16 * 1024)


@pytest.fixture(params=["sim", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """The array module the kernels run on: fake CuPy over the CPU emulation, or real CuPy."""
    if request.param == "gpu":
        ok, why = gpu_available()
        if not ok:
            pytest.skip(why)
        import cupy

        return cupy
    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    mod = request.getfixturevalue("sim_module")
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", mod)
    return cupy


@pytest.fixture
def sim_small_shared(monkeypatch, sim_module_small_shared):
    """Fake CuPy over the emulated module with little shared memory (global workspaces)."""
    import anndata  # noqa: F401

    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", sim_module_small_shared)
    return cupy
