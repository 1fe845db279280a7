"""Mask methods, batched over objects: SCIP's definitions (see scip-behaviour.md, section 3).

Each method takes one channel of a batch, ``x`` (M, H, W) in the image's native dtype with
``extents`` (M, 2), and returns the (M, H, W) bool foreground mask before SCIP's common
post-processing (border-region removal, main-channel rule). The per-object definition each one
reproduces is written in its docstring; the tests compare against those scikit-image calls.

The thresholds and the Otsu method's digitising and rescaling steps are stages of
``scip_gpu.dispatch`` (``masks.threshold_li``, ``masks.threshold_otsu_int``,
``masks.otsu_digitize``, ``masks.scale_to_u16``, ``masks.digitize_rows``): the code here is
their reference, and numba kernels (``cpu_kernels``) are registered beside it.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..backend import array_module
from ..batch import valid_mask
from ..dispatch import stage
from ..stage_examples import compare_inside_extent
from ..stats import masked_quantile, sort_valid


def _area_quarter(extents):
    return extents[:, 0].astype(np.float64) * extents[:, 1] / 4


def _fill_and_clean(fg, extents):
    # remove_small_holes(area_threshold=H*W/4) then remove_small_objects(min_size=20)
    return ops.fill_holes_and_clean(fg, extents, _area_quarter(extents), 20)


# ---------------------------------------------------------------------------------------------
# Thresholds


def _row_examples(rng, dtype, top=None):
    """(M, P) rows of example planes and their valid entries (one row without any)."""
    from ..stage_examples import images, inside

    x, e = images(rng, dtype, top=top)
    m = x.shape[0]
    valid = inside(e, x.shape[1:]).reshape(m, -1)
    valid[6] = False
    return x.reshape(m, -1), valid


def _li_examples(rng):
    from ..stage_examples import images

    for dtype in (np.float64, np.uint16):
        yield _row_examples(rng, dtype), {}
    x, v = _row_examples(rng, np.float64)
    yield (x, v), {"max_iter": 3}
    # a filtered plane, as the li method thresholds it
    f, e = images(rng, np.uint16)
    f = ops.gaussian(ops.sobel(ops.gaussian(f, e, 1.0), e), e, 2.0)
    yield (f.reshape(len(f), -1), valid_mask(e, f.shape[1:]).reshape(len(f), -1)), {}


@stage("masks.threshold_li", examples=_li_examples)
def threshold_li(x, valid, *, max_iter: int = 10_000):
    """``skimage.filters.threshold_li`` of each row's valid entries (float rows).

    Li's iterative minimum cross-entropy threshold, run for all rows at once; a row stops when
    its update falls below its tolerance (half the smallest gap between distinct values).
    """
    xp = array_module(x)
    m = x.shape[0]
    s, n = sort_valid(x, valid)
    lo = s[:, 0]
    hi = xp.take_along_axis(s, xp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
    out = xp.full(m, xp.nan)
    const = (n > 0) & (lo == hi)
    out = xp.where(const, lo, out)
    todo = (n > 0) & ~const
    if not bool(todo.any()):  # host sync: one per call
        return out
    rows = xp.nonzero(todo)[0]
    ss = s[rows] - lo[rows, None]  # each row ascending, shifted to start at 0 (as scikit-image)
    cnt = n[rows]
    with np.errstate(invalid="ignore"):  # inf - inf beyond each row's valid entries
        gaps = xp.diff(ss, axis=1)
    gaps = xp.where((gaps > 0) & xp.isfinite(gaps), gaps, xp.inf)
    tol = gaps.min(axis=1) / 2
    # prefix sums of the sorted rows: the mean below/above any threshold in O(log P) per row
    finite = xp.where(xp.isfinite(ss), ss, 0.0)
    prefix = xp.concatenate([xp.zeros((len(rows), 1)), xp.cumsum(finite, axis=1)], axis=1)
    total = xp.take_along_axis(prefix, cnt[:, None], axis=1)[:, 0]
    cntf = cnt.astype(xp.float64)
    t_next = total / cntf
    t_curr = -2 * tol
    active = xp.ones(len(rows), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            active &= xp.abs(t_next - t_curr) > tol
            if not bool(active.any()):  # host sync per iteration (a few dozen at most)
                break
            t_curr = xp.where(active, t_next, t_curr)
            k = rows_count_le(ss, cnt, t_curr)  # background: values <= t
            sum_back = xp.take_along_axis(prefix, k[:, None], axis=1)[:, 0]
            mean_back = sum_back / k
            mean_fore = (total - sum_back) / (cntf - k)
            stop = mean_back == 0
            new = (mean_back - mean_fore) / (xp.log(mean_back) - xp.log(mean_fore))
            upd = active & ~stop
            t_next = xp.where(upd, new, t_next)
            active &= ~stop
    out[rows] = t_next + lo[rows]
    return out


def rows_count_le(sorted_rows, n, t):
    """Number of entries ``<= t[i]`` among the first ``n[i]`` of each ascending row (a
    vectorised ``searchsorted(side='right')``, by bisection)."""
    xp = array_module(sorted_rows)
    lo = xp.zeros_like(n)
    hi = n.copy()
    r = xp.arange(sorted_rows.shape[0])
    last = sorted_rows.shape[1] - 1
    for _ in range(int(np.ceil(np.log2(max(sorted_rows.shape[1], 2)))) + 1):
        mid = (lo + hi) // 2
        le = (sorted_rows[r, xp.minimum(mid, last)] <= t) & (mid < hi)
        lo = xp.where(le, mid + 1, lo)
        hi = xp.where(le, hi, mid)
    return lo


def _otsu_int_examples(rng):
    for dtype, top in ((np.uint8, None), (np.uint16, 600.0), (np.uint16, 60000.0), (np.int64, 300.0)):
        yield _row_examples(rng, dtype, top), {}
    x, v = _row_examples(rng, np.uint8)
    x[:, :] = 3  # every row constant
    yield (x, v), {}


@stage("masks.threshold_otsu_int", examples=_otsu_int_examples)
def threshold_otsu_int(x, valid):
    """``skimage.filters.threshold_otsu`` of each row's valid entries, for non-negative integer
    rows (scikit-image then uses one histogram bin per integer value)."""
    xp = array_module(x)
    m = x.shape[0]
    big = np.iinfo(np.int64).max
    xi = x.astype(xp.int64)
    vmin = xp.where(valid, xi, big).min(axis=1)
    vmax = xp.where(valid, xi, -1).max(axis=1)
    nbins = int(vmax.max()) + 1 if m else 1  # host sync: histogram width
    nbins = max(nbins, 1)
    codes = xp.where(valid, xp.arange(m)[:, None] * nbins + xi, m * nbins)
    counts = xp.bincount(codes.ravel(), minlength=m * nbins + 1)[: m * nbins].reshape(m, nbins)
    centers = xp.arange(nbins, dtype=xp.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        w1 = xp.cumsum(counts, axis=1)
        w2 = xp.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        cb = counts * centers
        mean1 = xp.cumsum(cb, axis=1) / w1
        mean2 = (xp.cumsum(cb[:, ::-1], axis=1) / w2[:, ::-1])[:, ::-1]
        var12 = w1[:, :-1] * w2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    idx = centers[None, :-1]
    var12 = xp.where((idx >= vmin[:, None]) & (idx < vmax[:, None]), var12, -xp.inf)
    if nbins > 1:
        thr = xp.argmax(var12, axis=1).astype(xp.float64)
    else:
        thr = xp.zeros(m)
    thr = xp.where(vmin == vmax, vmin.astype(xp.float64), thr)  # one value only: that value
    return xp.where(vmax >= 0, thr, xp.nan)


# ---------------------------------------------------------------------------------------------
# Methods


def li(x, extents, *, channel: int, smooth=1.0):
    """Per object: ``gaussian(σ) → sobel → gaussian(2σ) → x > threshold_li(x) →
    remove_small_holes(H·W/4) → remove_small_objects(20)``.

    ``smooth``: σ, one value for all channels or a list with one value per channel.
    """
    sigma = float(smooth[channel] if isinstance(smooth, (list, tuple)) else smooth)
    valid = valid_mask(extents, x.shape[1:])
    f = ops.gaussian(x, extents, sigma)
    f = ops.sobel(f, extents)
    f = ops.gaussian(f, extents, 2 * sigma)
    m = f.shape[0]
    thr = threshold_li(f.reshape(m, -1), valid.reshape(m, -1))
    fg = (f > thr[:, None, None].astype(f.dtype)) & valid
    return _fill_and_clean(fg, extents)


def _digitize_512(x, valid):
    # numpy.digitize(x, numpy.histogram_bin_edges(x, bins=512)) per object, as uint16
    xp = array_module(x)
    m = x.shape[0]
    flat = x.reshape(m, -1).astype(xp.float64)
    v = valid.reshape(m, -1)
    lo = xp.where(v, flat, xp.inf).min(axis=1)
    hi = xp.where(v, flat, -xp.inf).max(axis=1)
    same = lo == hi
    lo = xp.where(same, lo - 0.5, lo)
    hi = xp.where(same, hi + 0.5, hi)
    edges = ops.linspace_rows(lo, hi, 513)  # (M, 513), as numpy.histogram_bin_edges
    return digitize_rows(flat, v, edges).reshape(x.shape)


def _digitize_rows_examples(rng):
    for dtype, top in ((np.uint16, 60000.0), (np.float64, 1.0), (np.uint16, 900.0)):
        x, v = _row_examples(rng, dtype, top)
        x = x.astype(np.float64)
        lo = np.where(v, x, np.inf).min(axis=1)
        hi = np.where(v, x, -np.inf).max(axis=1)
        lo, hi = np.where(v.any(axis=1), lo, 0.0), np.where(v.any(axis=1), hi, 0.0)
        same = lo == hi
        lo, hi = np.where(same, lo - 0.5, lo), np.where(same, hi + 0.5, hi)
        yield (x, v, ops.linspace_rows(lo, hi, 513)), {}


@stage("masks.digitize_rows", examples=_digitize_rows_examples)
def digitize_rows(x, valid, edges):
    """``numpy.digitize(row, edges[m])`` of each row's valid entries, 0 elsewhere.

    Parameters
    ----------
    x : (M, P) float64 ndarray
    valid : (M, P) bool ndarray
    edges : (M, B + 1) float64 ndarray
        Equally spaced increasing edges of each row (``ops.linspace_rows``), which the
        arithmetic first guess relies on.

    Returns
    -------
    (M, P) uint16 ndarray
    """
    xp = array_module(x)
    last = edges.shape[1] - 1
    lo, hi = edges[:, 0], edges[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):  # rows without valid entries
        guess = xp.floor((x - lo[:, None]) / (hi - lo)[:, None] * last)
    guess = xp.where(valid, guess, 0).astype(xp.int64) + 1
    guess = xp.clip(guess, 0, last + 1)
    # digitize: i with edges[i-1] <= x < edges[i]; correct the arithmetic guess by +-1
    for _ in range(2):
        left = xp.take_along_axis(edges, xp.clip(guess - 1, 0, last), axis=1)
        right = xp.take_along_axis(edges, xp.clip(guess, 0, last), axis=1)
        guess = xp.where((guess > 0) & (x < left), guess - 1, guess)
        guess = xp.where((guess <= last) & (x >= right), guess + 1, guess)
    return xp.where(valid, guess, 0).astype(xp.uint16)


def _otsu_digitize_examples(rng):
    from ..stage_examples import images

    for dtype, top in ((np.uint8, None), (np.uint16, 400.0), (np.uint16, 60000.0), (np.float64, 1.0)):
        yield images(rng, dtype, top=top), {}


@stage("masks.otsu_digitize", examples=_otsu_digitize_examples, compare=compare_inside_extent)
def otsu_digitize(x, extents):
    """The Otsu method's first step: planes whose maximum exceeds 512 (and all planes of other
    dtypes than uint8/uint16) digitised into 512 bins (``_digitize_512``), others kept.

    Returns
    -------
    xd : (M, H, W) uint16 ndarray
        Unspecified outside each extent.
    xmax : (M,) float64 ndarray
        Maximum of ``xd`` over each extent.
    """
    xp = array_module(x)
    valid = valid_mask(extents, x.shape[1:])
    m = x.shape[0]
    small_uint = x.dtype.kind == "u" and x.dtype.itemsize <= 2
    vmax = xp.where(valid, x, 0).reshape(m, -1).max(axis=1)
    # scikit-image's rank filters need small unsigned integers: other dtypes are always
    # digitised
    need = (vmax > 512) if small_uint else xp.ones(m, dtype=bool)
    base = x.astype(xp.uint16) if small_uint else xp.zeros(x.shape, dtype=xp.uint16)
    xd = xp.where(need[:, None, None], _digitize_512(x, valid), base)
    xmax = xp.where(valid, xd, 0).reshape(m, -1).max(axis=1).astype(xp.float64)
    return xd, xmax


def _scale_examples(rng):
    from ..stage_examples import images

    p, e = images(rng, np.float64, top=3.0)
    p[7] = -p[7]
    for xmax in (np.full(len(p), 512.0), rng.integers(0, 700, len(p)).astype(np.float64)):
        yield (p, e, xmax), {}
    p[8, 0, 0] = np.inf  # non-finite results become 0
    yield (p, e, np.full(len(p), 40.0)), {}


@stage("masks.scale_to_u16", examples=_scale_examples, compare=compare_inside_extent)
def scale_to_u16(p, extents, xmax):
    """The Otsu method's rescaling: ``(p - min) / (max - min) * xmax`` of each plane over its
    extent, truncated to uint16 (non-finite values and pixels outside the extent 0)."""
    xp = array_module(p)
    m = p.shape[0]
    valid = valid_mask(extents, p.shape[1:])
    vf = valid.reshape(m, -1)
    pf = p.reshape(m, -1)
    pmin = xp.where(vf, pf, xp.inf).min(axis=1)[:, None, None]
    pmax = xp.where(vf, pf, -xp.inf).max(axis=1)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (p - pmin) / (pmax - pmin)
        p = p * xmax[:, None, None]
    return xp.where(xp.isfinite(p) & valid, p, 0).astype(xp.uint16)


def otsu(x, extents, *, channel: int):
    """Per object (SCIP's ``otsu``): if ``max > 512`` digitise into 512 bins; ``p = x −
    median(x, disk 5)`` → ``gaussian(0.5)`` → ``sobel`` → min-max scale × ``max(x)`` → uint16 →
    ``median(disk 5)`` → ``p > threshold_otsu(p)`` → remove_small_holes(H·W/4) →
    remove_small_objects(20).

    Float images are always digitised (scikit-image's rank filters need integers).
    """
    xp = array_module(x)
    valid = valid_mask(extents, x.shape[1:])
    m = x.shape[0]
    xd, xmax = otsu_digitize(x, extents)
    p = xd.astype(xp.float64) - ops.median_disk(xd, extents, 5)
    p = ops.gaussian(p, extents, 0.5)
    p = ops.sobel(p, extents)
    vf = valid.reshape(m, -1)
    p = scale_to_u16(p, extents, xmax)
    p = ops.median_disk(p, extents, 5)
    thr = threshold_otsu_int(p.reshape(m, -1), vf)
    fg = (p > thr[:, None, None]) & valid
    return _fill_and_clean(fg, extents)


def spot(x, extents, *, channel: int, spotsize: int = 5):
    """Per object: ``white_tophat(x, disk(spotsize)) → x > quantile(x, 0.99)``."""
    valid = valid_mask(extents, x.shape[1:])
    t = ops.white_tophat_disk(x, extents, int(spotsize))
    m = x.shape[0]
    q = masked_quantile(t.reshape(m, -1), valid.reshape(m, -1), 0.99)
    return (t > q[:, None, None]) & valid


def circle(x, extents, *, channel: int):
    """A centred disk of radius ``min(H, W) // 3`` (test and demo method)."""
    xp = array_module(x)
    h = extents[:, 0, None, None]
    w = extents[:, 1, None, None]
    r = xp.arange(x.shape[1])[None, :, None]
    c = xp.arange(x.shape[2])[None, None, :]
    cy, cx = h // 2, w // 2
    radius = xp.minimum(h, w) // 3
    d = xp.sqrt(((c - cx) ** 2 + (r - cy) ** 2).astype(xp.float64))
    return (d <= radius) & valid_mask(extents, x.shape[1:])


#: method name -> (function, options it accepts with their defaults, smallest image side)
METHODS = {
    "li": (li, {"smooth": 1.0}, 1),
    "otsu": (otsu, {}, 11),
    "spot": (spot, {"spotsize": 5}, 1),
    "circle": (circle, {}, 1),
}


def margin(method: str, kwargs: dict) -> int:
    """Largest footprint radius of a method's filters (the batch padding margin it needs)."""
    if method == "li":
        smooth = kwargs.get("smooth", 1.0)
        sig = max(smooth) if isinstance(smooth, (list, tuple)) else smooth
        return max(ops.gaussian_radius(2 * float(sig)), 1)
    if method == "otsu":
        return ops.gaussian_radius(0.5) + 1
    if method == "spot":
        return int(kwargs.get("spotsize", 5))
    return 0
