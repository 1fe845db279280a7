"""Intensity kernel (kernels/intensity.cu) against the CPU path: the 88 statistics of every
channel's 8 views and the raw set, bit for bit (up to the last bit of pow in the skewness)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scip_gpu import _gpu_intensity
from scip_gpu.batch import assemble
from scip_gpu.cli import to_config
from scip_gpu.demo import make_cell
from scip_gpu.features.intensity import compute_intensity, compute_raw
from scip_gpu.masks import compute_masks
from scip_gpu.profile import FeatureContext

from ..test_config import _compose


def to_device(mr, device):
    """A device copy of a MaskResult built on the CPU."""
    return dataclasses.replace(mr, **{f.name: device.asarray(getattr(mr, f.name))
                                      for f in dataclasses.fields(mr) if f.name != "name"})


def masked_batch(cells, shape, method="li", passed=None):
    cfg, _ = to_config(_compose(["+dataset=demo", "masks=scip"]))
    mcfg = next(m for m in cfg.masks.methods if m.method.value == method)
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    return batch, compute_masks(batch, mcfg, cfg.masks, passed)


def _cells(dtype=np.uint16):
    cells = [make_cell(i, min_size=20, max_size=44)[0] for i in range(6)]
    cells[1][0] = 300  # constant channel: NaN skewness/kurtosis
    cells[2] = cells[2][:, :13, :]
    if dtype == np.uint8:
        cells = [(c // 40).astype(np.uint8) for c in cells]
    if dtype == np.float32:  # (as illumination-corrected fields' cells: floats around 1, ties too)
        cells = [(c / np.float32(997.0)).astype(np.float32) for c in cells]
        cells[3][1, 2:5, 2:5] = -0.0
    return cells


def _compare(got, want):
    """Columns hold blocks of the 11 statistics: all but skewness and kurtosis (9, 10: pow) bit
    for bit, so the kernel's order of summation must be the CPU's."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-14, atol=0)
    exact = np.arange(want.shape[1]) % 11 < 9
    np.testing.assert_array_equal(got[:, exact], want[:, exact])


@pytest.mark.parametrize("method", ["li", "otsu"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_intensity_kernel_equals_cpu(device, method, dtype):
    cells = _cells(dtype)
    passed = np.ones((len(cells), 3), dtype=bool)
    passed[4, 0] = False  # not usable: NaN row
    batch, mr = masked_batch(cells, (48, 48), method, passed)
    ctx = FeatureContext(edge_width=6)
    want = compute_intensity(batch, mr, ctx)
    b = assemble(cells, np.arange(len(cells)), (48, 48), device)
    got = _gpu_intensity.intensity_block(b, to_device(mr, device), ctx).get()
    _compare(got, want)
    assert np.isnan(got[4]).all() and not np.isnan(got[0]).all()
    _compare(_gpu_intensity.intensity_raw(b, None, ctx).get(), compute_raw(batch, None, ctx))


@pytest.mark.parametrize("edge_width", [0, 2])
def test_intensity_kernel_unpadded_and_edge_widths(device, edge_width):
    cells = [make_cell(i, min_size=32, max_size=32)[0][:, :32, :32] for i in range(4)]
    batch, mr = masked_batch(cells, (32, 32), "otsu")
    ctx = FeatureContext(edge_width=edge_width)
    b = assemble(cells, np.arange(len(cells)), (32, 32), device)
    _compare(_gpu_intensity.intensity_block(b, to_device(mr, device), ctx).get(), compute_intensity(batch, mr, ctx))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_intensity_kernel_global_workspace(sim_small_shared, dtype):
    cells = _cells(dtype)
    batch, mr = masked_batch(cells, (72, 72))
    ctx = FeatureContext()
    b = assemble(cells, np.arange(len(cells)), (72, 72), sim_small_shared)
    _compare(_gpu_intensity.intensity_block(b, to_device(mr, sim_small_shared), ctx).get(),
             compute_intensity(batch, mr, ctx))


def test_intensity_kernel_edge_views_of_tiny_objects(device):
    """Objects smaller than the edge width (1x1, 1x3, 2x2, 3x1 pixels, edge width 6): outside
    the image counts as foreground, so a disk erodes nothing there and the edge views are
    empty. The kernel's row runs started at h + w + 1, below the disk's half-widths for such
    extents: their pixels were eroded and the edge views held them."""
    from scip_gpu.masks import MaskResult

    rng = np.random.default_rng(5)
    sizes = [(1, 1), (1, 3), (2, 2), (3, 1), (9, 12)]
    cells = [rng.integers(100, 4000, size=(2, h, w)).astype(np.uint16) for h, w in sizes]
    shape = (16, 16)
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    n = len(cells)
    mask = np.zeros((n, 2, *shape), dtype=bool)
    for k, (h, w) in enumerate(sizes):
        mask[k, :, :h, :w] = True
    mask[4, :, :2, :] = mask[4, :, :, :2] = False  # (the larger object: a mask with an edge)
    combined = mask.any(axis=1)
    bbox = np.array([[0, 0, h, w] for h, w in sizes], dtype=float)
    mr = MaskResult("hand", mask, combined, np.ones((n, 2), dtype=np.int64), bbox, np.zeros((n, 2)),
                    np.zeros((n, 2)), np.ones(n, dtype=bool))
    ctx = FeatureContext(edge_width=6)
    want = compute_intensity(batch, mr, ctx)
    edge = want[:, 2 * 11:3 * 11]  # channel 0's edge view: empty (NaN) for the tiny objects
    assert np.isnan(edge[:4]).all() and not np.isnan(edge[4]).all()
    b = assemble(cells, np.arange(n), shape, device)
    _compare(_gpu_intensity.intensity_block(b, to_device(mr, device), ctx).get(), want)


def test_float_intensity_kernel_sorts_nan_of_either_sign_last(device):
    """NaN pixels (as a float32 store computed on x86 holds them: 0/0 is the NaN with the sign
    bit set) go last in the kernel's order as in NumPy's sort, whatever their sign bit: with the
    raw order bits, a sign-bit NaN sorted below -inf and every order statistic of its views
    shifted (24 values of one object)."""
    from scip_gpu.masks import MaskResult

    rng = np.random.default_rng(8)
    n, shape = 3, (14, 14)
    cells = [(rng.random((2, 14, 14)) + 0.5).astype(np.float32) for _ in range(n)]
    neg_nan = np.array([0xFFC00000], dtype=np.uint32).view(np.float32)[0]
    assert np.isnan(neg_nan) and np.signbit(neg_nan)
    cells[0][0, 5, 6] = neg_nan
    cells[1][1, 3, 3] = np.float32(np.nan)
    cells[1][1, 7, 8] = neg_nan
    batch = assemble(cells, np.arange(n), shape, np)
    mask = np.zeros((n, 2, *shape), dtype=bool)
    mask[:, :, 1:13, 1:13] = True
    combined = mask.any(axis=1)
    bbox = np.tile(np.array([[1.0, 1.0, 13.0, 13.0]]), (n, 1))
    mr = MaskResult("hand", mask, combined, np.ones((n, 2), dtype=np.int64), bbox, np.zeros((n, 2)),
                    np.zeros((n, 2)), np.ones(n, dtype=bool))
    ctx = FeatureContext(edge_width=2)
    want = compute_intensity(batch, mr, ctx)
    assert np.isnan(want[0]).any() and not np.isnan(want[2]).any()
    b = assemble(cells, np.arange(n), shape, device)
    _compare(_gpu_intensity.intensity_block(b, to_device(mr, device), ctx).get(), want)
    _compare(_gpu_intensity.intensity_raw(b, None, ctx).get(), compute_raw(batch, None, ctx))
