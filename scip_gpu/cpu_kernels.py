"""Compiled CPU kernels (numba): the CPU path's hot loops, one plane or object at a time.

Optional (``pip install 'scip_gpu[fast]'``, recommended on CPUs): with numba installed the CPU
path runs these kernels; without it, the array-namespace form of every step (the same code the
GPU runs). Both give the same results, and the tests run both (``kernel_path`` fixture, and
``tests/test_dispatch.py`` on every stage's examples).

Each wrapper below is registered as the ``cpu`` implementation of a stage of
``scip_gpu.dispatch``, with the arguments of the stage's reference and an ``accepts`` rule for
the inputs it covers (dtypes, sizes); ``dispatch`` runs it for NumPy inputs when numba is
installed (``available``), the reference otherwise:

- filters (``ops.*``): Gaussian (SciPy's order of summation, bit-identical), Sobel, rank median
  on a disk (sliding histogram), disk erosion (row runs), labelling (union-find, SciPy's
  numbering), hole filling and small-object removal, SCIP's border rule;
- masks (``masks.*``): Li and Otsu thresholds, the Otsu digitising and rescaling steps, the
  512-bin digitising, background sums;
- features: intensity statistics of every view read off one radix sort per plane
  (``intensity.view_statistics``), GLCM counts and properties, masked ranges and Sobel
  statistics (``texture.*``), the shape family's geometry, pattern and moment sums and convex
  hulls (``shape.*``).

The kernels live at module level in ``_numba_kernels`` (imported on first use) so that numba's
on-disk cache finds them in every worker process: each worker pays the compilation at most once
per installation, then only loads them. Importing this module imports neither numba nor the
modules that define the stages.
"""

from __future__ import annotations

import functools

import numpy as np

from .dispatch import register


def _nb():
    """The numba kernels (``_numba_kernels``; numba is imported with them, on first use)."""
    from . import _numba_kernels

    return _numba_kernels


@functools.cache
def available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # ImportError, or a numba that does not match this NumPy
        return False
    return True


def _small_uint(x) -> bool:
    return x.dtype in (np.uint8, np.uint16)


def _i64(a):
    return np.ascontiguousarray(a, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# ops


def gaussian_weights(sigma: float, radius: int) -> np.ndarray:
    """SciPy's 1-D Gaussian kernel (``scipy.ndimage._filters._gaussian_kernel1d``, order 0):
    ``exp(-x**2 / (2 sigma**2))`` over ``-radius..radius``, normalised to sum 1."""
    sigma2 = sigma * sigma
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / sigma2 * x**2)
    return phi / phi.sum()


def _gaussian_accepts(x, extents, sigma, *, truncate=4.0):
    return sigma > 0 and x.dtype in (np.float64, np.uint8, np.uint16)


@register("ops.gaussian", "cpu", accepts=_gaussian_accepts)
def gaussian(x, extents, sigma: float, *, truncate: float = 4.0) -> np.ndarray:
    """Compiled ``ops.gaussian`` of float64 planes, or of ``x / dtype max`` for uint8/uint16
    planes (skimage's ``img_as_float``); 0 outside each extent."""
    from .ops import gaussian_radius

    scale = 1.0 if x.dtype == np.float64 else 1.0 / np.iinfo(x.dtype).max
    out = np.empty(x.shape, dtype=np.float64)
    _nb().gaussian_planes(np.ascontiguousarray(x), _i64(extents),
                          gaussian_weights(float(sigma), gaussian_radius(sigma, truncate)), float(scale), out)
    return out


@register("ops.sobel", "cpu")
def sobel(x, extents) -> np.ndarray:
    """Compiled ``ops.sobel`` (``as_float(x)``'s dtype out; 0 outside each extent)."""
    from .ops import as_float

    f = np.ascontiguousarray(as_float(x))
    out = np.zeros(f.shape, dtype=f.dtype)
    _nb().sobel_planes(f, _i64(extents), out)
    return out


def _disk_half_widths(radius: int) -> np.ndarray:
    from .ops import disk

    return ((disk(radius).sum(axis=1) - 1) // 2).astype(np.int64)


@register("ops.median_disk", "cpu", accepts=lambda x, extents, radius: _small_uint(x))
def median_disk(x, extents, radius: int) -> np.ndarray:
    """Batched ``skimage.filters.rank.median(plane, disk(radius))`` of uint8/uint16 planes
    (0 outside each extent)."""
    out = np.zeros(x.shape, dtype=np.uint16)
    _nb().median_disk_planes(np.ascontiguousarray(x, dtype=np.uint16), _i64(extents), _disk_half_widths(radius),
                             out)
    return out.astype(x.dtype, copy=False)


@register("ops.binary_erosion_disk", "cpu", accepts=lambda mask, extents, radius: radius > 0)
def binary_erosion_disk(mask, extents, radius: int) -> np.ndarray:
    """Compiled ``ops.binary_erosion_disk`` (False outside each extent)."""
    out = np.empty(mask.shape, dtype=np.bool_)
    _nb().erosion_rows(np.ascontiguousarray(mask, dtype=np.bool_), _i64(extents), _disk_half_widths(radius), out)
    return out


@register("ops.label", "cpu")
def label(mask, connectivity: int = 2) -> tuple[np.ndarray, int]:
    """Compiled ``ops.label``: int32 labels numbered as ``scipy.ndimage.label`` numbers them."""
    out = np.empty(mask.shape, dtype=np.int32)
    n = _nb().label_stack(np.ascontiguousarray(mask, dtype=np.bool_), connectivity == 2, out)
    return out, int(n)


@register("ops.fill_holes_and_clean", "cpu")
def fill_holes_and_clean(mask, extents, area_threshold, min_size) -> np.ndarray:
    """``remove_small_objects(remove_small_holes(mask, area_threshold), min_size)`` of every
    plane in one pass (4-connected, inside each extent; False outside)."""
    thr = np.broadcast_to(np.asarray(area_threshold, dtype=np.float64), (mask.shape[0],))
    out = np.empty(mask.shape, dtype=np.bool_)
    _nb().fill_and_clean(np.ascontiguousarray(mask, dtype=np.bool_), _i64(extents), np.ascontiguousarray(thr),
                         float(min_size), out)
    return out


@register("ops.regions_touching_border", "cpu")
def regions_touching_border(mask, extents) -> tuple[np.ndarray, np.ndarray]:
    """Compiled ``ops.regions_touching_border``: (mask without the border regions, regions left)."""
    out = np.empty(mask.shape, dtype=np.bool_)
    regions = np.empty(mask.shape[0], dtype=np.int64)
    _nb().border_regions(np.ascontiguousarray(mask, dtype=np.bool_), _i64(extents), out, regions)
    return out, regions


def _accepts_watershed(surface, markers, mask=None) -> bool:
    return surface.ndim == 2 and surface.size < (1 << 31)  # the queue packs (steps, pixel) in 64 bits


@register("ops.watershed", "cpu", accepts=_accepts_watershed)
def watershed(surface, markers, mask=None) -> np.ndarray:
    """Compiled ``ops.watershed``: the same keys and labels by a priority flood."""
    from .ops import watershed_prepare

    _, flags, lab = watershed_prepare(surface, markers, mask, ranks=False)
    out = np.empty(surface.size, dtype=np.int32)
    f = np.ascontiguousarray(surface, dtype=np.float64).ravel()  # (exact: the order is what counts)
    _nb().watershed_flood(f, flags, lab, surface.shape[0], surface.shape[1], out)
    return out.reshape(surface.shape)


def _accepts_image_stats(stack) -> bool:
    return (stack.ndim == 4 and stack.dtype.kind in "uif" and stack.dtype != np.float16
            and stack.dtype.isnative  # (numba has no other byte order: e.g. a big-endian zarr store's)
            and (stack.shape[0] * stack.shape[1] == 0 or stack.shape[2] * stack.shape[3] > 0))


@register("ops.image_stats", "cpu", accepts=_accepts_image_stats)
def image_stats(stack) -> np.ndarray:
    """Compiled ``ops.image_stats``: one pass over each plane (NumPy's reductions read the
    images twice, at about twice the time)."""
    n, c = stack.shape[:2]
    out = np.empty((3, n, c), dtype=stack.dtype)
    if n * c:
        nans = np.empty((n, c), dtype=np.int64)
        _nb().image_stats(stack.reshape(n, c, -1), out, nans)  # (a view for a read block's stack)
        if stack.dtype.kind == "f":
            out[:2, nans > 0] = np.nan  # (NumPy's largest and smallest of a plane with a NaN)
    return out


def warm_in_background():
    """Start numba's first-use initialisation in a daemon thread, or None without numba: the
    first kernel a process calls makes numba import its implementation modules and set up its
    compiler's context (about 1.5 s on this project's 2-core VM, whether the kernel then comes
    from the on-disk cache or not). A worker process calls this as it starts (``cluster.
    dask_setup``), so that its first partition does not pay it; a task that calls a kernel
    meanwhile waits for the same initialisation (numba's compiler lock), not for a second one.
    Loads ``image_stats`` of uint16 planes (what a partition's validation calls first)."""
    import threading

    if not available():
        return None

    def warm():
        try:
            image_stats(np.zeros((1, 1, 2, 2), dtype=np.uint16))
        except Exception:  # noqa: BLE001 - the first task that needs the kernels reports it
            pass

    thread = threading.Thread(target=warm, name="scip_gpu-numba-warm", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------
# masks


@register("masks.threshold_li", "cpu")
def threshold_li(x, valid, *, max_iter: int = 10_000) -> np.ndarray:
    """Compiled ``masks.methods.threshold_li``: Li's iteration on each row sorted by
    ``stats.sort_valid``."""
    from .stats import sort_valid

    s, n = sort_valid(x, valid)
    out = np.empty(s.shape[0])
    _nb().li_rows(np.ascontiguousarray(s, dtype=np.float64), _i64(n), int(max_iter), out)
    return out


@register("masks.threshold_otsu_int", "cpu", accepts=lambda x, valid: _small_uint(x))
def threshold_otsu_int(x, valid) -> np.ndarray:
    """Compiled ``masks.methods.threshold_otsu_int`` of (M, P) rows of uint8/uint16 values."""
    out = np.empty(x.shape[0])
    _nb().otsu_int_rows(np.ascontiguousarray(x), np.ascontiguousarray(valid, dtype=np.bool_), out)
    return out


@register("masks.otsu_digitize", "cpu", accepts=lambda x, extents: _small_uint(x))
def otsu_digitize(x, extents) -> tuple[np.ndarray, np.ndarray]:
    """The Otsu mask's first step on uint8/uint16 planes: (uint16 planes, their maxima)."""
    out = np.empty(x.shape, dtype=np.uint16)
    xmax = np.empty(x.shape[0])
    _nb().otsu_digitize_u16(np.ascontiguousarray(x), _i64(extents), out, xmax)
    return out, xmax


@register("masks.scale_to_u16", "cpu")
def scale_to_u16(p, extents, xmax) -> np.ndarray:
    """The Otsu mask's rescaling of each plane to ``0..xmax`` as uint16 (see masks.methods.otsu)."""
    out = np.empty(p.shape, dtype=np.uint16)
    _nb().scale_to_u16(np.ascontiguousarray(p, dtype=np.float64), _i64(extents),
                       np.ascontiguousarray(xmax, dtype=np.float64), out)
    return out


@register("masks.digitize_rows", "cpu")
def digitize_rows(x, valid, edges) -> np.ndarray:
    """``numpy.digitize(row, edges[m])`` of each row's valid entries (0 elsewhere), as uint16."""
    out = np.empty(x.shape, dtype=np.uint16)
    _nb().digitize_rows(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(valid, dtype=np.bool_),
                        np.ascontiguousarray(edges, dtype=np.float64), out)
    return out


@register("masks.outside_sums", "cpu")
def outside_sums(px, mask, combined, extents):
    """Per (object, channel): sum and count of the pixels inside the extent outside the channel's
    mask, and outside the combined mask (the background levels of ``compute_masks``)."""
    n, c = px.shape[:2]
    bg, cbg = np.empty((n, c)), np.empty((n, c))
    n_bg, n_cbg = np.empty((n, c), dtype=np.int64), np.empty((n, c), dtype=np.int64)
    _nb().outside_sums(np.ascontiguousarray(px), np.ascontiguousarray(mask, dtype=np.bool_),
                       np.ascontiguousarray(combined, dtype=np.bool_), _i64(extents), bg, n_bg, cbg, n_cbg)
    return bg, n_bg, cbg, n_cbg


# ---------------------------------------------------------------------------------------------
# intensity


def sort_order(px) -> tuple[np.ndarray, np.ndarray]:
    """Ascending order of each (R, P) row and the row's float64 values in that order, shared by
    every view of a batch (``sorted_view_statistics``): a compiled radix sort for 8/16-bit
    unsigned integers, NumPy's argsort otherwise."""
    if px.dtype in (np.uint8, np.uint16, np.bool_):
        order = np.empty(px.shape, dtype=np.int32)
        values = np.empty(px.shape, dtype=np.float64)
        _nb().radix_argsort_u16(np.ascontiguousarray(px, dtype=np.uint16), order, values)
        return order, values
    order = np.argsort(px, axis=1)
    return order, np.take_along_axis(px, order, axis=1).astype(np.float64)


def sorted_view_statistics(order, values, views) -> np.ndarray:
    """The 11 intensity statistics (``scip_gpu.stats.STATISTICS``) of each plane under each view,
    from the plane's sort (``sort_order``): (R, V, 11) float64. The CPU twin of the
    masked-statistics CUDA kernel; equal to ``stats.compact_statistics`` of the view's members.

    Parameters
    ----------
    order, values : (R, P) ndarrays
        ``sort_order`` of the planes (P = H*W pixels each).
    views : (V, R, P) bool ndarray
        Pixel sets (inside each plane's extent).
    """
    out = np.empty((order.shape[0], views.shape[0], 11))
    _nb().sorted_view_statistics(np.ascontiguousarray(order), np.ascontiguousarray(values, dtype=np.float64),
                                 np.ascontiguousarray(views, dtype=np.bool_), out)
    return out


@register("intensity.view_statistics", "cpu")
def view_statistics(batch, views=None) -> np.ndarray:
    """Compiled ``features.intensity.view_statistics``: every view read off one sort per plane,
    the sort (``features.intensity.plane_order``) cached on the batch and shared by the views
    of every mask and the raw set."""
    from .features.intensity import plane_order

    n, c, h, w = batch.pixels.shape
    if views is None:
        views = np.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(1, n * c, h * w)
    order, values = plane_order(batch)
    return sorted_view_statistics(order, values, views)


# ---------------------------------------------------------------------------------------------
# texture


@register("texture.masked_range", "cpu")
def masked_range(values, view) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(min, max, any) of each (M, P) row over its view (``inf, -inf, False`` for none)."""
    m = values.shape[0]
    lo, hi, has = np.empty(m), np.empty(m), np.empty(m, dtype=np.bool_)
    _nb().masked_range(np.ascontiguousarray(values, dtype=np.float64), np.ascontiguousarray(view, dtype=np.bool_),
                       lo, hi, has)
    return lo, hi, has


@register("texture.glcm_props", "cpu",
          accepts=lambda values, view, extents, edges, offsets: edges.shape[1] == 16)
def glcm_props(values, view, extents, edges, offsets) -> np.ndarray:
    """CPU twin of the GLCM CUDA kernel: (M, K, 6) graycoprops of the symmetric GLCMs of the
    15-bin quantisation (16 edges)."""
    m = values.shape[0]
    out = np.empty((m, len(offsets), 6))
    _nb().glcm_props(np.ascontiguousarray(values, dtype=np.float64), np.ascontiguousarray(view, dtype=np.bool_),
                     _i64(extents), np.ascontiguousarray(edges, dtype=np.float64),
                     np.asarray(offsets, dtype=np.int64).reshape(-1, 2), out)
    return out


@register("texture.sobel_view_statistics", "cpu")
def sobel_view_statistics(sob, view, extents) -> np.ndarray:
    """CPU twin of ``texture.sobel_statistics(sob, inside & sobel_valid(view, extents))``."""
    out = np.empty((sob.shape[0], 4))
    _nb().sobel_view_statistics(np.ascontiguousarray(sob, dtype=np.float64), np.ascontiguousarray(view, dtype=np.bool_),
                                _i64(extents), out)
    return out


# ---------------------------------------------------------------------------------------------
# shape


@register("shape.geometry", "cpu")
def geometry(labels, nl: int):
    """``features.shape._geometry`` with two compiled passes: the same arrays."""
    from .features.shape import _Geometry, _segments

    nb = _nb()
    _, hp, wp = labels.shape
    big = np.iinfo(np.int64).max
    n_px = int(np.count_nonzero(labels))
    lab, row, col = (np.empty(n_px, dtype=np.int64) for _ in range(3))
    plane = np.zeros(nl + 1, dtype=np.int64)
    minr = np.full(nl + 1, big, dtype=np.int64)
    maxr = np.full(nl + 1, -1, dtype=np.int64)
    nb.label_pixels(np.ascontiguousarray(labels), lab, row, col, plane, minr, maxr)
    minr[0] = maxr[0] = 0
    roff, rec_label, rec_k = _segments(np, maxr - minr + 1)
    n_rec = rec_label.shape[0]
    rec = np.empty(n_px, dtype=np.int64)
    left = np.full(n_rec, big, dtype=np.int64)
    right = np.full(n_rec, -1, dtype=np.int64)
    minc = np.full(nl + 1, big, dtype=np.int64)
    maxc = np.full(nl + 1, -1, dtype=np.int64)
    nb.label_rows(lab, row, col, minr, roff, rec_label, rec, left, right, minc, maxc)
    return _Geometry(lab, row, col, rec, plane, minr, maxr, minc, maxc, roff, rec_label, rec_k,
                     left, right, max(hp, wp))


@register("shape.raw_moments", "cpu")
def raw_moments(geo, nl: int) -> np.ndarray:
    """Compiled ``features.shape._raw_moments``: the same sums in the same order."""
    nb = _nb()
    n_rec = geo.rec_label.shape[0]
    sums = np.empty((n_rec, 4))
    nb.record_power_sums(geo.rec, geo.col, geo.minc, geo.lab, np.zeros(nl + 1), n_rec, sums)
    out = np.zeros((nl + 1, 4, 4))
    nb.label_moment_sums(geo.rec_label, geo.rec_k.astype(np.float64), sums, 0, out)
    return out


@register("shape.central_moments", "cpu")
def central_moments(geo, raw, nl: int):
    """Compiled ``features.shape._central_moments`` (third-order sums compiled, the exact
    second order shared with the reference)."""
    from .features.shape import _exact_second_order

    nb = _nb()
    n_rec = geo.rec_label.shape[0]
    m00 = raw[:, 0, 0]
    cr = raw[:, 1, 0] / np.maximum(m00, 1)
    cc = raw[:, 0, 1] / np.maximum(m00, 1)
    mu = np.zeros((nl + 1, 4, 4), dtype=np.float64)
    t = np.empty((n_rec, 4))
    nb.record_power_sums(geo.rec, geo.col, geo.minc, geo.lab, cc, n_rec, t)
    nb.label_moment_sums(geo.rec_label, geo.rec_k - cr[geo.rec_label], t, 3, mu)
    return _exact_second_order(geo, raw, mu)


@register("shape.pattern_props", "cpu")
def pattern_props(padded, labels, nl: int) -> np.ndarray:
    """Compiled ``features.shape.pattern_props``: one raster pass per plane, the same windows in
    the same order of summation."""
    from .features.shape import CROFTON_COEFS_4, EULER_COEFS_8, PERIMETER_WEIGHTS

    sums = np.zeros((3, nl + 1))
    _nb().pattern_sums(np.ascontiguousarray(padded).view(np.uint8), np.ascontiguousarray(labels), EULER_COEFS_8,
                       CROFTON_COEFS_4, PERIMETER_WEIGHTS, sums[0], sums[1], sums[2])
    return sums


@register("shape.lower_hull", "cpu")
def lower_hull(x, offset, length) -> np.ndarray:
    """Compiled ``features.shape._lower_hull``, one sequence at a time."""
    flags = np.zeros(x.shape[0], dtype=bool)
    _nb().lower_hull_flags(_i64(x), _i64(offset), _i64(length), flags)
    return flags


@register("shape.filled_area", "cpu")
def filled_area(padded, labels, owner, area, holed) -> np.ndarray:
    """Compiled ``features.shape.filled_area``: each holed label's bounding box filled from its
    border (scikit-image's way), one stack-based flood per label."""
    out = np.array(area, dtype=np.float64, copy=True)
    _nb().filled_area(np.ascontiguousarray(labels, dtype=np.int32), np.ascontiguousarray(holed, dtype=bool), out)
    return out
