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
