"""Compiled CPU implementations (numba) of the CellProfiler families' stages.

Registered beside the array-namespace references (``scip_gpu.dispatch``); ``dispatch`` runs
them for NumPy inputs when numba is installed. The kernels live in ``_numba_cp`` (imported on
first use, cached on disk). Importing this module imports neither numba nor the stages.
"""

from __future__ import annotations

import numpy as np

from .dispatch import register


def _nb():
    from . import _numba_cp

    return _numba_cp


@register("cp_intensity.planes", "cpu")
def plane_intensity(x, view, edge) -> np.ndarray:
    """Compiled ``features.cp_intensity.plane_intensity``: one pass and one sort per plane."""
    out = np.empty((x.shape[0], 19), dtype=np.float64)
    _nb().cp_plane_intensity(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(view),
                             np.ascontiguousarray(edge), out)
    return out


@register("cp_sizeshape.radii", "cpu")
def radii(padded, labels, nl: int) -> np.ndarray:
    """Compiled ``features.cp_sizeshape.radii``: an exact distance transform per plane."""
    out = np.zeros((3, nl + 1), dtype=np.float64)
    _nb().cp_plane_radii(np.ascontiguousarray(padded), np.ascontiguousarray(labels), out)
    return out


def _levels_fit(q, scale: int, levels: int) -> bool:
    return q.dtype.kind in "iu" and levels <= 256


@register("cp_texture.haralick", "cpu", accepts=_levels_fit)
def haralick(q, scale: int, levels: int) -> np.ndarray:
    """Compiled ``features.cp_texture.haralick_planes``: dense counts per plane and direction."""
    out = np.empty((q.shape[0], 4, 13), dtype=np.float64)
    _nb().cp_haralick(np.ascontiguousarray(q, dtype=np.int32), int(scale), int(levels), out)
    return out


@register("cp_colocalization.pairs", "cpu")
def pair_colocalization(x, view, pairs) -> np.ndarray:
    """Compiled ``features.cp_colocalization.pair_colocalization``: per object, its pixels
    gathered once, one argsort per channel for the ranks."""
    from .features.cp_colocalization import FEATURES, THRESHOLD

    n = x.shape[0]
    pa = np.array([a for a, _ in pairs], dtype=np.int64)
    pb = np.array([b for _, b in pairs], dtype=np.int64)
    out = np.empty((n, len(pairs), len(FEATURES)), dtype=np.float64)
    _nb().cp_colocalization(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(view), pa, pb,
                            float(THRESHOLD), out)
    return out


@register("cp_radial.planes", "cpu")
def radial_planes(x, view, valid) -> np.ndarray:
    """Compiled ``features.cp_radial.radial_planes``: Dijkstra's algorithm per plane."""
    from .features.cp_radial import BINS

    out = np.empty((x.shape[0], 3 * BINS), dtype=np.float64)
    _nb().cp_radial(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(view),
                    np.ascontiguousarray(valid), BINS, out)
    return out


@register("cp_sizeshape.feret", "cpu")
def feret_from_vertices(vr, vc, nv, budget: int = 1 << 22):
    """Compiled ``features.cp_sizeshape.feret_from_vertices``: two loops per polygon."""
    nl1 = vr.shape[0]
    fmin = np.zeros(nl1, dtype=np.float64)
    fmax = np.zeros(nl1, dtype=np.float64)
    _nb().cp_feret(np.ascontiguousarray(vr, dtype=np.float64), np.ascontiguousarray(vc, dtype=np.float64),
                   np.ascontiguousarray(nv, dtype=np.int64), fmin, fmax)
    return fmin, fmax


@register("cp_colocalization.costes", "cpu")
def costes_pairs(x, view, pairs, scale: int) -> np.ndarray:
    """Compiled ``features.cp_colocalization.costes_pairs``: per object, its pixels gathered
    once, CellProfiler's bisection one candidate at a time."""
    from .features.cp_colocalization import COSTES_MAX_ITER

    n = x.shape[0]
    pa = np.array([a for a, _ in pairs], dtype=np.int64)
    pb = np.array([b for _, b in pairs], dtype=np.int64)
    out = np.empty((n, len(pairs), 2), dtype=np.float64)
    _nb().cp_costes(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(view), pa, pb,
                    float(scale), int(COSTES_MAX_ITER), out)
    return out


@register("cp_granularity.planes", "cpu")
def granularity_planes(x, view, extents, subsample_size: float = 0.25, image_sample_size: float = 0.25,
                       element_size: int = 10, spectrum_length: int = 16) -> np.ndarray:
    """Compiled ``features.cp_granularity.granularity_planes``: per plane, the reconstruction by
    raster scans."""
    from .features.cp_granularity import disk, grid_geometry

    g = grid_geometry(extents, subsample_size, image_sample_size)
    sizes = np.stack([g[k] for k in ("h", "w", "nh", "nw", "bh", "bw")], axis=1).astype(np.int64)
    scales = np.stack([np.asarray(g[k], dtype=np.float64) for k in ("back_up_r", "back_up_c", "up_r", "up_c")],
                      axis=1)
    dy, dx = np.nonzero(disk(element_size))
    r = int(element_size)
    out = np.empty((x.shape[0], int(spectrum_length)), dtype=np.float64)
    _nb().cp_granularity(np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(view),
                         np.ascontiguousarray(sizes), np.ascontiguousarray(scales), np.ascontiguousarray(g["ok"]),
                         float(subsample_size), float(image_sample_size), (dy - r).astype(np.int64),
                         (dx - r).astype(np.int64), out)
    return out


@register("cp_zernike.circles", "cpu")
def enclosing_circles(masks):
    """Compiled ``features.cp_zernike.enclosing_circles``: centrosome's hull and Chrystal's
    algorithm per plane."""
    centre, radius, *_ = _zernike(masks, None)
    return centre, radius


@register("cp_zernike.sums", "cpu")
def zernike_sums(masks, weights=None):
    """Compiled ``features.cp_zernike.zernike_sums``: per plane the hull, the circle and one
    pass over the pixels."""
    _, radius, real, imag, count = _zernike(masks, weights)
    return real, imag, radius, count


def _zernike(masks, weights):
    from .features.cp_zernike import _LUT, ZERNIKE_INDEXES

    m = masks.shape[0]
    k = len(ZERNIKE_INDEXES)
    real = np.empty((m, k), dtype=np.float64)
    imag = np.empty((m, k), dtype=np.float64)
    circle = np.empty((m, 3), dtype=np.float64)
    count = np.empty(m, dtype=np.float64)
    mk = np.ascontiguousarray(masks, dtype=bool)
    w = (np.zeros((1, 1, 1)) if weights is None else np.ascontiguousarray(weights, dtype=np.float64))
    _nb().cp_zernike(mk, w, weights is not None, _LUT, np.ascontiguousarray(ZERNIKE_INDEXES[:, 0]),
                     np.ascontiguousarray(ZERNIKE_INDEXES[:, 1]), real, imag, circle, count)
    return np.ascontiguousarray(circle[:, :2]), circle[:, 2].copy(), real, imag, count
