"""CellProfiler's MeasureColocalization (``Correlation_*``) per channel pair, batched over
objects.

For every object and pair of channels ``A < B`` (in channel order) the object is the combined
mask, and both channels are CellProfiler's [0, 1] images (``cp_common.cp_image``). Values follow
cp_measure's ``get_correlation_pearson``, ``..._overlap``, ``..._manders_fold`` and ``..._rwc``
(threshold 15 % of each channel's maximum in the object, CellProfiler's default):

* ``Correlation``: Pearson's r; ``Slope``: the least-squares slope of B on A;
* ``Overlap`` and ``K`` (``K_A_B`` = :math:`\\sum ab / \\sum a^2`, ``K_B_A`` the other way) over the
  pixels above both thresholds;
* ``Manders`` (``Manders_A_B`` = M1: A's intensity above its threshold that is co-located with B
  above its, over A's intensity above its threshold; ``Manders_B_A`` = M2);
* ``RWC`` (rank-weighted colocalisation, both ways): the same with each pixel weighted by
  :math:`(R - |r_A - r_B|) / R`, ``r`` the dense rank of the pixel's value in the object.

Where no pixel is above both thresholds, Overlap, K, Manders and RWC are 0 (CellProfiler's
rule); an empty object gives NaN for all (CellProfiler has none). Costes' automatic thresholds
are not computed yet.

Array path: every (object, pair) at once with masked sums, and one sort per (object, channel)
for the ranks; no per-object loop; NumPy and CuPy alike. The ``cpu`` implementation (numba)
gathers each object's pixels once and sorts only those.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..dispatch import assert_equivalent, stage
from .cp_common import cp_image
from .registry import Column, Family, column_name, register

#: (feature, direction): direction "AB" names the pair A_B, "BA" the pair B_A
FEATURES = (
    ("Correlation", "AB"), ("Slope", "AB"), ("Overlap", "AB"), ("K", "AB"), ("K", "BA"),
    ("Manders", "AB"), ("Manders", "BA"), ("RWC", "AB"), ("RWC", "BA"),
)
THRESHOLD = 15  # percent of the maximum, CellProfiler's default


def channel_pairs(n: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def colocalization_columns(mask: str | None, channels) -> list[Column]:
    cols = []
    for a, b in channel_pairs(len(channels)):
        for feature, way in FEATURES:
            x, y = (channels[a], channels[b]) if way == "AB" else (channels[b], channels[a])
            key = f"Correlation_{feature}_{x}_{y}"
            cols.append(Column(column_name("feat", mask, key), "feat", "cp_colocalization", feature, mask,
                               "combined", f"{x}_{y}", f"channels={x},{y};threshold={THRESHOLD}",
                               measurement=key))
    return cols


def _block_examples(rng):
    from ..stage_examples import family_examples

    yield from family_examples(rng)


@stage("cp_colocalization.block", examples=_block_examples)
def compute_colocalization(batch, mr, ctx):
    """(N, pairs * 9) colocalisation values of one mask, columns as ``colocalization_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    pairs = channel_pairs(c)
    if not pairs:
        return xp.zeros((n, 0))
    view = (mr.combined & batch.valid()).reshape(n, h * w)
    x = cp_image(batch.pixels).reshape(n, c, h * w)
    res = pair_colocalization(x, view, pairs)
    return xp.where(xp.asarray(mr.usable)[:, None], res.reshape(n, -1), xp.nan)


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
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = sab / xp.sqrt(saa * sbb)
            slope = sab / saa
        both = above[:, a] & above[:, b]
        anyb = both.any(axis=1)
        pa, pb = xp.where(both, fa, 0.0), xp.where(both, fb, 0.0)
        fpsq, spsq, prod = (pa * pa).sum(axis=1), (pb * pb).sum(axis=1), (pa * pb).sum(axis=1)
        tot_a = xp.where(above[:, a], fa, 0.0).sum(axis=1)
        tot_b = xp.where(above[:, b], fb, 0.0).sum(axis=1)
        ra, rb = ranks[:, a], ranks[:, b]
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


register(Family("cp_colocalization", colocalization_columns, compute_colocalization, True,
                "CellProfiler's colocalisation (Pearson, slope, overlap, K, Manders, RWC) of every "
                "channel pair in the combined mask"))
