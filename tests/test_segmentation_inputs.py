"""scip_gpu.segmentation on the images users actually have: other dtypes and ranges of the same
field, degenerate fields (empty, non-finite, tiny), and out-of-range parameters. Each case
either segments as the reference says or fails with a message naming the cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.morphology import remove_small_objects

from scip_gpu.segmentation import (
    estimate_nucleus_radius,
    expand_cells,
    match_instances,
    nuclei_parameters,
    relabel,
    remove_small_labels,
    seeded_watershed,
    watershed_nuclei,
)

DSB = Path(__file__).parent / "data" / "dsb2018"


@pytest.fixture(scope="module")
def corner():
    """The top-left 128x128 of the DSB2018 field (uint16, values 0-235) with its reference
    nuclei, and the labels of the defaults on it."""
    img = tifffile.imread(DSB / "img2d.tif")[:128, :128]
    truth = tifffile.imread(DSB / "mask2d.tif")[:128, :128]
    return img, truth, watershed_nuclei(img)


def test_corner_reference(corner):
    img, truth, labels = corner
    m = match_instances(labels, truth)
    # measured: 12 objects, tp 10, fp 2, fn 2 (f1 0.833)
    assert m["tp"] >= 9 and m["f1"] >= 0.8, m


@pytest.mark.parametrize("variant", ["float32 0..1", "float32 counts", "float64 0..1 of max", "x100",
                                     "pedestal 30000", "uint8"])
def test_labels_do_not_depend_on_dtype_range_or_offset(corner, variant):
    """The same field as 8-bit, 16-bit stretched or with a camera pedestal, or as floats in
    [0, 1] or in counts: the thresholds are relative to the image's own range, so the labels are
    the same pixel for pixel."""
    img, _, labels = corner
    f = img.astype(np.float64)
    x = {"float32 0..1": (f / 65535).astype(np.float32), "float32 counts": f.astype(np.float32),
         "float64 0..1 of max": f / f.max(), "x100": img * np.uint16(100),
         "pedestal 30000": img + np.uint16(30000), "uint8": img.astype(np.uint8)}[variant]
    np.testing.assert_array_equal(watershed_nuclei(x), labels)


@pytest.mark.parametrize("image, match", [
    (np.zeros((0, 5), np.uint16), "empty"),
    (np.zeros((7, 0)), "empty"),
    (np.full((8, 8), np.nan), "64 NaN or infinite"),
    (np.pad(np.array([[np.inf]]), ((3, 4), (3, 4))), "1 NaN or infinite"),
    (np.ones((8, 8), complex), "not a real-valued"),
    (np.ones((1, 8, 8)), "2-D"),
])
def test_images_that_cannot_be_segmented_say_why(image, match):
    """(Before: 'zero-size array to reduction operation maximum which has no identity',
    'autodetected range of [nan, nan] is not finite', "Invalid integer data type 'c'".)"""
    with pytest.raises((ValueError, TypeError), match=match):
        watershed_nuclei(image)
    with pytest.raises((ValueError, TypeError), match=match):
        estimate_nucleus_radius(image)


@pytest.mark.parametrize("radius", [0, -3, float("nan"), float("inf")])
def test_nuclei_parameters_reject_radius_that_is_not_a_length(radius):
    """(Before: negative windows for -3, 'cannot convert float NaN to integer' for NaN.)"""
    with pytest.raises(ValueError, match="positive number of pixels"):
        nuclei_parameters(radius)
    with pytest.raises(ValueError, match="positive number of pixels"):
        watershed_nuclei(np.ones((8, 8)), radius=radius)


def test_nuclei_parameters_tiny_radius_keeps_a_local_window():
    # 4r = 0.4 px would round to a 1-px window: a pixel compared with itself is never above it
    assert nuclei_parameters(0.1)["block_size"] == 3
    img = np.zeros((9, 9))
    img[4, 4] = 1.0  # one bright pixel: a nucleus of radius 0.5 px
    labels = watershed_nuclei(img, radius=0.1)
    assert labels[4, 4] == 1 and labels.sum() == 1


def test_watershed_nuclei_rejects_one_pixel_window():
    with pytest.raises(ValueError, match="block_size must be an odd number"):
        watershed_nuclei(np.eye(8), block_size=1)


def test_min_distance_beyond_the_field_is_the_field():
    """Two pixels of a 24x24 field are at most 23 px apart, so any min_distance from 24 up gives
    the same labels (before: a (2 * 10**5 + 1)^2 footprint was allocated)."""
    img = np.zeros((24, 24))
    img[4:10, 4:10] = img[14:20, 14:20] = 1.0
    ref = watershed_nuclei(img, min_distance=24)
    np.testing.assert_array_equal(watershed_nuclei(img, min_distance=10**5), ref)
    assert ref.max() == 2


def test_expand_cells_rejects_negative_distance():
    """(Before: expand_labels with a negative distance silently erased every nucleus.)"""
    nuclei = np.zeros((8, 8), np.int32)
    nuclei[2:5, 2:5] = 1
    with pytest.raises(ValueError, match="must not be negative"):
        expand_cells(nuclei, -1)


def test_seeded_watershed_checks_shapes():
    """(Before: a NumPy broadcasting error.)"""
    with pytest.raises(ValueError, match=r"nuclei \(4, 5\) and cytoplasm image \(5, 4\)"):
        seeded_watershed(np.zeros((5, 4)), np.zeros((4, 5), np.int32))


def test_relabel_and_remove_small_labels_degenerate_inputs():
    empty = relabel(np.zeros((0, 3), np.int64))  # (before: 'zero-size array to reduction operation')
    assert empty.shape == (0, 3) and empty.dtype == np.int32
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[5:9, 5:9] = True  # 16 px
    # labels are ids, not components: a boolean image is one label, its True pixels (20 px)
    out = remove_small_labels(mask, 10)  # (before: IndexError from boolean indexing)
    assert out.sum() == 20  # one label of 20 px: kept
    out = remove_small_labels(mask, 21)
    assert not out.any()
    # with real labels it is scikit-image's remove_small_objects
    labels = np.zeros((10, 10), np.int32)
    labels[mask] = 1
    labels[5:9, 5:9] = 2
    np.testing.assert_array_equal(remove_small_labels(labels, 10), remove_small_objects(labels, max_size=9))


# ---------------------------------------------------------------------------------------------
# fields without nuclei: noise only


@pytest.mark.parametrize("kind", ["poisson 0.5", "gaussian", "uniform float"])
def test_noise_only_field_has_no_nuclei(kind):
    """An empty well or a dark tile: no nuclei by construction. A threshold always splits an
    image, so without the contrast test such fields give 'nuclei' (measured on 6 fields of 96x96
    each: 1364 at 0.5 counts per pixel, 193 in Gaussian noise, 168 in uniform float noise)."""
    found = unfiltered = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        img = {"poisson 0.5": lambda: rng.poisson(0.5, (64, 64)).astype(np.uint16),
               "gaussian": lambda: rng.normal(1000, 30, (96, 96)).astype(np.uint16),
               "uniform float": lambda: rng.random((96, 96), dtype=np.float32)}[kind]()
        found += int(watershed_nuclei(img).max())
        if not unfiltered:
            unfiltered += int(watershed_nuclei(img, min_contrast=0).max())
    assert found == 0
    assert unfiltered > 0  # what the contrast test removes


def test_background_of_a_real_field_has_no_nuclei():
    """A 32x32 tile of the DSB2018 field that its reference labels hold no nucleus in (before:
    12 'nuclei' from the background texture)."""
    img = tifffile.imread(DSB / "img2d.tif")[:32, :32]
    assert not tifffile.imread(DSB / "mask2d.tif")[:32, :32].any()
    assert watershed_nuclei(img).max() == 0


def test_contrast_test_against_a_direct_computation():
    """Squares of rising brightness on Gaussian noise: an object is kept exactly when its
    z = (mean inside - mean of the background ring) / (sigma * sqrt(1/n_inside + 1/n_ring)) of
    the image smoothed by r/8 = ring/4 reaches 10, computed here with SciPy and scikit-image (sigma:
    the noise's own standard deviation, which the robust estimate must match within 5 %)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from scip_gpu.segmentation import _drop_faint, _noise_sigma

    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 1.0, (60, 160))
    labels = np.zeros(img.shape, np.int32)
    for k in range(8):  # 6x6 squares, 20 px apart, 0.6 to 4.8 noise sigmas above the background
        labels[27:33, 7 + 20 * k:13 + 20 * k] = k + 1
        img[labels == k + 1] += 0.6 * (k + 1)
    ring = 3.0
    grown = expand_labels(labels, ring)
    sigma = _noise_sigma(img, grown == 0)
    assert sigma == pytest.approx(1.0, rel=0.05)
    smooth = ndi.gaussian_filter(img, ring / 4, mode="nearest")
    z = []
    for k in range(1, 9):
        inside, around = smooth[labels == k], smooth[(grown == k) & (labels == 0)]
        z.append((inside.mean() - around.mean()) / (sigma * np.sqrt(1 / inside.size + 1 / around.size)))
    z = np.array(z)
    assert (z < 10).any() and (z >= 10).any()  # both sides of the test are exercised
    out = _drop_faint(img, labels, ring, 10.0)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(np.unique(out[out > 0]), np.flatnonzero(z >= 10) + 1)
    np.testing.assert_array_equal(_drop_faint(img, labels, ring, 0.0), labels)


def test_contrast_test_keeps_real_nuclei(corner):
    img, _, labels = corner
    assert labels.max() == 12  # as without the test (min_contrast=0)
    np.testing.assert_array_equal(watershed_nuclei(img, min_contrast=0), labels)
    with pytest.raises(ValueError, match="min_contrast"):
        watershed_nuclei(img, min_contrast=-1)


# ---------------------------------------------------------------------------------------------
# uneven illumination


def test_background_surface_removes_an_added_quadratic():
    """A pedestal, tilt and curvature added to a field shift the fitted background by exactly
    that surface (the fit is linear and the pixels below it stay the same)."""
    from scip_gpu.segmentation import _background_surface

    img = tifffile.imread(DSB / "img2d.tif")[:96, :80].astype(np.float64)
    y, x = np.meshgrid(np.linspace(-1, 1, 96), np.linspace(-1, 1, 80), indexing="ij")
    added = 500 + 40 * x - 25 * y + 30 * x * x - 20 * x * y + 10 * y * y
    np.testing.assert_allclose(_background_surface(img + added) - _background_surface(img), added, atol=1e-8)
    # the fit follows the pixels below it: under the median of the background, above its minimum
    surface = _background_surface(img)
    background = img[tifffile.imread(DSB / "mask2d.tif")[:96, :80] == 0]
    assert background.min() <= surface.mean() <= np.median(background)


@pytest.mark.parametrize("light", ["tilt", "vignette"])
def test_unevenly_lit_field_segments_as_the_even_one(corner, light):
    """The DSB2018 corner under a tilt of its own maximum across the field, or a vignette that
    dims its corners to a third: the nuclei found are those of the evenly lit field (before: a
    global threshold of the tilted field kept its bright half's background, F1 0.00; with the
    vignette F1 0.24; now 0.83 for all three)."""
    img, truth, labels = corner
    f = img.astype(np.float64)
    y, x = np.meshgrid(np.linspace(-1, 1, 128), np.linspace(-1, 1, 128), indexing="ij")
    lit = f + f.max() * (x + 1) / 2 if light == "tilt" else f * (1 - (x * x + y * y) / 3)
    got = watershed_nuclei(lit)
    assert match_instances(got, truth)["f1"] >= match_instances(labels, truth)["f1"] - 0.05


def test_min_contrast_is_the_configured_one():
    """segmentation.min_contrast reaches the watershed of the fields pipeline (0: no contrast
    test, noise gives objects); a negative value is a configuration error."""
    from scip_gpu.config import SegmentationConfig, _check_watershed
    from scip_gpu.errors import ConfigError
    from scip_gpu.field_pipeline import watershed_fields

    img = np.random.default_rng(0).normal(1000, 30, (1, 96, 96)).astype(np.uint16)
    assert int(watershed_fields([img], SegmentationConfig())[0].max()) == 0
    assert int(watershed_fields([img], SegmentationConfig(min_contrast=0.0))[0].max()) > 0
    with pytest.raises(ConfigError, match="segmentation.min_contrast=-1"):
        _check_watershed(SegmentationConfig(min_contrast=-1.0))
