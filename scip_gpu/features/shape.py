"""Shape family: 59 region properties per mask, for the combined mask and every channel mask.

SCIP (scip-behaviour.md 2.2 A) labels each mask with 8-connectivity, measures every connected
component with ``skimage.measure.regionprops_table(..., cache=False)`` (scikit-image 0.20) and
reports, for each property, the **mean over the components**. This module computes the same
numbers for a whole batch at once:

1. all planes (combined + channels of every object) are padded by one background pixel and
   labelled in one call (labels are unique across the stack);
2. every property is computed per label with bincount-style reductions (moments and everything
   derived from them, bounding boxes), 2x2 / 3x3 pattern codes on the label image (Euler number,
   perimeter, Crofton perimeter), a label/hole containment tree (filled area) and a convex-hull
   pass that runs in lock-step over all labels (convex area, solidity, Feret diameter);
3. the per-label table is averaged per plane with a bincount over each label's plane.

No step loops over objects or labels: Python loops run over hull steps (at most four times the
tallest component's height) and over nesting levels of holes, each step vectorised over all
labels, so the same code runs on NumPy and on CuPy.

Deviations from SCIP (deliberate, documented):

* an empty mask gives NaN for all 59 values (SCIP gives 0 for the first 11 of a channel mask);
* objects whose mask is not ``usable`` give NaN for everything.

Where scikit-image 0.20 (SCIP's) and 0.26 differ, 0.20 is followed: only ``orientation`` differs
for the properties used here (0.26 flipped the sign of the :math:`a = c` special case, which
every single-pixel component hits).

Exactness: integer-valued properties (area, bbox, convex and filled area, Euler number) are
exact; perimeters, Feret diameter and extent are computed from the same exact inputs by the same
formulas and agree to the last bit or nearly; moment-derived values agree to ~1e-12 relative
except where a value is zero in exact arithmetic (SCIP then reports rounding noise, we report
zero). See ``_moment_props`` for the one property where that noise changes the value
(``orientation`` of symmetric components).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

import numpy as np

from .. import ops
from ..backend import array_module, asnumpy, is_gpu
from .registry import Column, Family, column_name, register

#: SCIP's property names, in column order (``scip/features/shape.py::prop_names``).
PROPS = (
    "area",
    "convex_area",
    "eccentricity",
    "equivalent_diameter",
    "euler_number",
    "feret_diameter_max",
    "filled_area",
    "major_axis_length",
    "minor_axis_length",
    "orientation",
    "perimeter",
    "perimeter_crofton",
    "solidity",
    "extent",
    "inertia_tensor-0-0",
    "inertia_tensor-0-1",
    "inertia_tensor-1-0",
    "inertia_tensor-1-1",
    "inertia_tensor_eigvals-0",
    "inertia_tensor_eigvals-1",
    *(f"moments-{i}-{j}" for i in range(4) for j in range(4)),
    *(f"moments_central-{i}-{j}" for i in range(4) for j in range(4)),
    *(f"moments_hu-{i}" for i in range(7)),
)
_COL = {p: k for k, p in enumerate(PROPS)}

#: 2x2 pattern code -> contribution to the Euler number of an 8-connected set (Ohser et al.;
#: ``skimage.measure._regionprops_utils.EULER_COEFS2D_8``).
EULER_COEFS_8 = np.array([0, 0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, -1, 0], dtype=np.float64)

#: 2x2 pattern code -> Crofton perimeter contribution, 4 directions
#: (``skimage.measure.perimeter_crofton(directions=4)``).
CROFTON_COEFS_4 = np.array(
    [0, np.pi / 4 * (1 + 1 / np.sqrt(2)), np.pi / (4 * np.sqrt(2)), np.pi / (2 * np.sqrt(2)),
     0, np.pi / 4 * (1 + 1 / np.sqrt(2)), 0, np.pi / (4 * np.sqrt(2)),
     np.pi / 4, np.pi / 2, np.pi / (4 * np.sqrt(2)), np.pi / (4 * np.sqrt(2)),
     np.pi / 4, np.pi / 2, 0, 0],
    dtype=np.float64,
)

#: 3x3 border-pattern code -> perimeter contribution (``skimage.measure.perimeter``, 4-neighbourhood).
PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
PERIMETER_WEIGHTS[[21, 33]] = sqrt(2)
PERIMETER_WEIGHTS[[13, 23]] = (1 + sqrt(2)) / 2


# ---------------------------------------------------------------------------------------------
# Columns and family entry point


def shape_columns(mask: str | None, channels) -> list[Column]:
    """Columns of the shape family: 59 properties for ``combined``, then for every channel.

    Keys are ``{prop}_{combined|channel}`` as in SCIP's ``_shape_features_meta``.
    """
    cols = []
    for name in ["combined", *channels]:
        combined = name == "combined"
        for prop in PROPS:
            cols.append(Column(column_name("feat", mask, f"{prop}_{name}"), "feat", "shape", prop,
                               mask, "combined" if combined else "mask",
                               None if combined else name))
    return cols


def compute_shape(batch, mr, ctx):
    """(N, 59 * (C + 1)) shape features of one mask, columns as ``shape_columns``.

    Parameters
    ----------
    batch : Batch
    mr : MaskResult
        ``combined`` (N, H, W) and ``mask`` (N, C, H, W) are measured; objects with
        ``usable`` False get NaN.
    ctx : FeatureContext
        Unused (the shape family has no options).

    Returns
    -------
    (N, 59 * (C + 1)) float64 ndarray
        In the array namespace of ``batch.pixels``.
    """
    xp = batch.xp
    n, c, h, w = mr.mask.shape
    planes = xp.concatenate([mr.combined[:, None], mr.mask], axis=1)
    planes = planes & batch.valid()[:, None]  # nothing outside an object's image counts
    res = shape_features(planes.reshape(n * (c + 1), h, w)).reshape(n, (c + 1) * len(PROPS))
    return xp.where(xp.asarray(mr.usable)[:, None], res, xp.nan)


def shape_features(masks):
    """The 59 shape properties of every binary plane of a stack, SCIP's way.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray
        One mask per plane; connected components are 8-connected.

    Returns
    -------
    (M, 59) float64 ndarray
        Per plane, the mean over its components of each property in ``PROPS``; NaN for a plane
        without foreground.
    """
    xp = array_module(masks)
    m = masks.shape[0]
    padded = xp.pad(masks.astype(bool), ((0, 0), (1, 1), (1, 1)))
    labels, nl = ops.label(padded, 2)
    if nl == 0:
        return xp.full((m, len(PROPS)), xp.nan)
    geo = _geometry(labels, nl)
    props = xp.zeros((nl + 1, len(PROPS)), dtype=xp.float64)
    _moment_props(geo, props)
    _pattern_props(padded, labels, nl, props)
    _hull_props(geo, props)
    props[:, _COL["filled_area"]] = _filled_area(padded, labels, nl, props)
    return _mean_per_plane(props, ops.label_owner(labels, nl), m)


# ---------------------------------------------------------------------------------------------
# Per-label geometry


@dataclass
class _Geometry:
    """Foreground pixels and per-label extents of a padded, labelled stack.

    Arrays indexed by label have ``nl + 1`` rows (row 0, the background, is unused).

    Attributes
    ----------
    lab, row, col : (P,) int64
        Label and padded coordinates of every foreground pixel, in raster order.
    minr, maxr, minc, maxc : (nl + 1,) int64
        Inclusive bounding box of each label.
    left, right : (nl + 1, K) int64
        First and last column of each label in row ``minr + k`` (``K`` the tallest label's
        height); rows past a label's height repeat its last row.
    """

    lab: object
    row: object
    col: object
    minr: object
    maxr: object
    minc: object
    maxc: object
    left: object
    right: object

    @property
    def height(self):
        return self.maxr - self.minr + 1


def _scatter(xp, op: str, idx, values, size: int, fill):
    """``out[idx] = op(out[idx], values)`` with repeated indices (min or max), ``out`` filled."""
    out = xp.full(size, fill, dtype=values.dtype)
    if is_gpu(xp):
        import cupyx

        getattr(cupyx, f"scatter_{op}")(out, idx, values)
    else:
        getattr(np, f"{op}imum").at(out, idx, values)
    return out


def _geometry(labels, nl: int) -> _Geometry:
    """Pixels, bounding boxes and per-row column extents of every label."""
    xp = array_module(labels)
    m, hp, wp = labels.shape
    flat = labels.ravel()
    idx = xp.flatnonzero(flat)
    lab = flat[idx].astype(xp.int64)
    rc = idx % (hp * wp)
    row, col = rc // wp, rc % wp
    big = np.iinfo(np.int64).max
    minr = _scatter(xp, "min", lab, row, nl + 1, big)
    maxr = _scatter(xp, "max", lab, row, nl + 1, -1)
    # first and last column of every (label, row), dense over absolute padded rows
    key = lab * hp + row
    left_abs = _scatter(xp, "min", key, col, (nl + 1) * hp, big).reshape(nl + 1, hp)
    right_abs = _scatter(xp, "max", key, col, (nl + 1) * hp, -1).reshape(nl + 1, hp)
    minr[0] = maxr[0] = 1  # background row: any valid row keeps the gathers below in range
    height = maxr - minr + 1
    k_max = int(height.max())  # host sync: the hull loops need it anyway
    k = xp.arange(k_max)[None, :]
    rows = minr[:, None] + xp.minimum(k, height[:, None] - 1)  # past the height: the last row
    left = xp.take_along_axis(left_abs, rows, axis=1)
    right = xp.take_along_axis(right_abs, rows, axis=1)
    left[0] = right[0] = 0
    minc = left.min(axis=1)
    maxc = right.max(axis=1)
    return _Geometry(lab, row, col, minr, maxr, minc, maxc, left, right)


# ---------------------------------------------------------------------------------------------
# Moments and everything that follows from them


def _raw_moments(geo: _Geometry, nl: int):
    """(nl + 1, 4, 4) spatial moments of each label's own bbox image, order 3.

    ``M[p, q] = sum r**p * c**q`` with (r, c) relative to the label's bbox origin, as
    ``regionprops(...).moments``. Sums of integers below 2**53 are exact in float64.
    """
    xp = array_module(geo.lab)
    r = (geo.row - geo.minr[geo.lab]).astype(xp.float64)
    c = (geo.col - geo.minc[geo.lab]).astype(xp.float64)
    rp = [xp.ones_like(r), r, r * r, r * r * r]
    cp = [xp.ones_like(c), c, c * c, c * c * c]
    out = xp.empty((nl + 1, 4, 4), dtype=xp.float64)
    for p in range(4):
        for q in range(4):
            out[:, p, q] = xp.bincount(geo.lab, weights=rp[p] * cp[q], minlength=nl + 1)
    return out


def _central_moments(geo: _Geometry, raw, nl: int):
    """(nl + 1, 4, 4) central moments, order 3, as ``regionprops(...).moments_central``.

    Second-order moments come from exact integer identities
    (:math:`M_{00}\\mu_{20} = M_{00}M_{20} - M_{10}^2`, etc.), so that a component whose
    :math:`\\mu_{20}` and :math:`\\mu_{02}` are equal, or whose :math:`\\mu_{11}` is zero, gets
    exactly equal / zero values (the orientation depends on that, see ``_moment_props``).
    First-order central moments are exactly zero. Third-order moments are summed over the pixels
    about the float centroid, as scikit-image does.
    """
    xp = array_module(raw)
    m00 = raw[:, 0, 0]
    cr = raw[:, 1, 0] / xp.maximum(m00, 1)
    cc = raw[:, 0, 1] / xp.maximum(m00, 1)
    dr = (geo.row - geo.minr[geo.lab]) - cr[geo.lab]
    dc = (geo.col - geo.minc[geo.lab]) - cc[geo.lab]
    rp = [xp.ones_like(dr), dr, dr * dr, dr * dr * dr]
    cp = [xp.ones_like(dc), dc, dc * dc, dc * dc * dc]
    mu = xp.zeros((nl + 1, 4, 4), dtype=xp.float64)
    for p in range(4):
        for q in range(4):
            if p + q >= 3:
                mu[:, p, q] = xp.bincount(geo.lab, weights=rp[p] * cp[q], minlength=nl + 1)
    mu[:, 0, 0] = m00
    # exact second order: integers (int64 holds them for objects up to ~2**13 pixels a side)
    mi = raw.astype(xp.int64)
    n0 = mi[:, 0, 0]
    q20 = n0 * mi[:, 2, 0] - mi[:, 1, 0] ** 2
    q02 = n0 * mi[:, 0, 2] - mi[:, 0, 1] ** 2
    q11 = n0 * mi[:, 1, 1] - mi[:, 1, 0] * mi[:, 0, 1]
    d = xp.maximum(m00, 1)
    mu[:, 2, 0] = q20 / d
    mu[:, 0, 2] = q02 / d
    mu[:, 1, 1] = q11 / d
    return mu, (q20, q02, q11)


def _hu_moments(mu, m00):
    """(L, 7) Hu moment invariants from central moments, as ``regionprops(...).moments_hu``.

    Normalised moments :math:`\\nu_{pq} = \\mu_{pq} / \\mu_{00}^{(p+q)/2 + 1}`.
    """
    xp = array_module(mu)
    nu = {}
    for p in range(4):
        for q in range(4):
            if 2 <= p + q <= 3:
                nu[p, q] = mu[:, p, q] / m00 ** ((p + q) / 2 + 1)
    t0 = nu[3, 0] + nu[1, 2]
    t1 = nu[2, 1] + nu[0, 3]
    q0 = t0 * t0
    q1 = t1 * t1
    n4 = 4 * nu[1, 1]
    s = nu[2, 0] + nu[0, 2]
    d = nu[2, 0] - nu[0, 2]
    hu = [None] * 7
    hu[0] = s
    hu[1] = d * d + n4 * nu[1, 1]
    hu[3] = q0 + q1
    hu[5] = d * (q0 - q1) + n4 * t0 * t1
    t0 = t0 * (q0 - 3 * q1)
    t1 = t1 * (3 * q0 - q1)
    q0 = nu[3, 0] - 3 * nu[1, 2]
    q1 = 3 * nu[2, 1] - nu[0, 3]
    hu[2] = q0 * q0 + q1 * q1
    hu[4] = q0 * t0 + q1 * t1
    hu[6] = q1 * t0 - q0 * t1
    return xp.stack(hu, axis=1)


def _inertia(mu, exact):
    """Inertia tensor entries (a, b, c) and its eigenvalues (l1 >= l2 >= 0).

    The tensor is scikit-image's: :math:`a = (\\mu_{20}+\\mu_{02}-\\mu_{20})/\\mu_{00}`,
    :math:`b = -\\mu_{11}/\\mu_{00}`, :math:`c = (\\mu_{20}+\\mu_{02}-\\mu_{02})/\\mu_{00}`.
    The eigenvalues use the closed form of a symmetric 2x2 matrix; the smaller one is taken
    from the determinant (exact zero for collinear components) when the closed form would
    cancel. scikit-image uses LAPACK: the two agree to ~1e-16 of the larger eigenvalue.
    """
    xp = array_module(mu)
    m00 = mu[:, 0, 0]
    s = mu[:, 2, 0] + mu[:, 0, 2]
    a = (s - mu[:, 2, 0]) / m00
    c = (s - mu[:, 0, 2]) / m00
    b = -mu[:, 1, 1] / m00
    mean = (a + c) / 2
    disc = xp.hypot((a - c) / 2, b)
    l1 = mean + disc
    q20, q02, q11 = exact
    det = (q20.astype(xp.float64) * q02 - (q11.astype(xp.float64) * q11)) / m00**4
    with np.errstate(invalid="ignore", divide="ignore"):
        l2 = xp.where(disc <= mean / 2, mean - disc, xp.where(l1 > 0, det / l1, 0.0))
    return a, b, c, xp.maximum(l1, 0.0), xp.clip(l2, 0.0, None)


def _moment_props(geo: _Geometry, props) -> None:
    """Fill every property that follows from moments and bounding boxes.

    area, eccentricity, equivalent_diameter, major/minor_axis_length, orientation, extent,
    inertia_tensor(-eigvals), moments, moments_central, moments_hu.

    ``orientation`` follows scikit-image 0.20 (SCIP): :math:`\\pm\\pi/4` when :math:`a = c`
    (:math:`-\\pi/4` for :math:`b < 0`), else :math:`\\tfrac12\\,\\mathrm{atan2}(-2b, c - a)`.
    0.26 swapped the two signs of the special case. Whether :math:`a = c` holds, and the sign
    of a zero :math:`b`, is decided here in exact integer arithmetic; scikit-image decides it
    on its float sums, so for a component that is symmetric in exact arithmetic but whose
    centroid is not a multiple of 1/2 (e.g. three pixels in an L), SCIP's orientation depends
    on the rounding of BLAS sums and may differ from ours by :math:`\\pi/2` (or :math:`\\pi`).
    """
    xp = array_module(props)
    nl = props.shape[0] - 1
    raw = _raw_moments(geo, nl)
    mu, exact = _central_moments(geo, raw, nl)
    raw[0] = mu[0] = 1.0  # background row: keeps the divisions below quiet (dropped later)
    area = raw[:, 0, 0]
    a, b, c, l1, l2 = _inertia(mu, exact)
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = xp.where(l1 == 0, 0.0, xp.sqrt(1 - l2 / l1))
    orient = xp.where(a - c == 0, xp.where(b < 0, -np.pi / 4, np.pi / 4),
                      0.5 * xp.arctan2(-2 * b, c - a))
    bbox_area = (geo.height * (geo.maxc - geo.minc + 1)).astype(xp.float64)
    props[:, _COL["area"]] = area
    props[:, _COL["eccentricity"]] = ecc
    props[:, _COL["equivalent_diameter"]] = (4 * area / np.pi) ** 0.5
    props[:, _COL["major_axis_length"]] = 4 * xp.sqrt(l1)
    props[:, _COL["minor_axis_length"]] = 4 * xp.sqrt(l2)
    props[:, _COL["orientation"]] = orient
    props[:, _COL["extent"]] = area / bbox_area
    it = _COL["inertia_tensor-0-0"]
    props[:, it] = a
    props[:, it + 1] = b
    props[:, it + 2] = b
    props[:, it + 3] = c
    props[:, _COL["inertia_tensor_eigvals-0"]] = l1
    props[:, _COL["inertia_tensor_eigvals-1"]] = l2
    props[:, _COL["moments-0-0"]:_COL["moments-0-0"] + 16] = raw.reshape(nl + 1, 16)
    props[:, _COL["moments_central-0-0"]:_COL["moments_central-0-0"] + 16] = mu.reshape(nl + 1, 16)
    props[:, _COL["moments_hu-0"]:_COL["moments_hu-0"] + 7] = _hu_moments(mu, area)


# ---------------------------------------------------------------------------------------------
# Local pattern properties: Euler number, Crofton perimeter, perimeter


def _pattern_props(padded, labels, nl: int, props) -> None:
    """Euler number (8-connectivity), Crofton perimeter (4 directions) and perimeter.

    scikit-image computes these on each region's bbox image; on the whole label image they
    decompose exactly into per-label sums because two different 8-connected labels never meet
    in a 2x2 window (Euler, Crofton) nor in the 3x3 neighbourhood of a border pixel
    (perimeter). The one-pixel background frame of ``padded`` provides the windows that straddle
    an image edge.

    * Euler / Crofton: every 2x2 window is coded
      ``x[i,j] + 2 x[i-1,j] + 4 x[i,j-1] + 8 x[i-1,j-1]`` (the codes of
      ``ndi.convolve(image, [[0,0,0],[0,1,4],[0,2,8]])``) and looked up in
      ``EULER_COEFS_8`` / ``CROFTON_COEFS_4``.
    * perimeter: border pixels (foreground minus its 4-neighbourhood erosion) are coded
      ``1 + 2 * (4-neighbours on the border) + 10 * (diagonal neighbours on the border)`` and
      looked up in ``PERIMETER_WEIGHTS``.
    """
    xp = array_module(padded)
    x = padded.astype(xp.int64)
    code = x[:, 1:, 1:] + 2 * x[:, :-1, 1:] + 4 * x[:, 1:, :-1] + 8 * x[:, :-1, :-1]
    wlab = xp.maximum(xp.maximum(labels[:, 1:, 1:], labels[:, :-1, 1:]),
                      xp.maximum(labels[:, 1:, :-1], labels[:, :-1, :-1])).ravel()
    code = code.ravel()
    props[:, _COL["euler_number"]] = xp.bincount(
        wlab, weights=xp.asarray(EULER_COEFS_8)[code], minlength=nl + 1)
    props[:, _COL["perimeter_crofton"]] = xp.bincount(
        wlab, weights=xp.asarray(CROFTON_COEFS_4)[code], minlength=nl + 1)

    p = padded
    inner = p[:, 1:-1, 1:-1]
    eroded = inner & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    border = xp.pad(inner & ~eroded, ((0, 0), (1, 1), (1, 1))).astype(xp.int64)
    bi = border[:, 1:-1, 1:-1]
    four = border[:, :-2, 1:-1] + border[:, 2:, 1:-1] + border[:, 1:-1, :-2] + border[:, 1:-1, 2:]
    diag = border[:, :-2, :-2] + border[:, :-2, 2:] + border[:, 2:, :-2] + border[:, 2:, 2:]
    pcode = (bi + 2 * four + 10 * diag).ravel()
    on = bi.ravel() > 0
    blab = labels[:, 1:-1, 1:-1].ravel()[on]
    props[:, _COL["perimeter"]] = xp.bincount(
        blab, weights=xp.asarray(PERIMETER_WEIGHTS)[pcode[on]], minlength=nl + 1)


# ---------------------------------------------------------------------------------------------
# Convex hull: convex_area, solidity, feret_diameter_max


def _lower_hull(x, length):
    """Vertices of the lower convex hull of many sequences at once (Andrew's monotone chain).

    Sequence ``b`` is the points ``(t, x[b, t])`` for ``t < length[b]``; the hull is the convex
    minorant of ``x`` as a function of ``t``. The stacks of all sequences advance in lock-step:
    each step pops (where the top breaks convexity) or pushes the next point. A sequence is done
    after at most ``2 * length - 2`` steps, so with sequences sorted longest first every step
    only touches a prefix of the arrays.

    Parameters
    ----------
    x : (B, T) int64 ndarray
    length : (B,) int64 ndarray, each >= 1

    Returns
    -------
    (B, T) bool ndarray
        True at the hull's vertices (collinear points are not vertices).
    """
    xp = array_module(x)
    nb, t_max = x.shape
    order = xp.argsort(-length)
    xs = x[order]
    ln = length[order]
    ln_host = asnumpy(ln)  # host sync: the active prefix of each step
    steps = int(2 * ln_host[0]) if nb else 0
    # number of sequences still running at step j: those with 2 * length - 2 >= j
    active_n = np.searchsorted(-(2 * ln_host - 2), -np.arange(steps), side="right")
    stack = xp.zeros((nb, t_max), dtype=xp.int64)
    sp = xp.zeros(nb, dtype=xp.int64)
    nxt = xp.zeros(nb, dtype=xp.int64)
    rows = xp.arange(nb)
    for j in range(steps):  # hull steps, each vectorised over all sequences
        k = int(active_n[j])
        if k == 0:
            break
        r, s, i, xk = rows[:k], sp[:k], nxt[:k], xs[:k]
        live = i < ln[:k]
        ia = stack[r, xp.maximum(s - 2, 0)]
        ib = stack[r, xp.maximum(s - 1, 0)]
        ic = xp.minimum(i, t_max - 1)
        xa = xk[r, ia]
        xb = xk[r, ib]
        xc = xk[r, ic]
        # pop b when slope(a, b) >= slope(b, c): b is not strictly below the chord a-c
        pop = live & (s >= 2) & ((xb - xa) * (ic - ib) >= (xc - xb) * (ib - ia))
        push = live & ~pop
        at = xp.minimum(s, t_max - 1)
        stack[r, at] = xp.where(push, i, stack[r, at])
        sp[:k] = s - pop + push
        nxt[:k] = i + push
    flags_sorted = xp.zeros((nb, t_max), dtype=bool)
    depth = xp.arange(t_max)[None, :] < sp[:, None]
    rr = xp.broadcast_to(rows[:, None], (nb, t_max))
    flags_sorted[rr[depth], stack[depth]] = True
    flags = xp.empty_like(flags_sorted)
    flags[order] = flags_sorted
    return flags


def _minorant_ceil_half(x, length, flags, t):
    """``ceil(g(t) / 2)`` where g is the convex minorant of each sequence (its hull ``flags``).

    ``g`` is evaluated in exact integer arithmetic at the integer positions ``t`` (1-D,
    shared by all sequences; each must satisfy ``t < length``, or its result is ignored).
    """
    xp = array_module(x)
    nb, t_max = x.shape
    rank = xp.cumsum(flags, axis=1) - 1  # index of the last vertex at or before each position
    vpos = xp.zeros((nb, t_max), dtype=xp.int64)
    bi, ti = xp.nonzero(flags)
    vpos[bi, rank[bi, ti]] = ti
    rk = rank[:, t]
    is_v = flags[:, t]
    t0 = xp.take_along_axis(vpos, rk, axis=1)
    t1 = xp.take_along_axis(vpos, xp.minimum(rk + (~is_v), t_max - 1), axis=1)
    x0 = xp.take_along_axis(x, t0, axis=1)
    x1 = xp.take_along_axis(x, t1, axis=1)
    den = xp.maximum(t1 - t0, 1)
    num = x0 * den + (x1 - x0) * (t[None, :] - t0)
    return -((-num) // (2 * den))


def _interleave(half_rows, rows):
    """(B, 2K+1) sequence alternating half-row values (K+1) and row values (K)."""
    xp = array_module(rows)
    nb, k = rows.shape
    out = xp.empty((nb, 2 * k + 1), dtype=xp.int64)
    out[:, 0::2] = half_rows
    out[:, 1::2] = rows
    return out


def _edges(v):
    """(B, K+1) pairs (v[k-1], v[k]) for k = 0..K, with v[-1] = v[0] and v[K] = v[K-1]."""
    xp = array_module(v)
    prev = xp.concatenate([v[:, :1], v], axis=1)
    cur = xp.concatenate([v, v[:, -1:]], axis=1)
    return prev, cur


def _hull_rows(geo: _Geometry, length):
    """Column range [a, b] of the convex hull image in every row of every label.

    ``skimage.morphology.convex_hull_image`` (0.20 and 0.26 alike) takes the convex polygon P
    of the pixels' edge midpoints (each pixel (r, c) contributes (r +- 1/2, c) and
    (r, c +- 1/2)) and keeps the pixel centres inside P or on its boundary. P's left boundary is
    the convex minorant of the leftmost such point at every half row, its right boundary the
    concave majorant of the rightmost; in doubled coordinates these points are integers, and the
    boundary crossings of every row are found exactly. (scikit-image uses Qhull and a
    point-in-polygon test; with these half-integer vertices both are exact.)
    """
    xp = array_module(geo.left)
    lp, lc = _edges(geo.left)
    rp, rc = _edges(geo.right)
    xl = _interleave(2 * xp.minimum(lp, lc), 2 * geo.left - 1)
    xr = _interleave(2 * xp.maximum(rp, rc), 2 * geo.right + 1)
    seq = xp.concatenate([xl, -xr], axis=0)
    ln = xp.concatenate([length, length])
    flags = _lower_hull(seq, ln)
    k = geo.left.shape[1]
    ceil = _minorant_ceil_half(seq, ln, flags, xp.arange(k) * 2 + 1)
    nl1 = geo.left.shape[0]
    return ceil[:nl1], -ceil[nl1:]


def _feret(a, b, length, height):
    """Maximum Feret diameter of each hull image with rows [a, b], as scikit-image computes it.

    scikit-image: the largest distance between points of ``find_contours(hull image, 0.5)``.
    On a binary image those are the midpoints between every hull pixel and each 4-neighbour
    outside the hull. The diameter is reached at vertices of their convex hull; at every half
    row only the leftmost and rightmost such midpoint can be one: (r, a_r - 1/2) and
    (r, b_r + 1/2) at row r; between rows r-1 and r, (r - 1/2, min(a_{r-1}, a_r)) when the
    left ends differ (none otherwise; the top and bottom half rows always have one), and the
    same on the right. Missing points get a sentinel that the hull pass always pops. Distances
    are exact in doubled integer coordinates.
    """
    xp = array_module(a)
    nl1, k = a.shape
    kk = xp.arange(k + 1)[None, :]
    interior = (kk >= 1) & (kk <= height[:, None] - 1)
    sentinel = 4 * int(max(int(b.max()), 1) + 4)
    ap, ac = _edges(a)
    bp, bc = _edges(b)
    half_l = xp.where(interior & (ap == ac), sentinel, 2 * xp.minimum(ap, ac))
    half_r = xp.where(interior & (bp == bc), sentinel, -2 * xp.maximum(bp, bc))
    xl = _interleave(half_l, 2 * a - 1)
    xr = _interleave(half_r, -(2 * b + 1))
    seq = xp.concatenate([xl, xr], axis=0)
    ln = xp.concatenate([length, length])
    flags = _lower_hull(seq, ln)
    # vertex coordinates (t, X) in doubled units; the right chain was negated
    sign = xp.concatenate([xp.ones(nl1, xp.int64), -xp.ones(nl1, xp.int64)])
    xs = seq * sign[:, None]
    fl, fr = flags[:nl1], flags[nl1:]
    both = xp.concatenate([fl, fr], axis=1)
    xv = xp.concatenate([xs[:nl1], xs[nl1:]], axis=1)
    tv = xp.concatenate([xp.arange(seq.shape[1])] * 2)[None, :]
    nv = both.sum(axis=1)
    v_max = int(nv.max())  # host sync: size of the vertex table
    rank = xp.cumsum(both, axis=1) - 1
    li, pi = xp.nonzero(both)
    vt = xp.zeros((nl1, v_max), dtype=xp.int64)
    vx = xp.zeros((nl1, v_max), dtype=xp.int64)
    vt[li, rank[li, pi]] = xp.broadcast_to(tv, both.shape)[li, pi]
    vx[li, rank[li, pi]] = xv[li, pi]
    slot = xp.arange(v_max)[None, :]
    vt = xp.where(slot < nv[:, None], vt, vt[:, :1])  # unused slots repeat the first vertex
    vx = xp.where(slot < nv[:, None], vx, vx[:, :1])
    best = xp.zeros(nl1, dtype=xp.int64)
    step = max(1, (1 << 22) // (v_max * v_max))
    for s in range(0, nl1, step):  # memory bound only: pairwise distances in chunks of labels
        dt = vt[s:s + step, :, None] - vt[s:s + step, None, :]
        dx = vx[s:s + step, :, None] - vx[s:s + step, None, :]
        best[s:s + step] = (dt * dt + dx * dx).max(axis=(1, 2))
    return xp.sqrt(best / 4.0)


def _hull_props(geo: _Geometry, props) -> None:
    """convex_area, solidity and feret_diameter_max of every label.

    Both hull passes run over all labels at once (see ``_lower_hull``); no per-label loop.
    """
    xp = array_module(props)
    height = geo.height
    length = 2 * height + 1
    a, b = _hull_rows(geo, length)
    k = xp.arange(a.shape[1])[None, :]
    in_rows = k < height[:, None]
    a = xp.where(in_rows, a, a[xp.arange(a.shape[0]), height - 1][:, None])
    b = xp.where(in_rows, b, b[xp.arange(b.shape[0]), height - 1][:, None])
    convex = xp.where(in_rows, b - a + 1, 0).sum(axis=1).astype(xp.float64)
    props[:, _COL["convex_area"]] = convex
    with np.errstate(invalid="ignore", divide="ignore"):
        props[:, _COL["solidity"]] = props[:, _COL["area"]] / convex
    props[:, _COL["feret_diameter_max"]] = _feret(a, b, length, height)


# ---------------------------------------------------------------------------------------------
# Filled area


def _first_pixel(xp, ids, flat_index, size: int):
    """Smallest flat index (the first pixel in raster order) of each id, or -1."""
    big = np.iinfo(np.int64).max
    first = _scatter(xp, "min", ids, flat_index, size, big)
    return xp.where(first == big, -1, first)


def _below(xp, cond):
    """Flat indices, in the (m, H, W) stack, of the pixels (r + 1, c) where ``cond`` (m, H-1, W)
    holds at (r, c)."""
    m, h1, w = cond.shape
    full = xp.zeros((m, h1 + 1, w), dtype=bool)
    full[:, 1:] = cond
    return xp.flatnonzero(full)


def _filled_area(padded, labels, nl: int, props):
    """Area of each label with its holes filled, as ``regionprops(...).area_filled``.

    scikit-image fills a region's holes with ``ndi.binary_fill_holes(image, ones((3, 3)))``
    on its bbox image: every pixel not 8-connected to the bbox border through non-region pixels
    is filled, which may include other, nested, components and their holes. Here the
    background components (8-connected) and the labels form a containment tree: the parent of
    a background component is the label just above its first pixel in raster order, the parent
    of a label the background component just above its first pixel (the first pixel of a node
    lies above all of its descendants). A label's filled area is its area plus the sizes of all
    its descendants, summed one nesting level per pass.

    Only planes with a label whose Euler number is below 1 (an 8-connected component with a
    4-connected hole) can have holes; the others are skipped.
    """
    xp = array_module(padded)
    area = props[:, _COL["area"]].copy()
    owner = ops.label_owner(labels, nl)
    holed = props[:, _COL["euler_number"]] < 1
    holed[0] = False
    planes = xp.unique(owner[holed])
    if planes.size == 0:  # host sync: most batches stop here
        return area
    sub = padded[planes]
    sub_lab = labels[planes]
    m, hp, wp = sub.shape
    bg, nb = ops.label(~sub, 2)
    flat_bg = bg.ravel()
    flat_lab = sub_lab.ravel()
    # background components: first pixel has foreground above it (exterior ones excepted)
    idx = _below(xp, (bg[:, 1:, :] > 0) & sub[:, :-1, :])
    first_bg = _first_pixel(xp, flat_bg[idx], idx, nb + 1)
    exterior = xp.zeros(nb + 1, dtype=bool)
    exterior[bg[:, 0, 0]] = True  # the frame of every padded plane
    exterior[0] = True
    hole = ~exterior & (first_bg >= 0)
    hole_ids = xp.flatnonzero(hole)
    hole_parent = flat_lab[first_bg[hole_ids] - wp].astype(xp.int64)
    # labels of these planes: first pixel has background above it
    idx = _below(xp, (sub_lab[:, 1:, :] > 0) & (bg[:, :-1, :] > 0))
    first_lab = _first_pixel(xp, flat_lab[idx].astype(xp.int64), idx, nl + 1)
    lab_ids = xp.flatnonzero(first_lab >= 0)
    lab_parent = flat_bg[first_lab[lab_ids] - wp].astype(xp.int64)
    size_bg = xp.bincount(flat_bg, minlength=nb + 1).astype(xp.float64)
    filled = area
    for _ in range(nl + 1):  # nesting levels; ends when nothing changes (usually 2 passes)
        sub_tree = size_bg + xp.bincount(lab_parent, weights=filled[lab_ids], minlength=nb + 1)
        new = area + xp.bincount(hole_parent, weights=sub_tree[hole_ids], minlength=nl + 1)
        if bool(xp.all(new == filled)):  # host sync per nesting level
            break
        filled = new
    return filled


# ---------------------------------------------------------------------------------------------
# Per-plane means


def _mean_per_plane(props, owner, m: int):
    """(m, 59) mean of each property over the labels of each plane (NaN for none)."""
    xp = array_module(props)
    own = owner[1:]
    count = xp.bincount(own, minlength=m)[:m].astype(xp.float64)
    out = xp.empty((m, props.shape[1]), dtype=xp.float64)
    for j in range(props.shape[1]):  # 59 reductions over labels, not pixels
        out[:, j] = xp.bincount(own, weights=props[1:, j], minlength=m)[:m]
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / count[:, None]


register(Family("shape", shape_columns, compute_shape, True,
                "59 region properties (mean over connected components) of the combined and "
                "every channel mask"))
