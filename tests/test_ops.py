"""Batched image operations against scikit-image/SciPy called per object."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import filters, morphology
from skimage.filters import rank
from skimage.measure import label as sk_label

from scip_gpu import ops
from scip_gpu.batch import padded_shape, group_by_shape, refill, valid_mask

from .conftest import random_images, sk_binary_erosion, sk_remove_small_holes, sk_remove_small_objects, stack


@pytest.fixture(scope="module")
def planes():
    imgs = [im[0] for im in random_images(n=16, channels=1, lo=14, hi=40, seed=3)]
    b = stack(imgs)
    return imgs, b.pixels[:, 0], b.extents


def crops(batched, imgs):
    return [batched[i, : im.shape[0], : im.shape[1]] for i, im in enumerate(imgs)]


def test_refill_modes_match_numpy_pad():
    x = np.arange(12.0).reshape(1, 3, 4)
    big = np.zeros((1, 9, 11))
    big[0, :3, :4] = x[0]
    ext = np.array([[3, 4]])
    for mode, npmode in [("nearest", "edge"), ("reflect", "symmetric"), ("mirror", "reflect"), ("wrap", "wrap")]:
        want = np.pad(x[0], ((0, 6), (0, 7)), mode=npmode)
        assert np.array_equal(refill(big, ext, mode)[0], want), mode
    assert np.array_equal(refill(big, ext, "constant", 7.0)[0], np.pad(x[0], ((0, 6), (0, 7)), constant_values=7.0))


def test_valid_mask_and_grouping():
    v = valid_mask(np.array([[2, 3], [1, 1]]), (4, 4))
    assert v.sum(axis=(1, 2)).tolist() == [6, 1]
    assert padded_shape(30, 17, margin=7, multiple=8) == (40, 24)
    groups = group_by_shape([(30, 17), (31, 16), (60, 60), (30, 17)], margin=7, multiple=8, batch_size=2)
    assert [g[1].tolist() for g in groups] == [[0, 1], [3], [2]]
    assert all(len(pos) <= 2 for _, pos in groups)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_gaussian(planes, sigma, kernel_path):
    imgs, x, e = planes
    for im, got in zip(imgs, crops(ops.gaussian(x, e, sigma), imgs)):
        np.testing.assert_array_equal(got, filters.gaussian(im, sigma=sigma))


def test_gaussian_keeps_float32(planes):
    imgs, x, e = planes
    got = ops.gaussian(x.astype(np.float32), e, 1.0)
    assert got.dtype == np.float32
    ref = filters.gaussian(imgs[0].astype(np.float32), sigma=1.0)
    np.testing.assert_allclose(got[0, : imgs[0].shape[0], : imgs[0].shape[1]], ref, rtol=1e-6)


def test_sobel(planes, kernel_path):
    imgs, x, e = planes
    f = ops.gaussian(x, e, 1.0)
    for im, got in zip(imgs, crops(ops.sobel(f, e), imgs)):
        np.testing.assert_allclose(got, filters.sobel(filters.gaussian(im, 1.0)), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (2, 2), (3, 5)])
def test_sobel_tiny_images(kernel_path, shape):
    im = np.random.default_rng(1).random(shape)
    x = np.zeros((1, 8, 8))
    x[0, : shape[0], : shape[1]] = im
    got = ops.sobel(x, np.array([shape]))[0, : shape[0], : shape[1]]
    np.testing.assert_allclose(got, filters.sobel(im), rtol=1e-12, atol=1e-15)


def test_sobel_propagates_nan(planes, kernel_path):
    imgs, x, e = planes
    f = np.where(x > np.median(x), x.astype(float), np.nan)
    for i, got in enumerate(crops(ops.sobel(f, e), imgs)):
        h, w = imgs[i].shape
        ref = filters.sobel(f[i, :h, :w])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got[~np.isnan(got)], ref[~np.isnan(ref)], rtol=1e-12)


def _numba_median(x, e, r):
    from scip_gpu import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    return cpu_kernels.median_disk(x, e, r)


@pytest.mark.parametrize("impl", [ops.median_disk, ops.median_disk_stack, ops.median_disk_skimage, _numba_median])
def test_median_disk(planes, impl):
    imgs, x, e = planes
    imgs = [im // 3 for im in imgs]  # <= 10 bits, as the otsu mask uses it
    for im, got in zip(imgs, crops(impl(x // 3, e, 5), imgs)):
        np.testing.assert_array_equal(got, rank.median(im, footprint=morphology.disk(5)))


@pytest.mark.parametrize("radius", [1, 3, 6])
def test_binary_erosion(planes, kernel_path, radius):
    imgs, x, e = planes
    m = x > 500
    got = ops.binary_erosion_disk(m, e, radius)
    for i, im in enumerate(imgs):
        want = sk_binary_erosion(im > 500, morphology.disk(radius))
        np.testing.assert_array_equal(got[i, : im.shape[0], : im.shape[1]], want)
        assert not got[i, im.shape[0]:].any() and not got[i, :, im.shape[1]:].any()
    assert got.sum() < m.sum()


def test_white_tophat(planes):
    imgs, x, e = planes
    for im, got in zip(imgs, crops(ops.white_tophat_disk(x, e, 3), imgs)):
        np.testing.assert_array_equal(got, morphology.white_tophat(im, morphology.disk(3)))


def test_remove_small_objects_and_holes(planes):
    imgs, x, e = planes
    m = x > 500
    thr = e[:, 0] * e[:, 1] / 4.0
    for i, (im, got) in enumerate(zip(imgs, crops(ops.remove_small_objects(m, 20), imgs))):
        np.testing.assert_array_equal(got, sk_remove_small_objects(im > 500, 20))
    for i, (im, got) in enumerate(zip(imgs, crops(ops.remove_small_holes(m, e, thr), imgs))):
        np.testing.assert_array_equal(got, sk_remove_small_holes(im > 500, thr[i]))


@pytest.mark.parametrize("threshold", ["quarter", 30.0])
def test_fill_holes_and_clean(planes, kernel_path, threshold):
    imgs, x, e = planes
    m = (x > 500) ^ (x % 7 == 0)  # speckled: holes and small objects of every size
    thr = e[:, 0] * e[:, 1] / 4.0 if threshold == "quarter" else threshold
    got = ops.fill_holes_and_clean(m, e, thr, 20)
    changed = 0
    for i, im in enumerate(imgs):
        fg = (im > 500) ^ (im % 7 == 0)
        t = thr[i] if threshold == "quarter" else thr
        want = sk_remove_small_objects(sk_remove_small_holes(fg, t), 20)
        np.testing.assert_array_equal(got[i, : im.shape[0], : im.shape[1]], want)
        assert not got[i, im.shape[0]:].any() and not got[i, :, im.shape[1]:].any()
        changed += (want != fg).any() and want.any() and not want.all()
    assert changed >= 4  # holes were filled and objects removed, leaving a partial mask


def _scip_border_rule(mask):
    # SCIP's rule written out by hand: labels with more than int(0.25 * min(H, W)) pixels on the
    # four edges (concatenated, corners counted twice) are removed.
    lab = sk_label(mask)
    limit = int(min(mask.shape) * 0.25)
    edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    ids, counts = np.unique(edge[edge > 0], return_counts=True)
    drop = ids[counts > limit]
    out = mask & ~np.isin(lab, drop)
    return out, len(set(np.unique(lab[out])) - {0})


def test_regions_touching_border(planes, kernel_path):
    imgs, x, e = planes
    m = x > 450
    got, regions = ops.regions_touching_border(m, e)
    assert (regions > 0).any() and (got.sum() < m.sum())  # the rule did something here
    for i, im in enumerate(imgs):
        h, w = im.shape
        want, n = _scip_border_rule(im > 450)
        np.testing.assert_array_equal(got[i, :h, :w], want)
        assert regions[i] == n


@pytest.mark.parametrize("connectivity", [1, 2])
def test_label_numbering_equals_scipy(kernel_path, connectivity):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    m = ndi.gaussian_filter(rng.random((9, 41, 37)), (0, 1.5, 1.5)) > 0.5
    m ^= rng.random(m.shape) < 0.1  # speckle: many small components, diagonal contacts
    s = np.zeros((3, 3, 3), bool)
    s[1] = ndi.generate_binary_structure(2, connectivity)
    want, n_want = ndi.label(m, structure=s)
    got, n = ops.label(m, connectivity)
    assert n == n_want > 100
    np.testing.assert_array_equal(got, want)


def test_label_counts_are_per_plane(kernel_path):
    m = np.zeros((3, 6, 6), bool)
    m[0, 0, 0] = m[0, 2, 2] = True  # diagonal neighbours are not 8-adjacent here (gap)
    m[0, 1, 1] = True  # now one 8-connected component
    m[1, 0, :] = True
    m[1, 5, :] = True
    labels, n = ops.label(m, 2)
    assert n == 3
    assert ops.count_per_plane(labels, n).tolist() == [1, 2, 0]
    labels4, n4 = ops.label(m, 1)
    assert ops.count_per_plane(labels4, n4).tolist() == [3, 2, 0]


@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "wrap"])
@pytest.mark.parametrize("reach", [1, 3])
def test_refill_band_equals_full_refill_within_reach(mode, reach):
    rng = np.random.default_rng(0)
    x = rng.random((5, 20, 22))
    e = np.array([[3, 4], [20 - reach, 22 - reach], [7, 1], [1, 9], [12, 15]])
    full = refill(x, e, mode)
    band = refill(x, e, mode, reach=reach)
    for i, (h, w) in enumerate(e):
        np.testing.assert_array_equal(band[i, : h + reach, : w + reach], full[i, : h + reach, : w + reach])


def test_linspace_rows_bitwise_equals_numpy():
    rng = np.random.default_rng(5)
    lo = rng.normal(0, 1e3, 50)
    hi = lo + rng.exponential(500, 50)
    got = ops.linspace_rows(lo, hi, 16)
    for i in range(50):
        assert np.array_equal(got[i], np.linspace(lo[i], hi[i], 16))
    # a row whose step is zero takes numpy's zero-step form, the others keep theirs: each row
    # is its own numpy.linspace, whatever the other rows of the batch (numpy.linspace of arrays
    # switches every row when one step is zero; SCIP computes each object alone)
    lo2 = np.array([1.0, 5.0, 0.126])
    hi2 = np.array([1.0, 9.0, 1.146])
    got = ops.linspace_rows(lo2, hi2, 16)
    for i in range(3):
        assert np.array_equal(got[i], np.linspace(lo2[i], hi2[i], 16))
    assert not np.array_equal(got[2], np.linspace(lo2, hi2, 16, axis=1)[2])  # (the forms differ there)


def test_numba_median_on_edge_cases():
    from skimage.filters import rank

    from scip_gpu import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(9)
    imgs = [rng.integers(0, 514, (h, w)).astype(np.uint16) for h, w in [(1, 1), (1, 9), (12, 1), (3, 3), (40, 37)]]
    imgs.append(np.full((15, 15), 7, np.uint16))
    imgs.append((rng.random((30, 30)) > 0.5).astype(np.uint16) * 513)
    b = stack(imgs, margin=6)
    got = cpu_kernels.median_disk(b.pixels[:, 0], b.extents, 5)
    for i, im in enumerate(imgs):
        h, w = im.shape
        np.testing.assert_array_equal(got[i, :h, :w], rank.median(im, footprint=morphology.disk(5)))
