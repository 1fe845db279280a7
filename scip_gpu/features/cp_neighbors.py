"""CellProfiler's MeasureObjectNeighbors (``Neighbors_*``) of segmented fields of view.

Neighbours need the whole field's label image, which only the fields pipeline has (before it
crops the objects): ``field_pipeline.process_fields`` computes them per field and compartment
with ``field_neighbors`` and writes them into the rows of the field's objects. The family is
therefore *per field* (``Family.per_field``): for datasets without a segmentation (IFC objects,
in-memory images) it has no columns, and ``profile_batch`` never computes it.

Per object (the objects are the labels of one compartment's label image, each other object a
potential neighbour, as CellProfiler with "neighbors are the objects themselves"):

* ``NumberOfNeighbors``: the objects with a pixel within the structuring disk of radius ``d``
  (CellProfiler's ``strel_disk``: offsets with ``dy² + dx² <= d²``) of one of the object's
  pixels;
* ``PercentTouching``: the percentage of the object's outline pixels (a pixel of the object with
  an 8-neighbour of another label, or on the image edge: centrosome's ``outline``) within the
  disk of radius ``d + 0.5`` of another object's pixel;
* ``FirstClosestObjectNumber`` / ``SecondClosestObjectNumber``: the label numbers of the objects
  whose centres (mean pixel position) are nearest and second nearest to the object's centre,
  ties broken by the lower label number (CellProfiler's stable sort); their numbers are the
  ``meta_label`` of the rows, so rows join on them;
* ``FirstClosestDistance`` / ``SecondClosestDistance``: the distances between the centres;
* ``AngleBetweenNeighbors``: the angle (degrees) at the object's centre between the vectors to
  the first and second closest centres.

The method (``features.cellprofiler.neighbors_method``) chooses ``d`` and the labels:

``expand`` (CellProfiler's and cp_measure's default, "Expand until adjacent")
    every background pixel takes the label of its nearest object pixel (SciPy's exact distance
    transform, as CellProfiler), and ``d = 1`` on these expanded labels; centres stay those of
    the objects. The measurement suffix is ``Expanded``.
``within`` ("Within a specified distance")
    ``d = neighbors_distance`` (default 5) on the labels as segmented; suffix ``{d}``.
``adjacent``
    ``d = 1`` on the labels as segmented; suffix ``Adjacent``.

Where a field has fewer than two objects (three for the second closest and the angle), the
closest numbers, distances and angle are NaN (CellProfiler writes 0, which is also the value of
a real distance).

Array form, no per-object loop: every outline pixel against every disk offset at once (only
outline pixels can be near another object), label pairs counted with ``numpy.unique``, outline
and touching pixels with ``numpy.bincount``; the closest objects from a k-d tree of the centres
(``scipy.spatial``). Runs on the CPU (NumPy/SciPy) on every device: its cost is that of the
outline pixels, small beside the profiling of the objects.
"""

from __future__ import annotations

import numpy as np

from .registry import Column, Family, register

#: CellProfiler's measurement names, in column order
FEATURES = ("NumberOfNeighbors", "PercentTouching", "FirstClosestObjectNumber", "FirstClosestDistance",
            "SecondClosestObjectNumber", "SecondClosestDistance", "AngleBetweenNeighbors")
METHODS = ("expand", "within", "adjacent")
#: compartments (label images of the fields pipeline) in their column order
COMPARTMENT_ORDER = ("nucleus", "cell", "cytoplasm")


def _options(options) -> tuple[str, int]:
    if options is None:
        return "expand", 5
    return str(getattr(options, "neighbors_method", "expand")), int(getattr(options, "neighbors_distance", 5))


def scale_name(method: str, distance: int) -> str:
    """CellProfiler's suffix of the measurement names: ``Expanded``, ``Adjacent`` or the distance."""
    return {"expand": "Expanded", "adjacent": "Adjacent"}.get(method, str(distance))


def neighbor_compartments(compartments) -> list[str]:
    """The distinct compartments the channels are measured in, in ``COMPARTMENT_ORDER``."""
    got = set(compartments)
    return [c for c in COMPARTMENT_ORDER if c in got]


def neighbors_columns(mask: str | None, channels, *, options=None, compartments=None) -> list[Column]:
    """Columns of the family for the segmentation's mask ``mask``: 7 per compartment in
    ``compartments`` (none without: the family is per field of view)."""
    from .cp_common import cp_column

    method, distance = _options(options)
    scale = scale_name(method, distance)
    params = f"method={method}" + (f",distance={distance}" if method == "within" else "")
    cols = []
    for comp in neighbor_compartments(compartments or ()):
        for f in FEATURES:
            cols.append(cp_column("cp_neighbors", mask, "Neighbors", f, comp, comp, suffix=scale,
                                  params=f"objects={comp};{params}"))
    return cols


def _not_per_batch(batch, mr, ctx):
    """Neighbours are computed per field of view (``field_neighbors``), never per batch."""
    raise RuntimeError("cp_neighbors is computed by the fields pipeline from the field's label image")


def strel_offsets(radius: float) -> np.ndarray:
    """(K, 2) offsets (dy, dx) of CellProfiler's disk structuring element of ``radius`` (centrosome's
    ``strel_disk``: ``dy² + dx² <= radius²``), the centre excluded.

    >>> strel_offsets(1).tolist()
    [[-1, 0], [0, -1], [0, 1], [1, 0]]
    """
    r = int(radius)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = (dy * dy + dx * dx <= radius * radius) & ((dy != 0) | (dx != 0))
    return np.stack([dy[keep], dx[keep]], axis=1)


def _shifted(a: np.ndarray, dy: int, dx: int):
    """(a[p], a[p + (dy, dx)], the slice of p) over every p with both inside the image."""
    h, w = a.shape
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    return (a[y0:y1, x0:x1], a[y0 + dy:y1 + dy, x0 + dx:x1 + dx], (slice(y0, y1), slice(x0, x1)))


def outline(labels: np.ndarray) -> np.ndarray:
    """Object pixels with an 8-neighbour of another label, and object pixels on the image edge
    (centrosome's ``outline``, which CellProfiler's perimeter of PercentTouching counts)."""
    diff = np.zeros(labels.shape, bool)
    diff[[0, -1], :] = True
    diff[:, [0, -1]] = True
    for dy, dx in strel_offsets(1.5):
        a, b, sl = _shifted(labels, int(dy), int(dx))
        diff[sl] |= a != b
    return diff & (labels != 0)


def expand_labels(labels: np.ndarray) -> np.ndarray:
    """Every background pixel given the label of its nearest object pixel (SciPy's exact
    Euclidean distance transform and its tie rule, as CellProfiler's "Expand until adjacent")."""
    from scipy import ndimage

    if not (labels == 0).any() or not labels.any():
        return labels.copy()
    i, j = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[i, j]


def field_neighbors(labels: np.ndarray, method: str = "expand", distance: int = 5):
    """CellProfiler's neighbour measurements of every object of one label image.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        0 is background; any positive label numbers (not necessarily contiguous).
    method : {"expand", "within", "adjacent"}
    distance : int
        The neighbour distance of ``within`` (pixels).

    Returns
    -------
    ids : (N,) int64 ndarray
        The label numbers present, ascending.
    values : (N, 7) float64 ndarray
        ``FEATURES`` per object.
    """
    from scipy.spatial import cKDTree

    if method not in METHODS:
        raise ValueError(f"unknown neighbour method {method!r} (choose from {list(METHODS)})")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"neighbours need a 2-D label image, got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    ids = np.flatnonzero(counts)
    n = len(ids)
    out = np.full((n, len(FEATURES)), np.nan)
    if n == 0:
        return ids, out
    index = np.zeros(len(counts), dtype=np.int64)  # label number -> row
    index[ids] = np.arange(n)
    # centres of the objects as segmented (centrosome's centers_of_labels)
    h, w = labels.shape
    flat = labels.ravel()
    cy = np.bincount(flat, np.repeat(np.arange(h, dtype=np.float64), w), minlength=len(counts))[ids] / counts[ids]
    cx = np.bincount(flat, np.tile(np.arange(w, dtype=np.float64), h), minlength=len(counts))[ids] / counts[ids]
    # the labels the neighbourhoods are taken on, and the disk radius
    lab = expand_labels(labels) if method == "expand" else labels
    d = distance if method == "within" else 1
    # only outline pixels can be within the disk of another object's pixel (a digital line from
    # an inner pixel to the other object leaves the object through an outline pixel no farther
    # from it): every outline pixel against every disk offset at once
    m = len(counts)
    edge = outline(lab)
    py, px = np.nonzero(edge)
    a = lab[py, px]
    offs = strel_offsets(d + 0.5)  # the touching disk holds the neighbour disk
    in_d = (offs ** 2).sum(axis=1) <= d * d
    r = int(d + 0.5)
    padded = np.pad(lab.astype(np.int32 if m < 2**31 else np.int64), r)  # zeros beyond the image
    w2 = padded.shape[1]
    flat_p = padded.ravel()
    at = (py + r) * w2 + (px + r)
    step = offs[:, 0] * w2 + offs[:, 1]
    touch = np.zeros(len(a), bool)
    codes = []
    for chunk in range(0, len(a), 1 << 15):  # bounded memory on large fields
        sl = slice(chunk, chunk + (1 << 15))
        b = flat_p[at[sl][None, :] + step[:, None]]
        hit = (b != 0) & (b != a[sl][None, :])
        touch[sl] = hit.any(axis=0)
        near = hit[in_d]
        if near.any():
            k_, j_ = np.nonzero(near)
            codes.append(np.unique(a[sl][j_] * m + b[in_d][k_, j_]))
    pairs = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
    out[:, 0] = np.bincount(index[pairs // m], minlength=n)
    # percent touching: outline pixels within the disk of radius d + 0.5 of another object
    perim = np.bincount(a, minlength=m)[ids]
    touching = np.bincount(a[touch], minlength=m)[ids]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 1] = touching * 100 / perim
    if n < 2:
        return ids, out
    # closest objects: the k-d tree's candidates, ordered by exact distance then label number
    k = min(n, 3)
    centres = np.stack([cy, cx], axis=1)
    tree = cKDTree(centres)
    dist, cand = tree.query(centres, k=k)
    dist = np.asarray(dist).reshape(n, k)
    cand = np.asarray(cand).reshape(n, k)
    # rows whose k-th distance ties with another object's: their full order (rare)
    reach = tree.query_ball_point(centres, dist[:, -1] * (1 + 1e-9) + 1e-12, return_length=True)
    tied = np.flatnonzero(reach > k)
    order = _ordered(centres, cand, np.arange(n))
    if len(tied):
        order[tied] = _ordered(centres, np.broadcast_to(np.arange(n), (len(tied), n)), tied)[:, :k]
    first = order[:, 1]
    v1y, v1x = cy[first] - cy, cx[first] - cx
    out[:, 2] = ids[first]
    out[:, 3] = np.sqrt(v1x ** 2 + v1y ** 2)
    if n >= 3:
        second = order[:, 2]
        v2y, v2x = cy[second] - cy, cx[second] - cx
        out[:, 4] = ids[second]
        out[:, 5] = np.sqrt(v2x ** 2 + v2y ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            dot = (v1x * v2x + v1y * v2y) / np.sqrt((v1x ** 2 + v1y ** 2) * (v2x ** 2 + v2y ** 2))
        out[:, 6] = np.arccos(dot) * 180.0 / np.pi
    return ids, out


def _ordered(centres: np.ndarray, cand: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Candidates ``cand`` (R, K) of the objects ``rows`` sorted by the distance between centres
    (CellProfiler's formula) and then by their number (a stable sort of the numbers)."""
    cand = np.sort(cand, axis=1)  # ascending numbers: the stable sort keeps them in that order on ties
    di = centres[rows, 0][:, None] - centres[cand, 0]
    dj = centres[rows, 1][:, None] - centres[cand, 1]
    dr = np.sqrt(di * di + dj * dj)
    return np.take_along_axis(cand, np.argsort(dr, axis=1, kind="stable"), axis=1)


def rows_of_field(labels: dict, object_labels, compartments, options) -> np.ndarray:
    """(N, 7 * compartments) neighbour values of a field's objects ``object_labels`` (their label
    numbers, as ``meta_label``), columns as ``neighbors_columns``; NaN where an object has no
    pixel in a compartment's label image."""
    method, distance = _options(options)
    comps = neighbor_compartments(compartments)
    object_labels = np.asarray(object_labels, dtype=np.int64)
    out = np.full((len(object_labels), len(FEATURES) * len(comps)), np.nan)
    for k, comp in enumerate(comps):
        ids, vals = field_neighbors(np.asarray(labels[comp]), method, distance)
        if not len(ids):
            continue
        pos = np.minimum(np.searchsorted(ids, object_labels), len(ids) - 1)
        found = ids[pos] == object_labels
        out[found, k * len(FEATURES):(k + 1) * len(FEATURES)] = vals[pos[found]]
    return out


register(Family("cp_neighbors", neighbors_columns, _not_per_batch, True,
                "CellProfiler's MeasureObjectNeighbors of segmented fields of view (per compartment's "
                "label image; no columns for datasets without a segmentation)", options=True, per_field=True))
