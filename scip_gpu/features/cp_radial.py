"""CellProfiler's MeasureObjectIntensityDistribution (``RadialDistribution_*``): FracAtD,
MeanFrac and RadialCV in scaled radial bins, batched over objects.

For every object and channel ``c`` the object is channel ``c``'s own mask, as in
``cp_intensity``; intensities are CellProfiler's [0, 1] image. CellProfiler (cp_measure's
``get_radial_distribution``, scaled bins, 4 bins by default):

1. ``d_edge``: the Euclidean distance of every object pixel to the nearest background pixel of
   the object's image (pixels beyond the image are not background);
2. the centre: the object pixel farthest from the edge (the first in raster order on ties);
3. ``d_centre``: the geodesic distance from the centre inside the object, over 8-neighbour
   steps of length 1 and :math:`\\sqrt 2` (``centrosome.propagate``); pixels not connected to
   the centre are left out;
4. bin of a pixel: :math:`\\lfloor n\\, d_c / (d_c + d_e + 0.001) \\rfloor`;
   ``FracAtD`` the share of the object's intensity in the bin, ``MeanFrac`` that share over the
   bin's share of pixels (+ machine epsilon), ``RadialCV`` the coefficient of variation
   (population) of the mean intensities of the bin's pixels in 8 wedges around the centre
   (0 for a bin without pixels).

An empty object gives NaN. The Zernike intensity moments (``RadialDistribution_Zernike*``) are
the family ``cp_radial_zernike`` (``features.cp_zernike``).

Array path: one 3-D distance transform for all planes, and the geodesic distance by relaxation
over the 8 neighbours of all planes at once (until nothing changes: as many rounds as the
longest geodesic path has steps); every sum is a ``bincount``. The ``cpu`` implementation
(numba) runs a distance transform and Dijkstra's algorithm per plane; the ``cuda`` one
(``kernels/cp_radial.cu``) one thread block per plane, the geodesic distance by relaxation to
the fixed point, which is Dijkstra's result double for double.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..backend import array_module, ndimage
from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from .cp_common import cp_column, cp_image
from .registry import Family, register

BINS = 4
MEASURES = ("FracAtD", "MeanFrac", "RadialCV")
_STEPS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]


def radial_columns(mask: str | None, channels) -> list:
    cols = []
    for ch in channels:
        for meas in MEASURES:
            for b in range(1, BINS + 1):
                cols.append(cp_column("cp_radial", mask, "RadialDistribution", meas, ch, "mask",
                                      suffix=f"{b}of{BINS}", params=f"bin={b},bins={BINS}"))
    return cols



@stage("cp_radial.block", examples=_block_examples)
def compute_radial(batch, mr, ctx):
    """(N, C * 12) radial distribution values of one mask, columns as ``radial_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    valid = xp.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(n * c, h, w)
    view = (mr.mask.reshape(n * c, h, w)) & valid
    x = cp_image(batch.pixels.reshape(n * c, h, w))
    res = radial_planes(x, view, valid)
    return xp.where(xp.asarray(mr.usable)[:, None], res.reshape(n, -1), xp.nan)


def _planes_examples(rng):
    for (batch, mr, ctx), _ in _block_examples(rng):
        n, c, h, w = batch.pixels.shape
        valid = np.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(n * c, h, w)
        yield (cp_image(batch.pixels.reshape(n * c, h, w)), mr.mask.reshape(n * c, h, w) & valid,
               np.ascontiguousarray(valid)), {}


def _compare(ref, got, args, kwargs):
    """Sums in another order; geodesic distances summed along other (equally short) paths."""
    assert_equivalent(ref, got, rtol=1e-9, atol=1e-12)


def geodesic_from(view, seed):
    """Geodesic distance inside ``view`` (M, H, W) from one ``seed`` pixel per plane (flat
    index, -1 for none), 8-neighbour steps of 1 and sqrt(2); inf where unreachable."""
    xp = array_namespace(view)
    m, h, w = view.shape
    d = xp.full((m, h + 2, w + 2), xp.inf)
    inside = xp.zeros((m, h + 2, w + 2), dtype=bool)
    inside[:, 1:-1, 1:-1] = view
    has = seed >= 0
    rows = xp.flatnonzero(has)
    d[rows, seed[has] // w + 1, seed[has] % w + 1] = 0.0
    while True:  # Bellman-Ford rounds over all planes; host sync per round
        best = d[:, 1:-1, 1:-1]
        for di, dj in _STEPS:
            step = float(np.hypot(di, dj))
            best = xp.minimum(best, d[:, 1 + di:h + 1 + di, 1 + dj:w + 1 + dj] + step)
        best = xp.where(view, best, xp.inf)
        if bool(xp.all(best == d[:, 1:-1, 1:-1])):
            return best
        d[:, 1:-1, 1:-1] = best


@stage("cp_radial.planes", examples=_planes_examples, compare=_compare)
def radial_planes(x, view, valid):
    """FracAtD, MeanFrac and RadialCV of every plane, ``BINS`` bins each.

    Parameters
    ----------
    x : (M, H, W) float64 ndarray
    view : (M, H, W) bool ndarray
        The objects.
    valid : (M, H, W) bool ndarray
        Each plane's image (pixels beyond it are not background).

    Returns
    -------
    (M, 3 * BINS) float64 ndarray
        NaN rows for empty objects.
    """
    xp = array_namespace(x)
    m, h, w = x.shape
    # distance to the nearest background pixel of the same plane: a 3-D transform whose first
    # axis is too coarse for any plane to see another's background
    bg = valid & ~view
    far = float(4 * (h + w))
    d_edge = ndimage(array_module(x)).distance_transform_edt(~bg, sampling=(far, 1.0, 1.0))
    d_edge = xp.where(bg.reshape(m, -1).any(axis=1)[:, None, None], d_edge, far)
    flat_edge = xp.where(view, d_edge, -1.0).reshape(m, -1)
    seed = xp.argmax(flat_edge, axis=1)  # the first maximum in raster order
    has = view.reshape(m, -1).any(axis=1)
    seed = xp.where(has, seed, -1)
    d_c = geodesic_from(view, seed)
    good = view & xp.isfinite(d_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        nd = xp.where(good, d_c / (d_c + d_edge + 0.001), 0.0)
    b = xp.minimum((nd * BINS).astype(xp.int64), BINS)
    plane = xp.broadcast_to(xp.arange(m)[:, None, None], (m, h, w))
    key = (plane * (BINS + 1) + b)[good]
    val = x[good]
    hist = xp.bincount(key, weights=val, minlength=m * (BINS + 1)).reshape(m, BINS + 1)[:, :BINS]
    num = xp.bincount(key, minlength=m * (BINS + 1)).reshape(m, BINS + 1)[:, :BINS].astype(xp.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = hist / hist.sum(axis=1, keepdims=True)
        mean_frac = frac / (num / num.sum(axis=1, keepdims=True) + np.finfo(float).eps)
    # wedges around the centre
    ci = (seed // w)[:, None, None]
    cj = (seed % w)[:, None, None]
    ii = xp.arange(h)[None, :, None]
    jj = xp.arange(w)[None, None, :]
    wedge = ((ii > ci).astype(xp.int64) + 2 * (jj > cj).astype(xp.int64)
             + 4 * (xp.abs(ii - ci) > xp.abs(jj - cj)).astype(xp.int64))
    wedge = xp.broadcast_to(wedge, (m, h, w))
    wkey = ((plane * (BINS + 1) + b) * 8 + wedge)[good]
    wsum = xp.bincount(wkey, weights=val, minlength=m * (BINS + 1) * 8).reshape(m, BINS + 1, 8)[:, :BINS]
    wcnt = xp.bincount(wkey, minlength=m * (BINS + 1) * 8).reshape(m, BINS + 1, 8)[:, :BINS]
    present = wcnt > 0
    k = present.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = xp.where(present, wsum / xp.maximum(wcnt, 1), 0.0)
        mu = means.sum(axis=2) / k
        sd = xp.sqrt(xp.where(present, (means - mu[:, :, None]) ** 2, 0.0).sum(axis=2) / k)
        cv = xp.where(k > 0, sd / mu, 0.0)
    res = xp.concatenate([frac, mean_frac, cv], axis=1)
    return xp.where(has[:, None], res, xp.nan)


register(Family("cp_radial", radial_columns, compute_radial, True,
                "CellProfiler's radial intensity distribution (FracAtD, MeanFrac, RadialCV; 4 bins) "
                "of every channel in its mask"))
