"""CellProfiler's MeasureTexture (``Texture_*``): the 13 Haralick features per direction and
scale, batched over objects.

For every object and channel ``c`` the object is channel ``c``'s own mask, as in
``cp_intensity``. CellProfiler (cp_measure's ``get_texture``, mahotas' ``haralick``):

1. the image is CellProfiler's float image (integer pixels divided by their type's maximum,
   float pixels taken as they are, clipped to [0, 1]) converted by
   ``skimage.util.img_as_ubyte`` (:math:`\\mathrm{rint}(255 x)`); with ``levels`` other than
   256, rescaled to ``0 .. levels - 1`` (``rescale_intensity`` then truncation to uint8);
   pixels outside the object are 0;
2. per direction ``(0, 1), (1, 1), (1, 0), (1, -1)`` times the scale, the symmetric
   co-occurrence counts of the pixel pairs, pairs with a 0 (outside the object, or a pixel
   quantised to 0) left out;
3. mahotas' 13 features of each normalised matrix (``haralick_features``): AngularSecondMoment,
   Contrast, Correlation, Variance, InverseDifferenceMoment, SumAverage, SumVariance,
   SumEntropy, Entropy, DifferenceVariance (the variance of the ``|i - j|`` distribution over
   the object's ``max level + 1`` entries, mahotas' default), DifferenceEntropy, InfoMeas1,
   InfoMeas2. An object with no pair in some direction at a scale gets NaN for every value of
   that scale (mahotas raises, cp_measure writes NaN).

HXY2 (the entropy of :math:`p_x p_y`) is taken as :math:`H_X + H_Y`, its exact value; mahotas
sums the outer product, which differs in the last bits (and InfoMeas2 can amplify that where
:math:`HXY2 \\approx H`).

Array path: all pairs of all planes and directions are keyed ``(plane, direction, i, j)`` and
counted with one sort (``unique``); every feature is then a weighted ``bincount`` over the
distinct pairs, or over the (group, level) marginals; no per-object loop. The ``cpu``
implementation (numba) counts each plane's matrix densely over its levels.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from .cp_common import cp_column, cp_image
from .registry import Family, register

HARALICK = (
    "AngularSecondMoment", "Contrast", "Correlation", "Variance", "InverseDifferenceMoment",
    "SumAverage", "SumVariance", "SumEntropy", "Entropy", "DifferenceVariance",
    "DifferenceEntropy", "InfoMeas1", "InfoMeas2",
)
#: mahotas' 2-D directions (row, column steps)
DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1))
DEFAULT_SCALES = (3,)
DEFAULT_LEVELS = 256


def _options(options):
    if options is None:
        return list(DEFAULT_SCALES), DEFAULT_LEVELS
    return [int(s) for s in options.texture_scales], int(options.texture_levels)


def texture_columns(mask: str | None, channels, *, options=None) -> list:
    """Per channel, scale and direction the 13 features, CellProfiler's name order
    ``Texture_{feature}_{channel}_{scale}_{direction:02d}_{levels}``."""
    scales, levels = _options(options)
    cols = []
    for ch in channels:
        for s in scales:
            for d in range(len(DIRECTIONS)):
                for f in HARALICK:
                    cols.append(cp_column("cp_texture", mask, "Texture", f, ch, "mask",
                                          suffix=f"{s}_{d:02d}_{levels}",
                                          params=f"scale={s},direction={d},levels={levels}"))
    return cols


def quantise_cp(pixels, view, levels: int = DEFAULT_LEVELS):
    """CellProfiler's gray levels of each plane (0 outside ``view``).

    Parameters
    ----------
    pixels : (M, H, W) ndarray
        Integer pixels are divided by their type's maximum (CellProfiler's float image); float
        pixels are taken as they are (clipped to [0, 1]).
    view : (M, H, W) bool ndarray
    levels : int

    Returns
    -------
    (M, H, W) int32 ndarray
    """
    xp = array_namespace(pixels)
    x = xp.clip(cp_image(pixels), 0.0, 1.0)
    q = xp.clip(xp.rint(x * 255.0), 0, 255)
    if levels != 256:
        q = xp.floor(q / 255.0 * (levels - 1))
    return xp.where(view, q, 0).astype(xp.int32)



@stage("cp_texture.block", examples=_block_examples)
def compute_texture(batch, mr, ctx):
    """(N, C * scales * 4 * 13) Haralick features of one mask, columns as ``texture_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    scales, levels = _options(getattr(ctx, "cellprofiler", None))
    view = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
    q = quantise_cp(batch.pixels.reshape(n * c, h, w), view, levels)
    out = [haralick_planes(q, int(s), levels) for s in scales]  # (n*c, 4, 13) each
    res = xp.stack(out, axis=1).reshape(n, -1)
    return xp.where(xp.asarray(mr.usable)[:, None], res, xp.nan)


def _haralick_examples(rng):
    # scales 1 and 3 with 256 and 8 levels, each combination on two of the family examples
    # (the CUDA kernel's emulation runs every example: few, to keep the test suite short)
    for k, ((batch, mr, ctx), _) in enumerate(_block_examples(rng)):
        n, c, h, w = batch.pixels.shape
        view = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
        for scale, levels in (((1, 256), (3, 8)) if k % 2 == 0 else ((1, 8), (3, 256))):
            q = quantise_cp(batch.pixels.reshape(n * c, h, w), view, levels)
            yield (q, scale, levels), {}


def _compare(ref, got, args, kwargs):
    """Compiled sums run in another order than the bincounts."""
    assert_equivalent(ref, got, rtol=1e-9, atol=1e-10)


def _entropy_terms(xp, p):
    """-p log2 p, 0 where p is 0 (mahotas' ``_entropy``)."""
    return -p * xp.log2(xp.where(p > 0, p, 1.0))


@stage("cp_texture.haralick", examples=_haralick_examples, compare=_compare)
def haralick_planes(q, scale: int, levels: int):
    """The 13 Haralick features of every plane and direction at one scale.

    Parameters
    ----------
    q : (M, H, W) int ndarray
        Gray levels (``quantise_cp``), 0 outside the object.
    scale : int
    levels : int

    Returns
    -------
    (M, 4, 13) float64 ndarray
        NaN for a plane without a pair in some direction.
    """
    xp = array_namespace(q)
    m, h, w = q.shape
    L = levels
    keys = []
    for d, (dy, dx) in enumerate(DIRECTIONS):
        dy, dx = dy * scale, dx * scale
        if dy >= h or abs(dx) >= w:
            continue
        a = q[:, : h - dy, max(0, -dx): w - max(0, dx)]
        b = q[:, dy:, max(0, dx): w - max(0, -dx)]
        ok = (a > 0) & (b > 0)
        g = (xp.arange(m, dtype=xp.int64)[:, None, None] * 4 + d)
        g = xp.broadcast_to(g, a.shape)[ok]
        av = a[ok].astype(xp.int64)
        bv = b[ok].astype(xp.int64)
        keys += [(g * L + av) * L + bv, (g * L + bv) * L + av]
    G = m * 4
    if keys:
        uniq = xp.unique_counts(xp.concatenate(keys))  # one sort for all planes and directions
        uk, cnt = uniq.values, uniq.counts
    else:
        uk = xp.zeros(0, dtype=xp.int64)
        cnt = xp.zeros(0, dtype=xp.int64)
    grp = uk // (L * L)
    i = ((uk // L) % L).astype(xp.float64)
    j = (uk % L).astype(xp.float64)
    c = cnt.astype(xp.float64)
    T = xp.bincount(grp, weights=c, minlength=G)
    p = c / xp.where(T > 0, T, 1.0)[grp]

    def gsum(wt):
        return xp.bincount(grp, weights=wt, minlength=G)

    gi = grp * L + (uk // L) % L
    gj = grp * L + uk % L
    px = xp.bincount(gj, weights=p, minlength=G * L).reshape(G, L)  # column sums, p.sum(0)
    py = xp.bincount(gi, weights=p, minlength=G * L).reshape(G, L)  # row sums, p.sum(1)
    k = xp.arange(L, dtype=xp.float64)
    ux = px @ k
    uy = py @ k
    vx = px @ (k * k) - ux**2
    vy = py @ (k * k) - uy**2
    sx, sy = xp.sqrt(vx), xp.sqrt(vy)
    d_ = xp.abs(i - j)
    s_ = i + j
    pp = xp.bincount(grp * (2 * L) + (s_).astype(xp.int64), weights=p, minlength=G * 2 * L).reshape(G, 2 * L)
    pm = xp.bincount(grp * L + d_.astype(xp.int64), weights=p, minlength=G * L).reshape(G, L)
    tk = xp.arange(2 * L, dtype=xp.float64)
    asm = gsum(p * p)
    contrast = pm @ (k * k)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = xp.where((sx == 0) | (sy == 0), 1.0, (gsum(i * j * p) - ux * uy) / sx / sy)
    idm = gsum(p / (1.0 + d_ * d_))
    savg = pp @ tk
    svar = pp @ (tk * tk) - savg**2
    sent = _entropy_terms(xp, pp).sum(axis=1)
    ent = gsum(_entropy_terms(xp, p))
    # mahotas: the variance of |i - j|'s distribution over max level + 1 entries
    maxv = (q.reshape(m, -1).max(axis=1) + 1).astype(xp.float64)
    maxv = xp.repeat(maxv, 4)
    dvar = (pm * pm).sum(axis=1) / maxv - (pm.sum(axis=1) / maxv) ** 2
    dent = _entropy_terms(xp, pm).sum(axis=1)
    hx = _entropy_terms(xp, px).sum(axis=1)
    hy = _entropy_terms(xp, py).sum(axis=1)
    lpx = xp.log2(xp.where(px > 0, px, 1.0)).reshape(-1)
    lpy = xp.log2(xp.where(py > 0, py, 1.0)).reshape(-1)
    hxy1 = -gsum(p * (lpx[gi] + lpy[gj]))
    hmax = xp.maximum(hx, hy)
    with np.errstate(invalid="ignore", divide="ignore"):
        im1 = xp.where(hmax == 0, ent - hxy1, (ent - hxy1) / xp.where(hmax == 0, 1.0, hmax))
    hxy2 = hx + hy
    im2 = xp.sqrt(xp.maximum(0.0, 1 - xp.exp(-2.0 * (hxy2 - ent))))
    res = xp.stack([asm, contrast, corr, vx, idm, savg, svar, sent, ent, dvar, dent, im1, im2],
                   axis=1).reshape(m, 4, 13)
    bad = (T.reshape(m, 4) == 0).any(axis=1)
    return xp.where(bad[:, None, None], xp.nan, res)


register(Family("cp_texture", texture_columns, compute_texture, True,
                "CellProfiler's Haralick texture (13 features x 4 directions per scale) of every "
                "channel in its mask", options=True))
