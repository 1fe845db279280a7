"""Example inputs and comparisons for the stages of ``scip_gpu.dispatch``.

Every stage registers ``examples(rng)``: a few small NumPy inputs on which
``tests/test_dispatch.py`` runs each registered implementation (numba, CUDA) against the
reference. The builders here give the cases kernels get wrong first: extents smaller than the
padded planes, objects of 1xN, Nx1 and 1x1 pixels, objects filling their padded plane (no
margin), constant planes, empty and one-pixel masks, masks touching the border, masks with
holes. Values outside each extent are arbitrary (not zero) for pixel planes, False for masks
(as the pipeline's masks are).

Nothing here runs in the pipeline: the stages' example functions import this module lazily.
"""

from __future__ import annotations

import numpy as np

#: padded (H, W) of the example planes
SHAPE = (14, 19)


def extents(rng: np.random.Generator, m: int, shape=SHAPE) -> np.ndarray:
    """(m, 2) int64 extents: the padded shape itself, 1xW, Hx1 and 1x1 first, then random
    extents of at least 3x3."""
    h, w = shape
    e = np.stack([rng.integers(3, h + 1, m), rng.integers(3, w + 1, m)], axis=1)
    fixed = [(h, w), (1, w), (h, 1), (1, 1)]
    e[: min(m, len(fixed))] = fixed[:m]
    return e.astype(np.int64)


def inside(e: np.ndarray, shape) -> np.ndarray:
    from .batch import valid_mask

    return valid_mask(np.asarray(e), tuple(shape))


def images(rng: np.random.Generator, dtype, m: int = 9, shape=SHAPE, *, top: float | None = None):
    """(m, H, W) planes of ``dtype`` (smooth blobs plus noise) and their (m, 2) extents.

    Plane 4 is constant inside its extent; values outside the extents are noise.
    ``top``: largest value (default: 1 for floats, 255 for uint8, 4000 for other integers).
    """
    from scipy import ndimage as ndi

    dtype = np.dtype(dtype)
    if top is None:
        top = 1.0 if dtype.kind == "f" else (255.0 if dtype == np.uint8 else 4000.0)
    e = extents(rng, m, shape)
    base = ndi.gaussian_filter(rng.random((m, *shape)), (0, 2, 2))
    lo = base.min(axis=(1, 2), keepdims=True)
    hi = base.max(axis=(1, 2), keepdims=True)
    v = 0.85 * (base - lo) / (hi - lo) + 0.15 * rng.random((m, *shape))
    x = v * top
    if m > 4:
        x[4][inside(e[4:5], shape)[0]] = 0.37 * top
    return x.astype(dtype), e


def masks(rng: np.random.Generator, m: int = 10, shape=SHAPE, *, density: float = 0.45):
    """(m, H, W) bool masks (False outside each extent) and their (m, 2) extents.

    Planes 0-3 have the edge-case extents of ``extents``; then an empty mask (4), a single
    pixel (5), a mask filling its extent (6), a ring with a hole (7), speckle (8) and random
    blobs.
    """
    from scipy import ndimage as ndi

    e = extents(rng, m, shape)
    smooth = ndi.gaussian_filter(rng.random((m, *shape)), (0, 1.5, 1.5))
    thr = np.quantile(smooth.reshape(m, -1), 1 - density, axis=1)[:, None, None]
    mk = smooth > thr
    ins = inside(e, shape)
    for k, fn in enumerate((_empty, _one_pixel, _full, _ring, _speckle)):
        if 4 + k < m:
            mk[4 + k] = fn(rng, e[4 + k], shape)
    return mk & ins, e


def _empty(rng, ext, shape):
    return np.zeros(shape, dtype=bool)


def _one_pixel(rng, ext, shape):
    out = np.zeros(shape, dtype=bool)
    out[rng.integers(0, ext[0]), rng.integers(0, ext[1])] = True
    return out


def _full(rng, ext, shape):
    return np.ones(shape, dtype=bool)


def _ring(rng, ext, shape):
    r = np.arange(shape[0])[:, None] - (ext[0] - 1) / 2
    c = np.arange(shape[1])[None, :] - (ext[1] - 1) / 2
    d = np.hypot(r, c)
    rad = max(min(ext) / 2 - 1, 1.5)
    return (d <= rad) & (d >= rad / 2)


def _speckle(rng, ext, shape):
    return rng.random(shape) < 0.3


# ---------------------------------------------------------------------------------------------
# Batches and mask results (the coarse stages)


def example_batches(rng: np.random.Generator):
    """(Batch, passed) pairs of 3-channel uint16 demo cells: a padded batch of cells of random
    sizes (margins for every mask method's filters) and an unpadded batch of equal-size cells
    (their masks touch the border). ``passed`` (N, C) has failed channels, the main one
    included."""
    from .batch import assemble
    from .demo import make_cell

    seed = int(rng.integers(0, 2**31))
    cells = [make_cell(i, seed=seed, min_size=14, max_size=26)[0] for i in range(5)]
    cells[3] = cells[3][:, :12, :]  # 12 x w: about the smallest the otsu method takes
    passed = np.ones((5, 3), dtype=bool)
    passed[1, 2] = passed[4, 0] = False
    yield assemble(cells, np.arange(5), (36, 40)), passed
    same = [make_cell(i, seed=seed + 1, min_size=20, max_size=20)[0] for i in range(4)]
    yield assemble(same, np.arange(4), (20, 20)), np.ones((4, 3), dtype=bool)


def family_examples(rng: np.random.Generator, *, masked: bool = True):
    """(batch, mask result, context) arguments of the feature families' stages
    (``mask result`` None for ``masked=False``): the li and otsu masks of ``example_batches``,
    with unusable objects and empty channel masks."""
    from .masks import MaskResult, channel_masks, combine
    from .profile import FeatureContext

    ctx = FeatureContext(edge_width=3)
    for k, (batch, passed) in enumerate(example_batches(rng)):
        if not masked:
            yield (batch, None, ctx), {}
            continue
        for method, kwargs in (("li", {"smooth": 1.0}), ("otsu", {})):
            # the border rule on one of them only: it leaves the small demo cells few regions
            mask, regions = channel_masks(batch, method, kwargs, passed, k == 0 and method == "li")
            fields = combine(batch, mask, regions, passed, 0, None)
            mr = MaskResult(method, fields[0], fields[1], regions, *fields[2:])
            yield (batch, mr, ctx), {}


def hand_planes(shape) -> list:
    """(H, W) bool planes (H, W >= 12) of the cases a one-object-per-plane kernel gets wrong
    first: pieces with rows of their bounding box between them that hold no pixel, a ring around
    a dot beside a second ring (three pieces, two holes), a frame touching every border (one
    hole), a row line, a column line, a diagonal (collinear pixel centres), two far pixels."""
    h, w = shape
    planes = [np.zeros(shape, dtype=bool) for _ in range(8)]
    pieces, ring, frame, hline, vline, diag, two = planes[:7]
    pieces[1:3, 1:4] = True
    pieces[7, 9] = True
    pieces[9:11, 2:6] = True
    ring[2:9, 2:9] = True
    ring[3:8, 3:8] = False
    ring[5, 5] = True
    ring[h - 4:h - 1, w - 5:w - 2] = True
    ring[h - 3, w - 4] = False
    frame[[0, -1], :] = True
    frame[:, [0, -1]] = True
    hline[4, 2:w - 2] = True
    vline[1:h - 1, 6] = True
    for k in range(min(h, w) - 4):
        diag[2 + k, 1 + k] = True
    two[0, 0] = two[h - 1, 5] = True
    return planes[:7]


def mask_batch(planes, channels: int, extents=None, usable=None):
    """(batch, mask result, context) of objects made of consecutive groups of ``channels + 1``
    planes (the combined mask first; the last group filled up with empty planes); the objects'
    extents are given or the planes' full shape. Masks of one-object-per-plane families."""
    from .batch import Batch
    from .masks import MaskResult
    from .profile import FeatureContext

    per = channels + 1
    planes = list(planes)
    h, w = planes[0].shape
    planes += [np.zeros((h, w), dtype=bool)] * (-len(planes) % per)
    stack = np.stack(planes).reshape(-1, per, h, w)
    n = stack.shape[0]
    ext = np.full((n, 2), (h, w), dtype=np.int64) if extents is None else np.asarray(extents, dtype=np.int64)
    ok = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    inside_ = inside(ext, (h, w))
    stack = stack & inside_[:, None]
    stack[~ok] = False
    batch = Batch(np.zeros((n, channels, h, w), dtype=np.uint16), ext, np.arange(n))
    nan = np.full((n, channels), np.nan)
    mr = MaskResult("li", stack[:, 1:], stack[:, 0], np.ones((n, channels), dtype=np.int64),
                    np.full((n, 4), np.nan), nan, nan, ok)
    return batch, mr, FeatureContext(edge_width=3)


def plane_examples(rng: np.random.Generator):
    """(batch, mask result, context) arguments of the one-object-per-plane families: the
    ``masks`` cases (empty, one pixel, full, ring, speckle, 1xW / Hx1 / 1x1 extents) and
    ``hand_planes`` on 14 x 19 planes with an object not usable and one cut by its extent;
    1 x 13 and 13 x 1 planes (a full line and a line in pieces); 96 x 96 planes."""
    mk, ext = masks(rng, 12)
    planes = list(mk) + hand_planes(SHAPE)
    n = -(-len(planes) // 3)
    e = np.full((n, 2), SHAPE, dtype=np.int64)
    e[1] = (SHAPE[0] - 3, SHAPE[1] - 5)
    usable = np.ones(n, dtype=bool)
    usable[2] = False
    yield mask_batch(planes, 2, e, usable), {}
    for shape in ((1, 13), (13, 1)):
        line = np.ones(shape, dtype=bool)
        split = line.copy()
        split.flat[[0, 5, 6, 10]] = False
        yield mask_batch([line, split, line & False], 2), {}
    yy, xx = np.mgrid[:96, :96]
    blob = ((yy - 45) / 30.0) ** 2 + ((xx - 50) / 38.0) ** 2 <= 1
    speckle = rng.random((96, 96)) < 0.3
    yield mask_batch([blob, blob & ~speckle, np.ones((96, 96), dtype=bool), *hand_planes((96, 96))[:3]], 2), {}


# ---------------------------------------------------------------------------------------------
# Comparisons


def compare_inside_extent(ref, got, args, kwargs, *, rtol: float = 1e-12, atol: float = 1e-12):
    """``assert_equivalent`` of (M, H, W) results (or tuples of them) inside each plane's extent
    (the second argument, ``extents``), where the reference leaves the rest unspecified; other
    parts of a tuple (per-plane values) are compared whole."""
    from .backend import asnumpy
    from .dispatch import assert_equivalent

    ext = np.asarray(asnumpy(kwargs["extents"] if "extents" in kwargs else args[1]))
    refs = ref if isinstance(ref, tuple) else (ref,)
    gots = got if isinstance(got, tuple) else (got,)
    assert len(refs) == len(gots), f"{len(refs)} parts expected, got {len(gots)}"
    for k, (a, b) in enumerate(zip(refs, gots)):
        a, b = np.asarray(asnumpy(a)), np.asarray(asnumpy(b))
        assert a.shape == b.shape, f"part {k}: shape {b.shape}, expected {a.shape}"
        assert a.dtype == b.dtype, f"part {k}: dtype {b.dtype}, expected {a.dtype}"
        if a.ndim == 3:
            keep = inside(ext, a.shape[1:])
            a, b = a[keep], b[keep]
        assert_equivalent(a, b, rtol=rtol, atol=atol, where=f"part {k}")


def compare_fields(ref, got, args, kwargs):
    """``assert_equivalent`` of two dataclass instances, field by field."""
    from dataclasses import fields

    from .dispatch import assert_equivalent

    assert type(got) is type(ref), f"{type(got).__name__}, expected {type(ref).__name__}"
    for f in fields(ref):
        assert_equivalent(getattr(ref, f.name), getattr(got, f.name), where=f.name)
