"""Segmentation of one field of view: nuclei, cells, cytoplasm, and instance matching.

Every function takes 2-D label or intensity images of one field of view (FOV) and returns
``int32`` label images (0 is background). They follow SCIP's ``watershed_dapi`` method and its
child-to-parent assignment and ``substract`` steps (``scip/segmentation/``), with the fixes a
field of view of real nuclei needs: the watershed is restricted to the foreground, markers are
kept inside it, and specks are removed.

Where each step can run
-----------------------
The code is written against the array namespace of its input (``backend.array_module``):

========================  =====================================================================
step                      GPU (CuPy / cuCIM input)
========================  =====================================================================
Gaussian smoothing        yes, ``cupyx.scipy.ndimage.gaussian_filter``
scale estimate            yes: ``ndimage.label``, ``distance_transform_edt``, ``ndimage.maximum``
                          per component, ``bincount`` of areas; the weighted median of the
                          per-component radii is taken on the host (one number per component)
background surface        yes: a polynomial of degree 2 fitted by least squares to a grid of
                          pixels; its normal equations (6x6 numbers) are solved on the host
global threshold          yes, ``cucim.skimage.filters.threshold_triangle`` / ``_li`` / ``_otsu``
local threshold           yes, ``cucim.skimage.filters.threshold_local``
hole filling              yes, ``ndimage.label`` of the background, a ``bincount`` and a lookup
distance transform        yes, ``cupyx.scipy.ndimage.distance_transform_edt``
marker detection          yes, ``cucim.skimage.feature.peak_local_max`` and ``ndimage.label``
Sobel gradient            yes, ``cucim.skimage.filters.sobel``
watershed flood           yes, ``ops.watershed``: our CUDA kernel (cuCIM has no watershed); the
                          same flood as ``skimage.segmentation.watershed`` where the altitudes
                          have no ties (the numba flood on the CPU gives the same labels)
``expand_cells``          yes, ``cucim.skimage.segmentation.expand_labels``
small-object removal      yes, a ``bincount`` of label sizes and a lookup
contrast test             yes: ``expand_labels`` for the background rings, ``median`` of the
                          background's pixel differences, ``bincount`` sums per object
``assign_children``       yes, a ``bincount`` over (parent, child) pairs and a lookup
``subtract``              yes, elementwise
``match_instances``       the IoU matrix yes (``bincount``); the matching is on the host
                          (a few hundred numbers), with ``scipy.optimize.linear_sum_assignment``
                          below IoU 0.5
========================  =====================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module, asnumpy, is_gpu, ndimage, skimage_module
from .ops import as_float

__all__ = [
    "estimate_nucleus_radius",
    "nuclei_parameters",
    "watershed_nuclei",
    "expand_cells",
    "seeded_watershed",
    "assign_children",
    "subtract",
    "match_instances",
    "remove_small_labels",
    "relabel",
]

# Parameters of ``watershed_nuclei`` that follow the size of the nuclei, as multiples of the
# typical nucleus radius r (pixels), estimated per field by ``estimate_nucleus_radius`` unless
# given. Each is a length (or an area) of the object, so the segmentation of a field imaged at
# twice the magnification is the same segmentation at twice the size:
# - smoothing r/8: the Gaussian removes pixel noise and fine chromatin texture, far below the
#   nucleus size;
# - block_size 4r+1 (odd): the local-threshold window spans a nucleus and its surroundings, so a
#   pixel is compared with the background next to its own nucleus;
# - max_hole_size pi r^2: holes in the foreground up to a nucleus in area (nucleoli, dark
#   chromatin) are filled; a nucleus is a filled object, and holes would split it;
# - min_distance 0.6r: two nuclei, even touching, have centres at least about 2r apart; distance
#   peaks closer than that (rough borders, elongated nuclei) belong to one nucleus;
# - distance_smoothing r/6: smooths away the ridges a rough border leaves in the distance map;
# - min_size pi (0.4r)^2: objects under a sixth of the typical nucleus area are specks, debris or
#   fragments (a nucleus of 0.4r radius is kept).
# How they were set: block_size, min_distance and distance_smoothing are the former fixed
# defaults (51, 7 and 2 px, from the middle of a plateau of F1 0.90-0.93 on the DSB2018 image of
# the tests, r about 12 px) divided by that radius. Smoothing (r/12 -> r/8), hole filling, the
# triangle threshold and min_size (r/4 -> 0.4r) were then chosen once, for all images together,
# on the four labelled images of benchmarks/bench_segmentation.py (one value for all of them, no
# per-image setting; the F1 of each alternative is in the docstring of that script). Every
# alternative tried stayed within 0.05 F1 on DSB2018; the changes mattered on the others
# (textured CHO nuclei with nucleoli, dim HeLa nuclei).
SCALE_RULES: dict[str, float] = {
    "smoothing": 1 / 8,
    "block_size": 4.0,
    "min_distance": 0.6,
    "distance_smoothing": 1 / 6,
    "min_size": 0.4,  # radius of the smallest kept disc, as a fraction of r
    "max_hole_size": 1.0,  # radius of the largest filled hole, as a fraction of r
}

# Parameters of ``watershed_nuclei`` that do not depend on the scale.
NUCLEI_DEFAULTS: dict[str, Any] = {
    "threshold_method": "triangle",
    "threshold": None,
    "min_contrast": 10.0,
}

# Background surface under the global threshold (``_background_surface``): polynomial degree,
# refits to the pixels below the fit, and the most pixels sampled for it.
_BACKGROUND_ORDER = 2
_BACKGROUND_ITERATIONS = 3
_BACKGROUND_SAMPLES = 2**16

# Width of the ring of background around an object that its contrast is measured against, as a
# fraction of the nucleus radius r (``_drop_faint``).
_CONTRAST_RING = 0.5
# Gaussian sigma of the image the contrast is measured on, as a fraction of r: the image as the
# threshold sees it by default.
_CONTRAST_SMOOTHING = SCALE_RULES["smoothing"]

# Radius used when a field has no foreground to estimate it from (nothing is segmented then).
_FALLBACK_RADIUS = 12.0
# Scale-free estimation: Otsu's threshold of the image smoothed by this sigma (pixels).
_ESTIMATE_SMOOTHING = 1.0

THRESHOLD_METHODS = ("li", "otsu", "triangle")


# ---------------------------------------------------------------------------------------------
# helpers


def _check_image(image, what: str) -> None:
    """ValueError/TypeError naming the cause when ``image`` cannot be segmented: not 2-D, empty,
    not real-valued, or (float) holding NaN or infinite pixels (one count comes back from a
    device)."""
    if image.ndim != 2:
        raise ValueError(f"{what} expects a 2-D image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{what}: the image is empty (shape {image.shape}); there is nothing to segment")
    if np.dtype(image.dtype).kind not in "biuf":
        raise TypeError(f"{what}: image of dtype {image.dtype} is not a real-valued intensity image")
    if np.dtype(image.dtype).kind == "f":
        xp = array_module(image)
        bad = int(xp.count_nonzero(~xp.isfinite(image)))  # host sync
        if bad:
            raise ValueError(f"{what}: the image has {bad} NaN or infinite pixel(s) of {image.size}; "
                             "such an image cannot be thresholded")


def _to_host(x) -> np.ndarray:
    return asnumpy(x)  # host <- device copy for GPU input


def _like(x, ref):
    """``x`` (a host array) on the device of ``ref``."""
    xp = array_module(ref)
    return xp.asarray(x) if is_gpu(xp) else x


def relabel(labels):
    """``skimage.segmentation.relabel_sequential`` (cuCIM on the GPU), as ``int32``."""
    xp = array_module(labels)
    if labels.size == 0:
        return labels.astype(xp.int32)
    seg = skimage_module(xp, "segmentation")
    out, _, _ = seg.relabel_sequential(labels)
    return out.astype(xp.int32, copy=False)


def remove_small_labels(labels, min_size: int):
    """Set labels with fewer than ``min_size`` pixels to 0 (labels keep their ids)."""
    xp = array_module(labels)
    if min_size <= 1 or labels.size == 0:
        return labels
    if labels.dtype == bool:  # one object: the True pixels
        labels = labels.astype(xp.uint8)
    sizes = xp.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return xp.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def _smooth(image, sigma: float):
    xp = array_module(image)
    f = as_float(image)
    if sigma and sigma > 0:
        f = ndimage(xp).gaussian_filter(f, sigma, mode="nearest")
    return f


def _background_surface(image):
    """The field's background as a polynomial surface of degree ``_BACKGROUND_ORDER`` in the
    pixel coordinates: a least-squares fit to the image (sampled on a grid of at most
    ``_BACKGROUND_SAMPLES`` pixels), refitted ``_BACKGROUND_ITERATIONS`` times to the pixels at or
    below the previous fit, so that the bright objects drop out of it and it follows the darker
    pixels between them. A surface of that degree added to the image (a pedestal, a tilt, a
    vignette) is fitted exactly and so removed. The normal equations (a few numbers) are solved on
    the host."""
    xp = array_module(image)
    h, w = image.shape
    step = max(1, int(np.sqrt(h * w / _BACKGROUND_SAMPLES)))

    def coords(n, stride):  # pixel positions scaled to [-1, 1]
        return xp.arange(0, n, stride, dtype=xp.float64) * (2.0 / max(n - 1, 1)) - 1.0

    powers = [(i, k - i) for k in range(_BACKGROUND_ORDER + 1) for i in range(k + 1)]  # y^i x^j

    def terms(y, x):
        return [(y[:, None] ** i) * (x[None, :] ** j) for i, j in powers]

    a = xp.stack([t.ravel() for t in terms(coords(h, step), coords(w, step))], axis=1)
    b = image[::step, ::step].astype(xp.float64).ravel()
    below = xp.ones(b.shape, dtype=bool)
    for _ in range(_BACKGROUND_ITERATIONS):
        aw = a * below[:, None]
        ata, atb = _to_host(aw.T @ a), _to_host(aw.T @ b)  # (k, k) and (k,) numbers -> host
        coef = np.linalg.lstsq(ata, atb, rcond=None)[0]  # min-norm where rank-deficient (a 1-px row)
        fit = a @ _like(coef, a)
        below = b <= fit
    y, x = coords(h, 1), coords(w, 1)
    surface = xp.zeros((h, w), dtype=xp.float64)
    for i in range(_BACKGROUND_ORDER + 1):  # sum over i of y^i times a polynomial in x
        px = sum(c * x**j for c, (pi, j) in zip(coef.tolist(), powers) if pi == i)
        surface += (y**i)[:, None] * px[None, :]
    return surface


def _foreground(smoothed, threshold: float | None, method: str = "otsu", block_size: int | None = None):
    """Pixels above a global threshold and, with ``block_size``, above their local
    Gaussian-weighted mean (``skimage.filters.threshold_local``).

    A given ``threshold`` is compared with the image as it is; otherwise ``method``'s threshold
    is taken of, and compared with, the image less its background surface
    (``_background_surface``): a global threshold of an unevenly lit field (a tilt, a vignette,
    haze) otherwise keeps the background of its bright side and loses the nuclei of its dim one.
    """
    xp = array_module(smoothed)
    filters = skimage_module(xp, "filters")
    if threshold is None:
        if method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {method!r}")
        if float(smoothed.max()) == float(smoothed.min()):  # flat image (host sync): no foreground
            return xp.zeros(smoothed.shape, dtype=bool)
        flat = smoothed - _background_surface(smoothed)
        fg = flat > float(getattr(filters, f"threshold_{method}")(flat))
    else:
        fg = smoothed > threshold
    if block_size:
        fg &= smoothed > filters.threshold_local(smoothed, int(block_size), method="gaussian")
    return fg


def _fill_holes(fg, max_size: float | None = None):
    """``fg`` with its holes (background components not touching the image border) of at most
    ``max_size`` pixels filled; all holes when None (``ndimage.binary_fill_holes``)."""
    xp = array_module(fg)
    ndi = ndimage(xp)
    holes, n = ndi.label(~fg)
    if int(n) == 0:  # host sync
        return fg
    size = xp.bincount(holes.ravel(), minlength=int(n) + 1)
    fill = size <= (max_size if max_size is not None else fg.size)
    border = xp.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    fill[border] = False
    fill[0] = False
    return fg | fill[holes]


def _watershed(surface, markers, mask):
    """The marker-controlled flood (``ops.watershed``: scikit-image's watershed where the
    altitudes have no ties, a fixed rule at ties), where the arrays are: the numba flood on the
    CPU, the CUDA kernel (kernels/watershed.cu) on a GPU."""
    from .ops import watershed

    return watershed(surface, markers.astype(array_module(markers).int32, copy=False), mask)


# ---------------------------------------------------------------------------------------------
# nuclei and cells


def estimate_nucleus_radius(image) -> float | None:
    """Typical radius (pixels) of the bright objects of a field, or None when it has none.

    The image is smoothed by a Gaussian of sigma 1 px and split by Otsu's threshold (of the
    image less its background surface, as in ``watershed_nuclei``); in every
    connected component of the foreground the largest value of the Euclidean distance transform
    is the radius of the largest disc inside it. The result is the median of these radii over
    components weighted by their area, so specks (tiny area) barely count and a clump of
    touching nuclei still gives the radius of one nucleus (the disc fits one nucleus, not the
    clump). For an ellipse the radius is half its minor axis.

    Parameters
    ----------
    image : (H, W) ndarray

    Returns
    -------
    float or None
    """
    xp = array_module(image)
    _check_image(image, "estimate_nucleus_radius")
    ndi = ndimage(xp)
    smoothed = _smooth(image, _ESTIMATE_SMOOTHING)
    fg = _fill_holes(_foreground(smoothed, None, "otsu"))  # nucleoli, dark chromatin
    components, n = ndi.label(fg)
    n = int(n)  # host sync on the GPU
    if n == 0:
        return None
    distance = ndi.distance_transform_edt(fg)
    index = xp.arange(1, n + 1)
    radius = _to_host(xp.asarray(ndi.maximum(distance, components, index)))  # n numbers -> host
    area = _to_host(xp.bincount(components.ravel(), minlength=n + 1)[1:]).astype(np.float64)
    order = np.argsort(radius, kind="stable")
    cum = np.cumsum(area[order])
    return float(radius[order][np.searchsorted(cum, 0.5 * cum[-1])])


def nuclei_parameters(radius: float, **given) -> dict[str, Any]:
    """``watershed_nuclei``'s scale parameters for nuclei of ``radius`` pixels (``SCALE_RULES``);
    values in ``given`` that are not None are kept as they are.

    Returns
    -------
    dict
        ``smoothing`` (Gaussian sigma, px), ``block_size`` (odd local-threshold window, px),
        ``min_distance`` (px), ``distance_smoothing`` (Gaussian sigma, px), ``min_size`` and
        ``max_hole_size`` (areas, px).
    """
    r = float(radius)
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"nuclei_parameters: the nucleus radius must be a positive number of pixels, got {radius!r}")
    k = SCALE_RULES
    out = {
        "smoothing": round(k["smoothing"] * r, 2),
        "block_size": max(3, 2 * int(round(k["block_size"] * r / 2)) + 1),  # 1 would keep nothing
        "min_distance": max(1, int(round(k["min_distance"] * r))),
        "distance_smoothing": round(k["distance_smoothing"] * r, 2),
        "min_size": int(round(np.pi * (k["min_size"] * r) ** 2)),
        "max_hole_size": int(round(np.pi * (k["max_hole_size"] * r) ** 2)),
    }
    unknown = set(given) - set(out)
    if unknown:
        raise TypeError(f"nuclei_parameters got unknown parameters {sorted(unknown)}")
    out.update({name: value for name, value in given.items() if value is not None})
    return out


def watershed_nuclei(
    image,
    *,
    radius: float | None = None,
    smoothing: float | None = None,
    threshold: float | None = NUCLEI_DEFAULTS["threshold"],
    threshold_method: str = NUCLEI_DEFAULTS["threshold_method"],
    block_size: int | None = None,
    min_distance: int | None = None,
    distance_smoothing: float | None = None,
    min_size: int | None = None,
    max_hole_size: int | None = None,
    min_contrast: float = NUCLEI_DEFAULTS["min_contrast"],
    return_parameters: bool = False,
):
    """Nuclei of one field of view by a distance-transform watershed, at the field's own scale.

    Steps:

    0. The typical nucleus radius ``r`` (pixels) is ``radius`` or, when None, estimated from
       the field (``estimate_nucleus_radius``). Every scale parameter left None is derived from
       it (``nuclei_parameters``, ratios in ``SCALE_RULES``); a given value is used as is.
    1. Gaussian smoothing (``smoothing``, sigma in pixels; default r/8) of the image as float
       (``skimage.img_as_float`` scaling).
    2. Foreground: pixels above a global threshold (``threshold``, in those float units, or
       ``threshold_method``'s: the triangle method's, Li's minimum cross-entropy or Otsu's, of
       the image less its background, a degree-2 polynomial surface fitted to its darker
       pixels, so that a tilt, vignette or haze across the field does not move the threshold
       above the dim side's nuclei or below the bright side's background) and above their local
       Gaussian-weighted mean over a ``block_size`` pixel window (``threshold_local``; default
       4r+1, odd; 0 skips the local test). The local test separates touching nuclei and keeps
       dim nuclei whole, which one global threshold cannot do in a field where nuclei differ
       several-fold in brightness. Holes of up to ``max_hole_size`` pixels (default pi r^2,
       the area of a nucleus; 0 keeps them) are filled: nucleoli and dark chromatin.
    3. Euclidean distance transform of the foreground, smoothed by ``distance_smoothing``
       (sigma in pixels; default r/6) so that rough borders do not split a nucleus.
    4. Markers at ``peak_local_max`` of the distance, at least ``min_distance`` pixels apart
       (default 0.6r) and inside the foreground (``labels=`` its components); adjacent peaks
       merged.
    5. ``watershed(-distance, markers, mask=foreground)`` (``ops.watershed``).
    6. Objects under ``min_size`` pixels (default the area of a disc of radius 0.4r) dropped,
       and objects that do not stand out of the field's noise: those whose mean intensity is
       less than ``min_contrast`` standard errors above the mean of a ring of background r/2
       wide around them, both of the image smoothed by r/8 (``_drop_faint``; 0 keeps them).
       A threshold always splits an image, so in a field of noise only (an empty well, a dark
       tile) the steps above find "nuclei"; their contrast is a few standard errors, that of
       real nuclei tens to thousands. Labels made sequential.

    This is SCIP's ``watershed_dapi`` with these changes: a Gaussian instead of its non-local
    means denoising (it runs on the GPU), the local threshold, Li's global threshold by
    default (Otsu's, pulled up by bright nuclei, cuts dim ones short), flooding restricted to
    the foreground (SCIP floods the whole image, so background joins the nearest nucleus), and
    parameters that follow the nucleus size instead of fixed pixel counts.

    Parameters
    ----------
    image : (H, W) ndarray
        Nuclear (DAPI) channel.
    radius, smoothing, threshold, threshold_method, block_size, max_hole_size, min_distance
        See above (lengths and areas in pixels).
    distance_smoothing, min_size, min_contrast
        See above.
    return_parameters : bool
        Also return the parameters used, with ``radius`` (None when the field has no
        foreground and nothing is segmented).

    Returns
    -------
    labels : (H, W) int32 ndarray
    parameters : dict, only with ``return_parameters``
    """
    _check_image(image, "watershed_nuclei")
    if threshold is None and threshold_method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold_method must be one of {THRESHOLD_METHODS}, got {threshold_method!r}")
    if radius is not None and not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive number of pixels, got {radius!r}")
    estimated = radius if radius is not None else estimate_nucleus_radius(image)
    params = nuclei_parameters(estimated if estimated is not None else _FALLBACK_RADIUS,
                               smoothing=smoothing, block_size=block_size, min_distance=min_distance,
                               distance_smoothing=distance_smoothing, min_size=min_size,
                               max_hole_size=max_hole_size)
    params["radius"] = estimated
    b = params["block_size"]
    if b != 0 and (b < 3 or b % 2 == 0):  # a window of 1 px compares a pixel with itself: nothing is kept
        raise ValueError(f"block_size must be an odd number of pixels, at least 3, or 0 for no local "
                         f"threshold, got {b!r}")
    if not min_contrast >= 0:
        raise ValueError(f"min_contrast must not be negative (standard errors), got {min_contrast!r}")
    labels = _watershed_nuclei(image, threshold, threshold_method, **{k: v for k, v in params.items() if k != "radius"})
    if min_contrast and bool(labels.any()):  # host sync
        ring = max(1.0, _CONTRAST_RING * (estimated if estimated is not None else _FALLBACK_RADIUS))
        labels = relabel(_drop_faint(image, labels, ring, float(min_contrast)))
    return (labels, params) if return_parameters else labels


def _watershed_nuclei(image, threshold, threshold_method, *, smoothing, block_size, min_distance,
                      distance_smoothing, min_size, max_hole_size):
    xp = array_module(image)
    ndi = ndimage(xp)
    smoothed = _smooth(image, smoothing)
    fg = _foreground(smoothed, threshold, threshold_method, block_size)
    if not bool(fg.any()):  # host sync
        return xp.zeros(image.shape, dtype=xp.int32)
    if max_hole_size:
        fg = _fill_holes(fg, max_hole_size)
    distance = ndi.distance_transform_edt(fg)
    if distance_smoothing and distance_smoothing > 0:
        distance = ndi.gaussian_filter(distance, distance_smoothing) * fg
    components, _ = ndi.label(fg)
    # two pixels of the image are at most max(shape) - 1 apart: a larger min_distance only makes
    # peak_local_max's footprint larger (a radius given far above the field's size)
    peaks = skimage_module(xp, "feature").peak_local_max(
        distance, min_distance=min(int(min_distance), max(image.shape)), labels=components, exclude_border=False
    )
    peak_mask = xp.zeros(image.shape, dtype=bool)
    peak_mask[tuple(peaks.T)] = True
    markers, _ = ndi.label(peak_mask, structure=np.ones((3, 3), dtype=bool))
    labels = _watershed(-distance, markers, fg)
    return relabel(remove_small_labels(labels, int(min_size)))


def _noise_sigma(f, background):
    """Standard deviation of the pixel noise of ``f``, from the differences of horizontally and
    vertically adjacent pixels that are both ``background``: 1.4826 times their median absolute
    value over sqrt(2) (robust to the few edges left), or their root mean square over sqrt(2) when
    that median is 0 (noise below the quantization for most pixels, e.g. a few photon counts).
    None without two adjacent background pixels."""
    xp = array_module(f)
    d = xp.concatenate([(f[:, 1:] - f[:, :-1])[background[:, 1:] & background[:, :-1]],
                        (f[1:, :] - f[:-1, :])[background[1:, :] & background[:-1, :]]])
    if d.size == 0:  # host sync
        return None
    d = xp.abs(d.astype(xp.float64))
    sigma = 1.4826 * float(xp.median(d)) / np.sqrt(2)  # host sync
    return sigma if sigma > 0 else float(xp.sqrt(xp.mean(d * d))) / np.sqrt(2)


def _drop_faint(image, labels, ring: float, min_contrast: float):
    """``labels`` without the objects whose mean intensity is less than ``min_contrast``
    standard errors above the mean of the background (no object) within ``ring`` pixels of them.

    The means are taken of the image smoothed as the threshold sees it by default (a Gaussian
    of r/8, ``_CONTRAST_SMOOTHING``; ``ring`` is r/2): a nucleus is bright as a whole and keeps
    its contrast, while pixels that a threshold of noise picks one by one (objects of
    individually bright pixels, whose raw mean is far above their surroundings) are averaged
    with their dark neighbours. The standard error of the difference is
    ``sigma * sqrt(1/n_object + 1/n_ring)`` with ``sigma`` the pixel noise of the field's
    background (``_noise_sigma``, away from every object and ring). Per object sums and counts
    come from ``bincount``; an object without background around it (inside a clump) or a field
    without noise (sigma 0) keeps its objects."""
    xp = array_module(labels)
    f = as_float(image)
    grown = skimage_module(xp, "segmentation").expand_labels(labels, distance=ring)
    sigma = _noise_sigma(f, grown == 0)
    if not sigma:
        return labels
    around = xp.where(labels > 0, 0, grown).ravel()
    n = int(labels.max()) + 1  # host sync
    w = _smooth(f, ring * _CONTRAST_SMOOTHING / _CONTRAST_RING).ravel().astype(xp.float64)
    n_obj = xp.bincount(labels.ravel(), minlength=n)
    n_ring = xp.bincount(around, minlength=n)
    mean_obj = xp.bincount(labels.ravel(), weights=w, minlength=n) / xp.maximum(n_obj, 1)
    mean_ring = xp.bincount(around, weights=w, minlength=n) / xp.maximum(n_ring, 1)
    se = sigma * xp.sqrt(1.0 / xp.maximum(n_obj, 1) + 1.0 / xp.maximum(n_ring, 1))
    faint = (n_ring > 0) & (mean_obj - mean_ring < min_contrast * se)
    faint[0] = False
    return xp.where(faint[labels], 0, labels).astype(labels.dtype, copy=False)


def expand_cells(nuclei, distance: float):
    """Cells as the nuclei grown by ``distance`` pixels without overlap
    (``skimage.segmentation.expand_labels``), as SCIP's ``watershed_dapi`` makes them."""
    xp = array_module(nuclei)
    if not distance >= 0:  # expand_labels erases every label for a negative distance
        raise ValueError(f"expand_cells: distance must not be negative (pixels), got {distance!r}")
    out = skimage_module(xp, "segmentation").expand_labels(nuclei, distance=distance)
    return out.astype(xp.int32, copy=False)


def seeded_watershed(
    cytoplasm_image,
    nuclei,
    *,
    threshold: float | None = None,
    smoothing: float = 2.0,
    surface: str = "gradient",
):
    """Cells by a watershed of the cytoplasm channel seeded by the nuclei.

    The cytoplasm image is smoothed (Gaussian, ``smoothing`` px) and flooded from the nuclei
    over its Sobel gradient (``surface="gradient"``) or its inverted intensity
    (``surface="intensity"``), inside the foreground: pixels above ``threshold`` (Otsu's when
    None) together with every nucleus, so each nucleus keeps at least its own pixels.
    Cells take the label of their nucleus.

    Parameters
    ----------
    cytoplasm_image : (H, W) ndarray
    nuclei : (H, W) integer ndarray
        Seed labels (0 is background).

    Returns
    -------
    labels : (H, W) int32 ndarray
    """
    xp = array_module(cytoplasm_image, nuclei)
    if surface not in ("gradient", "intensity"):
        raise ValueError(f"surface must be 'gradient' or 'intensity', got {surface!r}")
    _check_image(cytoplasm_image, "seeded_watershed")
    if nuclei.shape != cytoplasm_image.shape:
        raise ValueError(f"seeded_watershed: nuclei {nuclei.shape} and cytoplasm image {cytoplasm_image.shape} "
                         "differ in shape")
    smoothed = _smooth(cytoplasm_image, smoothing)
    mask = _foreground(smoothed, threshold) | (nuclei > 0)
    if surface == "gradient":
        relief = skimage_module(xp, "filters").sobel(smoothed)
    else:
        relief = -smoothed
    return _watershed(relief, nuclei.astype(xp.int32, copy=False), mask)


# ---------------------------------------------------------------------------------------------
# label arithmetic


# Dense pair tables up to this many entries; beyond it (large, sparse label ids) the ids are
# first made compact by ``unique``.
_MAX_DENSE_PAIRS = 2**24


def _compact(x):
    """(ids, index): sorted ids present in ``x`` with 0 first, and ``x`` as indices into them."""
    xp = array_module(x)
    ids, index = xp.unique(x.ravel(), return_inverse=True)
    if ids.size == 0 or int(ids[0]) != 0:  # keep index 0 for the background
        ids = xp.concatenate([xp.zeros(1, dtype=ids.dtype), ids])
        index = index + 1
    return ids, index.reshape(x.shape)


def _pair_counts(a, b):
    """(na, nb) table of pixel counts of every (a, b) label pair, with the ids of its rows and
    columns (``None`` where they are just 0..n-1) and ``a``, ``b`` as indices into them."""
    xp = array_module(a, b)
    a = a.astype(xp.int64, copy=False)
    b = b.astype(xp.int64, copy=False)
    if a.size and (int(a.min()) < 0 or int(b.min()) < 0):  # device -> host sync
        raise ValueError("label images must not hold negative labels")
    na = int(a.max()) + 1 if a.size else 1  # device -> host sync
    nb = int(b.max()) + 1 if b.size else 1
    a_ids = b_ids = None
    if na * nb > _MAX_DENSE_PAIRS:
        a_ids, a = _compact(a)
        b_ids, b = _compact(b)
        na, nb = len(a_ids), len(b_ids)
    counts = xp.bincount((a * nb + b).ravel(), minlength=na * nb).reshape(na, nb)
    return counts, a_ids, b_ids, a, b


def assign_children(parent, child, min_overlap: float = 0.1):
    """Children clipped to their parents and relabelled with the parent's id (SCIP's rule).

    For each parent label ``i`` the child labels whose overlap with region ``i`` exceeds
    ``min_overlap`` times the area of ``i`` are kept, and the output is ``i`` where the child
    is one of them and the parent is ``i``; 0 elsewhere. Done for all labels at once from the
    (parent, child) pair counts.

    SCIP (``segmentation/cellpose.py``) drops the first id of ``unique`` as the background,
    which drops a real child (or parent) when no background pixel is present; here id 0 is
    excluded by value.

    Parameters
    ----------
    parent, child : (H, W) non-negative integer ndarray

    Returns
    -------
    labels : (H, W) int32 ndarray
    """
    xp = array_module(parent, child)
    if parent.shape != child.shape:
        raise ValueError(f"parent {parent.shape} and child {child.shape} differ in shape")
    counts, p_ids, _, p, c = _pair_counts(parent, child)
    area = counts.sum(axis=1)
    kept = counts > min_overlap * area[:, None]
    kept[0, :] = False  # background parent
    kept[:, 0] = False  # background child
    out = p if p_ids is None else p_ids[p]
    return xp.where(kept[p, c], out, 0).astype(xp.int32)


def subtract(cell, nucleus):
    """Cytoplasm: the cell labels where there is no nucleus (SCIP's ``substract`` of a cell
    and a nucleus mask, with any nucleus pixel removed rather than label ids subtracted)."""
    xp = array_module(cell, nucleus)
    return xp.where(nucleus > 0, 0, cell).astype(xp.int32)


# ---------------------------------------------------------------------------------------------
# evaluation


def match_instances(pred, truth, iou_threshold: float = 0.5) -> dict[str, float]:
    """One-to-one matching of predicted and true instances at IoU >= ``iou_threshold``.

    The IoU of every (predicted, true) pair comes from one ``bincount`` of label pairs. Above
    0.5 a matched pair is unique (two objects cannot both cover more than half of a third), so
    keeping every pair over the threshold is the optimal matching; below 0.5 the matching that
    maximises the summed IoU of matched pairs is found by
    ``scipy.optimize.linear_sum_assignment``, as in stardist's ``matching``.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` counts; ``precision`` tp/(tp+fp), ``recall`` tp/(tp+fn),
        ``f1`` 2tp/(2tp+fp+fn); ``mean_true_iou`` the summed IoU of matched pairs over the
        number of true instances. Labels need not be sequential; only ids present count.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in shape")
    counts = _to_host(_pair_counts(pred, truth)[0]).astype(np.float64)  # device -> host
    p_area = counts.sum(axis=1)
    t_area = counts.sum(axis=0)
    p_ids = np.flatnonzero(p_area[1:]) + 1
    t_ids = np.flatnonzero(t_area[1:]) + 1
    inter = counts[np.ix_(p_ids, t_ids)]
    union = p_area[p_ids, None] + t_area[None, t_ids] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    n_pred, n_true = len(p_ids), len(t_ids)
    if n_pred and n_true:
        if iou_threshold > 0.5:
            rows, cols = np.nonzero(iou >= iou_threshold)
        else:
            from scipy.optimize import linear_sum_assignment

            # forbid pairs under the threshold, then keep matches that reach it
            cost = -np.where(iou >= iou_threshold, iou, 0.0)
            rows, cols = linear_sum_assignment(cost)
            ok = iou[rows, cols] >= iou_threshold
            rows, cols = rows[ok], cols[ok]
        matched_iou = iou[rows, cols]
    else:
        matched_iou = np.zeros(0)
    tp = int(len(matched_iou))
    fp, fn = n_pred - tp, n_true - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "mean_true_iou": float(matched_iou.sum() / n_true) if n_true else 0.0,
    }
