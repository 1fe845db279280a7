"""CUDA implementation of the intensity family and the raw set (kernels/intensity.cu),
registered with scip_gpu.dispatch as the ``cuda`` implementations of the stages
``intensity.block`` and ``intensity.raw``."""

from __future__ import annotations

import numpy as np

from .dispatch import register
from .gpu_kernels import _dtype_code, _round16, defined, launch, next_pow2, workspace

#: statistics per view and views per channel (scip_gpu.stats.STATISTICS, intensity.VIEWS)
N_STAT = 11
N_VIEWS = 8


#: ints of counters of the block radix sort (SG_RADIX_COUNTS: 16 digits x 256 threads, one int
#: of padding per 32)
RADIX_COUNTS = 16 * 256 + 16 * 256 // 32


@workspace("intensity_views")
def _ws(h: int, w: int, mode: int = 0) -> int:
    """Keys, then (mode 0) four view masks and four members arrays, (mode 1) one members array;
    the members hold the radix sort's scratch first (kernels/intensity.cu)."""
    cap = h * w
    members = 2 * cap * (1 if mode == 1 else 4)
    if defined("SG_LEGACY_SORT"):
        keys = 4 * next_pow2(cap)
    else:
        keys = 4 * cap
        members = max(members, _round16(4 * cap) + 4 * RADIX_COUNTS)
    views = 0 if mode == 1 else _round16(4 * cap)
    return _round16(keys) + views + _round16(members)


@workspace("intensity_views_f32")
def _ws_f32(h: int, w: int, mode: int = 0) -> int:
    """``intensity_views_f32``: keys (u64, padded to a power of two), then (mode 0) four view
    masks, and the members as floats (four views in mode 0, holding the erosion's run lengths
    first; one in mode 1)."""
    cap = h * w
    views = 0 if mode == 1 else _round16(4 * cap)
    return _round16(8 * next_pow2(cap)) + views + _round16(4 * cap * (1 if mode == 1 else 4))


def _pixels_taken(dtype) -> bool:
    """uint8/uint16 (``intensity_views``) or float32 (``intensity_views_f32``) pixels."""
    return _dtype_code(dtype) is not None or np.dtype(dtype) == np.float32


def _accepts(batch, mr, ctx) -> bool:
    _, _, h, w = batch.pixels.shape
    return _pixels_taken(batch.pixels.dtype) and h * w < 65536 and 2 * ctx.edge_width + 1 <= 64


def _launch(batch, mr, mode: int, edge_width: int, out=None):
    import cupy

    px = cupy.ascontiguousarray(batch.pixels)
    n, c, h, w = px.shape
    per = N_VIEWS * N_STAT if mode == 0 else N_STAT
    if out is None or out.shape != (n, c * per) or out.dtype != np.float64 or out.strides[1] != 8:
        out = cupy.empty((n, c * per), dtype=cupy.float64)  # else: the batch table's columns
    if mode == 0:
        mask = cupy.ascontiguousarray(mr.mask).view(cupy.uint8)
        combined = cupy.ascontiguousarray(mr.combined).view(cupy.uint8)
        bg = cupy.ascontiguousarray(mr.background, dtype=cupy.float64)
        cbg = cupy.ascontiguousarray(mr.combined_background, dtype=cupy.float64)
        usable = cupy.ascontiguousarray(mr.usable).view(cupy.uint8)
    else:
        mask = combined = usable = cupy.empty(1, dtype=cupy.uint8)
        bg = cbg = cupy.empty(1, dtype=cupy.float64)
    tail = (np.int32(c), np.int32(h), np.int32(w), cupy.ascontiguousarray(batch.extents, dtype=cupy.int64),
            np.int32(n * c), np.int32(mode), mask, combined, bg, cbg, usable, np.int32(edge_width),
            out, np.int64(out.strides[0] // 8), np.int64(0))
    if px.dtype == np.float32:
        launch("intensity_views_f32", n * c, (px, *tail), workspace=_ws_f32(h, w, mode))
    else:
        launch("intensity_views", n * c, (px, np.int32(_dtype_code(px.dtype)), *tail), workspace=_ws(h, w, mode))
    return out


@register("intensity.block", "cuda", accepts=_accepts)
def intensity_block(batch, mr, ctx):
    """(N, C*88) intensity features of one mask: the 11 statistics of the 8 views of every
    channel (``intensity_views``, mode 0)."""
    return _launch(batch, mr, 0, int(ctx.edge_width), getattr(ctx, "out", None))


def _accepts_raw(batch, mr, ctx) -> bool:
    _, _, h, w = batch.pixels.shape
    return _pixels_taken(batch.pixels.dtype) and h * w < 65536


@register("intensity.raw", "cuda", accepts=_accepts_raw)
def intensity_raw(batch, mr, ctx):
    """(N, C*11) statistics of each whole channel image (``intensity_views``, mode 1)."""
    return _launch(batch, None, 1, 0, getattr(ctx, "out", None))
