"""The Zernike kernel (kernels/zernike.cu) against its numba twin: planes of one object each,
in dynamic shared memory and in the global-memory workspace (planes too wide for 16 KiB)."""

from __future__ import annotations

import numpy as np

from scip_gpu import gpu_kernels
from scip_gpu._gpu_zernike import zernike_sums as cuda_sums
from scip_gpu.cp_cpu_kernels import zernike_sums as cpu_sums
from scip_gpu.features.cp_zernike import _lattice_cases


def _planes(shape):
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = ((yy - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((xx - shape[1] / 2) / (shape[1] / 2.5)) ** 2 <= 1
    speckle = rng.random(shape) < 0.2
    one = np.zeros(shape, bool)
    one[3, 4] = True
    edge = np.zeros(shape, bool)
    edge[0, :] = True  # a line along the top border
    # blob, speckle, one pixel, empty, a full plane (every pixel equal, every border touched), a
    # border line, a speckled blob
    return np.stack([blob, speckle, one, np.zeros(shape, bool), np.ones(shape, bool), edge, blob & ~speckle])


def _compare(masks, device):
    rng = np.random.default_rng(12)
    x = rng.random(masks.shape)
    for weights in (None, x):
        want = cpu_sums(masks, weights)
        got = cuda_sums(device.asarray(masks), None if weights is None else device.asarray(weights))
        for k, (a, b) in enumerate(zip(want, got)):
            b = b.get()
            np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=str(k))
            if k == 2:  # the radius: exact tests and the twin's formulas on the same points, on every platform
                np.testing.assert_array_equal(b, a)
            np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-11, err_msg=str(k))


def test_zernike_kernel_equals_numba(device):
    from ..features.test_cp_zernike import _cocircular_plane

    _compare(_lattice_cases(), device)
    _compare(_planes((20, 23)), device)
    _compare(_cocircular_plane()[None], device)  # cocircular hull vertices: ties of angles


def test_zernike_kernel_global_workspace(sim_small_shared):
    masks = _planes((12, 300))  # wide: the column envelopes and hull exceed 16 KiB with the sums
    assert gpu_kernels.workspace_bytes("cp_zernike_planes", 12, 300) > 16 * 1024
    _compare(masks, sim_small_shared)
    launches = gpu_kernels.module().launches
    assert any(name == "cp_zernike_planes" and shared == 0 for name, _, _, shared in launches)
