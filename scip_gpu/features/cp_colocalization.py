"""CellProfiler's MeasureColocalization (``Correlation_*``) per channel pair, batched over
objects.

For every object and pair of channels ``A < B`` (in channel order) the object is the combined
mask, and both channels are CellProfiler's [0, 1] images (``cp_common.cp_image``). Values follow
cp_measure's ``get_correlation_pearson``, ``..._overlap``, ``..._manders_fold`` and ``..._rwc``
(threshold 15 % of each channel's maximum in the object, CellProfiler's default):

* ``Correlation``: Pearson's r; ``Slope``: the least-squares slope of B on A (with a channel
  constant in the object, r is NaN, as ``numpy.corrcoef`` there, and so is the slope of a
  constant A; the slope on a constant B is 0: exact values, where the sums would give their
  rounding noise);
* ``Overlap`` and ``K`` (``K_A_B`` = :math:`\\sum ab / \\sum a^2`, ``K_B_A`` the other way) over the
  pixels above both thresholds;
* ``Manders`` (``Manders_A_B`` = M1: A's intensity above its threshold that is co-located with B
  above its, over A's intensity above its threshold; ``Manders_B_A`` = M2);
* ``RWC`` (rank-weighted colocalisation, both ways): the same with each pixel weighted by
  :math:`(R - |r_A - r_B|) / R`, ``r`` the dense rank of the pixel's value in the object.

Where no pixel is above both thresholds, Overlap, K, Manders and RWC are 0 (CellProfiler's
rule); an empty object gives NaN for all (CellProfiler has none).

``Costes`` (``Costes_A_B`` = C1, ``Costes_B_A`` = C2): Manders' coefficients above Costes'
automatic thresholds, found as CellProfiler's default method (``Faster``: cp_measure's
``bisection_costes``; ``costes_pairs``): the orthogonal regression ``B = a A + b`` over the pixels
where either channel is non-zero, then candidate thresholds ``t`` of A on the grid ``k / scale``
(``t_B = a t + b``), searched by CellProfiler's 1/6-window bisection for the lowest one at which
the Pearson correlation of the pixels below either threshold is still non-negative. ``scale`` is
the acquisition grid: the maximum of the pixel type, as ``cp_image`` divides by (uint8 255,
uint16 65535); float pixels are taken as 16-bit data (``FLOAT_SCALE``). C1 = A's intensity of the
pixels above both thresholds over A's intensity at or above its threshold (C2 the same for B).
Costes is NaN where cp_measure's is undefined (it warns there): fewer than 3 pixels, fewer than
3 non-zero ones, a constant channel among them, a degenerate regression, no candidate with a
defined non-negative background correlation, or no intensity above a threshold; and where a
pixel of the object lies outside [0, 1] (float images not on CellProfiler's scale, e.g.
illumination-corrected fields), which cp_measure refuses.

Array path: every (object, pair) at once with masked sums, and one sort per (object, channel)
for the ranks; no per-object loop; NumPy and CuPy alike. The ``cpu`` implementation (numba)
gathers each object's pixels once and sorts only those.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from .cp_common import cp_image
from .registry import Column, Family, column_name, register

#: (feature, direction): direction "AB" names the pair A_B, "BA" the pair B_A
FEATURES = (
    ("Correlation", "AB"), ("Slope", "AB"), ("Overlap", "AB"), ("K", "AB"), ("K", "BA"),
    ("Manders", "AB"), ("Manders", "BA"), ("RWC", "AB"), ("RWC", "BA"),
)
THRESHOLD = 15  # percent of the maximum, CellProfiler's default
#: Costes' thresholds (C1, C2) of every pair, after ``FEATURES`` in each pair's columns
COSTES = (("Costes", "AB"), ("Costes", "BA"))
#: Costes' grid of float pixels (which carry no acquisition range): 16-bit data
FLOAT_SCALE = 65535
#: CellProfiler's bound on the bisection's iterations
COSTES_MAX_ITER = 256


def channel_pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def colocalization_columns(mask: str | None, channels) -> list[Column]:
    cols = []
    for a, b in channel_pairs(len(channels)):
        for feature, way in FEATURES + COSTES:
            x, y = (channels[a], channels[b]) if way == "AB" else (channels[b], channels[a])
            key = f"Correlation_{feature}_{x}_{y}"
            cols.append(Column(column_name("feat", mask, key), "feat", "cp_colocalization", feature, mask,
                               "combined", f"{x}_{y}", f"channels={x},{y};threshold={THRESHOLD}",
                               measurement=key))
    return cols



@stage("cp_colocalization.block", examples=_block_examples)
def compute_colocalization(batch, mr, ctx):
    """(N, pairs * 11) colocalisation values of one mask, columns as ``colocalization_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    pairs = channel_pairs(c)
    if not pairs:
        return xp.zeros((n, 0))
    view = (mr.combined & batch.valid()).reshape(n, h * w)
    x = cp_image(batch.pixels).reshape(n, c, h * w)
    res = pair_colocalization(x, view, pairs)
    cos = costes_pairs(x, view, pairs, costes_scale(batch.pixels.dtype))
    res = xp.concatenate([res, cos], axis=2)
    return xp.where(xp.asarray(mr.usable)[:, None], res.reshape(n, -1), xp.nan)


def costes_scale(dtype) -> int:
    """Costes' threshold grid for pixels of type ``dtype``: the type's maximum, as ``cp_image``
    divides by (at most 2**32 - 1, cp_measure's bound); ``FLOAT_SCALE`` for float pixels.

    >>> costes_scale(np.uint8), costes_scale(np.uint16), costes_scale(np.float32)
    (255, 65535, 65535)
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return int(min(np.iinfo(dtype).max, 2**32 - 1))
    return FLOAT_SCALE


def dense_ranks(x, view):
    """(N, C, P) dense rank (0, 1, ... over the distinct values, ties equal) of every pixel's
    value among its object's pixels in ``view`` (N, P); arbitrary outside the view."""
    xp = array_namespace(x)
    n, c, p = x.shape
    v = xp.where(view[:, None, :], x, xp.inf)
    order = xp.argsort(v, axis=2)
    s = xp.take_along_axis(v, order, axis=2)
    new = xp.concatenate([xp.zeros((n, c, 1), dtype=bool), s[:, :, 1:] != s[:, :, :-1]], axis=2)
    rank_sorted = xp.cumsum(new, axis=2)
    ranks = xp.empty_like(rank_sorted)
    n_idx = xp.arange(n)[:, None, None]
    c_idx = xp.arange(c)[None, :, None]
    ranks[n_idx, c_idx, order] = rank_sorted
    return ranks


def _pairs_examples(rng):
    for (batch, mr, ctx), _ in _block_examples(rng):
        n, c, h, w = batch.pixels.shape
        view = (mr.combined & batch.valid()).reshape(n, h * w)
        x = cp_image(batch.pixels).reshape(n, c, h * w)
        yield (x, view, channel_pairs(c)), {}
        q = np.round(x * 50) / 50  # ties: dense ranks, constant channels
        yield (q, view, channel_pairs(c)), {}


def _compare(ref, got, args, kwargs):
    """Compiled sums run in another order than the array reductions."""
    assert_equivalent(ref, got, rtol=1e-9, atol=1e-12)


@stage("cp_colocalization.pairs", examples=_pairs_examples, compare=_compare)
def pair_colocalization(x, view, pairs):
    """The 9 values of ``FEATURES`` for every object and channel pair.

    Parameters
    ----------
    x : (N, C, P) float64 ndarray
    view : (N, P) bool ndarray
    pairs : list of (a, b)

    Returns
    -------
    (N, len(pairs), 9) float64 ndarray
    """
    xp = array_namespace(x)
    n = x.shape[0]
    cnt = view.sum(axis=1).astype(xp.float64)
    ranks = dense_ranks(x, view)
    inside = xp.where(view[:, None, :], x, 0.0)
    top = xp.where(view[:, None, :], x, -xp.inf).max(axis=2)  # (N, C)
    thr = (THRESHOLD / 100) * top
    above = view[:, None, :] & (x >= thr[:, :, None])
    out = []
    for a, b in pairs:
        fa, fb = inside[:, a], inside[:, b]
        k = xp.maximum(cnt, 1)
        ma, mb = fa.sum(axis=1) / k, fb.sum(axis=1) / k
        da = xp.where(view, fa - ma[:, None], 0.0)
        db = xp.where(view, fb - mb[:, None], 0.0)
        sab, saa, sbb = (da * db).sum(axis=1), (da * da).sum(axis=1), (db * db).sum(axis=1)
        ra, rb = ranks[:, a], ranks[:, b]
        # a channel constant in the view (one dense rank): its deviations from the mean are
        # rounding noise, so r is undefined (NaN, as numpy.corrcoef in exact arithmetic) and the
        # slope is undefined for a constant first channel, 0 for a constant second one
        var_a = xp.where(view, ra, 0).max(axis=1) > 0
        var_b = xp.where(view, rb, 0).max(axis=1) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = xp.where(var_a & var_b, sab / xp.sqrt(saa * sbb), xp.nan)
            slope = xp.where(var_a, xp.where(var_b, sab / saa, 0.0), xp.nan)
        both = above[:, a] & above[:, b]
        anyb = both.any(axis=1)
        pa, pb = xp.where(both, fa, 0.0), xp.where(both, fb, 0.0)
        fpsq, spsq, prod = (pa * pa).sum(axis=1), (pb * pb).sum(axis=1), (pa * pb).sum(axis=1)
        tot_a = xp.where(above[:, a], fa, 0.0).sum(axis=1)
        tot_b = xp.where(above[:, b], fb, 0.0).sum(axis=1)
        big_r = xp.maximum(xp.where(view, ra, 0).max(axis=1), xp.where(view, rb, 0).max(axis=1)) + 1
        wgt = (big_r[:, None] - xp.abs(ra - rb)) / big_r[:, None].astype(xp.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = [
                prod / xp.sqrt(fpsq * spsq), prod / fpsq, prod / spsq,
                pa.sum(axis=1) / tot_a, pb.sum(axis=1) / tot_b,
                (pa * wgt).sum(axis=1) / tot_a, (pb * wgt).sum(axis=1) / tot_b,
            ]
        vals = [xp.where(anyb, v, 0.0) for v in vals]
        res = xp.stack([corr, slope, *vals], axis=1)
        out.append(xp.where((cnt > 0)[:, None], res, xp.nan))
    return xp.stack(out, axis=1).reshape(n, len(pairs), len(FEATURES))


def _masked_pearson(fi, si, sel):
    """(N,) Pearson's r of the pixels ``sel`` (N, P) of every object, NaN where SciPy's
    ``pearsonr`` (as CellProfiler calls it) is undefined: fewer than 3 pixels or a constant
    channel among them."""
    xp = array_namespace(fi)
    cnt = sel.sum(axis=1)
    k = xp.maximum(cnt, 1).astype(xp.float64)
    mf = xp.where(sel, fi, 0.0).sum(axis=1) / k
    ms = xp.where(sel, si, 0.0).sum(axis=1) / k
    df = xp.where(sel, fi - mf[:, None], 0.0)
    ds = xp.where(sel, si - ms[:, None], 0.0)
    ptp_f = xp.where(sel, fi, -xp.inf).max(axis=1) - xp.where(sel, fi, xp.inf).min(axis=1)
    ptp_s = xp.where(sel, si, -xp.inf).max(axis=1) - xp.where(sel, si, xp.inf).min(axis=1)
    defined = (cnt >= 3) & (ptp_f > 0) & (ptp_s > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (df * ds).sum(axis=1) / xp.sqrt((df * df).sum(axis=1) * (ds * ds).sum(axis=1))
    return xp.where(defined, r, xp.nan)


def _costes_examples(rng):
    for k, ((x, view, pairs), _) in enumerate(_pairs_examples(rng)):
        scale = (255, 65535)[k % 2]
        yield (xp_round(x, scale), view, pairs, scale), {}
    # correlated channels on a coarse grid (the bisection runs its whole course), an anti-
    # correlated pair (undefined), constant and tiny objects
    n, p = 12, 60
    a = rng.random((n, p))
    b = np.clip(0.6 * a + 0.3 * rng.random((n, p)), 0, 1)
    x = np.stack([a, b, 1 - a], axis=1)
    x[3, 1] = 0.5
    x[4, :, 10:] = 0.0
    view = rng.random((n, p)) < 0.8
    view[5, 2:] = False
    for scale in (31, 255, 65535):
        yield (xp_round(x, scale), view, channel_pairs(3), scale), {}


def xp_round(x, scale: int):
    """``x`` on the grid ``k / scale`` (integer pixels as ``cp_image`` makes them)."""
    return np.round(x * scale) / scale


@stage("cp_colocalization.costes", examples=_costes_examples, compare=_compare)
def costes_pairs(x, view, pairs, scale: int):
    """Costes' automatic-threshold Manders coefficients (C1, C2) of every object and channel
    pair, by CellProfiler's ``Faster`` search (cp_measure's ``bisection_costes``), every object
    of the batch in lockstep: one masked Pearson correlation per object and step.

    Parameters
    ----------
    x : (N, C, P) float64 ndarray
        CellProfiler's [0, 1] images (``cp_image``).
    view : (N, P) bool ndarray
    pairs : list of (a, b)
    scale : int
        The acquisition grid (``costes_scale``): candidate thresholds are ``k / scale``.

    Returns
    -------
    (N, len(pairs), 2) float64 ndarray
    """
    xp = array_namespace(x)
    n = x.shape[0]
    scale_f = float(scale)
    eps = float(np.finfo(np.float64).eps)
    cnt = view.sum(axis=1)
    out = []
    for pa, pb in pairs:
        fi, si = x[:, pa], x[:, pb]
        # finite and on CellProfiler's [0, 1] scale (cp_measure refuses other pixels)
        finite = (xp.isfinite(fi) & xp.isfinite(si) & (fi >= 0) & (fi <= 1) & (si >= 0) & (si <= 1)) | ~view
        nz = view & ((fi > 0) | (si > 0))
        nnz = nz.sum(axis=1)
        k = xp.maximum(nnz, 2).astype(xp.float64)
        # the regression over the non-zero pixels (numpy.var, ddof=1, as cp_measure)
        xmean = xp.where(nz, fi, 0.0).sum(axis=1) / k
        ymean = xp.where(nz, si, 0.0).sum(axis=1) / k
        z = fi + si
        zmean = xp.where(nz, z, 0.0).sum(axis=1) / k
        xvar = xp.where(nz, (fi - xmean[:, None]) ** 2, 0.0).sum(axis=1) / (k - 1)
        yvar = xp.where(nz, (si - ymean[:, None]) ** 2, 0.0).sum(axis=1) / (k - 1)
        zvar = xp.where(nz, (z - zmean[:, None]) ** 2, 0.0).sum(axis=1) / (k - 1)
        ptp_f = xp.where(nz, fi, -xp.inf).max(axis=1) - xp.where(nz, fi, xp.inf).min(axis=1)
        ptp_s = xp.where(nz, si, -xp.inf).max(axis=1) - xp.where(nz, si, xp.inf).min(axis=1)
        covar = 0.5 * (zvar - (xvar + yvar))
        denom = 2 * covar
        num = (yvar - xvar) + xp.sqrt((yvar - xvar) * (yvar - xvar) + 4 * (covar * covar))
        with np.errstate(invalid="ignore", divide="ignore"):
            a = num / denom
            b = ymean - a * xmean
        ok = ((cnt >= 3) & finite.all(axis=1) & (nnz >= 3) & (ptp_f != 0) & (ptp_s != 0)
              & (xp.abs(covar) > 8 * eps * xp.maximum(xvar, yvar)) & xp.isfinite(a) & xp.isfinite(b))
        a = xp.where(ok, a, 0.0)
        b = xp.where(ok, b, 0.0)
        # the bisection (1/6 of the window below its top while it is wider than 6 steps)
        left = xp.full((n,), 1.0)
        right = xp.full((n,), scale_f)
        mid = xp.floor_divide(right - left, 6 / 5) + left
        lastmid = xp.zeros((n,))
        valid = xp.full((n,), xp.nan)
        running = ok
        it = 0
        while bool(running.any()):
            it += 1
            if it > COSTES_MAX_ITER:  # cp_measure: "bisection did not converge"
                ok = ok & ~running
                break
            thr_f = mid / scale_f
            thr_s = a * thr_f + b
            sel = view & ((fi < thr_f[:, None]) | (si < thr_s[:, None]))
            r = _masked_pearson(fi, si, sel)
            bad = ~xp.isfinite(r) | (r < 0)
            left = xp.where(running & bad, mid - 1, left)
            right = xp.where(running & ~bad, mid + 1, right)
            valid = xp.where(running & ~bad, mid, valid)
            lastmid = xp.where(running, mid, lastmid)
            divisor = xp.where(right - left > 6, 6 / 5, 2.0)
            mid = xp.where(running, xp.floor_divide(right - left, divisor) + left, mid)
            running = running & (lastmid != mid)
        ok = ok & xp.isfinite(valid)
        thr_f = xp.where(ok, (valid - 1) / scale_f, 0.0)
        thr_s = a * thr_f + b
        below = view & ((fi < thr_f[:, None]) | (si < thr_s[:, None]))
        ok = ok & xp.isfinite(_masked_pearson(fi, si, below))
        above_f, above_s = fi > thr_f[:, None], si > thr_s[:, None]
        both = view & above_f & above_s
        tot_f = xp.where(view & (fi >= thr_f[:, None]), fi, 0.0).sum(axis=1)
        tot_s = xp.where(view & (si >= thr_s[:, None]), si, 0.0).sum(axis=1)
        ok = ok & (tot_f > 0) & (tot_s > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            c1 = xp.where(both, fi, 0.0).sum(axis=1) / tot_f
            c2 = xp.where(both, si, 0.0).sum(axis=1) / tot_s
        out.append(xp.where(ok[:, None], xp.stack([c1, c2], axis=1), xp.nan))
    if not out:
        return xp.zeros((n, 0, 2))
    return xp.stack(out, axis=1)


register(Family("cp_colocalization", colocalization_columns, compute_colocalization, True,
                "CellProfiler's colocalisation (Pearson, slope, overlap, K, Manders, RWC, Costes) of every "
                "channel pair in the combined mask"))
