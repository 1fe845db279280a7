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

No step loops over objects or labels, not even for the three properties that need more than a
reduction (convex area, Feret diameter, filled area): the hull is built in lock-step for all
labels from their row extents only (see ``_lower_hull``), and holes are attributed through a
containment tree. Python loops run over hull steps (at most four times the tallest component's
height) and over nesting levels of holes, each step vectorised over all labels, so the same code
runs on NumPy and on CuPy (there, the hull steps cost one kernel launch per array operation;
a per-label CUDA kernel would be the next step if that shows in profiles).

Deviations from SCIP (deliberate, documented):

* an empty mask gives NaN for all 59 values (SCIP gives 0 for the first 11 of a channel mask);
* objects whose mask is not ``usable`` give NaN for everything.

Where scikit-image 0.20 (SCIP's) and 0.26 differ, 0.20 is followed: only ``orientation`` differs
for the properties used here (0.26 flipped the sign of the :math:`a = c` special case, which
every single-pixel component hits). ``convex_hull_image``, ``feret_diameter_max``, the perimeter,
Crofton perimeter and Euler number code are the same in both; 0.26 sums central moments with
``einsum`` instead of ``np.dot`` (rounding only) and clamps axis lengths at 0 in 3-D only.

Exactness: integer-valued properties (area, bbox, convex and filled area, Euler number) are
exact; perimeters, Feret diameter and extent are computed from the same exact inputs by the same
formulas and agree to the last bit or nearly; moment-derived values agree to ~1e-12 relative
except where a value is zero in exact arithmetic (SCIP then reports rounding noise, we report
zero). See ``_moment_props`` for the one property where that noise changes the value
(``orientation`` of symmetric components).

Dispatch: the family is the stage ``shape.block``; its per-label passes are the stages
``shape.geometry``, ``shape.raw_moments``, ``shape.central_moments``, ``shape.pattern_props``
and ``shape.lower_hull`` (``scip_gpu.dispatch``), whose reference is the array code here and
whose ``cpu`` implementations (``cpu_kernels``) run the same sums compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt

import numpy as np

from .. import ops
from ..backend import array_module, asnumpy, is_gpu
from ..dispatch import stage
from ..stage_examples import compare_fields
from ..stage_examples import family_examples as _block_examples
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

#: 3x3 border-pattern code -> perimeter contribution (``skimage.measure.perimeter``,
#: 4-neighbourhood).
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



@stage("shape.block", examples=_block_examples)
def compute_shape(batch, mr, ctx):
    """(N, 59 * (C + 1)) shape features of one mask, columns as ``shape_columns``.

    The stage ``shape.block`` (a fused kernel may replace the whole family).

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

    Examples
    --------
    A 3x3 square and a single pixel (areas 9 and 1, perimeters 8 and 0), and an empty plane:

    >>> m = np.zeros((2, 5, 6), bool)
    >>> m[0, 1:4, 1:4] = True
    >>> m[0, 0, 5] = True
    >>> f = shape_features(m)
    >>> [float(f[0, PROPS.index(p)]) for p in ("area", "perimeter", "euler_number")]
    [5.0, 4.0, 1.0]
    >>> bool(np.isnan(f[1]).all())
    True
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
    holed = props[:, _COL["euler_number"]] < 1
    holed[0] = False
    props[:, _COL["filled_area"]] = filled_area(padded, labels, geo.plane, props[:, _COL["area"]], holed)
    return _mean_per_plane(props, geo.plane, m)


# ---------------------------------------------------------------------------------------------
# Ragged layout and per-label geometry


def _segments(xp, lengths):
    """Ragged layout of segments of the given lengths (each >= 1), laid end to end.

    Returns
    -------
    offset : (S,) int64 ndarray
        First element of each segment.
    owner : (T,) int64 ndarray
        Segment of every element.
    local : (T,) int64 ndarray
        Position of every element inside its segment.
    """
    ends = xp.cumsum(lengths)
    offset = ends - lengths
    total = int(ends[-1])  # host sync: the size of the layout
    mark = xp.zeros(total, dtype=xp.int64)
    mark[offset[1:]] = 1
    owner = xp.cumsum(mark)
    return offset, owner, xp.arange(total) - offset[owner]


def _scatter(xp, op: str, idx, values, size: int, fill):
    """``out[idx] = op(out[idx], values)`` with repeated indices (min or max), ``out`` filled."""
    if is_gpu(xp):
        # CuPy's minimum.at/maximum.at (cupyx.scatter_min/max, deprecated in CuPy 14) have no
        # int64 kernel: scatter in float64 (exact below 2**53)
        out = xp.full(size, xp.inf if op == "min" else -xp.inf)
        getattr(xp, f"{op}imum").at(out, idx, values.astype(xp.float64))
        empty = xp.isinf(out)
        res = xp.where(empty, 0.0, out).astype(values.dtype)
        return xp.where(empty, xp.asarray(fill, dtype=values.dtype), res)
    out = xp.full(size, fill, dtype=values.dtype)
    getattr(np, f"{op}imum").at(out, idx, values)
    return out


@dataclass
class _Geometry:
    """Foreground pixels, bounding boxes and row records of a padded, labelled stack.

    Arrays indexed by label have ``nl + 1`` entries; label 0 (the background) is a dummy
    one-row label at (0, 0). A *row record* is one row of one label (8-connected labels have
    pixels in every row of their bounding box); records are laid out label after label.

    Attributes
    ----------
    lab, row, col, rec : (P,) int64
        Label, padded coordinates and row record of every foreground pixel (raster order).
    plane : (nl + 1,) int64
        Plane of each label.
    minr, maxr, minc, maxc : (nl + 1,) int64
        Inclusive bounding box of each label.
    roff : (nl + 1,) int64
        First record of each label.
    rec_label, rec_k : (R,) int64
        Label of each record and its row relative to the label's ``minr``.
    left, right : (R,) int64
        First and last column of the label in that row.
    side : int
        Largest side of the padded planes (bounds every label's bbox).
    """

    lab: object
    row: object
    col: object
    rec: object
    plane: object
    minr: object
    maxr: object
    minc: object
    maxc: object
    roff: object
    rec_label: object
    rec_k: object
    left: object
    right: object
    side: int

    @property
    def height(self):
        return self.maxr - self.minr + 1


def _labelled_examples(rng):
    """(padded masks, labels, nl) of example stacks: blobs with every edge case, speckle, and a
    stack without foreground."""
    from ..stage_examples import masks

    for density in (0.45, 0.7):
        mk, _ = masks(rng, density=density)
        padded = np.pad(mk, ((0, 0), (1, 1), (1, 1)))
        yield (padded, *ops.label(padded, 2))
    empty = np.zeros((2, 6, 9), dtype=bool)
    yield (empty, *ops.label(empty, 2))


def _geometry_examples(rng):
    for _, labels, nl in _labelled_examples(rng):
        yield (labels, nl), {}


@stage("shape.geometry", examples=_geometry_examples, compare=compare_fields)
def _geometry(labels, nl: int) -> _Geometry:
    """Pixels, bounding boxes and row records of every label."""
    xp = array_module(labels)
    _, hp, wp = labels.shape
    flat = labels.ravel()
    idx = xp.flatnonzero(flat)
    lab = flat[idx].astype(xp.int64)
    rc = idx % (hp * wp)
    row, col = rc // wp, rc % wp
    plane = xp.zeros(nl + 1, dtype=xp.int64)
    plane[lab] = idx // (hp * wp)  # repeated indices write the same value
    big = np.iinfo(np.int64).max
    minr = _scatter(xp, "min", lab, row, nl + 1, big)
    maxr = _scatter(xp, "max", lab, row, nl + 1, -1)
    minr[0] = maxr[0] = 0
    roff, rec_label, rec_k = _segments(xp, maxr - minr + 1)
    rec = roff[lab] + row - minr[lab]
    n_rec = rec_label.shape[0]
    left = _scatter(xp, "min", rec, col, n_rec, big)
    right = _scatter(xp, "max", rec, col, n_rec, -1)
    left[0] = right[0] = 0  # the dummy record of label 0
    minc = _scatter(xp, "min", rec_label, left, nl + 1, big)
    maxc = _scatter(xp, "max", rec_label, right, nl + 1, -1)
    return _Geometry(lab, row, col, rec, plane, minr, maxr, minc, maxc, roff, rec_label, rec_k,
                     left, right, max(hp, wp))


# ---------------------------------------------------------------------------------------------
# Moments and everything that follows from them


def _powers(x):
    """[None, x, x**2, x**3] (None: the zeroth power, counted without weights)."""
    x2 = x * x
    return [None, x, x2, x2 * x]


def _moment_examples(rng):
    for _, labels, nl in _labelled_examples(rng):
        yield (_geometry(labels, nl), nl), {}


@stage("shape.raw_moments", examples=_moment_examples)
def _raw_moments(geo: _Geometry, nl: int):
    """(nl + 1, 4, 4) spatial moments of each label's own bbox image, order 3.

    ``M[p, q] = sum r**p * c**q`` with (r, c) relative to the label's bbox origin, as
    ``regionprops(...).moments``: column power sums per row record, then row-weighted sums per
    label. The float64 sums are exact while they stay below 2**53 (every moment of components
    up to ~90 pixels a side; up to order 2 for components up to 8192 pixels a side); beyond,
    they round as scikit-image's own float64 sums do.
    """
    xp = array_module(geo.lab)
    n_rec = geo.rec_label.shape[0]
    c = (geo.col - geo.minc[geo.lab]).astype(xp.float64)
    s = [xp.bincount(geo.rec, weights=w, minlength=n_rec) for w in _powers(c)]
    s[0] = s[0].astype(xp.float64)
    kp = _powers(geo.rec_k.astype(xp.float64))
    out = xp.empty((nl + 1, 4, 4), dtype=xp.float64)
    for p in range(4):
        for q in range(4):
            w = s[q] if p == 0 else kp[p] * s[q]
            out[:, p, q] = xp.bincount(geo.rec_label, weights=w, minlength=nl + 1)
    return out


def _central_examples(rng):
    for (geo, nl), _ in _moment_examples(rng):
        yield (geo, _raw_moments(geo, nl), nl), {}


@stage("shape.central_moments", examples=_central_examples)
def _central_moments(geo: _Geometry, raw, nl: int):
    """(nl + 1, 4, 4) central moments, order 3, as ``regionprops(...).moments_central``.

    Second-order moments come from exact integer identities
    (:math:`M_{00}\\mu_{20} = M_{00}M_{20} - M_{10}^2`, etc.), so that a component whose
    :math:`\\mu_{20}` and :math:`\\mu_{02}` are equal, or whose :math:`\\mu_{11}` is zero, gets
    exactly equal / zero values (the orientation depends on that, see ``_moment_props``).
    First-order central moments are exactly zero (scikit-image reports rounding noise).
    Third-order moments are summed about the float centroid, as scikit-image does (column
    sums per row, then rows, where scikit-image sums rows per column, then columns).

    Returns
    -------
    mu : (nl + 1, 4, 4) float64 ndarray
    exact : tuple of three (nl + 1,) ndarrays
        :math:`M_{00}\\mu_{20}`, :math:`M_{00}\\mu_{02}`, :math:`M_{00}\\mu_{11}` in exact
        integer arithmetic (see ``_exact_second_order``).
    """
    xp = array_module(raw)
    n_rec = geo.rec_label.shape[0]
    m00 = raw[:, 0, 0]
    cr = raw[:, 1, 0] / xp.maximum(m00, 1)
    cc = raw[:, 0, 1] / xp.maximum(m00, 1)
    mu = xp.zeros((nl + 1, 4, 4), dtype=xp.float64)
    dc = (geo.col - geo.minc[geo.lab]) - cc[geo.lab]
    t = [xp.bincount(geo.rec, weights=w, minlength=n_rec) for w in _powers(dc)]
    t[0] = t[0].astype(xp.float64)
    drp = _powers(geo.rec_k - cr[geo.rec_label])
    for p in range(4):
        for q in range(4):
            if p + q >= 3:
                w = t[q] if p == 0 else drp[p] * t[q]
                mu[:, p, q] = xp.bincount(geo.rec_label, weights=w, minlength=nl + 1)
    return _exact_second_order(geo, raw, mu)


def _exact_second_order(geo: _Geometry, raw, mu):
    """Fill ``mu``'s zeroth and second orders from the raw moments in exact integer arithmetic;
    return ``mu`` and the exact products (q20, q02, q11) (shared by every implementation of
    ``shape.central_moments``)."""
    xp = array_module(raw)
    m00 = raw[:, 0, 0]
    mu[:, 0, 0] = m00
    # exact second order: the products below are at most side**6, within int64 up to 1448 (only
    # the orders up to 2 are cast: the third ones pass int64 from a side of about 1000)
    mi = raw[:, :3, :3].astype(xp.int64 if geo.side <= 1400 else xp.float64)
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
    """Fill the Euler number, Crofton perimeter and perimeter columns (``pattern_props``)."""
    euler, crofton, perimeter = pattern_props(padded, labels, nl)
    props[:, _COL["euler_number"]] = euler
    props[:, _COL["perimeter_crofton"]] = crofton
    props[:, _COL["perimeter"]] = perimeter


def _pattern_examples(rng):
    for padded, labels, nl in _labelled_examples(rng):
        yield (padded, labels, nl), {}


@stage("shape.pattern_props", examples=_pattern_examples)
def pattern_props(padded, labels, nl: int):
    """Euler number (8-connectivity), Crofton perimeter (4 directions) and perimeter.

    scikit-image computes these on each region's bbox image; on the whole label image they
    decompose exactly into per-label sums because two different 8-connected labels never meet
    in a 2x2 window (Euler, Crofton) nor in the 3x3 neighbourhood of a border pixel
    (perimeter). The one-pixel background frame of ``padded`` provides the windows that straddle
    an image edge. Only windows / pixels that contribute are gathered.

    * Euler / Crofton: every 2x2 window is coded
      ``x[i,j] + 2 x[i-1,j] + 4 x[i,j-1] + 8 x[i-1,j-1]`` (the codes of
      ``ndi.convolve(image, [[0,0,0],[0,1,4],[0,2,8]])``) and looked up in
      ``EULER_COEFS_8`` / ``CROFTON_COEFS_4``; codes 0 and 15 contribute nothing to either.
    * perimeter: border pixels (foreground minus its 4-neighbourhood erosion) are coded
      ``1 + 2 * (4-neighbours on the border) + 10 * (diagonal neighbours on the border)`` and
      looked up in ``PERIMETER_WEIGHTS``.

    Parameters
    ----------
    padded : (M, H, W) bool ndarray
        Masks with a one-pixel background frame.
    labels : (M, H, W) int ndarray
        Their 8-connected labels (``ops.label``), ``nl`` in all.
    nl : int

    Returns
    -------
    (3, nl + 1) float64 ndarray
        Euler number, Crofton perimeter and perimeter of every label (row 0: background).
    """
    xp = array_module(padded)
    _, hp, wp = padded.shape
    x = padded.view(xp.uint8)
    code = x[:, 1:, 1:] | (x[:, :-1, 1:] << 1) | (x[:, 1:, :-1] << 2) | (x[:, :-1, :-1] << 3)
    win = xp.flatnonzero((code != 0) & (code != 15))
    code = code.ravel()[win].astype(xp.int64)
    # window (p, i, j) of the (hp-1, wp-1) grid has its top-left pixel at (p, i, j) of the stack
    p, ij = win // ((hp - 1) * (wp - 1)), win % ((hp - 1) * (wp - 1))
    top_left = p * (hp * wp) + (ij // (wp - 1)) * wp + ij % (wp - 1)
    lab = labels.ravel()
    wlab = xp.maximum(xp.maximum(lab[top_left], lab[top_left + 1]),
                      xp.maximum(lab[top_left + wp], lab[top_left + wp + 1]))
    euler = xp.bincount(wlab, weights=xp.asarray(EULER_COEFS_8)[code], minlength=nl + 1)
    crofton = xp.bincount(wlab, weights=xp.asarray(CROFTON_COEFS_4)[code], minlength=nl + 1)

    q = padded
    inner = q[:, 1:-1, 1:-1]
    eroded = inner & q[:, :-2, 1:-1] & q[:, 2:, 1:-1] & q[:, 1:-1, :-2] & q[:, 1:-1, 2:]
    border = xp.zeros_like(q)
    border[:, 1:-1, 1:-1] = inner & ~eroded
    bidx = xp.flatnonzero(border)  # never on the frame: all 8 neighbours exist
    bd = border.ravel().view(xp.uint8)
    four = bd[bidx - wp] + bd[bidx + wp] + bd[bidx - 1] + bd[bidx + 1]
    diag = bd[bidx - wp - 1] + bd[bidx - wp + 1] + bd[bidx + wp - 1] + bd[bidx + wp + 1]
    pcode = 1 + 2 * four.astype(xp.int64) + 10 * diag.astype(xp.int64)
    perimeter = xp.bincount(lab[bidx], weights=xp.asarray(PERIMETER_WEIGHTS)[pcode], minlength=nl + 1)
    return xp.stack([euler, crofton, perimeter])


# ---------------------------------------------------------------------------------------------
# Convex hull: convex_area, solidity, feret_diameter_max


@dataclass
class _Chains:
    """Ragged layout of one sequence per label over its half rows and rows.

    Label ``L`` of height ``h`` owns ``2h + 1`` consecutive positions: position ``2k`` is the
    half row above its row ``k`` (``2h`` the one below its last row), position ``2k + 1`` its row
    ``k``. In doubled coordinates position ``t`` is at ``Y = 2 minr - 1 + t``.

    Attributes
    ----------
    offset, length : (nl + 1,) int64
    owner : (T,) int64
        Label of every position.
    row_pos : (R,) int64
        Position of every row record.
    half_pos, half_prev, half_cur : (R + nl + 1,) int64
        Position of every half row and the records of the rows above and below it (the first
        and last half rows use their only neighbour twice).
    half_interior : (R + nl + 1,) bool
        Half rows between two rows of the label.
    total : int
    """

    offset: object
    length: object
    owner: object
    row_pos: object
    half_pos: object
    half_prev: object
    half_cur: object
    half_interior: object
    total: int

    def sequence(self, row_values, half_values):
        """(T,) int64 sequence with the given values at rows and half rows."""
        xp = array_module(row_values)
        out = xp.empty(self.total, dtype=xp.int64)
        out[self.row_pos] = row_values
        out[self.half_pos] = half_values
        return out

    def doubled(self):
        """Offsets and lengths of two sequences per label (left side, then right side)."""
        xp = array_module(self.offset)
        return (xp.concatenate([self.offset, self.offset + self.total]),
                xp.concatenate([self.length, self.length]))


def _chains(geo: _Geometry) -> _Chains:
    xp = array_module(geo.left)
    h = geo.height
    length = 2 * h + 1
    offset, owner, _ = _segments(xp, length)
    row_pos = offset[geo.rec_label] + 2 * geo.rec_k + 1
    _, half_label, half_k = _segments(xp, h + 1)
    hh = h[half_label]
    base = geo.roff[half_label]
    return _Chains(
        offset, length, owner, row_pos,
        offset[half_label] + 2 * half_k,
        base + xp.maximum(half_k - 1, 0),
        base + xp.minimum(half_k, hh - 1),
        (half_k >= 1) & (half_k <= hh - 1),
        int(owner.shape[0]),
    )


def _hull_examples(rng):
    # the sequences the hull passes build (doubled row ends of real components) ...
    for (geo, _), _ in _moment_examples(rng):
        ch = _chains(geo)
        left, right = geo.left, geo.right
        xl = ch.sequence(2 * left - 1, 2 * np.minimum(left[ch.half_prev], left[ch.half_cur]))
        xr = ch.sequence(2 * right + 1, 2 * np.maximum(right[ch.half_prev], right[ch.half_cur]))
        yield (np.concatenate([xl, -xr]), *ch.doubled()), {}
    # ... and random ones: lengths 2..12, small values (many collinear points)
    length = rng.integers(2, 13, 40)
    length[:3] = 2
    offset = np.cumsum(length) - length
    x = rng.integers(-4, 5, int(length.sum()))
    x[offset[3]:offset[3] + length[3]] = 7  # constant: all collinear
    yield (x, offset, length), {}


@stage("shape.lower_hull", examples=_hull_examples)
def _lower_hull(x, offset, length):
    """Vertices of the lower convex hull of many sequences at once (Andrew's monotone chain).

    Sequence ``b`` is the points ``(t, x[offset[b] + t])`` for ``t < length[b]``; its lower hull
    is the convex minorant of ``x`` as a function of ``t``. The stacks of all sequences advance
    in lock-step: each step pops (where the top breaks convexity) or pushes the next point. A
    sequence is done after at most ``2 * length - 2`` steps, so with sequences sorted longest
    first every step only touches a shrinking prefix of them.

    Parameters
    ----------
    x : (T,) int64 ndarray
        All sequences, laid end to end.
    offset, length : (B,) int64 ndarray
        Layout of the sequences; every length >= 2.

    Returns
    -------
    (T,) bool ndarray
        True at the hull's vertices (collinear middle points are not vertices; the first and
        last point of every sequence are).
    """
    xp = array_module(x)
    nb = offset.shape[0]
    order = xp.argsort(-length)
    off = offset[order]
    ln = length[order]
    ln_host = asnumpy(ln)  # host sync: the active prefix of each step
    steps = int(2 * ln_host[0] - 2)
    # sequences still running at step j: those with 2 * length - 2 > j (descending order)
    active = np.searchsorted(-(2 * ln_host - 2), -np.arange(steps), side="left")
    stack = xp.zeros(x.shape[0], dtype=xp.int64)
    sp = xp.zeros(nb, dtype=xp.int64)
    nxt = xp.zeros(nb, dtype=xp.int64)
    for j in range(steps):  # hull steps, each vectorised over all running sequences
        k = int(active[j])
        o, s, i, n = off[:k], sp[:k], nxt[:k], ln[:k]
        live = i < n
        ia = stack[o + xp.maximum(s - 2, 0)]
        ib = stack[o + xp.maximum(s - 1, 0)]
        ic = xp.minimum(i, n - 1)
        xa, xb, xc = x[o + ia], x[o + ib], x[o + ic]
        # pop b when slope(a, b) >= slope(b, c): b is not strictly below the chord a-c
        pop = live & (s >= 2) & ((xb - xa) * (ic - ib) >= (xc - xb) * (ib - ia))
        push = live & ~pop
        at = o + xp.minimum(s, n - 1)
        stack[at] = xp.where(push, i, stack[at])
        sp[:k] = s - pop + push
        nxt[:k] = i + push
    depth = xp.empty_like(sp)
    depth[order] = sp
    _, owner, local = _segments(xp, length)
    on = local < depth[owner]
    flags = xp.zeros(x.shape[0], dtype=bool)
    flags[offset[owner[on]] + stack[on]] = True
    return flags


def _minorant_ceil_half(x, flags, pos):
    """``ceil(g(t) / 2)`` at the flat positions ``pos``, g the convex minorant given by the hull
    vertices ``flags`` of ``_lower_hull``; evaluated in exact integer arithmetic."""
    xp = array_module(x)
    cum = xp.cumsum(flags)
    vpos = xp.flatnonzero(flags)
    g = cum[pos] - 1  # last vertex at or before pos (the first point of a sequence is one)
    t0 = vpos[g]
    t1 = vpos[g + ~flags[pos]]  # next vertex (the last point of a sequence is one)
    x0, x1 = x[t0], x[t1]
    den = xp.maximum(t1 - t0, 1)
    num = x0 * den + (x1 - x0) * (pos - t0)
    return -((-num) // (2 * den))


def _hull_rows(geo: _Geometry, ch: _Chains):
    """Column range [a, b] of the convex hull image in every row record.

    ``skimage.morphology.convex_hull_image`` (0.20 and 0.26 alike) takes the convex polygon P
    of the pixels' edge midpoints (each pixel (r, c) contributes (r +- 1/2, c) and
    (r, c +- 1/2)) and keeps the pixel centres inside P or on its boundary. P's left boundary is
    the convex minorant of the leftmost such point at every half row, its right boundary the
    concave majorant of the rightmost; in doubled coordinates these points are integers, and the
    boundary crossings of every row are found exactly. (scikit-image uses Qhull and a
    point-in-polygon test; with these half-integer vertices both are exact.)
    """
    xp = array_module(geo.left)
    left, right = geo.left, geo.right
    xl = ch.sequence(2 * left - 1, 2 * xp.minimum(left[ch.half_prev], left[ch.half_cur]))
    xr = ch.sequence(2 * right + 1, 2 * xp.maximum(right[ch.half_prev], right[ch.half_cur]))
    x = xp.concatenate([xl, -xr])
    flags = _lower_hull(x, *ch.doubled())
    ceil = _minorant_ceil_half(x, flags, xp.concatenate([ch.row_pos, ch.row_pos + ch.total]))
    n_rec = left.shape[0]
    return ceil[:n_rec], -ceil[n_rec:]


def _feret(ch: _Chains, a, b):
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
    nl1 = ch.offset.shape[0]
    sentinel = 4 * (int(b.max()) + 4)  # host sync: beyond every real (doubled) column
    ap, ac, bp, bc = a[ch.half_prev], a[ch.half_cur], b[ch.half_prev], b[ch.half_cur]
    xl = ch.sequence(2 * a - 1,
                     xp.where(ch.half_interior & (ap == ac), sentinel, 2 * xp.minimum(ap, ac)))
    xr = ch.sequence(-(2 * b + 1),
                     xp.where(ch.half_interior & (bp == bc), sentinel, -2 * xp.maximum(bp, bc)))
    x = xp.concatenate([xl, xr])
    flags = _lower_hull(x, *ch.doubled())
    v = xp.flatnonzero(flags)
    right = v >= ch.total
    u = v - right * ch.total
    label = ch.owner[u]
    t = u - ch.offset[label]
    xv = xp.where(right, -x[v], x[v])
    # vertex table (label, slot): sort vertices by label, then slot = rank inside the label
    span = int(ch.length.max()) + 1
    order = xp.argsort((label * 2 + right) * span + t)
    label, t, xv = label[order], t[order], xv[order]
    nv = xp.bincount(label, minlength=nl1)
    slot = xp.arange(label.shape[0]) - (xp.cumsum(nv) - nv)[label]
    nv_host = asnumpy(nv)  # host sync: bucket sizes
    v_max = int(nv_host.max())
    vt = xp.zeros((nl1, v_max), dtype=xp.int64)
    vx = xp.zeros((nl1, v_max), dtype=xp.int64)
    vt[label, slot] = t
    vx[label, slot] = xv
    fill = xp.arange(v_max)[None, :] >= nv[:, None]  # unused slots repeat the first vertex
    vt = xp.where(fill, vt[:, :1], vt)
    vx = xp.where(fill, vx[:, :1], vx)
    return xp.sqrt(_max_pair_distance(vt, vx, nv_host) / 4.0)


def _max_pair_distance(vt, vx, nv_host, budget: int = 1 << 22):
    """Largest squared distance between two points of each row of a (L, V) point table.

    Rows are bucketed by their number of points (next power of two) so that small hulls do not
    pay for the largest; buckets are cut into chunks of at most ``budget`` pairs (memory only).
    """
    xp = array_module(vt)
    best = xp.zeros(vt.shape[0], dtype=xp.int64)
    bucket = np.ceil(np.log2(np.maximum(nv_host, 1))).astype(int)
    for k in np.unique(bucket):  # a handful of buckets
        ids = np.flatnonzero(bucket == k)
        v = min(1 << int(k), vt.shape[1])
        step = max(1, budget // (v * v))
        for s in range(0, len(ids), step):
            sel = xp.asarray(ids[s:s + step])
            tt, xx = vt[sel, :v], vx[sel, :v]
            dt = tt[:, :, None] - tt[:, None, :]
            dx = xx[:, :, None] - xx[:, None, :]
            best[sel] = (dt * dt + dx * dx).max(axis=(1, 2))
    return best


def _hull_props(geo: _Geometry, props) -> None:
    """convex_area, solidity and feret_diameter_max of every label.

    Both hull passes run over all labels at once (see ``_lower_hull``); no per-label loop.
    """
    xp = array_module(props)
    ch = _chains(geo)
    a, b = _hull_rows(geo, ch)
    convex = xp.bincount(geo.rec_label, weights=(b - a + 1).astype(xp.float64),
                         minlength=props.shape[0])
    props[:, _COL["convex_area"]] = convex
    with np.errstate(invalid="ignore", divide="ignore"):
        props[:, _COL["solidity"]] = props[:, _COL["area"]] / convex
    props[:, _COL["feret_diameter_max"]] = _feret(ch, a, b)

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


def _filled_examples(rng):
    for padded, labels, nl in _labelled_examples(rng):
        geo = _geometry(labels, nl)
        area = np.bincount(labels.ravel(), minlength=nl + 1).astype(np.float64)
        area[0] = 0.0
        for holed in (np.ones(nl + 1, dtype=bool), rng.random(nl + 1) < 0.5):
            holed = holed.copy()
            holed[0] = False
            yield (padded, labels, geo.plane, area, holed), {}


@stage("shape.filled_area", examples=_filled_examples)
def filled_area(padded, labels, owner, area, holed):
    """Area of each label with its holes filled, as ``regionprops(...).area_filled``.

    ``area`` (nl + 1,) are the labels' areas, ``holed`` (nl + 1,) bool the labels that may have
    holes (the others keep their area); ``owner`` (nl + 1,) the plane of each label.

    scikit-image fills a region's holes with ``ndi.binary_fill_holes(image, ones((3, 3)))``
    on its bbox image: every pixel not 8-connected to the bbox border through non-region pixels
    is filled, which may include other, nested, components and their holes. Here the
    background components (8-connected) and the labels form a containment tree: the parent of
    a background component is the label just above its first pixel in raster order, the parent
    of a label the background component just above its first pixel (the first pixel of a node
    lies above all of its descendants). A label's filled area is its area plus the sizes of all
    its descendants, summed one nesting level per pass.

    Only planes with a label in ``holed`` are looked at (for 8-connected components: an Euler
    number below 1, a 4-connected hole). The ``cpu`` implementation fills each holed label's
    bounding box from its border instead (scikit-image's way).
    """
    xp = array_module(padded)
    nl = area.shape[0] - 1
    area = area.copy()
    planes = xp.unique(owner[holed])
    if planes.size == 0:  # host sync; nothing has holes
        return area
    sub = padded[planes]
    sub_lab = labels[planes]
    wp = sub.shape[2]
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
