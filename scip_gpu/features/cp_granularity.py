"""CellProfiler's MeasureGranularity (``Granularity_{k}_{channel}``): the granular spectrum of
every channel, batched over objects.

For every object and channel ``c`` the image is the object's image (its extent, as cp_measure is
given it by ``benchmarks/parity_cp_measure.py``) and the object is channel ``c``'s own mask, as
in ``cp_intensity``; intensities are CellProfiler's [0, 1] image. CellProfiler (cp_measure's
``get_granularity``; options ``features.cellprofiler.granularity_*``, CellProfiler's defaults
``subsample_size`` 0.25, ``image_sample_size`` 0.25, ``element_size`` 10, ``spectrum_length`` 16):

1. the image of ``h x w`` pixels is resampled to ``int(h s) x int(w s)`` (``s`` the subsample
   size) by ``scipy.ndimage.map_coordinates(order=1)`` at ``(a / s, b / s)``; fewer than 2 rows
   or columns give NaN;
2. background: the resampled image resampled again at ``(a / t, b / t)`` (``t`` the image
   sample size; ``ceil(n t)`` samples per axis), opened (grey erosion then dilation) with
   ``disk(element_size)``, brought back to the resampled grid at ``a (n t - 1) / (n - 1)``
   (CellProfiler's own scale: ``n t`` unrounded) and subtracted; negative values set to 0;
3. ``spectrum_length`` times: grey erosion with the 3x3 cross, then morphological reconstruction
   (by dilation, 3x3 cross) of the eroded image under the background-subtracted one; the
   reconstruction is brought back to the object's image at ``r (n - 1) / (h - 1)`` (bilinear,
   0 where a coordinate falls past the grid, as SciPy's ``mode='constant'``) and averaged over
   the object;
4. ``Granularity_k`` :math:`= 100 (m_{k-1} - m_k) / \\max(m_0, \\epsilon)`, :math:`m_0` the
   object's mean of the original (not background-subtracted) image.

Border handling: SciPy's and scikit-image's ``reflect`` mode of the morphology equals leaving
out the pixels beyond the image for these footprints (a reflected pixel is never farther from
the centre than the one it replaces); the array path marks them ``+inf`` / ``-inf``.

Step 3's "bring back and average" is linear in the reconstruction: each object has one weight
image over the resampled grid (the sum of the bilinear weights of its pixels, cp_measure's fused
operator), and every step's mean is one weighted sum.

Array path: all planes at once on padded grids (each plane's sizes and scales its own), the
morphology with ``ndimage.grey_erosion/grey_dilation`` over the batch, the reconstruction by
geodesic dilation of all planes until nothing changes. The ``cpu`` implementation (numba) runs
the same per plane, the reconstruction by raster and anti-raster scans until stable; the
``cuda`` implementation (``kernels/granularity.cu``) repeats the numba kernel with one thread
block per plane (the reconstruction by row and column sweeps), bit for bit.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..backend import array_module, asnumpy, ndimage
from ..dispatch import assert_equivalent, stage
from ..stage_examples import family_examples as _block_examples
from .cp_common import cp_column, cp_image
from .registry import Family, register

#: CellProfiler's defaults (subsample size, image sample size, element size, spectrum length)
DEFAULTS = (0.25, 0.25, 10, 16)


def _options(options):
    if options is None:
        return DEFAULTS
    return (float(options.granularity_subsample_size), float(options.granularity_image_sample_size),
            int(options.granularity_element_size), int(options.granularity_spectrum_length))


def granularity_columns(mask: str | None, channels, *, options=None) -> list:
    """Per channel ``Granularity_1 .. Granularity_{spectrum_length}`` (CellProfiler's names
    ``Granularity_{k}_{channel}``)."""
    s, t, e, length = _options(options)
    return [cp_column("cp_granularity", mask, "Granularity", str(k), ch, "mask",
                      params=f"step={k},subsample_size={s:g},image_sample_size={t:g},element_size={e}")
            for ch in channels for k in range(1, length + 1)]



@stage("cp_granularity.block", examples=_block_examples)
def compute_granularity(batch, mr, ctx):
    """(N, C * spectrum_length) granular spectra of one mask, columns as ``granularity_columns``."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    s, t, e, length = _options(getattr(ctx, "cellprofiler", None))
    view = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
    ext = xp.repeat(batch.extents, c, axis=0)
    x = cp_image(batch.pixels.reshape(n * c, h, w))
    res = granularity_planes(x, view, ext, s, t, e, length).reshape(n, c * length)
    return xp.where(xp.asarray(mr.usable)[:, None], res, xp.nan)


# ---------------------------------------------------------------------------------------------
# Geometry (host side: a few numbers per plane)


def grid_geometry(extents, subsample_size: float, image_sample_size: float) -> dict:
    """Per plane the sizes and scales of CellProfiler's grids, computed as cp_measure does
    (same float64 operations, so the same coordinates).

    Returns a dict of (M,) NumPy arrays: ``h, w`` (the object's image), ``nh, nw`` (the
    resampled grid), ``bh, bw`` (the background grid's sample counts), ``ok`` (at least 2 rows
    and columns after resampling); and the scales ``back_up_r/c`` (background grid to resampled
    grid) and ``up_r/c`` (resampled grid to the
    object's image). Planes that are not ``ok`` get harmless sizes (their values are NaN).
    """
    e = np.asarray(asnumpy(extents)).astype(np.int64).reshape(-1, 2)
    h, w = e[:, 0].copy(), e[:, 1].copy()
    s, t = float(subsample_size), float(image_sample_size)
    if s < 1:
        nh = (h * s).astype(np.int64)
        nw = (w * s).astype(np.int64)
    else:
        nh, nw = h.copy(), w.copy()
    ok = (nh >= 2) & (nw >= 2)
    h = np.where(ok, h, 2)
    w = np.where(ok, w, 2)
    nh = np.where(ok, nh, 2)
    nw = np.where(ok, nw, 2)
    if t < 1:
        bhf, bwf = nh * t, nw * t  # float, as CellProfiler keeps it
        bh = np.ceil(bhf).astype(np.int64)  # numpy.mgrid's sample count for a float stop
        bw = np.ceil(bwf).astype(np.int64)
        back_up_r = (bhf - 1) / (nh - 1)
        back_up_c = (bwf - 1) / (nw - 1)
    else:
        bh, bw = nh.copy(), nw.copy()
        back_up_r = back_up_c = np.ones(len(h))
    up_r = (nh - 1).astype(np.float64) / (h - 1).astype(np.float64)
    up_c = (nw - 1).astype(np.float64) / (w - 1).astype(np.float64)
    return dict(h=h, w=w, nh=nh, nw=nw, bh=bh, bw=bw, ok=ok, back_up_r=back_up_r,
                back_up_c=back_up_c, up_r=up_r, up_c=up_c)


def disk(radius: int) -> np.ndarray:
    """scikit-image's ``disk(radius)`` (CellProfiler's background footprint)."""
    from skimage.morphology import disk as sk_disk

    return sk_disk(int(radius), dtype=bool)


CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # skimage's disk(1)


# ---------------------------------------------------------------------------------------------
# Array path


def _bilinear(xp, img, ny, nx, rows, cols):
    """``scipy.ndimage.map_coordinates(order=1, mode='constant')`` of each plane
    ``img[m, :ny[m], :nx[m]]`` on the outer grid ``rows[m] x cols[m]`` ((M, P) and (M, Q)):
    (M, P, Q); 0 where a coordinate lies outside ``[0, n - 1]``."""
    m, hh, ww = img.shape

    def axis(coord, n, size):
        lo = xp.floor(coord)
        f = coord - lo
        inb = (coord >= 0) & (coord <= (n - 1)[:, None])
        i0 = xp.clip(lo, 0, size - 1).astype(xp.int64)
        i1 = xp.minimum(i0 + 1, (n - 1)[:, None])
        return i0, xp.clip(i1, 0, size - 1), f, inb

    r0, r1, fr, ir = axis(rows, ny, hh)
    c0, c1, fc, ic = axis(cols, nx, ww)
    pm = xp.arange(m)[:, None, None]
    r0, r1, fr = r0[:, :, None], r1[:, :, None], fr[:, :, None]
    c0, c1, fc = c0[:, None, :], c1[:, None, :], fc[:, None, :]
    top = img[pm, r0, c0] * (1.0 - fc) + img[pm, r0, c1] * fc
    bottom = img[pm, r1, c0] * (1.0 - fc) + img[pm, r1, c1] * fc
    val = top * (1.0 - fr) + bottom * fr
    return xp.where(ir[:, :, None] & ic[:, None, :], val, 0.0)


def _inside(xp, ny, nx, shape):
    """(M, P, Q) bool: the first ``ny[m] x nx[m]`` samples of each plane."""
    p, q = shape
    return (xp.arange(p)[None, :, None] < ny[:, None, None]) & (xp.arange(q)[None, None, :] < nx[:, None, None])


def _erode(ndi, xp, a, inside, footprint):
    """Grey erosion of every plane, pixels outside ``inside`` left out (result there: inf)."""
    a = xp.where(inside, a, xp.inf)
    fp = xp.asarray(footprint[None])
    return xp.where(inside, ndi.grey_erosion(a, footprint=fp, mode="constant", cval=np.inf), xp.inf)


def _dilate(ndi, xp, a, inside, footprint):
    """Grey dilation of every plane, pixels outside ``inside`` left out (result there: -inf)."""
    a = xp.where(inside, a, -xp.inf)
    fp = xp.asarray(footprint[None])
    return xp.where(inside, ndi.grey_dilation(a, footprint=fp, mode="constant", cval=-np.inf), -xp.inf)


def reconstruct(seed, mask, inside):
    """Morphological reconstruction by dilation (3x3 cross) of ``seed`` under ``mask``, every
    plane (M, P, Q) at once, pixels outside ``inside`` left out (``seed <= mask`` there too):
    geodesic dilation until nothing changes (one host sync per round)."""
    xp = array_namespace(seed)
    ndi = ndimage(array_module(seed))
    mask = xp.where(inside, mask, -xp.inf)
    rec = xp.minimum(xp.where(inside, seed, -xp.inf), mask)
    fp = xp.asarray(CROSS[None])
    while True:
        nxt = xp.minimum(ndi.grey_dilation(rec, footprint=fp, mode="constant", cval=-np.inf), mask)
        if bool(xp.all(nxt == rec)):
            return rec
        rec = nxt


def upsample_weights(view, geo, shape):
    """(M, P, Q) weight images: for plane ``m``, the sum over its object's pixels of their
    bilinear weights on the resampled grid (pixels whose coordinate falls past the grid add
    nothing), so that the object's mean of the upsampled image ``rec`` is
    ``(weights * rec).sum() / count``."""
    xp = array_namespace(view)
    m, hh, ww = view.shape
    p, q = shape
    up_r = xp.asarray(geo["up_r"])
    up_c = xp.asarray(geo["up_c"])
    nh = xp.asarray(geo["nh"])
    nw = xp.asarray(geo["nw"])
    pl, rr, cc = xp.nonzero(view)
    r = rr.astype(xp.float64) * up_r[pl]
    c = cc.astype(xp.float64) * up_c[pl]
    inb = (r >= 0) & (r <= (nh - 1)[pl]) & (c >= 0) & (c <= (nw - 1)[pl])
    pl, r, c = pl[inb], r[inb], c[inb]
    r0 = xp.floor(r)
    c0 = xp.floor(c)
    fr, fc = r - r0, c - c0
    r0 = r0.astype(xp.int64)
    c0 = c0.astype(xp.int64)
    r1 = xp.minimum(r0 + 1, (nh - 1)[pl])
    c1 = xp.minimum(c0 + 1, (nw - 1)[pl])
    keys = xp.concatenate([(pl * p + r0) * q + c0, (pl * p + r0) * q + c1,
                           (pl * p + r1) * q + c0, (pl * p + r1) * q + c1])
    wts = xp.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    return xp.bincount(keys, weights=wts, minlength=m * p * q).reshape(m, p, q)


def _planes_examples(rng):
    """Few planes (the CUDA emulation runs every barrier of every block on CPU threads)."""
    from ..stage_examples import images

    shape = (46, 52)  # extents up to 46 x 52: resampled grids of 2 to 13, background grids of 1 to 4
    x, e = images(rng, np.float64, m=9, shape=shape)  # 1xW, Hx1, 1x1 first; plane 4 flat
    e[5:8] = [(30, 24), (22, 45), (9, 12)]
    view = (x > 0.3) & _inside(np, e[:, 0], e[:, 1], shape)
    view[8] = False  # an empty object
    yield (x, view, e, 0.25, 0.25, 10, 16), {}
    keep = [0, 4, 5, 6]
    yield (x[keep], view[keep], e[keep], 0.5, 0.4, 2, 5), {}
    yield (x[keep], view[keep], e[keep], 1.0, 1.0, 1, 3), {}
    for (batch, mr, ctx), _ in _block_examples(rng):  # the demo cells' planes, li masks
        n, c, h, w = batch.pixels.shape
        v = (mr.mask & batch.valid()[:, None]).reshape(n * c, h, w)
        yield (cp_image(batch.pixels.reshape(n * c, h, w)), v, np.repeat(batch.extents, c, axis=0),
               0.25, 0.25, 10, 16), {}
        break


def _compare(ref, got, args, kwargs):
    """Weighted sums in another order."""
    assert_equivalent(ref, got, rtol=1e-9, atol=1e-11)


@stage("cp_granularity.planes", examples=_planes_examples, compare=_compare)
def granularity_planes(x, view, extents, subsample_size: float = 0.25, image_sample_size: float = 0.25,
                       element_size: int = 10, spectrum_length: int = 16):
    """CellProfiler's granular spectrum of every plane.

    Parameters
    ----------
    x : (M, H, W) float64 ndarray
        Each plane's image in its top-left ``extents[m]`` corner.
    view : (M, H, W) bool ndarray
        The objects (inside their extents).
    extents : (M, 2) int ndarray
    subsample_size, image_sample_size : float
        In (0, 1].
    element_size : int
        Radius of the background's disk.
    spectrum_length : int

    Returns
    -------
    (M, spectrum_length) float64 ndarray
        NaN rows for empty objects and images of fewer than 2 resampled rows or columns.
    """
    xp = array_namespace(x)
    ndi = ndimage(array_module(x))
    m = x.shape[0]
    geo = grid_geometry(extents, subsample_size, image_sample_size)
    dev = {k: xp.asarray(v) for k, v in geo.items()}
    s, t = float(subsample_size), float(image_sample_size)
    P, Q = int(geo["nh"].max(initial=2)), int(geo["nw"].max(initial=2))
    x = x.astype(xp.float64)
    # 1. resample
    if s < 1:
        sub = _bilinear(xp, x, dev["h"], dev["w"],
                        xp.broadcast_to(xp.arange(P, dtype=xp.float64)[None] / s, (m, P)),
                        xp.broadcast_to(xp.arange(Q, dtype=xp.float64)[None] / s, (m, Q)))
    else:
        sub = x[:, :P, :Q]
    inside = _inside(xp, dev["nh"], dev["nw"], (P, Q))
    # 2. background
    if t < 1:
        BP, BQ = int(geo["bh"].max()), int(geo["bw"].max())
        back = _bilinear(xp, sub, dev["nh"], dev["nw"],
                         xp.broadcast_to(xp.arange(BP, dtype=xp.float64)[None] / t, (m, BP)),
                         xp.broadcast_to(xp.arange(BQ, dtype=xp.float64)[None] / t, (m, BQ)))
        b_in = _inside(xp, dev["bh"], dev["bw"], (BP, BQ))
    else:
        back, b_in = sub, inside
    fp = disk(element_size)
    back = _dilate(ndi, xp, _erode(ndi, xp, back, b_in, fp), b_in, fp)
    if t < 1:
        ar = xp.arange(P, dtype=xp.float64)[None] * dev["back_up_r"][:, None]
        ac = xp.arange(Q, dtype=xp.float64)[None] * dev["back_up_c"][:, None]
        back = _bilinear(xp, xp.where(b_in, back, 0.0), dev["bh"], dev["bw"], ar, ac)
    pix = sub - back
    pix = xp.where(pix < 0, 0.0, pix)
    pix = xp.where(inside, pix, 0.0)
    # 3. the spectrum
    vf = view.reshape(m, -1)
    cnt = vf.sum(axis=1)
    k = xp.maximum(cnt, 1).astype(xp.float64)
    current = xp.where(vf, x.reshape(m, -1), 0.0).sum(axis=1) / k
    start = xp.maximum(current, np.finfo(float).eps)
    wts = upsample_weights(view, geo, (P, Q)).reshape(m, -1)
    ero = pix
    out = []
    for _ in range(int(spectrum_length)):
        ero = xp.where(inside, _erode(ndi, xp, ero, inside, CROSS), 0.0)
        rec = xp.where(inside, reconstruct(ero, pix, inside), 0.0)
        new = (wts * rec.reshape(m, -1)).sum(axis=1) / k
        out.append((current - new) * 100.0 / start)
        current = new
    res = xp.stack(out, axis=1) if out else xp.zeros((m, 0))
    bad = (cnt == 0) | ~dev["ok"]
    return xp.where(bad[:, None], xp.nan, res)


register(Family("cp_granularity", granularity_columns, compute_granularity, True,
                "CellProfiler's granular spectrum (MeasureGranularity) of every channel in its mask",
                options=True))
