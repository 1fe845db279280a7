"""CellProfiler's MeasureObjectSizeShape (``AreaShape_*``), batched over objects.

The family ``cp_sizeshape`` measures, for every object, the combined mask and each channel mask
as **one** object each (CellProfiler's objects: all pixels of the mask, connected or not; SCIP's
``shape`` family instead averages over connected components). The values follow cp_measure's
``get_sizeshape`` and ``get_feret`` (CellProfiler 4 plus cp_measure's ``FilledArea`` and
``PerimeterCrofton``), which are scikit-image ``regionprops`` properties plus CellProfiler's own
formulas:

* ``FormFactor`` :math:`4\\pi A / P^2` (NaN instead of infinity where scikit-image's perimeter
  is 0: a one-pixel object, two pixels), ``Compactness`` :math:`P^2 / \\max(4\\pi A, 1)` (0
  there, as in CellProfiler);
* ``Max/Mean/MedianRadius``: the Euclidean distance transform of the object's mask with a
  background frame, over the mask's pixels (all planes of a batch stacked in one image, one
  ``distance_transform_edt`` call);
* ``Min/MaxFeretDiameter``: of the convex hull of the pixel centres (CellProfiler's
  ``centrosome.cpmorphology.feret_diameter``): the largest vertex distance and the smallest
  width over the hull's edges;
* ``Orientation`` in degrees, CellProfiler's sign convention (cp_measure's
  ``axes_eccentricity_orientation``: the ``a = c`` special case is :math:`+45°` for a negative
  off-diagonal of the inertia tensor, the opposite of scikit-image 0.20);
* ``Center_X/Y`` (centroid), ``BoundingBoxMinimum/Maximum_X/Y`` (maximum exclusive, as
  ``regionprops``' ``bbox``) in the object image's coordinates.

Every value comes from the array passes of ``features.shape`` (moments, pattern codes, lock-step
convex hulls, containment tree for filled area), with each mask labelled as a single label, so
there is no per-object loop and the same code runs on NumPy and CuPy. The Zernike shape
features (``AreaShape_Zernike_n_m``) are the family ``cp_zernike`` (``features.cp_zernike``).

An empty mask, or an object whose mask is not ``usable``, gives NaN (CellProfiler has no object
there).
"""

from __future__ import annotations

import numpy as np

from ..backend import array_module, asnumpy, ndimage
from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from . import shape as _sh
from .cp_common import cp_column
from .registry import Family, register

#: (CellProfiler feature name) in column order
_MOMENTS = (
    [f"SpatialMoment_{p}_{q}" for p in range(3) for q in range(4)]
    + [f"CentralMoment_{p}_{q}" for p in range(3) for q in range(4)]
    + [f"NormalizedMoment_{p}_{q}" for p in range(4) for q in range(4)]
    + [f"HuMoment_{k}" for k in range(7)]
    + ["InertiaTensor_0_0", "InertiaTensor_0_1", "InertiaTensor_1_0", "InertiaTensor_1_1",
       "InertiaTensorEigenvalues_0", "InertiaTensorEigenvalues_1"]
)
FEATURES = (
    "Area", "Perimeter", "FormFactor", "Solidity", "ConvexArea", "Extent", "Eccentricity",
    "Compactness", "MajorAxisLength", "MinorAxisLength", "Orientation", "EquivalentDiameter",
    "EulerNumber", "Center_X", "Center_Y", "BoundingBoxArea", "BoundingBoxMinimum_X",
    "BoundingBoxMaximum_X", "BoundingBoxMinimum_Y", "BoundingBoxMaximum_Y", "MaximumRadius",
    "MeanRadius", "MedianRadius", "MinFeretDiameter", "MaxFeretDiameter", "FilledArea",
    "PerimeterCrofton", *_MOMENTS,
)
_F = {f: k for k, f in enumerate(FEATURES)}


def sizeshape_columns(mask: str | None, channels) -> list:
    """``AreaShape_*`` of the combined mask, then of every channel's mask."""
    cols = []
    for ch in [None, *channels]:
        view = "combined" if ch is None else "mask"
        cols += [cp_column("cp_sizeshape", mask, "AreaShape", f, ch, view) for f in FEATURES]
    return cols


def _compare(ref, got, args, kwargs):
    """Compiled sums run in another order than the array reductions."""
    assert_equivalent(ref, got, rtol=1e-12, atol=1e-12)



def _sizeshape_examples(rng):
    """The families' examples, and planes of the edge cases (``stage_examples.plane_examples``)."""
    from ..stage_examples import plane_examples

    yield from _block_examples(rng)
    yield from plane_examples(rng)


@stage("cp_sizeshape.block", examples=_sizeshape_examples)
def compute_sizeshape(batch, mr, ctx):
    """(N, (C + 1) * 80) ``AreaShape`` values of one mask, columns as ``sizeshape_columns``.

    On a GPU: ``gpu_kernels.cp_sizeshape_block`` (kernels/cp_sizeshape_block.cu)."""
    xp = batch.xp
    n, c, h, w = mr.mask.shape
    planes = xp.concatenate([mr.combined[:, None], mr.mask], axis=1)
    planes = planes & batch.valid()[:, None]
    res = sizeshape_features(planes.reshape(n * (c + 1), h, w)).reshape(n, -1)
    return xp.where(xp.asarray(mr.usable)[:, None], res, xp.nan)


def sizeshape_features(masks):
    """CellProfiler's ``AreaShape`` values of every plane of a stack, each plane one object.

    Parameters
    ----------
    masks : (M, H, W) bool ndarray

    Returns
    -------
    (M, len(FEATURES)) float64 ndarray
        NaN rows for empty planes.

    Examples
    --------
    A 3x4 rectangle: area 12, perimeter 10 (scikit-image's), bounding box 3x4, Feret diameters
    2 (rows 0..2 of pixel centres) and :math:`\\sqrt{2^2 + 3^2}`.

    >>> m = np.zeros((1, 5, 6), bool); m[0, 1:4, 1:5] = True
    >>> f = sizeshape_features(m)[0]
    >>> [round(float(f[FEATURES.index(k)]), 4) for k in
    ...  ("Area", "Perimeter", "BoundingBoxArea", "MinFeretDiameter", "MaxFeretDiameter")]
    [12.0, 10.0, 12.0, 2.0, 3.6056]
    """
    xp = array_module(masks)
    m = masks.shape[0]
    out = xp.full((m, len(FEATURES)), xp.nan)
    padded = xp.pad(masks.astype(bool, copy=False), ((0, 0), (1, 1), (1, 1)))
    has = padded.any(axis=(1, 2))
    ids = xp.cumsum(has) * has  # label of each plane: its rank among the non-empty ones
    nl = int(ids.max()) if m else 0  # host sync: number of objects
    if nl == 0:
        return out
    labels = padded * ids.astype(xp.int32)[:, None, None]  # int32, no int64 temporary
    geo = _sh._geometry(labels, nl)
    empty_rows = _fill_empty_rows(geo, labels.shape)
    props = xp.zeros((nl + 1, len(FEATURES)), dtype=xp.float64)
    _moment_features(geo, nl, props)
    euler, crofton, perimeter = _sh.pattern_props(padded, labels, nl)
    _derived_features(props, euler, crofton, perimeter)
    _hull_features(geo, props, empty_rows, max(labels.shape[1:]))
    _radius_features(padded, labels, nl, props)
    # filled area: every object may have holes (the shortcut of ``shape`` needs components)
    holed = xp.ones(nl + 1, dtype=bool)
    holed[0] = False
    props[:, _F["FilledArea"]] = _sh.filled_area(padded, labels, geo.plane, props[:, _F["Area"]], holed)
    rows = xp.flatnonzero(has)
    out[rows] = props[1:]
    return out


def _fill_empty_rows(geo, shape):
    """Give rows of a bounding box without pixels (an object in several pieces) row ends that
    every hull pass drops: a left end far right and a right end far left."""
    xp = array_module(geo.left)
    n_rec = geo.left.shape[0]
    counts = xp.bincount(geo.rec, minlength=n_rec)
    empty = counts == 0
    empty[0] = False  # the dummy record of label 0
    big = 4 * (max(shape[1:]) + 4)
    geo.left = xp.where(empty, big, geo.left)
    geo.right = xp.where(empty, -big, geo.right)
    return empty


def _moment_features(geo, nl: int, props) -> None:
    xp = array_module(props)
    raw = _sh._raw_moments(geo, nl)
    mu, exact = _sh._central_moments(geo, raw, nl)
    raw[0] = mu[0] = 1.0  # background row
    area = raw[:, 0, 0]
    a, b, c, l1, l2 = _sh._inertia(mu, exact)
    q20, q02, q11 = exact
    with np.errstate(invalid="ignore", divide="ignore"):
        ecc = xp.where(l1 == 0, 0.0, xp.sqrt(1 - l2 / l1))
    # cp_measure: it00 = a, it_off = b, it11 = c; a == c decided in exact arithmetic
    orient = xp.where(q20 == q02, xp.where(q11 > 0, np.pi / 4, -np.pi / 4),
                      0.5 * xp.arctan2(-2 * b, c - a))
    height = geo.height.astype(xp.float64)
    width = (geo.maxc - geo.minc + 1).astype(xp.float64)
    props[:, _F["Area"]] = area
    props[:, _F["Eccentricity"]] = ecc
    props[:, _F["MajorAxisLength"]] = 4 * xp.sqrt(l1)
    props[:, _F["MinorAxisLength"]] = 4 * xp.sqrt(l2)
    props[:, _F["Orientation"]] = orient * (180 / np.pi)
    props[:, _F["EquivalentDiameter"]] = (4 * area / np.pi) ** 0.5
    props[:, _F["BoundingBoxArea"]] = height * width
    props[:, _F["Extent"]] = area / (height * width)
    # padded coordinates: one pixel of frame
    props[:, _F["Center_Y"]] = geo.minr - 1 + raw[:, 1, 0] / area
    props[:, _F["Center_X"]] = geo.minc - 1 + raw[:, 0, 1] / area
    props[:, _F["BoundingBoxMinimum_X"]] = geo.minc - 1
    props[:, _F["BoundingBoxMaximum_X"]] = geo.maxc
    props[:, _F["BoundingBoxMinimum_Y"]] = geo.minr - 1
    props[:, _F["BoundingBoxMaximum_Y"]] = geo.maxr
    k = _F["SpatialMoment_0_0"]
    props[:, k:k + 12] = raw[:, :3].reshape(nl + 1, 12)
    k = _F["CentralMoment_0_0"]
    props[:, k:k + 12] = mu[:, :3].reshape(nl + 1, 12)
    p = xp.arange(4)
    order = p[:, None] + p[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = mu / area[:, None, None] ** (order / 2 + 1)
    nu = xp.where(order >= 2, nu, xp.nan)
    k = _F["NormalizedMoment_0_0"]
    props[:, k:k + 16] = nu.reshape(nl + 1, 16)
    k = _F["HuMoment_0"]
    props[:, k:k + 7] = _sh._hu_moments(mu, area)
    k = _F["InertiaTensor_0_0"]
    props[:, k] = a
    props[:, k + 1] = b
    props[:, k + 2] = b
    props[:, k + 3] = c
    props[:, _F["InertiaTensorEigenvalues_0"]] = l1
    props[:, _F["InertiaTensorEigenvalues_1"]] = l2


def _derived_features(props, euler, crofton, perimeter) -> None:
    xp = array_module(props)
    area = props[:, _F["Area"]]
    props[:, _F["EulerNumber"]] = euler
    props[:, _F["PerimeterCrofton"]] = crofton
    props[:, _F["Perimeter"]] = perimeter
    with np.errstate(invalid="ignore", divide="ignore"):
        props[:, _F["FormFactor"]] = xp.where(perimeter > 0, 4 * np.pi * area / perimeter**2, xp.nan)
    # CellProfiler's P^2 / max(4 pi A, 1): finite everywhere, 0 where the perimeter is 0
    props[:, _F["Compactness"]] = perimeter**2 / xp.maximum(4 * np.pi * area, 1.0)


def _hull_features(geo, props, empty_rows, side: int) -> None:
    """ConvexArea and Solidity (scikit-image's hull image), Min/MaxFeretDiameter (hull of the
    pixel centres, CellProfiler's)."""
    xp = array_module(props)
    ch = _sh._chains(geo)
    a, b = _sh._hull_rows(geo, ch)
    convex = xp.bincount(geo.rec_label, weights=(b - a + 1).astype(xp.float64),
                         minlength=props.shape[0])
    props[:, _F["ConvexArea"]] = convex
    with np.errstate(invalid="ignore", divide="ignore"):
        props[:, _F["Solidity"]] = props[:, _F["Area"]] / convex
    fmin, fmax = centre_hull_feret(geo, empty_rows, side)
    props[:, _F["MinFeretDiameter"]] = fmin
    props[:, _F["MaxFeretDiameter"]] = fmax


def centre_hull_vertices(geo, empty_rows, side: int):
    """Vertices of the convex hull of each label's pixel centres, in polygon order.

    The hull's left chain is the convex minorant of each row's leftmost column over the rows,
    the right chain the concave majorant of the rightmost (``shape._lower_hull`` on both, all
    labels in lock-step; rows without pixels and a closing point carry a sentinel that the hull
    pass pops and that is dropped). Polygon order: the left chain downwards from the first
    row's leftmost pixel, then the right chain upwards; collinear points are not vertices.

    Returns
    -------
    label, row, col : (P,) int64 ndarrays
        Sorted by label; each label's vertices in polygon order.
    """
    xp = array_module(geo.left)
    nl1 = geo.roff.shape[0]
    h = geo.height
    length = h + 1
    offset, owner, local = _sh._segments(xp, length)
    big = 4 * (side + 4) ** 2  # above every chord of real points (slopes below side)
    # positions: row k of label L at offset[L] + k; the closing point at offset[L] + h[L]
    pos = offset[geo.rec_label] + geo.rec_k
    total = int(owner.shape[0])
    xl = xp.full(total, big, dtype=xp.int64)
    xr = xp.full(total, big, dtype=xp.int64)
    xl[pos] = xp.where(empty_rows, big, geo.left)
    xr[pos] = xp.where(empty_rows, big, -geo.right)
    x = xp.concatenate([xl, xr])
    flags = _sh._lower_hull(x, xp.concatenate([offset, offset + total]), xp.concatenate([length, length]))
    v = xp.flatnonzero(flags & (x < big))
    right = v >= total
    u = v - right * total
    label = owner[u]
    t = u - offset[label]
    col = xp.where(right, -x[v], x[v])
    row = t + geo.minr[label]
    span = int(asnumpy(length.max())) + 1
    # polygon order: the left chain downwards, then the right chain upwards
    key = (label * 2 + right) * span + xp.where(right, span - 1 - t, t)
    order = xp.argsort(key)
    label, row, col = label[order], row[order], col[order]
    # drop a vertex equal to its predecessor (a row whose left and right ends coincide)
    dup = xp.zeros(label.shape[0], dtype=bool)
    dup[1:] = (label[1:] == label[:-1]) & (row[1:] == row[:-1]) & (col[1:] == col[:-1])
    keep = ~dup
    label, row, col = label[keep], row[keep], col[keep]
    nv = xp.bincount(label, minlength=nl1)
    first = xp.cumsum(nv) - nv
    last_dup = (nv > 1)
    # the last vertex may equal the first (closing the polygon): drop it
    li = first + nv - 1
    same = last_dup & (row[xp.minimum(li, row.shape[0] - 1)] == row[xp.minimum(first, row.shape[0] - 1)]) \
        & (col[xp.minimum(li, row.shape[0] - 1)] == col[xp.minimum(first, row.shape[0] - 1)])
    drop = xp.zeros(label.shape[0], dtype=bool)
    drop[li[same]] = True
    keep = ~drop
    return label[keep], row[keep], col[keep]


def centre_hull_table(geo, empty_rows, side: int):
    """``centre_hull_vertices`` as an (L, V) table: row and column (float64; unused slots repeat
    the label's first vertex) and the (L,) vertex counts."""
    xp = array_module(geo.left)
    nl1 = geo.roff.shape[0]
    label, row, col = centre_hull_vertices(geo, empty_rows, side)
    nv = xp.bincount(label, minlength=nl1)
    slot = xp.arange(label.shape[0]) - (xp.cumsum(nv) - nv)[label]
    nv_host = asnumpy(nv)  # host sync: table width
    v_max = max(int(nv_host.max()), 1)
    vr = xp.zeros((nl1, v_max), dtype=xp.float64)
    vc = xp.zeros((nl1, v_max), dtype=xp.float64)
    vr[label, slot] = row
    vc[label, slot] = col
    fill = xp.arange(v_max)[None, :] >= nv[:, None]  # unused slots repeat the first vertex
    vr = xp.where(fill, vr[:, :1], vr)
    vc = xp.where(fill, vc[:, :1], vc)
    return vr, vc, nv


def centre_hull_feret(geo, empty_rows, side: int, budget: int = 1 << 22):
    """(min, max) Feret diameter of the convex hull of each label's pixel centres: the hull's
    vertex table (``centre_hull_table``) measured by ``feret_from_vertices``."""
    vr, vc, nv = centre_hull_table(geo, empty_rows, side)
    return feret_from_vertices(vr, vc, nv, budget)


def _feret_examples(rng):
    """Vertex tables of convex polygons (scipy's hulls of random points), with labels of no,
    one and two vertices and unused slots repeating the first vertex."""
    from scipy.spatial import ConvexHull

    polys = [np.zeros((0, 2)), np.array([[3.0, 4.0]]), np.array([[0.0, 0.0], [5.0, 2.0]])]
    for _ in range(9):
        pts = rng.integers(0, 30, size=(int(rng.integers(3, 40)), 2)).astype(np.float64)
        try:
            polys.append(pts[ConvexHull(pts).vertices])
        except Exception:  # collinear points
            continue
    yield vertex_table(polys), {}


def vertex_table(polys):
    """(vr, vc, nv) tables of polygons given as (V_i, 2) (row, column) vertex arrays in polygon
    order, as ``centre_hull_table`` makes them: unused slots repeat the first vertex."""
    v_max = max(max(len(p) for p in polys), 1)
    vr = np.zeros((len(polys), v_max))
    vc = np.zeros((len(polys), v_max))
    nv = np.array([len(p) for p in polys], dtype=np.int64)
    for i, p in enumerate(polys):
        if len(p):
            vr[i, : len(p)], vc[i, : len(p)] = p[:, 0], p[:, 1]
            vr[i, len(p):], vc[i, len(p):] = p[0, 0], p[0, 1]
    return vr, vc, nv


@stage("cp_sizeshape.feret", examples=_feret_examples)
def feret_from_vertices(vr, vc, nv, budget: int = 1 << 22):
    """(min, max) Feret diameter of convex polygons given as (L, V) vertex tables in polygon
    order (``nv`` real vertices per row, the unused slots repeating the first one): the maximum
    the largest vertex distance, the minimum the smallest, over the edges, of the largest
    vertex distance from the edge's line."""
    xp = array_module(vr)
    nl1, v_max = vr.shape
    fmax = xp.zeros(nl1, dtype=xp.float64)
    fmin = xp.zeros(nl1, dtype=xp.float64)
    step = max(1, budget // (v_max * v_max))
    for s in range(0, nl1, step):  # memory only: chunks of labels
        r, cc, k = vr[s:s + step], vc[s:s + step], nv[s:s + step]
        dr = r[:, :, None] - r[:, None, :]
        dc = cc[:, :, None] - cc[:, None, :]
        fmax[s:s + step] = xp.sqrt((dr * dr + dc * dc).max(axis=(1, 2)))
        # edge i: vertex i -> vertex i + 1 (cyclic over the label's own vertices)
        j = xp.arange(v_max)[None, :]
        nxt = xp.where(j + 1 >= k[:, None], 0, j + 1)
        er = xp.take_along_axis(r, nxt, axis=1) - r
        ec = xp.take_along_axis(cc, nxt, axis=1) - cc
        elen = xp.sqrt(er * er + ec * ec)
        # distance of every vertex (axis 2) from the line of every edge (axis 1)
        cross = xp.abs(er[:, :, None] * (cc[:, None, :] - cc[:, :, None])
                       - ec[:, :, None] * (r[:, None, :] - r[:, :, None]))
        with np.errstate(invalid="ignore", divide="ignore"):
            width = cross.max(axis=2) / elen
        valid = (elen > 0) & (j < k[:, None])
        width = xp.where(valid, width, xp.inf)
        wmin = width.min(axis=1)
        fmin[s:s + step] = xp.where(xp.isinf(wmin), 0.0, wmin)
    return fmin, fmax


def _radius_features(padded, labels, nl: int, props) -> None:
    mx, mean, med = radii(padded, labels, nl)
    props[:, _F["MaximumRadius"]] = mx
    props[:, _F["MeanRadius"]] = mean
    props[:, _F["MedianRadius"]] = med


def _radii_examples(rng):
    from ..stage_examples import masks

    for density in (0.45, 0.7):
        mk, _ = masks(rng, density=density)
        padded = np.pad(mk, ((0, 0), (1, 1), (1, 1)))
        has = padded.any(axis=(1, 2))
        ids = np.cumsum(has) * has
        yield (padded, (padded * ids[:, None, None]).astype(np.int32), int(ids.max())), {}


@stage("cp_sizeshape.radii", examples=_radii_examples,
       compare=_compare)
def radii(padded, labels, nl: int):
    """(3, nl + 1) maximum, mean and median distance to the background over each label's
    pixels (one label per plane; row 0 unused).

    The distance transform of every padded plane, all planes stacked in one image (their
    one-pixel frames keep them apart): one ``distance_transform_edt`` call; the median of
    each label's distances (NumPy's: the mean of the two middle values) from one sort.
    """
    xp = array_module(padded)
    m, hp, wp = padded.shape
    edt = ndimage(xp).distance_transform_edt(padded.reshape(m * hp, wp)).reshape(m, hp, wp)
    lab = labels.ravel()
    inside = lab > 0
    d = edt.ravel()[inside]
    lb = lab[inside].astype(xp.int64)
    cnt = xp.bincount(lb, minlength=nl + 1).astype(xp.float64)
    total = xp.bincount(lb, weights=d, minlength=nl + 1)
    mx = _sh._scatter(xp, "max", lb, d, nl + 1, 0.0)
    order = xp.lexsort(xp.stack([d, lb.astype(xp.float64)]))
    ds = d[order]
    start = (xp.cumsum(cnt) - cnt).astype(xp.int64)
    n = xp.maximum(cnt, 1).astype(xp.int64)
    last = max(ds.shape[0] - 1, 0)
    lo = xp.minimum(start + (n - 1) // 2, last)
    hi = xp.minimum(start + n // 2, last)
    med = xp.where(cnt > 0, (ds[lo] + ds[hi]) / 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xp.where(cnt > 0, total / cnt, 0.0)
    return xp.stack([mx, mean, med])


register(Family("cp_sizeshape", sizeshape_columns, compute_sizeshape, True,
                "CellProfiler's AreaShape measurements of the combined and every channel mask"))
