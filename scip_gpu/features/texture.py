"""Texture family: grey-level co-occurrence (GLCM) properties and Sobel statistics.

For every object, channel ``c`` and view (``mask``: channel ``c``'s own mask; ``combined``: the
union mask), SCIP (scip-behaviour.md 2.2 D) works on ``x = where(view_mask, pixels[c], nan)``:

1. quantisation (``quantise_scip``): 15 equal bins between ``nanmin(x)`` and ``nanmax(x)``
   (``numpy.histogram_bin_edges``; a constant region widens the range by +-0.5), then
   ``numpy.digitize(x, edges, right=True)``: levels 0..15, NaN (outside the view) level 16;
2. ``skimage.feature.graycomatrix(q, distances=[3, 5], angles=[pi/4, 3pi/4, 5pi/4, 7pi/4],
   levels=17, symmetric=True)[:-1, :-1]`` (``glcm_batched``), dropping the NaN level;
3. ``skimage.feature.graycoprops`` for contrast, dissimilarity, homogeneity, energy,
   correlation and ASM (``graycoprops_batched``); per property and distance the mean and the
   (population) standard deviation over the 4 angles;
4. ``skimage.filters.sobel(x)`` and its ``nanmean, nanstd, nanmax, nanmin`` (``sobel_statistics``).

28 values per view, 56 per channel. Columns per channel, in SCIP's order:
``glcm_mean_{p}_3, glcm_mean_{p}_5, glcm_std_{p}_3, glcm_std_{p}_5`` for each property ``p``,
then ``sobel_mean, sobel_std, sobel_max, sobel_min``, then the same 28 prefixed ``combined_``.

All objects, channels and both views of a batch go through one quantisation, one GLCM count
(a single ``bincount`` per distinct pixel offset), one vectorised ``graycoprops`` and one Sobel
filter: there is no per-object loop. With ``symmetric=True`` the angles 5pi/4 and 7pi/4 are
the negated offsets of pi/4 and 3pi/4 and give identical matrices, so only the 2 distinct
directions per distance are counted; the mean and std still run over SCIP's 4 angles.

Semantics that follow from scikit-image (and that SCIP therefore has):

* A view with pixels but without any in-view pixel pair at some offset (tiny masks) has an
  all-zero GLCM. ``graycoprops`` then gives 0 for contrast, dissimilarity, homogeneity, energy
  and ASM, and 1 for correlation (its zero-variance rule), not NaN.
* Correlation is 1 wherever either marginal standard deviation is below 1e-15. This rule is
  the same in scikit-image 0.20 (SCIP) and 0.26.
* Sobel weights are zero at the centre pixel, so a pixel just outside the mask whose eight
  neighbours are inside gets a finite Sobel value and counts in the statistics; a Sobel map
  that is NaN everywhere gives NaN.

Deviations from SCIP: an empty channel mask gives NaN (as in SCIP), an empty combined mask
gives NaN (SCIP raises), and ``MaskResult.usable == False`` gives NaN for every column.
Values are computed in float64 whatever the pixel dtype (SCIP's tiff loader yields float32,
in which NumPy would also quantise and filter).

The Sobel filter handles each object's border by reflection, in a padded stack (refilling the
margin) or in an unpadded one alike.

The functions ``quantise_scip``, ``glcm_batched``, ``graycoprops_batched`` and
``sobel_statistics`` are pure, written against the array namespace of their inputs (NumPy or
CuPy), and are the reference semantics of the kernels that replace them: the family is the
stage ``texture.block`` of ``scip_gpu.dispatch``, and its steps are the stages
``texture.masked_range``, ``texture.glcm_props`` (quantisation, GLCM counts and properties in
one) and ``texture.sobel_view_statistics``, each with a numba implementation
(``cpu_kernels``) registered beside the reference here.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..backend import array_module, ndimage
from ..batch import float_planes, refill, valid_mask
from ..dispatch import stage
from ..stage_examples import family_examples as _block_examples
from .registry import Column, Family, column_name, register

#: GLCM pixel-pair distances and angles (radians), as SCIP.
DISTANCES = (3, 5)
ANGLES = (math.pi / 4, 3 * math.pi / 4, 5 * math.pi / 4, 7 * math.pi / 4)
#: ``graycoprops`` properties in SCIP's column order.
PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
#: Equal-width bins of the quantisation; levels 0..BINS, plus BINS + 1 for NaN.
BINS = 15
LEVELS = BINS + 2
SOBEL_STATISTICS = ("mean", "std", "max", "min")
#: Values per object, channel and view.
N_VIEW = len(PROPERTIES) * 2 * len(DISTANCES) + len(SOBEL_STATISTICS)
VIEWS = ("mask", "combined")


# ---------------------------------------------------------------------------------------------
# Columns


def _view_keys(channel: str) -> list[tuple[str, str, str]]:
    """(key, feature, params) of the 28 values of one view, SCIP's order."""
    keys = []
    for p in PROPERTIES:
        for stat in ("mean", "std"):
            keys += [(f"glcm_{stat}_{p}_{d}_{channel}", f"glcm_{stat}_{p}", f"d={d}") for d in DISTANCES]
    keys += [(f"sobel_{s}_{channel}", f"sobel_{s}", "") for s in SOBEL_STATISTICS]
    return keys


def texture_columns(mask: str | None, channels) -> list[Column]:
    """The 56 texture columns of each channel, channels in order."""
    cols = []
    for ch in channels:
        for view in VIEWS:
            prefix = "" if view == "mask" else "combined_"
            cols += [
                Column(column_name("feat", mask, prefix + key), "feat", "texture", feature, mask,
                       view, ch, params)
                for key, feature, params in _view_keys(ch)
            ]
    return cols


# ---------------------------------------------------------------------------------------------
# Reference semantics (pure, array-namespace generic)


def _view_examples(rng):
    """(values, view, extents) of example planes: float64 blobs, integer-valued (ties) and
    constant planes; views inside each extent, with empty and one-pixel ones."""
    from ..stage_examples import images, masks

    for dtype, top in ((np.float64, 1.0), (np.uint16, 12.0), (np.uint16, 4000.0)):
        values, e = images(rng, dtype, m=10, top=top)
        view, _ = masks(rng, m=10)  # the same edge-case extents in the first planes
        yield values.astype(np.float64), view & valid_mask(e, values.shape[1:]), e


def _masked_range_examples(rng):
    for values, view, _ in _view_examples(rng):
        m = values.shape[0]
        yield (values.reshape(m, -1), view.reshape(m, -1)), {}


@stage("texture.masked_range", examples=_masked_range_examples)
def masked_range(values, view):
    """(min, max, any) of each (M, P) row over its view (``inf, -inf, False`` for none)."""
    xp = array_module(values)
    has = view.any(axis=1)
    lo = xp.where(view, values, xp.inf).min(axis=1)
    hi = xp.where(view, values, -xp.inf).max(axis=1)
    return lo, hi, has


def quantisation_edges(values, valid, *, bins: int = BINS):
    """Each plane's ``bins + 1`` quantisation edges, as
    ``numpy.histogram_bin_edges(x, bins, range=(nanmin(x), nanmax(x)))``.

    The edges are rebuilt with ``numpy.linspace``'s exact arithmetic,
    ``edge_k = start + k * (stop - start) / bins`` and ``edge_bins = stop`` (a constant region
    widens the range by +-0.5, an empty plane gets the range (-0.5, 0.5)).

    Parameters
    ----------
    values : (M, H, W) float64 ndarray
    valid : (M, H, W) bool ndarray
        Pixels of the view; NaN values must already be excluded.

    Returns
    -------
    (M, bins + 1) float64 ndarray
    """
    xp = array_module(values)
    m = values.shape[0]
    lo, hi, has = masked_range(values.reshape(m, -1), valid.reshape(m, -1))
    lo = xp.where(has, lo, 0.0)
    hi = xp.where(has, hi, 0.0)
    # numpy.histogram: an empty range is widened by 0.5 on either side
    same = lo == hi
    lo = xp.where(same, lo - 0.5, lo)
    hi = xp.where(same, hi + 0.5, hi)
    edges = ops.linspace_rows(lo, hi, bins + 1)  # numpy.linspace's arithmetic, bit for bit
    return edges


def quantise_scip(values, valid, *, bins: int = BINS):
    """SCIP's quantisation of each plane into ``bins + 1`` levels, NaN level ``bins + 1``.

    Per plane, the values of the valid pixels are binned as
    ``numpy.digitize(x, numpy.histogram_bin_edges(x, bins, range=(nanmin(x), nanmax(x))),
    right=True)`` with ``x`` the plane where invalid pixels are NaN (edges from
    ``quantisation_edges``), so the levels agree with NumPy's bit for bit.

    Parameters
    ----------
    values : (M, H, W) float64 ndarray
    valid : (M, H, W) bool ndarray
        Pixels of the view (inside the mask and the object's extent). NaN values count as
        invalid.

    Returns
    -------
    (M, H, W) int32 ndarray
        0..bins for valid pixels, ``bins + 1`` elsewhere. A plane without valid pixels is all
        ``bins + 1``.
    """
    xp = array_module(values)
    valid = valid & ~xp.isnan(values)
    return _quantise(values, valid, quantisation_edges(values, valid, bins=bins))


def _quantise(values, valid, edges):
    """Levels of ``quantise_scip`` for given (M, B + 1) edges: 0..B where ``valid``, B + 1
    elsewhere."""
    xp = array_module(values)
    bins = edges.shape[1] - 1
    # digitize(right=True) on increasing edges == number of edges strictly below x
    q = xp.zeros(values.shape, dtype=xp.uint8)
    for i in range(bins + 1):  # bins + 1 passes over the stack, not a per-object loop
        q += values > edges[:, i, None, None]
    return xp.where(valid, q, bins + 1).astype(xp.int32)


def sobel_valid(view, extents):
    """Where the Sobel map of ``where(view, x, nan)`` is finite: all eight neighbours (reflected
    at the image border, as ``skimage.filters.sobel``) lie in the view; the centre pixel has
    weight zero and does not count."""
    xp = array_module(view)
    ndi = ndimage(xp)
    v = refill(view, extents, "reflect", reach=1)
    # reflect at the array's edges too (top/left always; bottom/right where an unpadded batch
    # has no margin beyond the extent)
    v = xp.pad(v, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    ring = np.ones((1, 3, 3), dtype=bool)
    ring[0, 1, 1] = False
    out = ndi.binary_erosion(v, structure=xp.asarray(ring), border_value=1)
    return out[:, 1:-1, 1:-1]


def glcm_offset(distance: float, angle: float) -> tuple[int, int]:
    """(row, col) offset of ``graycomatrix``: ``round(sin(angle) * d), round(cos(angle) * d)``
    with C rounding (half away from zero), as scikit-image's ``_glcm_loop``."""

    def rnd(v: float) -> int:
        return int(v + 0.5) if v > 0 else int(v - 0.5)

    return rnd(math.sin(angle) * distance), rnd(math.cos(angle) * distance)


def _pair_counts(lv, offset, n_levels: int):
    """(M, L, L) counts of (level at p, level at p + offset) for one offset, over the pixel
    pairs where both levels are below ``n_levels`` (level ``n_levels`` marks excluded pixels)."""
    xp = array_module(lv)
    m, h, w = lv.shape
    dr, dc = offset
    r0, r1 = max(0, -dr), h - max(0, dr)
    c0, c1 = max(0, -dc), w - max(0, dc)
    if r1 <= r0 or c1 <= c0:
        return xp.zeros((m, n_levels, n_levels), dtype=xp.int64)
    a = lv[:, r0:r1, c0:c1]
    b = lv[:, r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    ok = (a < n_levels) & (b < n_levels)
    plane = xp.broadcast_to(xp.arange(m, dtype=xp.int32)[:, None, None], a.shape)
    codes = (plane[ok] * n_levels + a[ok]) * n_levels + b[ok]  # only the pairs that count
    return xp.bincount(codes, minlength=m * n_levels * n_levels).reshape(m, n_levels, n_levels)


def glcm_batched(levels, inside, offsets, *, n_levels: int = LEVELS, symmetric: bool = True):
    """``skimage.feature.graycomatrix`` of every plane, for a list of pixel offsets.

    Pairs are counted only where both pixels lie inside ``inside`` (each plane's real extent:
    each plane then gives exactly ``graycomatrix`` of its own cropped image; or a view mask:
    pairs leaving the view are not counted). With ``symmetric`` the counts of ``(i, j)`` and
    ``(j, i)`` are summed; an offset and its negation then give the same matrix and it is
    counted once.

    Method: for each distinct offset, the pixel pairs ``(p, p + offset)`` of the padded stack
    with both pixels inside become codes ``(plane * L + level(p)) * L + level(p + offset)`` and
    one ``bincount`` counts them all. (The padded stack holds every in-extent pair, objects
    being anchored top-left.)

    Parameters
    ----------
    levels : (M, H, W) int ndarray
        Grey levels in ``0..n_levels - 1`` (see ``quantise_scip``).
    inside : (M, H, W) bool ndarray
        Pixels that may form pairs.
    offsets : sequence of (row, col) int pairs, length K
        Pixel offsets, e.g. ``glcm_offset(d, a)`` for each distance and angle.
    n_levels : int
    symmetric : bool

    Returns
    -------
    (M, K, n_levels, n_levels) int64 ndarray
        ``out[m, k]`` equals ``graycomatrix(crop_m, ...)[:, :, d, a]`` for offset ``k``.
    """
    xp = array_module(levels)
    lv = xp.where(inside, levels, n_levels).astype(xp.int32)  # level n_levels: excluded
    done: dict[tuple[int, int], object] = {}
    out = []
    for dr, dc in offsets:  # a handful of offsets; each call covers the whole stack
        key = max((dr, dc), (-dr, -dc)) if symmetric else (dr, dc)
        if key not in done:
            p = _pair_counts(lv, key, n_levels)
            done[key] = p + xp.swapaxes(p, -1, -2) if symmetric else p
        out.append(done[key])
    return xp.stack(out, axis=1)


def _normalise(P):
    xp = array_module(P)
    s = P.sum(axis=(-2, -1), keepdims=True)
    return P / xp.where(s == 0, 1.0, s)


def _weights(n: int, xp):
    i = xp.arange(n, dtype=xp.float64)
    return i[:, None], i[None, :]


def _contrast(P, i, j):
    return (P * (i - j) ** 2).sum(axis=(-2, -1))


def _dissimilarity(P, i, j):
    return (P * abs(i - j)).sum(axis=(-2, -1))


def _homogeneity(P, i, j):
    return (P / (1.0 + (i - j) ** 2)).sum(axis=(-2, -1))


def _asm(P, i, j):
    return (P**2).sum(axis=(-2, -1))


def _energy(P, i, j):
    return array_module(P).sqrt(_asm(P, i, j))


def _correlation(P, i, j):
    """Pearson correlation of the two levels; 1 where either standard deviation is below 1e-15
    (scikit-image's rule, unchanged between 0.20 and 0.26)."""
    xp = array_module(P)
    di = i - (i * P).sum(axis=(-2, -1), keepdims=True)
    dj = j - (j * P).sum(axis=(-2, -1), keepdims=True)
    std_i = xp.sqrt((P * di**2).sum(axis=(-2, -1)))
    std_j = xp.sqrt((P * dj**2).sum(axis=(-2, -1)))
    cov = (P * (di * dj)).sum(axis=(-2, -1))
    flat = (std_i < 1e-15) | (std_j < 1e-15)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.where(flat, 1.0, cov / xp.where(flat, 1.0, std_i * std_j))


#: ``graycoprops`` property -> function of the normalised matrix and the level grids.
GRAYCOPROPS = {
    "contrast": _contrast,
    "dissimilarity": _dissimilarity,
    "homogeneity": _homogeneity,
    "energy": _energy,
    "correlation": _correlation,
    "ASM": _asm,
}


def graycoprops_batched(P, props=PROPERTIES):
    """``skimage.feature.graycoprops`` of a stack of co-occurrence matrices.

    Each matrix is normalised to sum 1 first (an all-zero matrix stays zero), as scikit-image.

    Parameters
    ----------
    P : (..., L, L) ndarray
        Co-occurrence counts, levels last.
    props : sequence of str
        Keys of ``GRAYCOPROPS``.

    Returns
    -------
    (..., len(props)) float64 ndarray
    """
    xp = array_module(P)
    Pn = _normalise(P.astype(xp.float64))
    i, j = _weights(P.shape[-1], xp)
    return xp.stack([GRAYCOPROPS[p](Pn, i, j) for p in props], axis=-1)


def _glcm_examples(rng):
    offsets = sorted({max(o, (-o[0], -o[1])) for o in
                      (glcm_offset(d, a) for d in DISTANCES for a in ANGLES)})
    for values, view, e in _view_examples(rng):
        yield (values, view, e, quantisation_edges(values, view), offsets), {}
    yield (values, view, e, quantisation_edges(values, view), [(0, 1), (2, -1), (15, 0)]), {}
    yield (values, view, e, quantisation_edges(values, view, bins=7), offsets), {}


@stage("texture.glcm_props", examples=_glcm_examples)
def glcm_props(values, view, extents, edges, offsets):
    """``graycoprops`` of the symmetric GLCM of every plane's view, for each offset.

    The quantisation (``quantise_scip`` with the given edges), the symmetric co-occurrence
    counts of in-view pixel pairs (``glcm_batched``) and the six properties
    (``graycoprops_batched``) in one stage.

    Parameters
    ----------
    values : (M, H, W) float64 ndarray
    view : (M, H, W) bool ndarray
        Pixels of the view, inside each plane's extent and without NaN values.
    extents : (M, 2) int ndarray
    edges : (M, B + 1) float64 ndarray
        Each plane's quantisation edges (``quantisation_edges``): levels 0..B.
    offsets : sequence of K (row, col) pairs
        Distinct up to sign (each is counted symmetrically).

    Returns
    -------
    (M, K, 6) float64 ndarray
        contrast, dissimilarity, homogeneity, energy, correlation, ASM (``PROPERTIES``).
    """
    q = _quantise(values, view, edges)
    return graycoprops_batched(glcm_batched(q, view, offsets, n_levels=edges.shape[1]))


def sobel_statistics(s, inside):
    """``nanmean, nanstd, nanmax, nanmin`` of each plane's Sobel map over its extent.

    Parameters
    ----------
    s : (M, H, W) float ndarray
        Sobel maps, NaN where a neighbour lies outside the view.
    inside : (M, H, W) bool ndarray
        Each plane's real extent.

    Returns
    -------
    (M, 4) float64 ndarray
        NaN for planes whose map is NaN everywhere.
    """
    xp = array_module(s)
    m = s.shape[0]
    s = s.reshape(m, -1).astype(xp.float64, copy=False)
    ok = inside.reshape(m, -1) & ~xp.isnan(s)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xp.where(ok, s, 0.0).sum(axis=1) / n
        var = xp.where(ok, (s - mean[:, None]) ** 2, 0.0).sum(axis=1) / n
        mx = xp.where(ok, s, -xp.inf).max(axis=1)
        mn = xp.where(ok, s, xp.inf).min(axis=1)
    out = xp.stack([mean, xp.sqrt(var), mx, mn], axis=1)
    return xp.where((n > 0)[:, None], out, xp.nan)


def _sobel_view_examples(rng):
    for values, view, e in _view_examples(rng):
        yield (ops.sobel(values, e), view, e), {}
        yield (ops.sobel(values, e), valid_mask(e, values.shape[1:]), e), {}


@stage("texture.sobel_view_statistics", examples=_sobel_view_examples)
def sobel_view_statistics(sob, view, extents):
    """``sobel_statistics`` of the Sobel map of ``where(view, x, nan)``, from the map ``sob`` of
    the unmasked ``x``: (M, 4) ``nanmean, nanstd, nanmax, nanmin`` over the pixels of each
    extent whose eight neighbours all lie in the view (``sobel_valid``)."""
    inside = valid_mask(extents, sob.shape[1:])
    return sobel_statistics(sob, inside & sobel_valid(view, extents))


def texture_planes(values, view, extents, sobel=None):
    """The 28 texture values of each plane, in SCIP's column order (see ``texture_columns``).

    Parameters
    ----------
    values : (M, H, W) float64 ndarray
        One channel image per plane, anchored top-left.
    view : (M, H, W) bool ndarray
        The mask of the view (pixels with a NaN value are not part of it).
    extents : (M, 2) int ndarray
        Each plane's real (height, width).
    sobel : (M, H, W) float64 ndarray, optional
        ``ops.sobel`` of the unmasked ``values`` (shared between views); the Sobel map of the
        masked image is then this map where all eight neighbours are in the view
        (``sobel_valid``), which is what ``sobel(where(view, values, nan))`` gives.

    Returns
    -------
    (M, 28) float64 ndarray
        Planes with an empty view are NaN.
    """
    xp = array_module(values)
    m, h, w = values.shape
    inside = valid_mask(extents, (h, w))
    view = view & inside & ~xp.isnan(values)
    offsets = [glcm_offset(d, a) for d in DISTANCES for a in ANGLES]
    # with symmetric counts an offset and its negation give the same matrix: count each once.
    # Pairs with a pixel outside the view (SCIP's NaN level) are not counted: the same as
    # graycomatrix(..., levels=17)[:-1, :-1]
    canon = [max(o, (-o[0], -o[1])) for o in offsets]
    uniq = sorted(set(canon))
    props = glcm_props(values, view, extents, quantisation_edges(values, view), uniq)
    props = props[:, [uniq.index(o) for o in canon]]  # (M, D*A, P)
    props = props.reshape(m, len(DISTANCES), len(ANGLES), len(PROPERTIES))
    stats = xp.stack([props.mean(axis=2), props.std(axis=2)], axis=1)  # (M, 2, D, P)
    glcm_part = xp.moveaxis(stats, -1, 1).reshape(m, -1)  # (M, P * 2 * D): p, stat, d
    if sobel is None:
        sob = sobel_statistics(ops.sobel(xp.where(view, values, xp.nan), extents), inside)
    else:
        sob = sobel_view_statistics(sobel, view, extents)
    out = xp.concatenate([glcm_part, sob], axis=1)
    empty = ~view.reshape(m, -1).any(axis=1)
    return xp.where(empty[:, None], xp.nan, out)


# ---------------------------------------------------------------------------------------------
# Family



@stage("texture.block", examples=_block_examples)
def compute_texture(batch, mr, ctx):
    """(N, C*56) texture features of one mask, columns as ``texture_columns`` (the stage
    ``texture.block``).

    Both views of every channel of every object are stacked into one set of 2*N*C planes and
    computed together.
    """
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    px = float_planes(batch)
    ext = xp.repeat(batch.extents, c, axis=0)
    if "sobel_planes" not in batch.cache:  # one Sobel map per channel plane, shared by the masks
        batch.cache["sobel_planes"] = ops.sobel(px, ext)
    sob = batch.cache["sobel_planes"]
    chan = mr.mask.reshape(n * c, h, w)
    comb = xp.broadcast_to(mr.combined[:, None], (n, c, h, w)).reshape(n * c, h, w)
    views = [texture_planes(px, v, ext, sobel=sob) for v in (chan, comb)]  # (n*c, 28) each
    res = xp.stack(views, axis=1).reshape(n, c * 2 * N_VIEW)  # per channel: mask view, combined
    return xp.where(mr.usable[:, None], res, xp.nan)


register(Family("texture", texture_columns, compute_texture, True,
                "GLCM properties (mean/std over 4 angles, d=3,5) and Sobel statistics per "
                "channel, on the channel mask and the combined mask"))
