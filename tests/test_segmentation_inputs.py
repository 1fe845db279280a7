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
    image, so before the contrast test these fields gave 'nuclei' (summed over 10 seeds of
    256x256: about 1500 per field at 0.5 counts per pixel, 5-15 per Gaussian field, here
    206, 111 and 1)."""
    rng = np.random.default_rng(3)
    img = {"poisson 0.5": lambda: rng.poisson(0.5, (96, 96)).astype(np.uint16),
           "gaussian": lambda: rng.normal(1000, 30, (96, 96)).astype(np.uint16),
           "uniform float": lambda: rng.random((96, 96), dtype=np.float32)}[kind]()
    assert watershed_nuclei(img).max() == 0
    assert watershed_nuclei(img, min_contrast=0).max() > 0


def test_background_of_a_real_field_has_no_nuclei():
    """A 32x32 tile of the DSB2018 field that its reference labels hold no nucleus in (before:
    12 'nuclei' from the background texture)."""
    img = tifffile.imread(DSB / "img2d.tif")[:32, :32]
    assert not tifffile.imread(DSB / "mask2d.tif")[:32, :32].any()
    assert watershed_nuclei(img).max() == 0


@pytest.mark.parametrize("level, kept", [(7.0, False), (8.0, True)])
def test_contrast_test_by_hand(level, kept):
    """A 4x4 object on a +-1 checkerboard. Every background difference is +-2, so the noise
    sigma is 1.4826 * 2 / sqrt(2) = 2.097; the 1-px ring (16 px) averages 0; the standard error
    is 2.097 * sqrt(1/16 + 1/16) = 0.741 and 10 of them 7.41: level 7 is dropped, 8 kept."""
    from scip_gpu.segmentation import _drop_faint

    i, j = np.indices((20, 20))
    img = np.where((i + j) % 2, 1.0, -1.0)
    labels = np.zeros((20, 20), np.int32)
    labels[8:12, 8:12] = 5
    img[labels > 0] = level
    out = _drop_faint(img, labels, 1.0, 10.0)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(out, labels if kept else 0)
    np.testing.assert_array_equal(_drop_faint(img, labels, 1.0, level / 0.7413 - 0.01), labels)


def test_contrast_test_keeps_real_nuclei(corner):
    img, _, labels = corner
    assert labels.max() == 12  # as without the test (min_contrast=0)
    np.testing.assert_array_equal(watershed_nuclei(img, min_contrast=0), labels)
    with pytest.raises(ValueError, match="min_contrast"):
        watershed_nuclei(img, min_contrast=-1)
