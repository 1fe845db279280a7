"""CUDA implementation of the CellProfiler granularity stage (kernels/granularity.cu),
registered with scip_gpu.dispatch as the ``cuda`` implementation of ``cp_granularity.planes``."""

from __future__ import annotations

import math

import numpy as np

from .dispatch import register
from .gpu_kernels import _round16, device_constant, launch, workspace


def _grid_caps(h: int, w: int, s: float, t: float) -> tuple[int, int]:
    """The largest resampled grid and background grid (samples) of planes up to h x w."""
    nh = int(h * s) if s < 1 else h
    nw = int(w * s) if s < 1 else w
    nh, nw = max(nh, 1), max(nw, 1)
    bh = math.ceil(nh * t) if t < 1 else nh
    bw = math.ceil(nw * t) if t < 1 else nw
    return nh * nw, max(bh, 1) * max(bw, 1)


@workspace("granularity_planes")
def _ws_granularity(h: int, w: int, s: float = 0.25, t: float = 0.25) -> int:
    """sub, pix, ero, rec, tmp, wts (cap doubles each), back, back2 (bcap doubles each)."""
    cap, bcap = _grid_caps(h, w, s, t)
    return 6 * _round16(8 * cap) + 2 * _round16(8 * bcap)


def _offsets(radius: int):
    from .features.cp_granularity import disk

    dy, dx = np.nonzero(disk(radius))
    return (dy - radius).astype(np.int32), (dx - radius).astype(np.int32)


@register("cp_granularity.planes", "cuda")
def granularity_planes(x, view, extents, subsample_size: float = 0.25, image_sample_size: float = 0.25,
                       element_size: int = 10, spectrum_length: int = 16):
    """``features.cp_granularity.granularity_planes``, one block per plane
    (``granularity_planes``): no host synchronisation."""
    import cupy

    xx = cupy.ascontiguousarray(x, dtype=cupy.float64)
    m, h, w = xx.shape
    s, t, r, length = float(subsample_size), float(image_sample_size), int(element_size), int(spectrum_length)
    out = cupy.empty((m, length), dtype=cupy.float64)
    if m == 0 or length == 0:
        return out
    cap, bcap = _grid_caps(h, w, s, t)
    dy = device_constant(("granularity-dy", r), lambda: _offsets(r)[0])
    dx = device_constant(("granularity-dx", r), lambda: _offsets(r)[1])
    args = (xx, cupy.ascontiguousarray(view).view(cupy.uint8), np.int32(h), np.int32(w),
            cupy.ascontiguousarray(extents, dtype=cupy.int64), np.int32(m), np.float64(s), np.float64(t), dy, dx,
            np.int32(dy.shape[0]), np.int32(length), np.int64(cap), np.int64(bcap), out)
    launch("granularity_planes", m, args, workspace=_ws_granularity(h, w, s, t))
    return out
