"""The watershed flood (``ops.watershed``): its relaxation equals scikit-image's watershed where
the altitudes have no ties (where the reference on NumPy takes scikit-image's flood itself);
the numba flood and the CUDA kernel (kernels/watershed.cu, through tests/cuda_sim and on a GPU)
equal the relaxation everywhere, ties included, on images larger than one 32x32 tile (keys
crossing tiles over several launches)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed as sk_watershed

from scip_gpu import cpu_kernels, gpu_kernels, ops


def _markers(rng, shape, k):
    m = np.zeros(shape, dtype=np.int32)
    pos = rng.choice(m.size, size=min(k, m.size), replace=False)
    m.flat[pos] = rng.integers(1, 50, size=len(pos))
    return m


def _smooth(rng, shape, sigma):
    return ndi.gaussian_filter(rng.random(shape), sigma)


@pytest.mark.parametrize("seed", range(4))
def test_reference_equals_scikit_image_without_ties(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    f = _smooth(rng, shape, 2.5)  # continuous altitudes: no two pixels alike
    markers = _markers(rng, shape, 8)
    mask = _smooth(rng, shape, 3) > 0.45  # a domain in pieces; some markers outside it
    for mk in (None, mask):
        want = sk_watershed(f, markers, mask=mk)
        got = ops._watershed_relaxation(f, markers, mk)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(ops.watershed.reference(f, markers, mk), want)
        if cpu_kernels.available():
            np.testing.assert_array_equal(cpu_kernels.watershed(f, markers, mk), want)


def test_reference_on_a_plateau_by_hand():
    # a flat image, markers 5 (left) and 9 (right) on one row: each pixel goes to the marker
    # fewer steps away; at equal steps the neighbour first in raster order decides (the pixel
    # above on the middle column's later rows, which took the left marker's label)
    f = np.zeros((3, 5))
    m = np.zeros((3, 5), dtype=np.int32)
    m[0, 0], m[0, 4] = 5, 9
    got = ops.watershed.reference(f, m)  # (ties: the relaxation)
    np.testing.assert_array_equal(got, [[5, 5, 5, 9, 9],
                                        [5, 5, 5, 9, 9],
                                        [5, 5, 5, 9, 9]])
    # a domain cut in two: the part without a marker stays 0
    mask = np.ones((3, 5), dtype=bool)
    mask[:, 2] = False
    m[0, 4] = 0
    np.testing.assert_array_equal(ops.watershed.reference(f, m, mask), [[5, 5, 0, 0, 0]] * 3)


def _tie_heavy(rng, shape, levels):
    f = _smooth(rng, shape, 3)
    return np.floor((f - f.min()) / max(np.ptp(f), 1e-12) * levels)


@pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed")
@pytest.mark.parametrize("seed", range(6))
def test_numba_flood_equals_reference_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(1, 50)), int(rng.integers(1, 50)))
    f = _tie_heavy(rng, shape, int(rng.integers(1, 6)))
    markers = _markers(rng, shape, int(rng.integers(1, 9)))
    mask = rng.random(shape) > 0.2
    for mk in (None, mask):
        np.testing.assert_array_equal(cpu_kernels.watershed(f, markers, mk), ops._watershed_relaxation(f, markers, mk))


def test_nan_inside_the_mask_is_refused():
    f = np.zeros((4, 4))
    f[1, 1] = np.nan
    m = np.zeros((4, 4), dtype=np.int32)
    m[0, 0] = 1
    with pytest.raises(ValueError, match="NaN"):
        ops.watershed(f, m)
    mask = np.ones((4, 4), dtype=bool)
    mask[1, 1] = False  # outside the mask it does not matter
    assert ops.watershed(f, m, mask)[3, 3] == 1


@pytest.mark.parametrize("seed", range(3))
def test_kernel_equals_cpu_across_tiles(device, seed):
    rng = np.random.default_rng(200 + seed)
    shape = (70 + 9 * seed, 100 - 11 * seed)  # 3x4 tiles of 32, partial at the edges
    f = _tie_heavy(rng, shape, 4 + seed) if seed != 1 else _smooth(rng, shape, 4)
    markers = _markers(rng, shape, 3 + 4 * seed)  # few markers: floods cross several tiles
    mask = None if seed == 0 else _smooth(rng, shape, 4) > 0.4
    want = ops._watershed_relaxation(f, markers, mask)
    got = gpu_kernels.watershed(device.asarray(f), device.asarray(markers),
                                None if mask is None else device.asarray(mask))
    np.testing.assert_array_equal(device.asnumpy(got) if hasattr(device, "asnumpy") else np.asarray(got), want)
    if seed == 1:  # no ties: scikit-image's labels too
        np.testing.assert_array_equal(want, sk_watershed(f, markers, mask=mask))


@pytest.mark.gpu
@pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed")
def test_kernel_on_a_full_field_is_the_reference_every_time_on_a_gpu():
    """A 1024x1280 field of tie-heavy altitudes with few markers (floods across many 32x32
    tiles, blocks reading borders their neighbours write): the reference's labels, the same in
    every one of 3 runs (no result may depend on the blocks' interleaving)."""
    cp = pytest.importorskip("cupy")
    from scip_gpu.backend import gpu_available

    if not gpu_available()[0]:
        pytest.skip("no usable GPU")
    rng = np.random.default_rng(11)
    shape = (1024, 1280)
    f = _tie_heavy(rng, shape, 3)
    markers = _markers(rng, shape, 40)
    mask = _smooth(rng, shape, 4) > 0.45
    want = cpu_kernels.watershed(f, markers, mask)  # (the numba flood: the reference's labels, 50x faster)
    for _ in range(3):
        got = gpu_kernels.watershed(cp.asarray(f), cp.asarray(markers), cp.asarray(mask))
        np.testing.assert_array_equal(got.get(), want)


def test_relaxation_on_the_device_equals_numpy(device):
    """The reference as it runs on a GPU with SCIP_GPU_KERNELS=0 (the array namespace on device
    arrays, no scikit-image): the same labels as on NumPy, ties included."""
    rng = np.random.default_rng(7)
    for args, _ in ops._watershed_examples(rng):
        want = ops._watershed_relaxation(*args)
        got = ops.watershed.reference(*[device.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
        np.testing.assert_array_equal(got.get(), want)
