"""CUDA implementations of four stages of the CellProfiler families, registered with
scip_gpu.dispatch beside their array-namespace references and numba kernels:

* ``cp_intensity.planes`` (kernels/cp_intensity.cu, ``cp_intensity_planes``),
* ``cp_texture.haralick`` (kernels/cp_texture.cu, ``cp_haralick_planes``),
* ``cp_colocalization.pairs`` (kernels/cp_colocalization.cu, ``cp_colocalization_objects``),
* ``cp_colocalization.costes`` (kernels/cp_costes.cu, ``cp_costes_objects``; appended at the end).

One thread block per plane (per object for colocalisation), the plane in a per-block workspace
(dynamic shared memory, or a slice of a global scratch buffer when it does not fit:
``gpu_kernels.launch``); every float operation in the order of the numba kernels of
``scip_gpu._numba_cp``, so the values equal the CPU path's (bit for bit but for the last bits
of log2/exp in the Haralick entropies). Nothing here synchronises with the host.
"""

from __future__ import annotations

import numpy as np

from .dispatch import register
from .gpu_kernels import _round16, device_constant, launch, workspace

#: values per plane of cp_intensity.planes (features.cp_intensity.N_CHANNEL)
N_INTENSITY = 19
#: Haralick features per direction, directions (features.cp_texture)
N_HARALICK = 13
N_DIRECTIONS = 4
#: colocalisation values per pair (features.cp_colocalization.FEATURES)
N_COLOC = 9
#: most channels of cp_colocalization_objects (its per-channel shared arrays)
MAX_COLOC_CHANNELS = 64


@workspace("cp_intensity_planes")
def _ws_intensity(h: int, w: int) -> int:
    """Values (doubles; the sort's scratch later), view/edge flags (bytes), sort keys (uint64)."""
    cap = h * w
    return _round16(8 * cap) + _round16(cap) + _round16(8 * cap)


@register("cp_intensity.planes", "cuda", accepts=lambda x, view, edge: x.ndim == 3)
def plane_intensity(x, view, edge):
    """(M, 19) CellProfiler intensity and location values of every plane
    (``cp_intensity_planes``; ``features.cp_intensity.plane_intensity``)."""
    import cupy

    m, h, w = x.shape
    out = cupy.empty((m, N_INTENSITY), dtype=cupy.float64)
    args = (cupy.ascontiguousarray(x, dtype=cupy.float64),
            cupy.ascontiguousarray(view, dtype=cupy.bool_).view(cupy.uint8),
            cupy.ascontiguousarray(edge, dtype=cupy.bool_).view(cupy.uint8),
            np.int32(h), np.int32(w), np.int32(m), out)
    launch("cp_intensity_planes", m, args, workspace=_ws_intensity(h, w))
    return out


@workspace("cp_haralick_planes")
def _ws_haralick(h: int, w: int) -> int:
    """Levels (bytes), pair keys and the sort's scratch (2 h w uint32 each; the entries' run
    ends later live in the one not holding the sorted keys)."""
    cap = h * w
    return _round16(cap) + 2 * _round16(8 * cap)


def _accepts_haralick(q, scale: int, levels: int) -> bool:
    return q.ndim == 3 and np.dtype(q.dtype).kind in "iu" and levels <= 256 and int(scale) >= 1


@register("cp_texture.haralick", "cuda", accepts=_accepts_haralick)
def haralick(q, scale: int, levels: int):
    """(M, 4, 13) Haralick features of every plane and direction at one scale
    (``cp_haralick_planes``; ``features.cp_texture.haralick_planes``)."""
    import cupy

    m, h, w = q.shape
    out = cupy.empty((m, N_DIRECTIONS, N_HARALICK), dtype=cupy.float64)
    args = (cupy.ascontiguousarray(q, dtype=cupy.int32), np.int32(h), np.int32(w), np.int32(m),
            np.int32(int(scale)), out)
    launch("cp_haralick_planes", m, args, workspace=_ws_haralick(h, w))
    return out


def _ws_colocalization(c: int, p: int) -> int:
    """Gathered values (C P doubles), ranks (C P ints), sort keys and the sort's scratch (P
    uint64 each; the dense ranks of the sorted positions live in the one not holding the
    result)."""
    return _round16(8 * c * p) + _round16(4 * c * p) + 2 * _round16(8 * p)


# the workspace of 3 channels (benchmarks/kernel_resources.py: planes of h x w pixels)
workspace("cp_colocalization_objects")(lambda h, w: _ws_colocalization(3, h * w))


def _accepts_colocalization(x, view, pairs) -> bool:
    return x.ndim == 3 and x.shape[1] <= MAX_COLOC_CHANNELS


@register("cp_colocalization.pairs", "cuda", accepts=_accepts_colocalization)
def pair_colocalization(x, view, pairs):
    """(N, len(pairs), 9) colocalisation values of every object and channel pair
    (``cp_colocalization_objects``; ``features.cp_colocalization.pair_colocalization``)."""
    import cupy

    from .features.cp_colocalization import THRESHOLD

    n, c, p = x.shape
    q = len(pairs)
    out = cupy.empty((n, q, N_COLOC), dtype=cupy.float64)
    if q == 0 or n == 0:
        return out
    pa, pb = _pair_indices(pairs)
    args = (cupy.ascontiguousarray(x, dtype=cupy.float64),
            cupy.ascontiguousarray(view, dtype=cupy.bool_).view(cupy.uint8),
            np.int32(c), np.int32(p), np.int32(n), pa, pb, np.int32(q), np.float64(THRESHOLD), out)
    launch("cp_colocalization_objects", n, args, workspace=_ws_colocalization(c, p))
    return out


def _pair_indices(pairs):
    """The pairs' first and second channels as int32 device arrays (cached per pair list)."""
    key = tuple((int(a), int(b)) for a, b in pairs)
    pa = device_constant(("cp-pairs-a", key), lambda: np.array([a for a, _ in key], dtype=np.int32))
    pb = device_constant(("cp-pairs-b", key), lambda: np.array([b for _, b in key], dtype=np.int32))
    return pa, pb


# ---------------------------------------------------------------------------------------------
# cp_colocalization.costes (kernels/cp_costes.cu)


def _ws_costes(c: int, p: int) -> int:
    """Gathered values (C P doubles)."""
    return _round16(8 * c * p)


# the workspace of 3 channels (benchmarks/kernel_resources.py: planes of h x w pixels)
workspace("cp_costes_objects")(lambda h, w: _ws_costes(3, h * w))


def _accepts_costes(x, view, pairs, scale: int) -> bool:
    return x.ndim == 3 and view.ndim == 2 and float(scale) >= 1


@register("cp_colocalization.costes", "cuda", accepts=_accepts_costes)
def costes_pairs(x, view, pairs, scale: int):
    """(N, len(pairs), 2) Costes' C1, C2 of every object and channel pair, CellProfiler's
    ``Faster`` bisection (``cp_costes_objects``; ``features.cp_colocalization.costes_pairs``):
    a group of threads per pair judges the candidates of several bisection steps at once, each
    thread with the numba kernel's sequential sums, so the values are the CPU path's bit for
    bit."""
    import cupy

    from .features.cp_colocalization import COSTES_MAX_ITER

    n, c, p = x.shape
    q = len(pairs)
    out = cupy.empty((n, q, 2), dtype=cupy.float64)
    if q == 0 or n == 0:
        return out
    pa, pb = _pair_indices(pairs)
    args = (cupy.ascontiguousarray(x, dtype=cupy.float64),
            cupy.ascontiguousarray(view, dtype=cupy.bool_).view(cupy.uint8),
            np.int32(c), np.int32(p), np.int32(n), pa, pb, np.int32(q), np.float64(float(scale)),
            np.int32(COSTES_MAX_ITER), out)
    launch("cp_costes_objects", n, args, workspace=_ws_costes(c, p))
    return out
