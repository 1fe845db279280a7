"""CUDA implementation of the Zernike moments of the CellProfiler families (kernels/zernike.cu),
registered with scip_gpu.dispatch as the ``cuda`` implementations of the stages
``cp_zernike.sums`` and ``cp_zernike.circles``.

One thread block per plane: the column envelopes on all threads, centrosome's hull and
Chrystal's algorithm on one thread (as the numba twin), the moment terms of the pixels on all
threads, their partial sums added in thread order. The per-block workspace (column envelopes,
hull, partial sums: 25 KiB and a little more per plane column) lives in dynamic shared memory, or
in global scratch for planes too wide for it.
"""

from __future__ import annotations

import numpy as np

from .dispatch import register
from .gpu_kernels import THREADS, _round16, device_constant, launch, workspace

#: partial sums gathered per round (ZN_CH in kernels/zernike.cu)
_CH = 12


@workspace("cp_zernike_planes")
def _ws(h: int, w: int) -> int:
    """The ``SgArena::take`` calls of ``cp_zernike_planes``: lower, upper (w int32), hull rows
    and columns (2 w + 2 int32 each), the circle (3 float64), the threads' partial sums
    (ZN_CH x THREADS float64)."""
    return 2 * _round16(4 * w) + 2 * _round16(4 * (2 * w + 2)) + _round16(24) + _round16(8 * _CH * THREADS)


def _tables():
    from .features.cp_zernike import _LUT, ZERNIKE_INDEXES

    lut = device_constant(("cp_zernike", "lut"), lambda: np.ascontiguousarray(_LUT, dtype=np.float64))
    nidx = device_constant(("cp_zernike", "n"), lambda: ZERNIKE_INDEXES[:, 0].astype(np.int32))
    midx = device_constant(("cp_zernike", "m"), lambda: ZERNIKE_INDEXES[:, 1].astype(np.int32))
    return lut, nidx, midx


def _run(masks, weights):
    import cupy

    from .features.cp_zernike import ZERNIKE_INDEXES

    m, h, w = masks.shape
    k = len(ZERNIKE_INDEXES)
    real = cupy.empty((m, k), dtype=cupy.float64)
    imag = cupy.empty((m, k), dtype=cupy.float64)
    circle = cupy.empty((m, 3), dtype=cupy.float64)
    count = cupy.empty(m, dtype=cupy.float64)
    if m == 0:
        return circle, real, imag, count
    mk = cupy.ascontiguousarray(masks).astype(cupy.bool_, copy=False).view(cupy.uint8)
    wt = (cupy.zeros(1, dtype=cupy.float64) if weights is None
          else cupy.ascontiguousarray(weights, dtype=cupy.float64))
    lut, nidx, midx = _tables()
    args = (mk, wt, np.int32(weights is not None), np.int32(m), np.int32(h), np.int32(w), lut, nidx, midx,
            real, imag, circle, count)
    launch("cp_zernike_planes", m, args, workspace=_ws(h, w))
    return circle, real, imag, count


@register("cp_zernike.sums", "cuda")
def zernike_sums(masks, weights=None):
    """``features.cp_zernike.zernike_sums`` by ``cp_zernike_planes``."""
    circle, real, imag, count = _run(masks, weights)
    return real, imag, circle[:, 2].copy(), count


@register("cp_zernike.circles", "cuda")
def enclosing_circles(masks):
    """``features.cp_zernike.enclosing_circles`` by ``cp_zernike_planes`` (its moments unused)."""
    circle, *_ = _run(masks, None)
    return circle[:, :2].copy(), circle[:, 2].copy()
