"""CellProfiler's Zernike features, batched over objects: shape moments (MeasureObjectSizeShape,
``AreaShape_Zernike_n_m``) and intensity moments (MeasureObjectIntensityDistribution,
``RadialDistribution_ZernikeMagnitude/Phase``).

Both follow cp_measure (``get_zernike``, ``get_radial_zernikes`` and ``utils._zernike_scores``,
which reproduce ``centrosome.zernike``), for every :math:`(n, m)` with :math:`n \\le 9`,
:math:`m \\le n`, :math:`n - m` even (30 pairs, ``ZERNIKE_INDEXES``):

1. the object's minimum enclosing circle (centre :math:`c`, radius :math:`r`) of its pixel
   centres: Chrystal's algorithm on the convex hull, as ``centrosome.cpmorphology.
   minimum_enclosing_circle`` runs it (the hull in centrosome's vertex order, the same angle
   tests and the same float formulas, so that the circle is the same to the last bit: the
   pixels defining the circle lie on it, and whether they pass the test
   :math:`\\rho^2 \\le 1` below depends on those bits);
2. every object pixel :math:`(i, j)` at :math:`y = (i - c_i) / r`, :math:`x = (j - c_j) / r`,
   :math:`\\rho^2 = x^2 + y^2`, :math:`z = y + \\mathrm{i}\\,x` (centrosome's convention), the radial
   polynomial :math:`R_n^m(\\rho)` by Horner's scheme in :math:`\\rho^2` (0 where
   :math:`\\rho^2 > 1`), and the sums :math:`S_{nm} = \\sum w\\, R_n^m z^m` over the pixels,
   :math:`w` 1 for shape, the intensity (CellProfiler's [0, 1] image) for intensity moments;
3. ``AreaShape_Zernike_n_m`` :math:`= |S_{nm}| / (\\pi r^2)`;
   ``ZernikeMagnitude_n_m`` :math:`= |S_{nm}| / A` (:math:`A` the object's pixel count),
   ``ZernikePhase_n_m`` :math:`= \\operatorname{atan2}(\\Re S, \\Im S)` (CellProfiler's argument
   order).

A one-pixel object (radius 0) and an empty one give NaN. Objects are the combined mask and
every channel mask (``cp_zernike``, as ``cp_sizeshape``) and each channel in its own mask
(``cp_radial_zernike``, as ``cp_radial``; off unless ``features.cellprofiler.radial_zernikes``).

Array path (NumPy and CuPy): the hull vertices of ``cp_sizeshape``'s Feret pass (of the
transposed planes, which gives centrosome's column-major vertex order), Chrystal's iterations in
lock-step over all objects, the sums as ``bincount`` over all pixels of all objects. The ``cpu``
implementation (numba) runs centrosome's hull, Chrystal's algorithm and the sums per plane; the
``cuda`` one (``kernels/zernike.cu``) the same, one thread block per plane.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from . import shape as _sh
from .cp_common import cp_column, cp_image
from .registry import Family, register

#: Zernike degree (CellProfiler's: 9)
DEGREE = 9
#: (n, m) pairs, centrosome's ``get_zernike_indexes(DEGREE + 1)`` order
ZERNIKE_INDEXES = np.array([(n, m) for n in range(DEGREE + 1) for m in range(n % 2, n + 1, 2)],
                           dtype=np.int64)


def zernike_lut(indexes=ZERNIKE_INDEXES) -> np.ndarray:
    """(K, DEGREE // 2 + 1) coefficients of the radial polynomials, highest power of
    :math:`\\rho^2` first (centrosome's ``construct_zernike_lookuptable``):
    :math:`R_n^m(\\rho) = \\sum_k (-1)^k \\frac{(n-k)!}{k!\\,((n+m)/2-k)!\\,((n-m)/2-k)!}
    \\rho^{n-2k}`.

    >>> zernike_lut()[ZERNIKE_INDEXES.tolist().index([2, 0]), :2].tolist()  # 2 rho^2 - 1
    [2.0, -1.0]
    """
    n_max = int(indexes[:, 0].max())
    lut = np.zeros((len(indexes), n_max // 2 + 1), dtype=np.float64)
    f = [float(math.factorial(k)) for k in range(n_max + 1)]
    for idx, (n, m) in enumerate(indexes):
        for k in range((n - m) // 2 + 1):
            lut[idx, k] = (-1) ** k * f[n - k] / (f[k] * f[(n + m) // 2 - k] * f[(n - m) // 2 - k])
    return lut


_LUT = zernike_lut()


# ---------------------------------------------------------------------------------------------
# Columns


def zernike_columns(mask: str | None, channels) -> list:
    """``AreaShape_Zernike_n_m`` of the combined mask, then of every channel's mask."""
    cols = []
    for ch in [None, *channels]:
        view = "combined" if ch is None else "mask"
        cols += [cp_column("cp_zernike", mask, "AreaShape", f"Zernike_{n}_{m}", ch, view, params=f"n={n},m={m}")
                 for n, m in ZERNIKE_INDEXES]
    return cols


def _radial_on(options) -> bool:
    return bool(getattr(options, "radial_zernikes", False))


def radial_zernike_columns(mask: str | None, channels, *, options=None) -> list:
    """``RadialDistribution_ZernikeMagnitude_{channel}_n_m`` then ``..._ZernikePhase_...`` of
    every channel (none unless ``features.cellprofiler.radial_zernikes``)."""
    if not _radial_on(options):
        return []
    cols = []
    for ch in channels:
        for meas in ("ZernikeMagnitude", "ZernikePhase"):
            cols += [cp_column("cp_radial_zernike", mask, "RadialDistribution", meas, ch, "mask",
                               suffix=f"{n}_{m}", params=f"n={n},m={m}") for n, m in ZERNIKE_INDEXES]
    return cols


# ---------------------------------------------------------------------------------------------
# Blocks



@stage("cp_zernike.block", examples=_block_examples)
def compute_zernike(batch, mr, ctx):
    """(N, (C + 1) * 30) ``AreaShape_Zernike`` values of one mask, columns as
    ``zernike_columns``."""
    xp = batch.xp
    n, c, h, w = mr.mask.shape
    planes = xp.concatenate([mr.combined[:, None], mr.mask], axis=1)
    planes = (planes & batch.valid()[:, None]).reshape(n * (c + 1), h, w)
    re, im, radius, _ = zernike_sums(planes, None)
    area = np.pi * radius * radius
    with np.errstate(invalid="ignore", divide="ignore"):
        res = xp.sqrt(re * re + im * im) / area[:, None]
    res = xp.where((radius > 0)[:, None], res, xp.nan)
    return xp.where(xp.asarray(mr.usable)[:, None], res.reshape(n, -1), xp.nan)


def compute_radial_zernike(batch, mr, ctx):
    """(N, C * 60) Zernike magnitudes then phases of every channel in its own mask (no columns
    unless ``features.cellprofiler.radial_zernikes``)."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    if not _radial_on(getattr(ctx, "cellprofiler", None)):
        return xp.zeros((n, 0), dtype=xp.float64)
    return radial_zernike_block(batch, mr, ctx)


@stage("cp_radial_zernike.block", examples=_block_examples)
def radial_zernike_block(batch, mr, ctx):
    """(N, C * 60) ``RadialDistribution_ZernikeMagnitude/Phase`` of one mask."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    valid = xp.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(n * c, h, w)
    view = mr.mask.reshape(n * c, h, w) & valid
    x = cp_image(batch.pixels.reshape(n * c, h, w))
    re, im, radius, count = zernike_sums(view, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = xp.sqrt(re * re + im * im) / count[:, None]
    phase = xp.arctan2(re, im)
    res = xp.concatenate([mag, phase], axis=1)
    res = xp.where((radius > 0)[:, None], res, xp.nan)
    return xp.where(xp.asarray(mr.usable)[:, None], res.reshape(n, -1), xp.nan)


# ---------------------------------------------------------------------------------------------
# Minimum enclosing circle


def _circle_examples(rng):
    from ..stage_examples import masks

    for density in (0.45, 0.7):
        mk, _ = masks(rng, density=density)
        yield (mk,), {}
    yield (_lattice_cases(),), {}


def _lattice_cases():
    """Objects whose circles are decided by ties of the angle tests: rectangles, a lattice disc,
    a diagonal line, a plus sign, a single column."""
    out = np.zeros((6, 14, 19), dtype=bool)
    out[0, 2:7, 3:12] = True
    yy, xx = np.mgrid[:14, :19]
    out[1] = (yy - 6) ** 2 + (xx - 8) ** 2 <= 25
    out[2, np.arange(9), np.arange(9) + 2] = True
    out[3, 6, 2:15] = True
    out[3, 1:12, 8] = True
    out[4, 3:10, 5] = True
    out[5, 0:14, 0:19] = True
    return out


def _circle_compare(ref, got, args, kwargs):
    """Exact tests and the same formulas on the same points: the same circle, bit for bit."""
    assert_equivalent(ref, got, rtol=0, atol=0)


@stage("cp_zernike.circles", examples=_circle_examples, compare=_circle_compare)
def enclosing_circles(masks):
    """Minimum enclosing circle of every plane's pixel centres, as centrosome computes it.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray

    Returns
    -------
    centre : (M, 2) float64 ndarray
        (row, column); NaN for an empty plane.
    radius : (M,) float64 ndarray
        0 for an empty or one-pixel plane.

    Examples
    --------
    A 3x5 rectangle: its circle is that of the corner pixels' diagonal.

    >>> m = np.zeros((1, 6, 8), bool); m[0, 1:4, 2:7] = True
    >>> c, r = enclosing_circles(m)
    >>> c.tolist(), round(float(r[0]) ** 2, 12)
    ([[2.0, 4.0]], 5.0)
    """
    xp = array_module(masks)
    m = masks.shape[0]
    centre = xp.full((m, 2), xp.nan)
    radius = xp.zeros(m, dtype=xp.float64)
    # transposed planes: the hull's rows are centrosome's columns, so that the vertex order is
    # centrosome's (leftmost column's top pixel, the top chain rightwards, the bottom leftwards)
    padded = xp.pad(masks.astype(bool), ((0, 0), (1, 1), (1, 1))).transpose(0, 2, 1)
    has = padded.any(axis=(1, 2))
    ids = xp.cumsum(has) * has
    nl = int(ids.max()) if m else 0  # host sync: number of objects
    if nl == 0:
        return centre, radius
    labels = xp.ascontiguousarray((padded * ids[:, None, None]).astype(xp.int32))
    geo = _sh._geometry(labels, nl)
    from .cp_sizeshape import _fill_empty_rows, centre_hull_table

    empty_rows = _fill_empty_rows(geo, labels.shape)
    vj, vi, nv = centre_hull_table(geo, empty_rows, max(labels.shape[1:]))
    # back to plane coordinates (one pixel of frame); label 0 is a dummy
    vi, vj, nv = vi[1:] - 1, vj[1:] - 1, nv[1:]
    ci, cj, r = _chrystal(vi, vj, nv)
    rows = xp.flatnonzero(has)
    centre[rows, 0] = ci
    centre[rows, 1] = cj
    radius[rows] = r
    return centre, radius


def _angle_less(d, c, d2, c2):
    """``atan2(c, d) < atan2(c2, d2)`` for ``c, c2 >= 0`` (angles in [0, pi]), exactly, in
    integers: the sign of the cross product, except for two angles on the axis (0 and pi).
    Products up to 4 L^4 for coordinates below L: exact in int64 for L < 39,000."""
    both_axis = (c == 0) & (c2 == 0)
    return (both_axis & (d > 0) & (d2 < 0)) | (~both_axis & (d * c2 - c * d2 > 0))


def _chrystal(vi, vj, nv):
    """Chrystal's algorithm on (L, V) hull tables, all objects in lock-step, with centrosome's
    steps and formulas (``minimum_enclosing_circle``): S0, S1 start as the first two vertices;
    among the other vertices V the one with the smallest angle S0-V-S1 (the first on ties)
    either closes the circle (all angles of the triangle acute or right: its circumcircle), or
    shows that S0-S1 is the diameter (the angle at V obtuse or right), or replaces the vertex of
    the obtuse angle at S0 or S1.

    Centrosome tests the angles with ``arccos``; here they are exact integer predicates on the
    pixel coordinates. An arccos whose last bit differs (a GPU's against the CPU's libm, or two
    libms) used to choose another formula for the same circle on ties and right angles, which
    are common on a pixel grid; the radius then differed by an ulp and moved the pixels that
    lie on the circle in or out of the unit disk of the Zernike sums (30 moments of one plane
    in 384 on an H100). With exact tests every platform computes the same circle, bit for bit."""
    xp = array_module(vi)
    nl, v_max = vi.shape
    ci = xp.full(nl, xp.nan)
    cj = xp.full(nl, xp.nan)
    r = xp.zeros(nl, dtype=xp.float64)
    one = nv == 1
    ci = xp.where(one, vi[:, 0], ci)
    cj = xp.where(one, vj[:, 0], cj)
    two = nv == 2
    second = min(1, v_max - 1)  # a table of one-pixel objects only has one column
    mi = (vi[:, 0] + vi[:, second]) / 2
    mj = (vj[:, 0] + vj[:, second]) / 2
    di, dj = mi - vi[:, 0], mj - vj[:, 0]
    ci = xp.where(two, mi, ci)
    cj = xp.where(two, mj, cj)
    r = xp.where(two, xp.sqrt(di ** 2 + dj ** 2), r)
    s0 = xp.zeros(nl, dtype=xp.int64)
    s1 = xp.ones(nl, dtype=xp.int64)
    active = xp.flatnonzero(nv > 2)
    slots = xp.arange(v_max)[None, :]
    while active.shape[0]:  # host sync per round: the objects still running
        a0, a1 = s0[active], s1[active]
        pi_, pj = vi[active], vj[active]
        k = xp.arange(active.shape[0])
        s0i, s0j = pi_[k, a0][:, None], pj[k, a0][:, None]
        s1i, s1j = pi_[k, a1][:, None], pj[k, a1][:, None]
        cand = (slots < nv[active][:, None]) & (slots != a0[:, None]) & (slots != a1[:, None])
        # exact integer predicates: the angle at V is atan2(cr, dt) of a = S0 - V, b = S1 - V
        ii, jj = pi_.astype(xp.int64), pj.astype(xp.int64)
        i0, j0 = ii[k, a0][:, None], jj[k, a0][:, None]
        i1, j1 = ii[k, a1][:, None], jj[k, a1][:, None]
        ai, aj, bi, bj = i0 - ii, j0 - jj, i1 - ii, j1 - jj
        dt = ai * bi + aj * bj
        cr = xp.abs(ai * bj - aj * bi)
        # the first vertex of the smallest angle: a running minimum over the slots
        pos = xp.full(active.shape[0], -1, dtype=xp.int64)
        bdt = xp.zeros(active.shape[0], dtype=xp.int64)
        bcr = xp.zeros(active.shape[0], dtype=xp.int64)
        for v in range(v_max):
            take = cand[:, v] & ((pos < 0) | _angle_less(dt[:, v], cr[:, v], bdt, bcr))
            pos = xp.where(take, v, pos)
            bdt = xp.where(take, dt[:, v], bdt)
            bcr = xp.where(take, cr[:, v], bcr)
        iv, jv = ii[k, pos][:, None], jj[k, pos][:, None]
        s1_ok = ((i0 - i1) * (iv - i1) + (j0 - j1) * (jv - j1))[:, 0] >= 0
        s0_ok = ((i1 - i0) * (iv - i0) + (j1 - j0) * (jv - j0))[:, 0] >= 0
        case1 = bdt <= 0  # the angle at V is right or obtuse
        case2 = ~case1 & s1_ok & s0_ok
        # case 1: S0-S1 is the diameter
        c1i = (s0i[:, 0] + s1i[:, 0]) / 2
        c1j = (s0j[:, 0] + s1j[:, 0]) / 2
        r1 = xp.sqrt((s0i[:, 0] - s1i[:, 0]) ** 2 + (s0j[:, 0] - s1j[:, 0]) ** 2) / 2
        # case 2: the circumcircle of S0, S1, V (Y = i, X = j)
        y0, x0, y1, x1 = s0i[:, 0], s0j[:, 0], s1i[:, 0], s1j[:, 0]
        yv, xv = pi_[k, pos], pj[k, pos]
        d = 2 * (x0 * (y1 - yv) + x1 * (yv - y0) + xv * (y0 - y1))
        q0, q1, qv = y0 ** 2 + x0 ** 2, y1 ** 2 + x1 ** 2, yv ** 2 + xv ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = (q0 * (y1 - yv) + q1 * (yv - y0) + qv * (y0 - y1)) / d
            cy = (q0 * (xv - x1) + q1 * (x0 - xv) + qv * (x1 - x0)) / d
        r2 = xp.sqrt((y0 - cy) ** 2 + (x0 - cx) ** 2)
        ci[active] = xp.where(case1, c1i, xp.where(case2, cy, ci[active]))
        cj[active] = xp.where(case1, c1j, xp.where(case2, cx, cj[active]))
        r[active] = xp.where(case1, r1, xp.where(case2, r2, r[active]))
        # otherwise: V replaces S0 where the angle at S0 is obtuse, else S1
        go = ~(case1 | case2)
        s0[active] = xp.where(go & ~s0_ok, pos, a0)
        s1[active] = xp.where(go & s0_ok, pos, a1)
        active = active[go]
    return ci, cj, r


# ---------------------------------------------------------------------------------------------
# Moment sums


def _sums_examples(rng):
    from ..stage_examples import images, masks

    mk, _ = masks(rng)
    yield (mk, None), {}
    x, _ = images(rng, np.float64, m=mk.shape[0])
    yield (mk, x), {}
    yield (_lattice_cases(), None), {}


def _sums_compare(ref, got, args, kwargs):
    """The same circle (bit for bit) and pixel terms; only the order of the sums differs."""
    assert_equivalent(ref, got, rtol=1e-11, atol=1e-11)


@stage("cp_zernike.sums", examples=_sums_examples, compare=_sums_compare)
def zernike_sums(masks, weights=None):
    """Zernike moment sums of every plane, in its minimum enclosing circle.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray
        One object per plane.
    weights : (M, H, W) float64 ndarray or None
        Pixel weights (intensities); None: 1 (shape moments).

    Returns
    -------
    real, imag : (M, K) float64 ndarrays
        :math:`\\Re S_{nm}`, :math:`\\Im S_{nm}` for ``ZERNIKE_INDEXES``; NaN for planes of
        radius 0 (empty or one pixel).
    radius : (M,) float64 ndarray
        The enclosing circle's radius.
    count : (M,) float64 ndarray
        Pixels of each object.
    """
    xp = array_module(masks)
    m, h, w = masks.shape
    k_n = len(ZERNIKE_INDEXES)
    centre, radius = enclosing_circles(masks)
    flat = xp.flatnonzero(masks.reshape(-1))
    plane = flat // (h * w)
    i = ((flat % (h * w)) // w).astype(xp.float64)
    j = (flat % w).astype(xp.float64)
    count = xp.bincount(plane, minlength=m).astype(xp.float64)
    rad = radius[plane]
    with np.errstate(invalid="ignore", divide="ignore"):
        ym = (i - centre[plane, 0]) / rad
        xm = (j - centre[plane, 1]) / rad
    r2 = xm * xm + ym * ym
    wt = None if weights is None else weights.reshape(-1)[flat].astype(xp.float64)
    real = xp.zeros((m, k_n), dtype=xp.float64)
    imag = xp.zeros((m, k_n), dtype=xp.float64)
    if flat.shape[0] == 0:
        return real + xp.nan, imag + xp.nan, radius, count
    # powers of z = y + i x by repeated multiplication (numpy's complex product)
    pw = {1: (ym, xm)}
    for p in range(2, DEGREE + 1):
        ar, ai = pw[p - 1]
        pw[p] = (ar * ym - ai * xm, ar * xm + ai * ym)
    outside = r2 > 1
    for idx, (n, mm) in enumerate(ZERNIKE_INDEXES):
        s = xp.zeros_like(r2)
        for c in _LUT[idx, : (n - mm) // 2 + 1]:
            s = s * r2
            s = s + float(c)
        s = xp.where(outside, 0.0, s)
        if wt is not None:
            s = s * wt
        if mm == 0:
            real[:, idx] = xp.bincount(plane, weights=s, minlength=m)
        else:
            zr, zi = pw[int(mm)]
            real[:, idx] = xp.bincount(plane, weights=s * zr, minlength=m)
            imag[:, idx] = xp.bincount(plane, weights=s * zi, minlength=m)
    zero = (radius == 0)[:, None]
    return xp.where(zero, xp.nan, real), xp.where(zero, xp.nan, imag), radius, count


register(Family("cp_zernike", zernike_columns, compute_zernike, True,
                "CellProfiler's Zernike shape features (AreaShape_Zernike, degree 9) of the combined "
                "and every channel mask"))
register(Family("cp_radial_zernike", radial_zernike_columns, compute_radial_zernike, True,
                "CellProfiler's Zernike intensity moments (RadialDistribution_ZernikeMagnitude/Phase, "
                "degree 9) of every channel in its mask; on with features.cellprofiler.radial_zernikes",
                options=True))
