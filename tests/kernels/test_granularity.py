"""Granularity kernel (kernels/granularity.cu) against the numba kernel it repeats: bit for bit,
in shared memory and in the global-memory workspace."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import _gpu_granularity, dispatch
from scip_gpu.features import cp_granularity


def _cases():
    rng = np.random.default_rng(11)
    return [args for args, _ in cp_granularity._planes_examples(rng)][:3]


def _run(device, args):
    x, view, ext, *params = args
    return _gpu_granularity.granularity_planes(device.asarray(x), device.asarray(view), device.asarray(ext),
                                               *params).get()


def _numba(args):
    cpu = dispatch.implementation("cp_granularity.planes", "cpu")
    return cpu(*args)


@pytest.mark.parametrize("case", [1, 2])
def test_granularity_kernel_equals_numba(device, case):
    """(tests/test_dispatch.py runs every example against the reference, within 1e-9)"""
    pytest.importorskip("numba")
    args = _cases()[case]
    np.testing.assert_array_equal(_run(device, args), _numba(args))


def test_granularity_kernel_global_workspace(sim_small_shared):
    """Planes whose workspace does not fit 16 KiB of shared memory (a 100 x 96 image: 6 grids
    of 25 x 24 doubles) take the global-memory variant."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(12)
    x = rng.random((2, 100, 96))
    view = x > 0.5
    ext = np.array([[100, 96], [60, 45]])
    assert _gpu_granularity._ws_granularity(100, 96) > 16 * 1024
    np.testing.assert_array_equal(_run(sim_small_shared, (x, view, ext)), _numba((x, view, ext)))
