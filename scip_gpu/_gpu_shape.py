"""CUDA implementation of the shape family (kernels/shape.cu), registered with scip_gpu.dispatch.

One launch of ``shape_props`` computes the whole family: one thread block per binary plane
(per object: the combined mask, then every channel mask), the plane in shared memory, the 59
properties of every 8-connected component and their mean, in the column order of
``scip_gpu.features.shape.shape_columns``.
"""

from __future__ import annotations

import functools

import numpy as np

from .dispatch import register
from .gpu_kernels import _round16, launch, workspace, workspace_bytes

#: components per chunk, doubles per component slot (kernels/shape.cu: SHP_CK, SHP_SLOT)
CHUNK = 16
SLOT = 60
#: per-component int and double fields, per-record short fields (SHP_NCI, SHP_NCD, SHP_NRS)
_NCI, _NCD, _NRS = 12, 4, 5
#: padded planes up to this many pixels (labels pack a pixel index in 16 bits)
MAX_PADDED_PIXELS = 1 << 16
#: longest side the kernel takes (doubled padded columns stay below the shorts' sentinel 32000;
#: also the AreaShape block's limit, which uses the same device functions)
MAX_SIDE = 4000
#: component numbers fit in 15 bits
MAX_COMPONENTS = 1 << 15


def _chunk_bytes(rcap: int) -> int:
    scap = 2 * rcap + CHUNK
    return (_round16(8 * CHUNK * SLOT) + _round16(8 * _NCD * CHUNK) + _round16(4 * _NCI * CHUNK)
            + _round16(8 * 3 * rcap) + _round16(2 * _NRS * rcap) + _round16(2 * 4 * scap))


def _max_components(h: int, w: int) -> int:
    """The most 8-connected components an h x w plane can hold (one per aligned 2x2 block)."""
    return ((h + 1) // 2) * ((w + 1) // 2)


@workspace("shape_props")
def _ws_shape_props(h: int, w: int) -> int:
    hp, wp = h + 2, w + 2
    n = hp * wp
    words = (wp + 63) // 64
    region = max(_chunk_bytes(3 * hp), 4 * _max_components(h, w))
    return _round16(4 * n) + _round16(n) + 2 * _round16(8 * hp * words) + _round16(region)


@functools.lru_cache(maxsize=8)
def _host_tables(area_max: int):
    """Pattern coefficients, and m ** 2.5 and m ** 4 for m = 0..area_max computed by NumPy as the
    CPU path computes them (on a strided float64 view, as ``raw[:, 0, 0]``)."""
    from .features import shape as S

    coefs = np.concatenate([S.EULER_COEFS_8, S.CROFTON_COEFS_4, S.PERIMETER_WEIGHTS]).astype(np.float64)
    stack = np.zeros((area_max + 1, 4, 4))
    stack[:, 0, 0] = np.arange(area_max + 1)
    m00 = stack[:, 0, 0]
    with np.errstate(all="ignore"):
        return coefs, np.ascontiguousarray(m00 ** 2.5), np.ascontiguousarray(m00 ** 4)


#: (device id, table size) -> (array module, device tables): the tables stay on the device, so
#: that a call copies nothing from the host (a pageable copy would synchronise the stream)
_DEVICE_TABLES: dict = {}


def _device_tables(cupy, area_max: int):
    key = (int(cupy.cuda.Device().id), area_max)
    hit = _DEVICE_TABLES.get(key)
    if hit is not None and hit[0] is cupy:
        return hit[1]
    tables = tuple(cupy.asarray(a) for a in _host_tables(area_max))
    _DEVICE_TABLES[key] = (cupy, tables)
    return tables


def _accepts_shape(batch, mr, ctx) -> bool:
    shape = getattr(mr.mask, "shape", ())
    if len(shape) != 4:
        return False
    _, _, h, w = shape
    # row ends, doubled columns and the hull's sentinel (32000) are shorts: sides of at most
    # MAX_SIDE pixels (a 2 x 20000 plane fits MAX_PADDED_PIXELS but not the shorts)
    return ((h + 2) * (w + 2) <= MAX_PADDED_PIXELS and max(h, w) <= MAX_SIDE
            and _max_components(h, w) < MAX_COMPONENTS)


@register("shape.block", "cuda", accepts=_accepts_shape)
def shape_block(batch, mr, ctx):
    """(N, 59 * (C + 1)) shape features of one mask (``shape_props``), columns as
    ``shape_columns``: the mean over the 8-connected components of every plane of SCIP's 59
    region properties; NaN for planes without foreground and objects not ``usable``."""
    import cupy

    mask = cupy.ascontiguousarray(mr.mask).view(cupy.uint8)
    n, c, h, w = mask.shape
    combined = cupy.ascontiguousarray(mr.combined).view(cupy.uint8)
    usable = cupy.ascontiguousarray(cupy.asarray(mr.usable, dtype=cupy.bool_)).view(cupy.uint8)  # (no cast kernel)
    extents = cupy.ascontiguousarray(batch.extents, dtype=cupy.int64)
    out = getattr(ctx, "out", None)  # the batch table's columns, when given
    if out is None or out.shape != (n, 59 * (c + 1)) or out.dtype != np.float64 or out.strides[1] != 8:
        out = cupy.empty((n, 59 * (c + 1)), dtype=cupy.float64)
    coefs, pow25, pow4 = _device_tables(cupy, h * w)
    args = (mask, combined, extents, usable, np.int32(n), np.int32(c), np.int32(h), np.int32(w),
            coefs, pow25, pow4, out, np.int64(out.strides[0] // 8))
    launch("shape_props", n * (c + 1), args, workspace=workspace_bytes("shape_props", h, w))
    return out
