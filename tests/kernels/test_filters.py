"""Filters as CUDA stages for the planes the fused kernels do not take (float pixels):
kernels/filters.cu (``ops.sobel``, ``ops.gaussian``) and kernels/morphology.cu (``ops.binary_erosion_disk``),
against their numba twins, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import cpu_kernels, gpu_kernels
from scip_gpu.stage_examples import images, masks

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed")


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.uint8])
def test_sobel_kernel_is_the_numba_sobel(device, dtype):
    rng = np.random.default_rng(3)
    x, e = images(rng, dtype)
    if x.dtype.kind == "f":
        x[5, 1:3, 1:3] = np.nan  # (spreads to its neighbours, the centre itself weighs nothing)
    e[0] = (1, 1)  # a one-pixel plane
    e[1] = (1, 7)  # one row
    want = cpu_kernels.sobel(x, e)
    got = _host(gpu_kernels.sobel(device.asarray(x), device.asarray(e)))
    assert got.dtype == want.dtype == (np.float32 if dtype == np.float32 else np.float64)
    np.testing.assert_array_equal(got, want)  # (NaN where NaN, 0 outside each extent)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.uint8])
def test_gaussian_kernel_is_the_cpu_gaussian(device, dtype):
    """``gaussian_planes`` against the CPU path's ``ops.gaussian`` (the numba gaussian_planes;
    SciPy's gaussian_filter for float32 planes, which stores each pass as float32), bit for bit
    inside every extent, 0 outside."""
    from scip_gpu import ops

    rng = np.random.default_rng(5)
    x, e = images(rng, dtype)
    if x.dtype.kind == "f":
        x[5, 1:3, 1:3] = np.nan
        x[6] = x[6] * 1e-3 + 3  # (values where float32 rounding keeps few bits of the smoothing)
    e[0] = (1, 1)
    e[1] = (1, 7)
    valid = np.arange(x.shape[1])[None, :, None] < e[:, 0, None, None]
    valid = valid & (np.arange(x.shape[2])[None, None, :] < e[:, 1, None, None])
    for sigma in (0.5, 1.0, 2.5):
        want = ops.gaussian(x, e, sigma)  # (the CPU path)
        got = _host(gpu_kernels.gaussian(device.asarray(x), device.asarray(e), sigma))
        assert got.dtype == want.dtype == (np.float32 if dtype == np.float32 else np.float64)
        np.testing.assert_array_equal(np.where(valid, got, 0), np.where(valid, want, 0), err_msg=f"sigma {sigma}")
        assert not got[~valid].any()


@pytest.mark.parametrize("radius", [1, 3, 6, 12])
def test_erosion_kernel_is_the_numba_erosion(device, radius):
    rng = np.random.default_rng(4)
    mk, e = masks(rng)
    e[0] = (1, 1)
    e[1] = (2, 3)
    mk[0, 0, 0] = mk[1, :2, :3] = True  # (smaller than the disk: nothing eroded there)
    want = cpu_kernels.binary_erosion_disk(mk, e, radius)
    got = _host(gpu_kernels.binary_erosion_disk(device.asarray(mk), device.asarray(e), radius))
    np.testing.assert_array_equal(got, want)
    assert want[0, 0, 0] and want[1, :2, :3].all()


def test_sobel_view_statistics_kernel_is_the_numba_one(device):
    """The Sobel statistics of the float path's texture views (where all eight neighbours lie
    in the view): the numba twin's values bit for bit (the same sequential sums), NaN for
    views with no such pixel."""
    from scip_gpu.features.texture import _view_examples

    for values, view, e in _view_examples(np.random.default_rng(6)):
        sob = cpu_kernels.sobel(values, e)
        want = cpu_kernels.sobel_view_statistics(sob, view, e)
        got = _host(gpu_kernels.sobel_view_statistics(device.asarray(sob), device.asarray(view), device.asarray(e)))
        np.testing.assert_array_equal(got, want)
        assert np.isnan(want).any() and not np.isnan(want).all()


@pytest.mark.parametrize("stage,args", [
    ("ops.sobel", (np.zeros((2, 0, 5)), np.zeros((2, 2), dtype=np.int64))),
    ("ops.gaussian", (np.zeros((2, 0, 5)), np.zeros((2, 2), dtype=np.int64), 1.0)),
    ("ops.binary_erosion_disk", (np.zeros((2, 4, 0), dtype=bool), np.zeros((2, 2), dtype=np.int64), 2)),
    ("texture.sobel_view_statistics", (np.zeros((2, 0, 0)), np.zeros((2, 0, 0), dtype=bool),
                                       np.zeros((2, 2), dtype=np.int64))),
])
def test_plane_kernels_decline_planes_without_pixels(stage, args):
    """Planes of zero area have no workspace, and launch() leaves off the kernels' scratch
    arguments without one: the CUDA implementations decline them (the reference runs)."""
    from scip_gpu.dispatch import select

    assert select(stage, args, backend="cuda").backend == "reference"
