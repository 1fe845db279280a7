"""CUDA implementation of the texture family (kernels/texture.cu), registered with
scip_gpu.dispatch as the ``cuda`` implementation of the stage ``texture.block``.

One fused kernel, one thread block per (object, channel) plane: both views' quantisation, GLCM
counts and properties, the mean and std over the angles, and the Sobel statistics, with the CPU
path's arithmetic (bit-identical results). It has two entry points with the same body:
``texture_planes`` with its workspace in dynamic shared memory (addressed as such) and
``texture_planes_global`` with a slice of a global scratch buffer per block, for planes whose
workspace exceeds the shared memory.
"""

from __future__ import annotations

import numpy as np

from .dispatch import register
from .gpu_kernels import _dtype_code, _round16, launch, shared_capacity, workspace

#: values per view and views per channel (texture.N_VIEW, texture.VIEWS)
N_VIEW = 28
N_VIEWS = 2
#: one-sided co-occurrence counts: 2 views x 4 offsets x 16 x 16 levels (uint32)
_COUNTS = N_VIEWS * 4 * 16 * 16


@workspace("texture_planes")
@workspace("texture_planes_global")
def _ws(h: int, w: int) -> int:
    """The ``SgArena::take`` calls of ``tex_planes``: px (uint16), view flags (bytes, later the
    ring masks and counts of 32-pixel chunks), pair counts, Sobel lists (levels before them)."""
    cap = h * w
    cap8 = -(-cap // 8) * 8
    return _round16(2 * cap) + _round16(cap8 + 16) + _round16(4 * _COUNTS) + _round16(8 * cap8)


@workspace("texture_planes_f32")
@workspace("texture_planes_f32_global")
def _ws_f32(h: int, w: int) -> int:
    """As ``_ws`` with the plane's values as float32 (4 bytes each)."""
    cap = h * w
    cap8 = -(-cap // 8) * 8
    return _round16(4 * cap) + _round16(cap8 + 16) + _round16(4 * _COUNTS) + _round16(8 * cap8)


def _accepts(batch, mr, ctx) -> bool:
    return _dtype_code(batch.pixels.dtype) is not None or batch.pixels.dtype == np.float32


@register("texture.block", "cuda", accepts=_accepts)
def texture_block(batch, mr, ctx):
    """(N, C*56) texture features of one mask (``texture_planes``), columns as
    ``texture_columns``: per channel the mask view's 28 values, then the combined view's."""
    import cupy

    px = cupy.ascontiguousarray(batch.pixels)
    n, c, h, w = px.shape
    per = N_VIEWS * N_VIEW
    out = getattr(ctx, "out", None)
    if out is None or out.shape != (n, c * per) or out.dtype != np.float64 or out.strides[1] != 8:
        out = cupy.empty((n, c * per), dtype=cupy.float64)  # else: the batch table's columns
    if n * c == 0:
        return out
    f32 = px.dtype == np.float32
    code = _dtype_code(px.dtype)
    args = (px, np.int32(-1 if f32 else code), np.int32(c), np.int32(h), np.int32(w),
            cupy.ascontiguousarray(batch.extents, dtype=cupy.int64), np.int32(n * c),
            cupy.ascontiguousarray(mr.mask).view(cupy.uint8),
            cupy.ascontiguousarray(mr.combined).view(cupy.uint8),
            cupy.ascontiguousarray(mr.usable).view(cupy.uint8),
            out, np.int64(out.strides[0] // 8))
    ws = _ws_f32(h, w) if f32 else _ws(h, w)
    # the kernel variant for the workspace launch() gives: dynamic shared memory when it fits
    # (the variant that addresses it as shared memory), else global scratch slices
    base = "texture_planes_f32" if f32 else "texture_planes"
    name = base if ws <= shared_capacity(base) else f"{base}_global"
    launch(name, n * c, args, workspace=ws)
    return out
