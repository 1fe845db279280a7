"""Batched masked statistics against NumPy/SciPy per row."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu.stats import STATISTICS, masked_quantile, masked_statistics, reference_statistics


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 300.0, (40, 257)).round()  # integer-valued, as uint16 images
    valid = rng.random((40, 257)) < rng.random((40, 1))
    valid[0] = False  # empty row
    valid[1] = False
    valid[1, 7] = True  # a single value
    valid[2, :2] = True
    valid[2, 2:] = False  # two values
    values[3] = 42.0  # constant row: skewness/kurtosis NaN
    valid[3] = True
    return values, valid


def test_matches_numpy_and_scipy():
    values, valid = _rows()
    got = masked_statistics(values, valid)
    assert got.shape == (40, len(STATISTICS))
    for r in range(len(values)):
        want = reference_statistics(values[r][valid[r]])
        scale = max(np.abs(values[r][valid[r]]).max(initial=0.0), 1.0)
        np.testing.assert_array_equal(np.isnan(got[r]), np.isnan(want), err_msg=f"row {r}")
        ok = ~np.isnan(want)
        # 1e-6 relative; skewness/kurtosis near 0 and sums checked with an absolute floor
        np.testing.assert_allclose(got[r][ok], want[ok], rtol=1e-6, atol=1e-9 * scale, err_msg=f"row {r}")


def test_named_values_by_hand():
    x = np.array([[1.0, 2.0, 3.0, 10.0, 99.0]])
    v = np.array([[True, True, True, True, False]])
    s = dict(zip(STATISTICS, masked_statistics(x, v)[0]))
    assert s["mean"] == 4.0 and s["sum"] == 16.0 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["median"] == 2.5  # linear interpolation
    assert s["lower_quartile"] == 1.75 and s["upper_quartile"] == 4.75
    assert s["mad"] == 1.0  # |x - 2.5| = 1.5, .5, .5, 7.5 -> median 1.0
    assert s["std"] == pytest.approx(np.sqrt(((x[0, :4] - 4) ** 2).mean()))


def test_empty_rows_are_nan():
    got = masked_statistics(np.ones((2, 5)), np.zeros((2, 5), bool))
    assert np.isnan(got).all()


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.99, 1.0])
def test_quantile_bitwise_equal_numpy(q):
    values, valid = _rows(1)
    got = masked_quantile(values, valid, q)
    for r in range(len(values)):
        sel = values[r][valid[r]]
        if sel.size == 0:
            assert np.isnan(got[r])
        else:
            assert got[r] == np.quantile(sel, q)


@pytest.mark.parametrize("seed", range(5))
def test_ties_and_small_rows(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, (200, 9)).astype(float)  # many ties, n from 0 to 9
    valid = rng.random((200, 9)) < rng.random((200, 1))
    got = masked_statistics(values, valid)
    for r in range(200):
        want = reference_statistics(values[r][valid[r]])
        np.testing.assert_array_equal(np.isnan(got[r]), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[r][ok], want[ok], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_compiled_sorted_view_statistics(seed):
    """The CPU kernel: views read off one sort per plane give the array form's statistics."""
    from scip_gpu import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    values, valid = _rows(seed)
    px = values.astype(np.uint16)  # integer pixels: the radix-sorted path
    views = np.stack([valid, ~valid, np.ones_like(valid)])  # three views of every plane
    order, sorted_values = cpu_kernels.sort_order(px)
    np.testing.assert_array_equal(sorted_values, np.sort(px, axis=1))
    got = cpu_kernels.sorted_view_statistics(order, sorted_values, views)
    assert got.shape == (len(px), 3, len(STATISTICS))
    for k in range(3):
        want = masked_statistics(px.astype(np.float64), views[k])
        np.testing.assert_array_equal(np.isnan(got[:, k]), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[:, k][ok], want[ok], rtol=1e-12, atol=1e-9)
    # float pixels take NumPy's argsort
    f_order, f_sorted = cpu_kernels.sort_order(values + 0.25)
    np.testing.assert_array_equal(f_sorted, np.sort(values + 0.25, axis=1))


def test_moment_statistics_are_bit_identical_in_numpy_and_numba():
    """std, skewness and kurtosis of the reference (NumPy) and of the numba kernel agree to the
    last bit: they take sqrt and products, not powers (NumPy's SIMD pow, on AVX-512 machines,
    differs in the last bit from libm's for about 5 % of values: m2 ** 1.5 did, and this failed)."""
    from scip_gpu import cpu_kernels
    from scip_gpu.stats import compact_statistics, sort_planes, view_members

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(11)
    values = rng.gamma(2.0, 300.0, (400, 64)) * rng.uniform(0.01, 100.0, (400, 1))
    valid = rng.random((400, 64)) < 0.8
    order, sv = sort_planes(values, valid)
    members, n = view_members(order, sv, valid)
    want = compact_statistics(members, n)  # (NumPy reductions: the reference's own arithmetic)
    o, v = cpu_kernels.sort_order(values)
    got = cpu_kernels.sorted_view_statistics(o, v, valid[None])[:, 0]
    cols = [STATISTICS.index(s) for s in ("std", "skewness", "kurtosis")]
    np.testing.assert_array_equal(got[:, cols], want[:, cols])
    assert np.isfinite(want[:, cols]).all()
