"""Shape kernel (kernels/shape.cu) against the CPU path: the 59 properties of every plane,
integers exact, everything else within 1e-12 (relative, or absolute below 1e-6), identical NaN
patterns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from scip_gpu import gpu_kernels
from scip_gpu._gpu_shape import shape_block
from scip_gpu.batch import Batch, assemble
from scip_gpu.cli import to_config
from scip_gpu.demo import make_cell
from scip_gpu.features.shape import PROPS
from scip_gpu.features.shape import compute_shape as cpu_shape
from scip_gpu.masks import MaskResult, compute_masks

from ..test_config import _compose

#: properties with integer values: compared exactly
EXACT = ("area", "convex_area", "euler_number", "filled_area", "moments-0-0")


def _check(want, got, where=""):
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, where
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{where}: NaN pattern")
    p = got.shape[1] // len(PROPS)
    for k, name in enumerate(PROPS):
        cols = [j * len(PROPS) + k for j in range(p)]
        a, b = want[:, cols], got[:, cols]
        ok = ~np.isnan(a)
        if name in EXACT:
            np.testing.assert_array_equal(b[ok], a[ok], err_msg=f"{where}: {name}")
        else:
            tol = np.where(np.abs(a[ok]) < 1e-6, 1e-12, 1e-12 * np.abs(a[ok]))
            bad = np.abs(b[ok] - a[ok]) > tol
            assert not bad.any(), f"{where}: {name}: {b[ok][bad][:5]} != {a[ok][bad][:5]}"


def _device_mr(mr: MaskResult, device) -> MaskResult:
    return dataclasses.replace(mr, **{f.name: device.asarray(getattr(mr, f.name))
                                      for f in dataclasses.fields(mr) if f.name != "name"})


def _run(batch: Batch, mr: MaskResult, device):
    want = cpu_shape(batch, mr, None)
    dbatch = Batch(device.asarray(batch.pixels), device.asarray(batch.extents), batch.index)
    got = shape_block(dbatch, _device_mr(mr, device), None).get()
    return want, got


def _hand_mr(mask, combined=None, usable=None) -> tuple[Batch, MaskResult]:
    """A batch and MaskResult of hand-made (N, C, H, W) masks (extents: the full planes unless
    the caller narrows them)."""
    n, c, h, w = mask.shape
    if combined is None:
        combined = mask.any(axis=1)
    if usable is None:
        usable = np.ones(n, dtype=bool)
    z = np.zeros((n, c))
    mr = MaskResult("m", mask, combined, np.ones((n, c), np.int64), np.zeros((n, 4)), z, z, usable)
    batch = Batch(np.zeros((n, c, h, w), np.uint16), np.full((n, 2), (h, w), np.int64), np.arange(n))
    return batch, mr


# ---------------------------------------------------------------------------------------------
# Demo cells, masked with li and otsu


def _cells(case):
    if case == "exact":  # fixed-size crops, batched unpadded
        cells = [make_cell(i, min_size=40, max_size=40)[0][:, :40, :40] for i in range(4)]
        return cells, cells[0].shape[1:]
    cells = [make_cell(i, min_size=24, max_size=52)[0] for i in range(5)]
    rng = np.random.default_rng(3)
    cells[3][0] = rng.integers(0, 4000, cells[3].shape[1:]).astype(np.uint16)  # many small components
    return cells, (64, 64)


@pytest.mark.parametrize("method", ["li", "otsu"])
@pytest.mark.parametrize("case", ["ragged", "exact"])
def test_shape_kernel_on_demo_masks(device, method, case):
    cells, shape = _cells(case)
    cfg, _ = to_config(_compose(["+dataset=demo", f"masks={'li' if method == 'li' else 'scip'}"]))
    mcfg = next(m for m in cfg.masks.methods if m.method.value == method)
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    passed = np.ones((len(cells), cells[0].shape[0]), dtype=bool)
    passed[1, 0] = False  # main channel filtered out: not usable
    mr = compute_masks(batch, mcfg, cfg.masks, passed)
    assert mr.mask.any() and not mr.usable.all()
    want, got = _run(batch, mr, device)
    _check(want, got, f"{method}/{case}")
    assert np.isfinite(got).any()


# ---------------------------------------------------------------------------------------------
# Hand-made masks: every edge case


def _edge_masks():
    h, w = 24, 20
    planes = []

    def plane():
        m = np.zeros((h, w), bool)
        planes.append(m)
        return m

    plane()  # empty
    plane()[5, 7] = True  # one pixel
    plane()[3, 2:17] = True  # 1 x N line
    plane()[:, :] = True  # full plane
    m = plane()  # components touching the extent border, and a vertical line
    m[0, :6] = m[-1, 10:] = m[4:9, 0] = m[2:20, -1] = True
    m = plane()  # nested: ring, hole, ring, hole, pixel; and a second ring with two holes
    m[1:16, 1:16] = True
    m[3:14, 3:14] = False
    m[5:12, 5:12] = True
    m[7:10, 7:10] = False
    m[8, 8] = True
    m[17:23, 2:18] = True
    m[19, 4:7] = m[19:21, 10:15] = False
    m = plane()  # checkerboard: one component of diagonal touches
    m[2:20, 2:18] = (np.add.outer(np.arange(18), np.arange(16)) % 2) == 0
    m = plane()  # single pixels and L shapes (orientation rule), a diagonal line
    m[1, 1] = m[1, 4] = m[2, 4] = m[2, 5] = True  # pixel, L of 3
    m[5, 1:4] = m[6:9, 1] = True  # L of 6
    m[12, 12] = m[13, 13] = m[14, 14] = m[15, 15] = True
    m[18:21, 8] = m[20, 6:9] = True
    m = plane()  # a ring touching the border (hole open to nothing) and a diagonal ring
    m[0:7, 0:7] = True
    m[2:5, 2:5] = False
    for i in range(5):
        m[10 + i, 10 + i] = m[10 + i, 18 - i] = m[18 - i, 10 + i] = m[18 - i, 18 - i] = True
    m = plane()  # hole of a hole's component touching diagonally (8-connected background)
    m[2:10, 2:10] = True
    m[4:8, 4:8] = False
    m[5, 5] = m[6, 6] = True
    m[12:22, 4:16] = True
    m[14:20, 6:14] = False
    m[16, 9] = True
    m = plane()  # a comb: more tall components than a chunk's records hold
    m[:, ::2] = True
    m[-1, 1] = True
    return np.stack(planes)


def test_shape_kernel_edge_cases(device):
    planes = _edge_masks()
    n = planes.shape[0]
    c = 2
    mask = np.zeros((n, c, *planes.shape[1:]), bool)
    mask[:, 0] = planes
    mask[:, 1] = planes[::-1]
    batch, mr = _hand_mr(mask)
    mr.usable[3] = False
    mr.mask[3] = False  # as the pipeline's masks are for objects not usable
    want, got = _run(batch, mr, device)
    _check(want, got, "edge cases")
    assert np.isnan(got[3]).all()  # not usable
    assert np.isnan(got[0, 59:118]).all() and not np.isnan(got[0, :59]).any()  # empty channel plane


def test_shape_kernel_extents_and_many_components(device):
    rng = np.random.default_rng(7)
    h, w = 40, 36
    n, c = 5, 1
    mask = rng.random((n, c, h, w)) < 0.15  # over a hundred components, many single pixels
    mask[1, 0] = rng.random((h, w)) < 0.55
    mask[2, 0] = False
    mask[2, 0, 3:30, 5:25] = True
    mask[2, 0, 10:20, 10:15] = False
    batch, mr = _hand_mr(mask)
    batch.extents[:] = [[h, w], [17, 31], [29, 21], [1, 36], [40, 1]]
    # nothing outside the extents, as the pipeline's masks, but for the last object (only the
    # pixels inside an extent count, on both paths)
    inside = np.ones((n, h, w), bool)
    for i, (eh, ew) in enumerate(batch.extents[:-1]):
        inside[i] = False
        inside[i, :eh, :ew] = True
    mr.mask &= inside[:, None]
    mr.combined = mr.mask.any(axis=1)
    want, got = _run(batch, mr, device)
    _check(want, got, "extents / many components")
    assert ndi.label(mask[0, 0], np.ones((3, 3)))[1] > 100


def test_shape_kernel_global_workspace(sim_small_shared):
    planes = _edge_masks()[4:]
    big = np.zeros((planes.shape[0], 1, 40, 44), bool)  # a workspace over 16 KiB
    big[:, 0, 7:7 + planes.shape[1], 13:13 + planes.shape[2]] = planes
    batch, mr = _hand_mr(big)
    want, got = _run(batch, mr, sim_small_shared)
    _check(want, got, "global workspace")
    launches = gpu_kernels.module().launches
    assert any(name == "shape_props" and shared == 0 for name, _, _, shared in launches)


def test_shape_kernel_declines_planes_too_large_for_it():
    from scip_gpu._gpu_shape import _accepts_shape

    def mr(h, w):
        return MaskResult("m", np.zeros((1, 1, h, w), bool), None, None, None, None, None, None)

    assert _accepts_shape(None, mr(64, 64), None)
    assert _accepts_shape(None, mr(254, 254), None)
    assert not _accepts_shape(None, mr(255, 255), None)  # padded planes over 65536 pixels
    assert _accepts_shape(None, mr(2, 4000), None)
    # few pixels but a side longer than the kernel's short columns allow
    assert not _accepts_shape(None, mr(2, 20000), None) and not _accepts_shape(None, mr(20000, 1), None)
