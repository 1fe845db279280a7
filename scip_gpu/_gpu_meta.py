"""CUDA implementation of the meta families (kernels/meta.cu): the empty flags, regions and
bounding box written straight into the batch table's columns, registered with
scip_gpu.dispatch as the ``cuda`` implementations of the stages ``meta.empty``,
``meta.regions`` and ``meta.bbox``.

Their references (``features.meta``) are a reduction, a negation and converting copies, each a
kernel that CuPy generates and, on a fresh machine, compiles with NVRTC the first time it runs
(seconds of the first batch); with these, a batch of the ``scip`` preset launches none."""

from __future__ import annotations

import numpy as np

from .dispatch import register
from .gpu_kernels import THREADS, launch


def _table_columns(ctx, n: int, k: int):
    """The batch table's columns of the family (``ctx.out``) when it can be written there (float64,
    unit column stride), else a new (n, k) array; and its row stride in elements."""
    import cupy

    out = getattr(ctx, "out", None)
    if out is None or out.shape != (n, k) or out.dtype != np.float64 or out.strides[1] != 8:
        out = cupy.empty((n, k), dtype=cupy.float64)
    return out, np.int64(out.strides[0] // 8)


def _accepts_empty(batch, mr, ctx) -> bool:
    return (mr.mask.ndim == 4 and mr.combined.ndim == 3 and mr.mask.dtype == np.bool_
            and mr.combined.dtype == np.bool_ and mr.mask.shape[0] == mr.combined.shape[0])


@register("meta.empty", "cuda", accepts=_accepts_empty)
def empty(batch, mr, ctx):
    """(N, C + 1) empty flags of one mask (``meta_empty``: one block per plane)."""
    import cupy

    n, c, h, w = mr.mask.shape
    out, ld = _table_columns(ctx, n, c + 1)
    mask = cupy.ascontiguousarray(mr.mask).view(cupy.uint8)
    combined = cupy.ascontiguousarray(mr.combined).view(cupy.uint8)
    launch("meta_empty", n * c, (mask, np.int64(n * c), np.int64(h * w), np.int32(max(c, 1)), out, ld))
    launch("meta_empty", n, (combined, np.int64(n), np.int64(h * w), np.int32(1), out[:, c:], ld))
    return out


def _columns(src, kind: int, ctx):
    import cupy

    src = cupy.ascontiguousarray(src)
    n, k = src.shape
    out, ld = _table_columns(ctx, n, k)
    launch("meta_columns", -(-n * k // THREADS), (src, np.int32(kind), np.int64(n), np.int32(k), np.int64(k), out, ld))
    return out


@register("meta.regions", "cuda", accepts=lambda batch, mr, ctx: mr.regions.ndim == 2 and mr.regions.dtype == np.int64)
def regions(batch, mr, ctx):
    """(N, C) regions of one mask as float64 (``meta_columns``)."""
    return _columns(mr.regions, 0, ctx)


@register("meta.bbox", "cuda", accepts=lambda batch, mr, ctx: mr.bbox.ndim == 2 and mr.bbox.dtype == np.float64)
def bbox(batch, mr, ctx):
    """(N, 4) bounding box of one mask (``meta_columns``)."""
    return _columns(mr.bbox, 1, ctx)
