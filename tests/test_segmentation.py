"""Tests of scip_gpu.segmentation: quality on real nuclei, and each label operation against a
straightforward reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.segmentation import expand_labels

from scip_gpu.segmentation import (
    NUCLEI_DEFAULTS,
    SCALE_RULES,
    estimate_nucleus_radius,
    nuclei_parameters,
    assign_children,
    expand_cells,
    match_instances,
    relabel,
    remove_small_labels,
    seeded_watershed,
    subtract,
    watershed_nuclei,
)

DSB = Path(__file__).parent / "data" / "dsb2018"


@pytest.fixture(scope="module")
def dsb():
    """The DSB2018 field of view (512x512 uint16) and its 125 ground-truth nuclei."""
    return tifffile.imread(DSB / "img2d.tif"), tifffile.imread(DSB / "mask2d.tif")


def random_labels(shape=(64, 80), n=12, seed=0, distance=6, scale=1):
    """Touching and separate blobs: random seed points grown by ``expand_labels``; ids are
    multiplied by ``scale`` (non-sequential labels)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int64)
    pts = rng.integers(0, shape, size=(n, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    return expand_labels(seeds, distance=distance) * scale


def disc(shape, center, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


# ---------------------------------------------------------------------------------------------
# watershed_nuclei


def test_watershed_nuclei_dsb2018_f1(dsb):
    img, truth = dsb
    labels, params = watershed_nuclei(img, return_parameters=True)  # the defaults, not tuned here
    assert labels.dtype == np.int32 and labels.shape == img.shape
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))  # sequential
    m = match_instances(labels, truth, iou_threshold=0.5)
    # measured: f1 0.921, precision 0.957, recall 0.888 (tp 111, fp 5, fn 14)
    assert m["f1"] >= 0.9, m
    assert m["precision"] >= 0.92 and m["recall"] >= 0.86, m
    # the estimated radius (12.0 px) is that of the reference nuclei: the equivalent radius of
    # their median area, 11.8 px
    area = np.bincount(truth.ravel())[1:]
    true_r = np.sqrt(np.median(area[area > 0]) / np.pi)
    assert params["radius"] == pytest.approx(true_r, rel=0.15)


def test_watershed_nuclei_scale_defaults_are_documented():
    import inspect

    params = inspect.signature(watershed_nuclei).parameters
    for name, value in NUCLEI_DEFAULTS.items():
        assert params[name].default == value
    for name in SCALE_RULES:
        assert params[name].default is None  # derived from the radius unless given
    # r = 12 px, by hand: sigma 12/8, window 2*round(24)+1, 0.6*12, 12/6, pi*4.8^2, pi*12^2
    assert nuclei_parameters(12.0) == {"smoothing": 1.5, "block_size": 49, "min_distance": 7,
                                       "distance_smoothing": 2.0, "min_size": 72, "max_hole_size": 452}


def disc_grid(radius, n=3, noise=0.0, seed=0):
    """``n`` x ``n`` discs of ``radius`` px on a dark background, one pair of them touching; the
    image (uint16) and the number of discs."""
    step = int(4 * radius)
    shape = (n * step, n * step)
    fg = np.zeros(shape, dtype=bool)
    centres = [(step // 2 + i * step, step // 2 + j * step) for i in range(n) for j in range(n)]
    centres[1] = (centres[0][0], centres[0][1] + int(1.9 * radius))  # touches disc 0
    for c in centres:
        fg |= disc(shape, c, radius)
    rng = np.random.default_rng(seed)
    img = fg * 3000.0 + 300 + rng.normal(0, noise, shape)
    return np.clip(img, 0, 65535).astype(np.uint16), len(centres)


@pytest.mark.parametrize("radius", [5, 13])
def test_watershed_nuclei_follows_the_scale(radius):
    img, n = disc_grid(radius, noise=100.0)
    assert estimate_nucleus_radius(img) == pytest.approx(radius, rel=0.1)
    labels, p = watershed_nuclei(img, return_parameters=True)
    assert labels.max() == n  # every disc, the touching pair split
    assert p == pytest.approx({**nuclei_parameters(p["radius"]), "radius": p["radius"]})
    assert p["min_distance"] == round(0.6 * p["radius"]) and p["block_size"] % 2 == 1


def test_nuclei_parameters_scale_with_the_radius():
    small, large = nuclei_parameters(5.0), nuclei_parameters(15.0)
    for k in ("smoothing", "distance_smoothing"):
        assert large[k] == pytest.approx(3 * small[k], abs=0.035)  # each rounded to 0.01 px
    assert large["min_distance"] == 3 * small["min_distance"]
    assert (large["block_size"] - 1) == 3 * (small["block_size"] - 1)
    assert large["min_size"] == pytest.approx(9 * small["min_size"], rel=0.05)


def test_watershed_nuclei_given_values_override_the_estimate():
    img, _ = disc_grid(8)
    _, p = watershed_nuclei(img, min_distance=3, block_size=0, return_parameters=True)
    assert p["min_distance"] == 3 and p["block_size"] == 0
    assert p["smoothing"] == nuclei_parameters(p["radius"])["smoothing"]
    _, q = watershed_nuclei(img, radius=20.0, return_parameters=True)
    assert q == {**nuclei_parameters(20.0), "radius": 20.0}
    with pytest.raises(TypeError, match="unknown"):
        nuclei_parameters(5.0, block=3)


def test_watershed_nuclei_fills_holes():
    shape = (60, 60)
    img = np.full(shape, 100, dtype=np.uint16)
    img[disc(shape, (30, 30), 14)] = 4000
    img[disc(shape, (30, 30), 4)] = 100  # a dark nucleolus
    labels = watershed_nuclei(img)
    assert labels.max() == 1 and labels[30, 30] == 1
    assert watershed_nuclei(img, max_hole_size=0)[30, 30] == 0


def test_watershed_nuclei_splits_touching_discs():
    shape = (80, 100)
    fg = disc(shape, (40, 35), 15) | disc(shape, (40, 62), 15)  # overlapping by 3 px
    img = (fg * 3000 + 200).astype(np.uint16)
    labels = watershed_nuclei(img, block_size=0)
    assert labels.max() == 2
    assert labels[40, 35] != labels[40, 62] and labels[40, 35] > 0 and labels[40, 62] > 0


def test_watershed_nuclei_removes_specks():
    shape = (64, 64)
    img = np.full(shape, 100.0)
    img[disc(shape, (30, 30), 10)] = 4000
    img[5:8, 55:58] = 4000  # 9 px speck
    img = np.clip(img + np.random.default_rng(0).normal(0, 50, shape), 0, None).astype(np.uint16)
    labels, p = watershed_nuclei(img, return_parameters=True)
    assert p["min_size"] == round(np.pi * (0.4 * p["radius"]) ** 2)  # 50 px for r = 10
    assert labels.max() == 1 and labels[6, 56] == 0 and labels[30, 30] == 1
    assert watershed_nuclei(img, min_size=5)[6, 56] > 0  # kept when the user says so


def test_watershed_nuclei_flat_image():
    labels = watershed_nuclei(np.full((32, 32), 7, dtype=np.uint16))
    assert labels.dtype == np.int32 and not labels.any()


def test_watershed_nuclei_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        watershed_nuclei(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="threshold_method"):
        watershed_nuclei(np.arange(64.0).reshape(8, 8), threshold_method="mean")


# ---------------------------------------------------------------------------------------------
# cells


@pytest.mark.parametrize("distance", [0, 1, 2.5, 6])
def test_expand_cells_equals_skimage(distance):
    nuclei = random_labels(n=15, seed=3, distance=2)
    out = expand_cells(nuclei, distance)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expand_labels(nuclei, distance=distance))


# Two touching cells of different sizes: a (radius 18 around column 32) and b (radius 26
# around column 70) overlap on columns 44-50, with a dimmer seam on columns 46-48. Their
# nuclei sit at columns 32 and 80, so the seam lies 9 px off the midpoint between them.
CELL_A, CELL_B = ((40, 32), 18), ((40, 70), 26)


def _two_cells(gap_value):
    shape = (80, 110)
    cells = disc(shape, *CELL_A) | disc(shape, *CELL_B)
    cyto = np.where(cells, 2000.0, 100.0)
    cyto[:, 46:49] = np.where(cells[:, 46:49], gap_value, 100.0)
    nuclei = np.zeros(shape, dtype=np.int32)
    nuclei[disc(shape, (40, 32), 6)] = 4
    nuclei[disc(shape, (40, 80), 6)] = 9
    return cyto.astype(np.uint16), nuclei


@pytest.mark.parametrize("surface", ["gradient", "intensity"])
def test_seeded_watershed_two_touching_cells(surface):
    cyto, nuclei = _two_cells(gap_value=1200)
    cells = seeded_watershed(cyto, nuclei, surface=surface)
    assert cells.dtype == np.int32
    assert set(np.unique(cells)) == {0, 4, 9}
    for i in (4, 9):  # each cell holds its whole nucleus
        assert np.all(cells[nuclei == i] == i)
    # each cell covers its own disc (but for the smoothed rim) away from the seam, and no
    # pixel a few pixels outside both discs
    shape = cells.shape
    cols = np.arange(shape[1])[None, :]
    (ca, ra), (cb, rb) = CELL_A, CELL_B
    assert np.all(cells[disc(shape, ca, ra - 3) & (cols < 45)] == 4)
    assert np.all(cells[disc(shape, cb, rb - 3) & (cols > 50)] == 9)
    assert not cells[~(disc(shape, ca, ra + 3) | disc(shape, cb, rb + 3))].any()
    # the split follows the seam (columns 46..48), not the midpoint between the nuclei (column
    # 56); within a pixel either way (scikit-image 0.26's watershed breaks the ties on the
    # smoothed rim where the discs meet one pixel further left than 0.25 did)
    assert 45 <= np.nonzero(cells == 4)[1].max() <= 49
    assert 45 <= np.nonzero(cells == 9)[1].min() <= 50


def test_seeded_watershed_keeps_nuclei_outside_the_foreground():
    cyto, nuclei = _two_cells(gap_value=1200)
    nuclei[disc(nuclei.shape, (8, 100), 4)] = 12  # a nucleus where the cytoplasm is dark
    cells = seeded_watershed(cyto, nuclei)
    assert np.all(cells[nuclei == 12] == 12)


def test_seeded_watershed_rejects_unknown_surface():
    cyto, nuclei = _two_cells(gap_value=1200)
    with pytest.raises(ValueError, match="surface"):
        seeded_watershed(cyto, nuclei, surface="sobel")


# ---------------------------------------------------------------------------------------------
# label arithmetic


def assign_children_reference(parent, child, min_overlap=0.1):
    """SCIP's per-parent loop (segmentation/cellpose.py), with the background excluded by value."""
    out = np.zeros(parent.shape, dtype=np.int32)
    for i in np.unique(parent):
        if i == 0:
            continue
        region = parent == i
        ids, counts = np.unique(child[region], return_counts=True)
        keep = (ids != 0) & (counts / region.sum() > min_overlap)
        out[np.isin(child, ids[keep]) & region] = i
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scale", [1, 100_003])  # 100_003: large ids, compact pair table
def test_assign_children_matches_reference(seed, scale):
    parent = random_labels(n=10, seed=seed, distance=9, scale=scale)
    child = random_labels(n=25, seed=seed + 100, distance=4)
    for min_overlap in (0.0, 0.1, 0.3):
        out = assign_children(parent, child, min_overlap)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, assign_children_reference(parent, child, min_overlap))


def test_assign_children_hand_made():
    parent = np.zeros((10, 10), dtype=np.int32)
    parent[:, :5] = 1  # area 50
    parent[:, 5:] = 2  # area 50
    child = np.zeros_like(parent)
    child[0:6, 0:2] = 7  # 12 px in parent 1: 0.24 > 0.1, kept
    child[9, 0:4] = 8  # 4 px in parent 1: 0.08, dropped
    child[0:3, 3:8] = 9  # 6 px in parent 1 (0.12, kept), 9 px in parent 2 (0.18, kept)
    out = assign_children(parent, child)
    expected = np.zeros_like(parent)
    expected[0:6, 0:2] = 1
    expected[0:3, 3:5] = 1
    expected[0:3, 5:8] = 2
    np.testing.assert_array_equal(out, expected)


def test_assign_children_child_covering_parent():
    # no background inside the parent: the child is still kept (SCIP would drop it)
    parent = np.ones((6, 6), dtype=np.int32)
    child = np.full((6, 6), 3, dtype=np.int32)
    np.testing.assert_array_equal(assign_children(parent, child), parent)


def test_assign_children_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        assign_children(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        assign_children(np.full((4, 4), -1), np.zeros((4, 4), int))


def test_subtract():
    cell = random_labels(n=8, seed=1, distance=8)
    nucleus = random_labels(n=8, seed=1, distance=3)  # same seeds: nuclei inside the cells
    nucleus[0, :] = 5  # and some nucleus pixels on background or on another cell
    out = subtract(cell, nucleus)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.where(nucleus > 0, 0, cell))
    assert not out[nucleus > 0].any()
    assert np.array_equal(out[nucleus == 0], cell[nucleus == 0])


def test_remove_small_labels_and_relabel():
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[0:2, 0:2] = 3  # 4 px
    labels[5:10, 5:10] = 8  # 25 px
    kept = remove_small_labels(labels, 5)
    assert set(np.unique(kept)) == {0, 8}
    out = relabel(kept)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(out > 0, labels == 8)


# ---------------------------------------------------------------------------------------------
# match_instances


def _hand_made_pair():
    truth = np.zeros((80, 80), dtype=np.int32)
    pred = np.zeros_like(truth)
    truth[0:10, 0:10] = 1
    pred[0:10, 0:10] = 1  # IoU 1
    truth[20:30, 0:10] = 2
    pred[20:30, 0:15] = 2  # inter 100, union 150: IoU 2/3
    truth[40:50, 0:10] = 3
    pred[40:50, 6:16] = 3  # inter 40, union 160: IoU 1/4
    pred[60:70, 60:70] = 4  # no truth
    return pred, truth


def test_match_instances_hand_made():
    pred, truth = _hand_made_pair()
    m = match_instances(pred, truth, iou_threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["mean_true_iou"] == pytest.approx((1 + 2 / 3) / 3)

    m = match_instances(pred, truth, iou_threshold=0.2)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 0)
    assert m["f1"] == pytest.approx(6 / 7)
    assert m["mean_true_iou"] == pytest.approx((1 + 2 / 3 + 1 / 4) / 3)

    m = match_instances(pred, truth, iou_threshold=0.7)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 3, 2)


def test_match_instances_ignores_label_values():
    pred, truth = _hand_made_pair()
    renamed = np.where(pred > 0, pred * 1_000_003 + 17, 0)  # large ids: compact pair table
    assert match_instances(renamed, truth) == match_instances(pred, truth)
    assert match_instances(truth, pred)["tp"] == match_instances(pred, truth)["tp"]


def test_match_instances_perfect(dsb):
    _, truth = dsb
    m = match_instances(truth, truth)
    assert (m["tp"], m["fp"], m["fn"]) == (125, 0, 0)
    assert m["f1"] == m["precision"] == m["recall"] == m["mean_true_iou"] == 1.0
    rng = np.random.default_rng(0)
    perm = np.concatenate([[0], rng.permutation(truth.max()) + 1])
    assert match_instances(perm[truth], truth)["f1"] == 1.0


def test_match_instances_assignment_equals_greedy_above_half(dsb):
    # at IoU 0.5 the optimal assignment (linear_sum_assignment) and the pairs over the
    # threshold (the path taken above 0.5) agree
    img, truth = dsb
    labels = watershed_nuclei(img)
    a = match_instances(labels, truth, iou_threshold=0.5)
    b = match_instances(labels, truth, iou_threshold=np.nextafter(0.5, 1))
    assert a == b


def test_match_instances_empty():
    empty = np.zeros((8, 8), dtype=np.int32)
    one = empty.copy()
    one[2:4, 2:4] = 1
    assert match_instances(empty, one)["fn"] == 1 and match_instances(empty, one)["f1"] == 0.0
    assert match_instances(one, empty)["fp"] == 1
    with pytest.raises(ValueError, match="shape"):
        match_instances(empty, np.zeros((8, 9), dtype=np.int32))
