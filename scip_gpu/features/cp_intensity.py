"""CellProfiler's MeasureObjectIntensity (``Intensity_*``, ``Location_*``), batched over objects.

For every object and channel ``c`` the object is channel ``c``'s own mask (for segmented fields
of view: the channel's compartment), as the ``mask`` view of SCIP's intensity family. Intensities
are CellProfiler's: of the image scaled to [0, 1] (integer pixels divided by their type's
maximum, ``cp_common.cp_image``; float pixels as they are). Values follow CellProfiler 4 (cp_measure's ``get_intensity(..., legacy=True)``):

* ``Integrated/Mean/Std/Min/MaxIntensity`` over the object's pixels (population standard
  deviation), and the same over its edge (``...Edge``): the object's pixels with a
  4-neighbour outside it (``skimage.segmentation.find_boundaries(mode="inner")``; pixels beyond
  the object's image count as inside, as there);
* ``Lower/UpperQuartileIntensity``, ``MedianIntensity``: CellProfiler's quantile of ``n``
  sorted values at fraction ``f``, the linear interpolation at position ``n f`` (upper
  neighbour clamped to the last value); ``MADIntensity`` the same median of
  ``|x - median|``;
* ``MassDisplacement``: the distance between the intensity-weighted centre and the centroid;
* ``Location_CenterMassIntensity_X/Y`` and ``Location_MaxIntensity_X/Y`` (first maximum in
  raster order) in the object image's coordinates.

An empty object (or a mask that is not ``usable``) gives NaN for all (CellProfiler gives 0).

The array path sorts all (object, channel) planes at once (pixels outside the object pushed to
the end) and reads the quantiles with one gather; no per-object loop. The stage is
``cp_intensity.block``; its ``cpu`` implementation (numba, ``cpu_kernels``) computes the same
sums per plane in compiled loops.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .. import ops
from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from .cp_common import cp_column, cp_image
from .registry import Family, register

INTENSITY = (
    "IntegratedIntensity", "MeanIntensity", "StdIntensity", "MinIntensity", "MaxIntensity",
    "IntegratedIntensityEdge", "MeanIntensityEdge", "StdIntensityEdge", "MinIntensityEdge",
    "MaxIntensityEdge", "MassDisplacement", "LowerQuartileIntensity", "MedianIntensity",
    "MADIntensity", "UpperQuartileIntensity",
)
LOCATION = ("CenterMassIntensity_X", "CenterMassIntensity_Y", "MaxIntensity_X", "MaxIntensity_Y")
N_CHANNEL = len(INTENSITY) + len(LOCATION)


def intensity_columns(mask: str | None, channels) -> list:
    cols = []
    for ch in channels:
        cols += [cp_column("cp_intensity", mask, "Intensity", f, ch, "mask") for f in INTENSITY]
        cols += [cp_column("cp_intensity", mask, "Location", f, ch, "mask") for f in LOCATION]
    return cols


def cp_quantile(sorted_values, n, frac: float):
    """CellProfiler's quantile of each row's first ``n`` sorted values (rows with ``n == 0``:
    NaN): linear interpolation at position ``n * frac``, both neighbours clamped to ``n - 1``.

    >>> cp_quantile(np.array([[1., 2., 3., 4.]]), np.array([4]), 0.25)
    array([2.])
    """
    xp = array_namespace(sorted_values)
    pos = n.astype(xp.float64) * frac
    last = xp.maximum(n - 1, 0)
    lo = xp.minimum(xp.floor(pos).astype(xp.int64), last)
    hi = xp.minimum(lo + 1, last)
    f = pos - lo
    has = n > 0
    a = xp.where(has, xp.take_along_axis(sorted_values, lo[:, None], axis=1)[:, 0], 0.0)
    b = xp.where(has, xp.take_along_axis(sorted_values, hi[:, None], axis=1)[:, 0], 0.0)
    return xp.where(has, a * (1.0 - f) + b * f, xp.nan)


def _compare(ref, got, args, kwargs):
    """Compiled sums run in another order than the array reductions."""
    assert_equivalent(ref, got, rtol=1e-10, atol=1e-9)



@stage("cp_intensity.block", examples=_block_examples)
def compute_intensity(batch, mr, ctx):
    """(N, C * 19) CellProfiler intensity values of one mask, columns as ``intensity_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    view = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
    ext = xp.repeat(batch.extents, c, axis=0)
    edge = view & ~ops.binary_erosion_disk(view, ext, 1)
    x = cp_image(batch.pixels.reshape(n * c, h, w))
    res = plane_intensity(x, view, edge).reshape(n, c * N_CHANNEL)
    return xp.where(xp.asarray(mr.usable)[:, None], res, xp.nan)


def _moments(xp, x, view):
    """count, sum, population std, min, max of each (M, P) row over its view."""
    cnt = view.sum(axis=1)
    k = xp.maximum(cnt, 1)
    s = xp.where(view, x, 0.0).sum(axis=1)
    mean = s / k
    var = (xp.where(view, x - mean[:, None], 0.0) ** 2).sum(axis=1) / k
    mn = xp.where(view, x, xp.inf).min(axis=1)
    mx = xp.where(view, x, -xp.inf).max(axis=1)
    none = cnt == 0
    nan = xp.nan
    return (cnt, xp.where(none, nan, s), xp.where(none, nan, mean), xp.where(none, nan, xp.sqrt(var)),
            xp.where(none, nan, mn), xp.where(none, nan, mx))


def _planes_examples(rng):
    from ..stage_examples import family_examples

    for (batch, mr, ctx), _ in family_examples(rng):
        n, c, h, w = batch.pixels.shape
        view = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
        edge = view & ~ops.binary_erosion_disk(view, np.repeat(batch.extents, c, axis=0), 1)
        yield (batch.pixels.reshape(n * c, h, w).astype(np.float64), view, edge), {}


@stage("cp_intensity.planes", examples=_planes_examples,
       compare=_compare)
def plane_intensity(x, view, edge):
    """CellProfiler's 19 intensity and location values of every plane.

    Parameters
    ----------
    x : (M, H, W) float64 ndarray
    view, edge : (M, H, W) bool ndarray
        The object's pixels and its edge pixels.

    Returns
    -------
    (M, 19) float64 ndarray
        ``INTENSITY`` then ``LOCATION``; NaN rows for empty views.
    """
    xp = array_namespace(x)
    m, h, w = x.shape
    xf = x.reshape(m, h * w)
    vf = view.reshape(m, h * w)
    ef = edge.reshape(m, h * w)
    cnt, s, mean, std, mn, mx = _moments(xp, xf, vf)
    _, es, emean, estd, emn, emx = _moments(xp, xf, ef)
    sv = xp.sort(xp.where(vf, xf, xp.inf), axis=1)
    q1 = cp_quantile(sv, cnt, 0.25)
    med = cp_quantile(sv, cnt, 0.5)
    q3 = cp_quantile(sv, cnt, 0.75)
    dev = xp.sort(xp.where(vf, xp.abs(xf - med[:, None]), xp.inf), axis=1)
    mad = cp_quantile(dev, cnt, 0.5)
    rr = xp.broadcast_to(xp.arange(h, dtype=xp.float64)[:, None], (h, w)).reshape(1, h * w)
    cc = xp.broadcast_to(xp.arange(w, dtype=xp.float64)[None, :], (h, w)).reshape(1, h * w)
    k = xp.maximum(cnt, 1)
    cy = xp.where(vf, rr, 0.0).sum(axis=1) / k
    cx = xp.where(vf, cc, 0.0).sum(axis=1) / k
    wy = xp.where(vf, xf * rr, 0.0).sum(axis=1)
    wx = xp.where(vf, xf * cc, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        my = xp.where(s != 0, wy / s, xp.nan)
        mxx = xp.where(s != 0, wx / s, xp.nan)
    disp = xp.sqrt((my - cy) ** 2 + (mxx - cx) ** 2)
    arg = xp.argmax(xp.where(vf, xf, -xp.inf), axis=1)  # the first maximum in raster order
    none = cnt == 0
    loc_y = xp.where(none, xp.nan, (arg // w).astype(xp.float64))
    loc_x = xp.where(none, xp.nan, (arg % w).astype(xp.float64))
    return xp.stack([s, mean, std, mn, mx, es, emean, estd, emn, emx, disp, q1, med, mad, q3,
                     mxx, my, loc_x, loc_y], axis=1)


register(Family("cp_intensity", intensity_columns, compute_intensity, True,
                "CellProfiler's Intensity and Location measurements of every channel in its mask"))
