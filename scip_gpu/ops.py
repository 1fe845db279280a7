"""Batched image operations on stacks of objects.

Every function takes a stack ``x`` of shape (M, H, W), one plane per object anchored at the
top-left corner, and ``extents`` (M, 2) with each plane's real (height, width). Inside each
extent the result equals what the named scikit-image function gives on that object's own image
(the tests check this); outside it the result is unspecified. Filters run on the whole stack in
one call after the padding was refilled in the filter's boundary mode (``batch.refill``).

The filters, labelling and mask clean-up are stages of ``scip_gpu.dispatch`` (``ops.gaussian``,
``ops.sobel``, ...): the code here is their array-namespace reference, and the numba kernels of
``cpu_kernels`` registered beside it run instead for NumPy inputs when numba is installed.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np

from .backend import array_module, asnumpy, is_gpu, ndimage
from .batch import refill, valid_mask
from .dispatch import stage
from .stage_examples import compare_inside_extent

# ---------------------------------------------------------------------------------------------
# dtype conventions of scikit-image


def as_float(x):
    """``skimage.img_as_float`` for filters: unsigned ints scaled to [0, 1] in float64, floats
    kept (float16 promoted to float32)."""
    xp = array_module(x)
    if x.dtype.kind == "f":
        return x.astype(xp.float32) if x.dtype.itemsize < 4 else x
    if x.dtype.kind == "u":
        return xp.multiply(x, 1.0 / np.iinfo(x.dtype).max, dtype=xp.float64)
    if x.dtype.kind == "b":
        return x.astype(xp.float64)
    # signed ints: x / max, the most negative value -1 (skimage's img_as_float, 0.20 to 0.26;
    # shifting by the type's minimum first lost every bit of int64 pixels to cancellation)
    return xp.maximum(xp.multiply(x, 1.0 / np.iinfo(x.dtype).max, dtype=xp.float64), -1.0)


@cache
def disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` as a uint8 array."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)


def _stack_kernel(xp, k2d):
    return xp.asarray(np.asarray(k2d)[None])


def linspace_rows(lo, hi, num: int):
    """``numpy.linspace(lo[i], hi[i], num)`` for every row at once, with NumPy's arithmetic
    (``start + k * step`` with ``step = (stop - start) / (num - 1)``, the last value ``stop``;
    ``k / div * delta`` for a row whose step is zero), so the values agree bit for bit with
    each row's own ``numpy.linspace``. Both forms are computed and chosen per row: no test of
    the steps on the host (on a GPU a synchronisation per call).

    Parameters
    ----------
    lo, hi : (M,) float64 ndarrays

    Returns
    -------
    (M, num) float64 ndarray
    """
    xp = array_module(lo)
    div = num - 1
    delta = hi - lo
    step = delta / div
    k = xp.arange(num, dtype=xp.float64)[None, :]
    y = xp.where((step == 0)[:, None], (k / div) * delta[:, None], k * step[:, None])
    y = y + lo[:, None]
    y[:, -1] = hi
    return y


def gaussian_radius(sigma: float, truncate: float = 4.0) -> int:
    return int(truncate * float(sigma) + 0.5)


# ---------------------------------------------------------------------------------------------
# Filters


def _gaussian_examples(rng):
    from .stage_examples import images

    for dtype in (np.float64, np.uint8, np.uint16, np.float32):
        x, e = images(rng, dtype)
        for sigma in (0.0, 0.5, 1.0, 2.5):
            yield (x, e, sigma), {}
    x, e = images(rng, np.float64)
    yield (x, e, 1.5), {"truncate": 2.0}


@stage("ops.gaussian", examples=_gaussian_examples, compare=compare_inside_extent)
def gaussian(x, extents, sigma: float, *, truncate: float = 4.0):
    """``skimage.filters.gaussian(image, sigma)`` per plane (mode 'nearest')."""
    xp = array_module(x)
    f = as_float(x)
    if sigma <= 0:
        return f.copy()
    f = refill(f, extents, "nearest", reach=gaussian_radius(sigma, truncate))
    return ndimage(xp).gaussian_filter(f, (0, sigma, sigma), mode="nearest", truncate=truncate)


def _sobel_examples(rng):
    from .stage_examples import images

    for dtype in (np.float64, np.uint16, np.uint8):
        yield images(rng, dtype), {}
    x, e = images(rng, np.float64)
    # NaN spreads to its 3x3 neighbourhood (blocks: an isolated NaN pixel gives NaN at its own
    # position in the array form only, where skimage and the kernel have a zero weight)
    x[5, 1:3, 1:3] = x[6, 0:2, 0] = x[7] = np.nan
    yield (x, e), {}


@stage("ops.sobel", examples=_sobel_examples, compare=compare_inside_extent)
def sobel(x, extents):
    """``skimage.filters.sobel(image)`` per plane: :math:`\\sqrt{(g_r^2 + g_c^2)/2}`, mode 'reflect'.

    Each derivative is computed separably (``[1, 2, 1] / 4`` smoothing across, ``[1, 0, -1]``
    along); scikit-image sums the same nine products with a 2-D kernel, so values agree to
    rounding (~1e-16 relative). NaN entries propagate to every output pixel whose 3x3
    neighbourhood holds one (the centre pixel has weight zero), as in scikit-image.
    """
    xp = array_module(x)
    ndi = ndimage(xp)
    f = refill(as_float(x), extents, "reflect", reach=1)
    smooth = xp.asarray(np.array([1.0, 2.0, 1.0]) / 4.0, dtype=f.dtype)
    edge = xp.asarray(np.array([1.0, 0.0, -1.0]), dtype=f.dtype)
    gr = ndi.correlate1d(ndi.correlate1d(f, smooth, axis=2, mode="reflect"), edge, axis=1, mode="reflect")
    gc = ndi.correlate1d(ndi.correlate1d(f, smooth, axis=1, mode="reflect"), edge, axis=2, mode="reflect")
    out = gr * gr
    out += gc * gc
    return xp.sqrt(out) / np.sqrt(2.0).astype(f.dtype)


def _erosion_examples(rng):
    from .stage_examples import masks

    mk, e = masks(rng)
    for radius in (0, 1, 3, 6):
        yield (mk, e, radius), {}


@stage("ops.binary_erosion_disk", examples=_erosion_examples, compare=compare_inside_extent)
def binary_erosion_disk(mask, extents, radius: int):
    """``skimage.morphology.binary_erosion(mask, disk(radius))`` per plane (outside the image
    counts as foreground, ``border_value=True``).

    The disk is the union of its rows, horizontal segments, and an erosion by a union is the
    intersection of the erosions: each row is a 1-D minimum filter (O(1) per pixel whatever its
    length) shifted vertically, so the cost does not grow with the disk's area.
    """
    xp = array_module(mask)
    if radius <= 0:
        return mask.copy()
    ndi = ndimage(xp)
    inside = valid_mask(extents, mask.shape[1:])
    fg = (mask | ~inside).astype(xp.uint8)
    m, h, w = fg.shape
    half = (disk(radius).sum(axis=1) - 1) // 2  # half-width of each row dy = -r..r
    rows = {}
    for a in set(half.tolist()):  # one 1-D erosion per distinct row length
        rows[a] = ndi.minimum_filter1d(fg, 2 * a + 1, axis=2, mode="constant", cval=1)
    out = xp.ones((m, h + 2 * radius, w), dtype=xp.uint8)  # rows beyond the array: foreground
    for k, a in enumerate(half.tolist()):
        dy = k - radius  # out[i] needs rows[a][i + dy]: write rows[a] shifted up by dy
        out[:, radius - dy : radius - dy + h] &= rows[a]
    return out[:, radius : radius + h].astype(bool) & inside


def white_tophat_disk(x, extents, radius: int):
    """``skimage.morphology.white_tophat(image, disk(radius))`` per plane (mode 'reflect')."""
    xp = array_module(x)
    ndi = ndimage(xp)
    fp = _stack_kernel(xp, disk(radius)).astype(bool)
    eroded = ndi.grey_erosion(refill(x, extents, "reflect", reach=radius), footprint=fp, mode="reflect")
    opened = ndi.grey_dilation(refill(eroded, extents, "reflect", reach=radius), footprint=fp, mode="reflect")
    if x.dtype == bool:
        return x ^ opened
    return x - opened


def _median_examples(rng):
    from .stage_examples import images

    for dtype, top in ((np.uint8, None), (np.uint16, 1000.0), (np.uint16, 60000.0)):
        x, e = images(rng, dtype, top=top)
        for radius in (1, 5):
            yield (x, e, radius), {}


@stage("ops.median_disk", examples=_median_examples, compare=compare_inside_extent)
def median_disk(x, extents, radius: int):
    """``skimage.filters.rank.median(image, disk(radius))`` per plane, for integer images.

    Pixels outside an object's image are not part of its neighbourhoods, as in scikit-image's
    rank filters: the median of a neighbourhood of ``n`` pixels is its element of rank
    ``n // 2``. The reference runs the batched form ``median_disk_stack`` on the GPU and
    scikit-image's C kernel plane by plane on the CPU; the ``cpu`` implementation (uint8 and
    uint16 planes, when numba is installed) is a compiled sliding-histogram kernel. All three
    give identical results.
    """
    xp = array_module(x)
    if is_gpu(xp):
        return median_disk_stack(x, extents, radius)
    return median_disk_skimage(x, extents, radius)


def median_disk_skimage(x, extents, radius: int):
    """``median_disk`` through ``skimage.filters.rank.median``, one plane at a time (CPU)."""
    from skimage.filters.rank import median

    fp = disk(radius)
    out = np.zeros_like(x)
    ext = asnumpy(extents)
    with warnings.catch_warnings():  # "bad rank filter performance" for > 10-bit images
        warnings.simplefilter("ignore", UserWarning)
        for i in range(x.shape[0]):  # CPU fallback without numba: one C call per plane
            h, w = ext[i]
            out[i, :h, :w] = median(x[i, :h, :w], footprint=fp)
    return out


def median_disk_stack(x, extents, radius: int, *, max_bytes: int = 256 * 2**20):
    """Batched form of ``median_disk``: every neighbourhood gathered and sorted at once.

    Written against the array namespace; the GPU path of ``median_disk`` and its CPU test.
    """
    xp = array_module(x)
    m, h, w = x.shape
    fp = disk(radius)
    offsets = np.argwhere(fp) - radius  # (K, 2)
    k = len(offsets)
    inside = valid_mask(extents, (h, w))
    big = np.iinfo(np.int32).max
    vals = xp.where(inside, x.astype(xp.int32), big)
    pad = ((0, 0), (radius, radius), (radius, radius))
    padded = xp.pad(vals, pad, constant_values=big)
    out = xp.empty_like(x)
    step = max(1, int(max_bytes // (k * h * w * 4)))
    for s in range(0, m, step):  # memory bound only, not a per-object loop
        block = padded[s : s + step]
        stack = xp.stack(
            [block[:, radius + dy : radius + dy + h, radius + dx : radius + dx + w] for dy, dx in offsets]
        )
        n = (stack != big).sum(axis=0)
        stack.sort(axis=0)
        med = xp.take_along_axis(stack, (n // 2)[None], axis=0)[0]
        out[s : s + step] = xp.where(n > 0, med, 0).astype(x.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Connected components


def _structure(connectivity: int) -> np.ndarray:
    """The (3, 3, 3) structure labelling each plane of a stack on its own, on the host for every
    backend (``cupyx.scipy.ndimage.label`` takes it there: a device copy would only be copied
    back)."""
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage(np).generate_binary_structure(2, connectivity)
    return s


def _label_examples(rng):
    from .stage_examples import masks

    mk, _ = masks(rng)
    for connectivity in (1, 2):
        yield (mk, connectivity), {}
    yield (mk[:0],), {}  # no planes
    yield (~mk,), {}  # the background: components spanning whole planes


@stage("ops.label", examples=_label_examples)
def label(mask, connectivity: int = 2):
    """Label each plane's connected components; labels are unique across the stack.

    ``connectivity`` 2 is 8-connectivity (``skimage.measure.label``'s default in 2-D), 1 is
    4-connectivity (``remove_small_objects``' default).

    Returns
    -------
    labels : (M, H, W) int32 ndarray
    n : int
        Number of labels in the stack.
    """
    xp = array_module(mask)
    labels, n = ndimage(xp).label(mask, structure=_structure(connectivity))
    return labels.astype(xp.int32, copy=False), int(n)


def label_owner(labels, n: int):
    """(n + 1,) plane index of every label (entry 0, the background, is 0)."""
    xp = array_module(labels)
    m = labels.shape[0]
    owner = xp.zeros(n + 1, dtype=xp.int64)
    plane = xp.broadcast_to(xp.arange(m)[:, None, None], labels.shape)
    owner[labels.ravel()] = plane.ravel()
    return owner


def count_per_plane(labels, n: int, keep=None):
    """Number of labels per plane (optionally only labels with ``keep[label]`` True)."""
    xp = array_module(labels)
    m = labels.shape[0]
    owner = label_owner(labels, n)[1:]
    w = None if keep is None else keep[1:].astype(xp.float64)
    return xp.bincount(owner, weights=w, minlength=m)[:m].astype(xp.int64)


def remove_small_objects(mask, min_size, connectivity: int = 1):
    """``skimage.morphology.remove_small_objects(mask, min_size)`` per plane.

    ``min_size`` is a scalar or an (M,) array (one threshold per plane): components with fewer
    pixels are removed.
    """
    xp = array_module(mask)
    labels, n = label(mask, connectivity)
    if n == 0:
        return mask.copy()
    sizes = xp.bincount(labels.ravel(), minlength=n + 1)
    thr = xp.asarray(min_size, dtype=xp.float64)
    if thr.ndim:
        thr = thr[label_owner(labels, n)]
    keep = sizes >= thr
    keep[0] = False
    return keep[labels]


def _fill_examples(rng):
    from .stage_examples import inside, masks

    mk, e = masks(rng, density=0.55)
    mk = (mk ^ (rng.random(mk.shape) < 0.08)) & inside(e, mk.shape[1:])  # holes and specks
    quarter = e[:, 0].astype(np.float64) * e[:, 1] / 4
    yield (mk, e, quarter, 20), {}
    yield (mk, e, 5.0, 3), {}
    yield (mk, e, 1, 1), {}


@stage("ops.fill_holes_and_clean", examples=_fill_examples)
def fill_holes_and_clean(mask, extents, area_threshold, min_size):
    """``remove_small_objects(remove_small_holes(mask, area_threshold), min_size)`` per plane
    (both 4-connected); False outside each extent.

    ``area_threshold`` is a scalar or one value per plane. The ``cpu`` implementation does both
    steps in one compiled pass per plane.
    """
    return remove_small_objects(remove_small_holes(mask, extents, area_threshold), min_size)


def remove_small_holes(mask, extents, area_threshold, connectivity: int = 1):
    """``skimage.morphology.remove_small_holes(mask, area_threshold)`` per plane.

    Holes are the connected components of the background inside each object's image (touching
    its border or not), as in scikit-image.
    """
    inside = valid_mask(extents, mask.shape[1:])
    holes = remove_small_objects(~mask & inside, area_threshold, connectivity)
    return ~holes & inside


def _border_examples(rng):
    from .stage_examples import masks

    for density in (0.3, 0.6):
        yield masks(rng, density=density), {}


@stage("ops.regions_touching_border", examples=_border_examples)
def regions_touching_border(mask, extents):
    """SCIP's border rule, per plane: drop components with many pixels on the image border.

    Components (8-connected) with more than ``int(0.25 * min(h, w))`` pixels on the four edges of
    the object's image (corner pixels counting once per edge) are removed.

    Returns
    -------
    mask : (M, H, W) bool ndarray
        Mask without those components.
    regions : (M,) int64 ndarray
        Number of components left.
    """
    xp = array_module(mask)
    m, h, w = mask.shape
    labels, n = label(mask, 2)
    if n == 0:
        return mask.copy(), xp.zeros(m, dtype=xp.int64)
    eh = extents[:, 0, None, None]
    ew = extents[:, 1, None, None]
    r = xp.arange(h)[None, :, None]
    c = xp.arange(w)[None, None, :]
    inside = (r < eh) & (c < ew)
    edge_count = ((r == 0).astype(xp.int64) + (r == eh - 1) + (c == 0) + (c == ew - 1)) * inside
    touching = xp.bincount(labels.ravel(), weights=edge_count.ravel().astype(xp.float64),
                           minlength=n + 1)
    limit = (0.25 * extents.min(axis=1)).astype(xp.int64)
    owner = label_owner(labels, n)
    keep = touching <= limit[owner]
    keep[0] = False
    return keep[labels], count_per_plane(labels, n, keep)


# ---------------------------------------------------------------------------------------------
# Marker-controlled watershed (one 2-D image)
#
# The flood is defined by the values it computes, not by the order of a queue, so that a
# sequential flood (the numba kernel), a parallel relaxation (the CUDA kernel) and this
# array-namespace reference give the same labels:
#
# - every pixel of the domain (``mask``) gets a key K = (C, S): C is the lowest level at which
#   the flood from the markers reaches it (the minimax altitude of a 4-connected path from a
#   marker, the level at which scikit-image's priority flood pops it), S the number of steps
#   it took at that level (its order within a plateau or a basin entered over a saddle, where
#   scikit-image goes by queue age). Markers have K = (altitude, 0); a pixel p reached from a
#   neighbour q gets (max(f(p), C(q)), 1 if f(p) > C(q) else S(q) + 1), and K is the smallest
#   such key: the unique solution of those equations (Bellman's, for a monotone path cost);
# - a pixel takes the label of the neighbour it was reached from: of the neighbours q whose
#   key leads to K(p), the one with the smallest (K(q), raster index), as scikit-image's flood
#   labels a pixel from the neighbour popped first. Those neighbours have smaller keys, so the
#   chains end at markers.
# Where the altitudes have no ties, the labels are scikit-image's; at exact ties (plateaus, equal
# saddles) the order is the one above, not a queue's age.


def watershed_prepare(surface, markers, mask, *, ranks: bool = True):
    """Flat arrays of the flood: altitude ranks (uint64, order-preserving over the domain;
    None with ``ranks=False``), flags (uint8: 1 domain, 2 marker in the domain) and the marker
    labels (int32)."""
    xp = array_module(surface)
    if surface.ndim != 2 or markers.shape != surface.shape or (mask is not None and mask.shape != surface.shape):
        raise ValueError(f"watershed: image {surface.shape}, markers {markers.shape} and mask "
                         f"{None if mask is None else mask.shape} must be 2-D images of one shape")
    dom = xp.ones(surface.shape, dtype=bool) if mask is None else xp.asarray(mask, dtype=bool)
    dom = dom.ravel()
    f = surface.ravel()
    if f.dtype.kind == "f" and bool(xp.isnan(f[dom]).any()):  # host sync: one number
        raise ValueError("watershed: the image holds NaN inside the mask")
    rank = None
    if ranks:
        rank = xp.zeros(f.shape, dtype=xp.uint64)
        if f.size:
            _, inverse = xp.unique(f[dom], return_inverse=True)
            rank[dom] = inverse.ravel().astype(xp.uint64)
    lab = markers.ravel().astype(xp.int32)
    src = dom & (lab > 0)
    flags = dom.astype(xp.uint8) | (src.astype(xp.uint8) << 1)
    return rank, flags, lab


_WS_INF = np.uint64(0xFFFFFFFFFFFFFFFF)


def _ws_candidate(xp, kq, r, r_up=None):
    """Key of a pixel of rank ``r`` reached from a neighbour of key ``kq`` (INF stays INF):
    (r, 1) when it climbs above the neighbour's level, else the neighbour's key one step on
    (S + 1 never carries into C: S counts pixels). ``r_up``: ``(r << 32) | 1``, if at hand."""
    if r_up is None:
        r_up = (r << np.uint64(32)) | np.uint64(1)
    key = xp.where(r > (kq >> np.uint64(32)), r_up, kq + np.uint64(1))
    return xp.where(kq == _WS_INF, _WS_INF, key)


def _image_stats_examples(rng):
    yield (rng.integers(0, 60000, (5, 3, 7, 9)).astype(np.uint16),), {}
    yield (rng.integers(-100, 100, (2, 1, 1, 13)).astype(np.int8),), {}
    yield (rng.integers(0, 255, (4, 2, 6, 1)).astype(np.uint8),), {}
    yield (rng.integers(-(2 ** 40), 2 ** 40, (3, 2, 4, 4)).astype(np.int64),), {}
    yield (rng.integers(0, 60000, (2, 2, 3, 5)).astype(">u2"),), {}  # big-endian (as some zarr stores)
    yield (rng.normal(size=(2, 1, 4, 4)).astype(np.float16),), {}
    x = rng.normal(size=(6, 3, 5, 5)).astype(np.float32)
    x[1, 0, 2, 2] = np.nan  # NaN: the plane's largest and smallest are NaN, one bad value
    x[2, 1, 0, 0] = np.inf
    x[3, 2, 4, 4] = -np.inf
    x[4, :, 1] = np.nan
    yield (x,), {}
    yield (x.astype(np.float64) * 1e300,), {}
    yield (np.zeros((0, 3, 4, 4), dtype=np.uint16),), {}  # no images


@stage("ops.image_stats", examples=_image_stats_examples)
def image_stats(stack):
    """(3, N, C) array of each image of an (N, C, H, W) stack (H, W > 0): per channel its largest
    value, its smallest value and its number of NaN or infinite values, in the images' type (what
    the validation of loaded objects needs; on a device only these numbers come back)."""
    xp = array_module(stack)
    hi = stack.max(axis=(2, 3))
    lo = stack.min(axis=(2, 3))
    if stack.dtype.kind == "f":
        bad = (~xp.isfinite(stack)).sum(axis=(2, 3)).astype(stack.dtype)
    else:
        bad = xp.zeros_like(hi)
    return xp.stack([hi, lo, bad])


def _watershed_examples(rng):
    from scipy import ndimage as ndi

    # basins with markers, a plateau, equal saddles, a masked domain, markers outside the mask
    for h, w, n_markers, quant in ((23, 31, 5, None), (40, 37, 9, 6), (1, 17, 2, None), (16, 1, 2, 3),
                                   (33, 35, 4, 1)):
        f = ndi.gaussian_filter(rng.random((h, w)), 2.0)
        if quant is not None:  # few levels: plateaus and ties everywhere
            f = np.floor(f / max(f.max(), 1e-12) * quant).astype(np.float64)
        markers = np.zeros((h, w), dtype=np.int32)
        pos = rng.choice(h * w, size=min(n_markers, h * w), replace=False)
        markers.flat[pos] = rng.permutation(np.arange(1, len(pos) + 1)) * 3
        markers.flat[pos[:1]] = 0 if h * w > 2 else markers.flat[pos[:1]]
        mask = rng.random((h, w)) > 0.15
        yield (f, markers, mask), {}
        yield (f.astype(np.float32), markers, None), {}
    yield (np.zeros((12, 9)), np.zeros((12, 9), dtype=np.int32), None), {}  # no markers
    m = np.zeros((12, 9), dtype=np.int32)
    m[3, 4] = 7
    yield (np.zeros((12, 9)), m, np.ones((12, 9), dtype=bool)), {}  # one flat plateau
    yield (np.ones((1, 1)), np.full((1, 1), 4, dtype=np.int32), None), {}  # one pixel, its own marker
    yield (np.ones((1, 1)), np.zeros((1, 1), dtype=np.int32), None), {}  # one pixel, no marker
    yield (np.zeros((0, 5)), np.zeros((0, 5), dtype=np.int32), None), {}  # no pixels


@stage("ops.watershed", examples=_watershed_examples)
def watershed(surface, markers, mask=None):
    """Marker-controlled watershed of a 2-D image (4-connected flood, as
    ``skimage.segmentation.watershed(surface, markers, mask=mask)``; ties resolved by the rule
    above): int32 labels, 0 outside the mask and where no marker's flood reaches (markers:
    positive labels).

    Where the altitudes inside the mask are all distinct, every pixel of one flood level is
    reached through the one pixel at that altitude and so has one label: both orders agree,
    and scikit-image's flood gives these labels (NumPy without numba takes it then); else the
    keys are relaxed to their fixed point (``_watershed_relaxation``)."""
    prepared = watershed_prepare(surface, markers, mask)
    ranks, flags, _ = prepared
    if array_module(surface) is np:
        n_dom = int(np.count_nonzero(flags & 1))
        if n_dom and int(ranks.max()) + 1 == n_dom:  # (ranks count the distinct altitudes)
            from skimage.segmentation import watershed as sk_watershed

            dom = (flags & 1).astype(bool).reshape(surface.shape)
            return sk_watershed(surface, np.where(markers > 0, markers, 0), mask=dom).astype(np.int32, copy=False)
    return _watershed_relaxation(surface, markers, mask, prepared=prepared)


def _watershed_relaxation(surface, markers, mask=None, *, prepared=None):
    """``watershed`` by relaxing the keys over the domain's pixels (gathers from their 4
    neighbours) to their fixed point, then each pixel's parent and the chains to the markers
    (``prepared``: ``watershed_prepare``'s arrays, when at hand)."""
    xp = array_module(surface)
    ranks, flags, lab = prepared if prepared is not None else watershed_prepare(surface, markers, mask)
    h, w = surface.shape
    dom = (flags & 1).astype(bool)
    src = (flags & 2).astype(bool)
    pix = xp.nonzero(dom)[0]  # the domain's pixels (flat indices), raster order
    nd = int(pix.size)
    where = xp.full(h * w, nd, dtype=xp.int64)  # pixel -> position in pix; nd: outside (INF)
    where[pix] = xp.arange(nd)
    i, j = pix // w, pix % w
    # the neighbours' positions in raster order: up, left, right, down (nd where there is none)
    nbr = [xp.where(i > 0, where[xp.maximum(pix - w, 0)], nd), xp.where(j > 0, where[xp.maximum(pix - 1, 0)], nd),
           xp.where(j < w - 1, where[xp.minimum(pix + 1, h * w - 1)], nd),
           xp.where(i < h - 1, where[xp.minimum(pix + w, h * w - 1)], nd)]
    r = ranks[pix]
    r_up = (r << np.uint64(32)) | np.uint64(1)
    fixed = src[pix]
    key = xp.full(nd + 1, _WS_INF, dtype=xp.uint64)  # (the last entry: INF, for "no neighbour")
    key[:nd] = xp.where(fixed, r << np.uint64(32), _WS_INF)
    while True:  # Jacobi sweeps (one host sync each)
        best = key[:nd]
        for q in nbr:
            best = xp.minimum(best, _ws_candidate(xp, key[q], r, r_up))
        new = xp.where(fixed, key[:nd], best)
        if bool((new == key[:nd]).all()):
            break
        key[:nd] = new
    k = key[:nd]
    parent = xp.where(fixed, xp.arange(nd), -1)
    parent_key = xp.full(nd, _WS_INF, dtype=xp.uint64)
    for q in nbr:  # raster order: the first of equal keys wins (strict <)
        kq = key[q]
        take = ~fixed & (k != _WS_INF) & (_ws_candidate(xp, kq, r, r_up) == k) & (kq < parent_key)
        parent = xp.where(take, q, parent)
        parent_key = xp.where(take, kq, parent_key)
    reached = parent >= 0
    root = xp.where(reached, parent, 0)
    while nd:  # pointer jumping to the markers
        nxt = root[root]
        if bool((nxt == root).all()):
            break
        root = nxt
    out = xp.zeros(h * w, dtype=xp.int32)
    out[pix] = xp.where(reached, lab[pix][root], 0)
    return out.reshape(h, w)
