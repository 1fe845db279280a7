"""Texture kernel (kernels/texture.cu, ``texture_block``) against the CPU path (numba):
bit-identical GLCM properties, their mean/std over the angles and the Sobel statistics, on
demo cells masked by li and otsu and on hand-made edge cases."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from scip_gpu import gpu_kernels
from scip_gpu._gpu_texture import texture_block
from scip_gpu.batch import assemble, valid_mask
from scip_gpu.cli import to_config
from scip_gpu.demo import make_cell
from scip_gpu.features.texture import compute_texture
from scip_gpu.masks import MaskResult, compute_masks

from ..test_config import _compose


def _masked(cells, shape, method):
    cfg, _ = to_config(_compose(["+dataset=demo", f"masks={'li' if method == 'li' else 'scip'}"]))
    mcfg = next(m for m in cfg.masks.methods if m.method.value == method)
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    passed = np.ones((len(cells), cells[0].shape[0]), dtype=bool)
    passed[0, 1] = False  # an empty channel mask
    if len(cells) > 3:
        passed[3, 0] = False  # main channel filtered out: the object is not usable
    return batch, compute_masks(batch, mcfg, cfg.masks, passed)


def _compare(batch, mr, device, *, into_table=False):
    want = compute_texture(batch, mr, None)  # NumPy inputs: the CPU path
    dev = dataclasses.replace(batch, pixels=device.asarray(batch.pixels), extents=device.asarray(batch.extents),
                              cache={})
    fields = {f.name: getattr(mr, f.name) for f in dataclasses.fields(mr)}
    mr_dev = MaskResult(**{k: v if k == "name" else device.asarray(v) for k, v in fields.items()})
    n_launch = len(gpu_kernels.module().launches) if hasattr(gpu_kernels.module(), "launches") else None
    ctx = None
    if into_table:  # the batch table's columns: a row stride larger than the block's width
        table = device.zeros((want.shape[0], want.shape[1] + 9))
        ctx = types.SimpleNamespace(out=table[:, 4 : 4 + want.shape[1]])
    got = texture_block(dev, mr_dev, ctx).get()
    if into_table:
        np.testing.assert_array_equal(table.get()[:, 4 : 4 + want.shape[1]], got)
    if n_launch is not None:  # the emulation: the kernel ran
        assert gpu_kernels.module().launches[n_launch:][0][0] in ("texture_planes", "texture_planes_global",
                                                                  "texture_planes_f32", "texture_planes_f32_global")
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    diff = np.flatnonzero(np.where(np.isnan(want), 0, got - want))
    assert diff.size == 0, (f"{diff.size} values differ, e.g. column {diff[0] % want.shape[1]}: "
                            f"{got.ravel()[diff[0]]!r} != {want.ravel()[diff[0]]!r}")
    return want


def _cells(case: str):
    if case == "exact":  # equal-size crops, batched unpadded: masks touch the image border
        cells = [make_cell(i, min_size=30, max_size=30)[0][:, :30, :30] for i in range(4)]
        return cells, (30, 30)
    cells = [make_cell(i, min_size=20, max_size=40)[0] for i in range(5)]
    cells[1][2] = 700  # a constant channel
    cells[2] = cells[2][:, :12, :]
    if case == "uint8":
        cells = [(c // 32).astype(np.uint8) for c in cells]
    if case == "float32":  # (as illumination-corrected fields' cells: floats around 1, ties too)
        cells = [(c / np.float32(997.0)).astype(np.float32) for c in cells]
        cells[3][0, 3:6, 3:9] = -0.0
    return cells, (44, 44)


@pytest.mark.parametrize("method", ["li", "otsu"])
@pytest.mark.parametrize("case", ["ragged", "exact", "uint8", "float32"])
def test_texture_kernel_equals_cpu(device, method, case):
    cells, shape = _cells(case)
    batch, mr = _masked(cells, shape, method)
    want = _compare(batch, mr, device)
    assert np.isfinite(want).any() and np.isnan(want).any()


def _edge_cases(dtype=np.uint16):
    """Hand-made views on random planes (values outside the extents and mask bits outside them
    are garbage, which the kernel must ignore)."""
    rng = np.random.default_rng(7)
    n, c, hh, ww = 8, 3, 14, 17
    top = 255 if dtype == np.uint8 else 65535
    if dtype == np.float32:  # (negative values; a NaN pixel inside both views of plane 0, in none)
        px = (rng.random((n, c, hh, ww)) * 3 - 1).astype(np.float32)
        px[0, 0, 5, 7] = np.nan
    else:
        px = rng.integers(0, top + 1, (n, c, hh, ww)).astype(dtype)
    ext = np.array([[14, 17], [9, 11], [1, 12], [10, 1], [1, 1], [6, 6], [12, 15], [14, 17]], dtype=np.int64)
    mask = np.zeros((n, c, hh, ww), dtype=bool)
    comb = np.zeros((n, hh, ww), dtype=bool)
    mask[0, 0] = True  # the whole extent
    mask[0, 1, 3:8, 4:9] = True  # a 5 x 5 square: pairs at distance 3 and 5 (offsets 2 and 4)
    mask[0, 2, 5:8, 5:8] = True  # 3 x 3: pairs at offset 2 only, none at offset 4
    comb[0, 2:12, 2:13] = True
    mask[1, 0, 4, 5] = True  # one pixel
    mask[1, 1, 2:7, 3:9] = True
    px[1, 1, 2:7, 3:9] = 123  # constant values in the view
    mask[1, 2, 0:3, 0:11] = True  # touching the extent's border (top, left, right)
    comb[1] = rng.random((hh, ww)) < 0.6  # speckle
    mask[2, :, 0, 2:9] = True  # a 1 x 12 object
    comb[2, 0, :] = True
    mask[3, 0, 2:9, 0] = True  # a 10 x 1 object
    comb[3, :, 0] = True
    mask[4, :, 0, 0] = True  # a 1 x 1 object
    comb[4, 0, 0] = True
    mask[5] = True  # full, but the object is not usable
    comb[5] = True
    mask[6] = rng.random((c, hh, ww)) < 0.7  # not inside the combined mask, and beyond the extent
    comb[6, 3:10, 3:12] = True
    px[6, 1] = px[6, 1] // (top // 8 + 1) * (top // 8 + 1)  # few distinct values
    mask[7, 1, 10:14, 13:17] = True  # bottom-right corner; channel 0: empty view
    mask[7, 2, 0:5, 12:17] = True
    comb[7, 6:14, 0:4] = True
    usable = np.ones(n, dtype=bool)
    usable[5] = False
    ins = np.zeros((n, hh, ww), dtype=bool)
    for k, (h, w) in enumerate(ext):
        ins[k, :h, :w] = True
    keep = np.arange(n) != 6  # object 6 keeps mask bits beyond its extent (ignored)
    mask[keep] &= ins[keep, None]
    comb &= ins
    from scip_gpu.batch import Batch

    batch = Batch(px, ext, np.arange(n))
    zeros = np.zeros((n, c))
    mr = MaskResult("edge", mask, comb, np.zeros((n, c), dtype=np.int64), np.zeros((n, 4)), zeros, zeros, usable)
    return batch, mr


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_texture_kernel_edge_cases(device, dtype):
    batch, mr = _edge_cases(dtype)
    want = _compare(batch, mr, device, into_table=True)
    assert np.isnan(want[5]).all()  # not usable
    assert np.isnan(want[7, :28]).all() and np.isfinite(want[7, 28:52]).all()  # empty channel mask
    # a one-pixel view: finite GLCM values (no pairs: zeros, correlation 1), no Sobel value
    assert np.isfinite(want[1, :24]).all() and np.isnan(want[1, 24:28]).all()
    # the 3 x 3 view has pairs at distance 3 but none at distance 5 (correlation 1, the rest 0)
    cols = {p: 112 + 4 * k for k, p in enumerate(("contrast", "dissimilarity", "homogeneity", "energy",
                                                       "correlation", "ASM"))}
    assert want[0, cols["contrast"] + 1] == 0 and want[0, cols["correlation"] + 1] == 1
    assert want[0, cols["homogeneity"]] > 0
    # some planes have more pixels with a finite Sobel value in the two views together than
    # pixels (the kernel then lists the views' values one after the other)
    from scip_gpu.features.texture import sobel_valid

    n, c, h, w = batch.pixels.shape
    ext = np.repeat(batch.extents, c, axis=0)
    ins = valid_mask(ext, (h, w))
    chan = mr.mask.reshape(n * c, h, w) & ins
    comb = np.repeat(mr.combined, c, axis=0) & ins
    counts = [sobel_valid(v, ext).sum(axis=(1, 2)) for v in (chan, comb)]
    assert ((counts[0] + 1) // 2 * 2 + counts[1] > -(-h * w // 8) * 8).any()


def test_texture_kernel_sobel_extremes_at_list_ends(device):
    """Views whose 32 Sobel values grow (channel 0) or shrink (channel 1) along a row: the
    maximum, then the minimum, is the last value of the list."""
    from scip_gpu.batch import Batch

    j = np.arange(40)
    px = np.zeros((1, 2, 6, 40), dtype=np.uint16)
    px[0, 0] = (j**2 * 10)[None, :]
    px[0, 1] = ((40 - j) ** 2 * 10)[None, :]
    mask = np.zeros((1, 2, 6, 40), dtype=bool)
    mask[0, :, 1:4, 2:36] = True  # 3 x 34: the ring pixels are row 2, columns 3..34
    comb = mask[:, 0].copy()
    zeros = np.zeros((1, 2))
    mr = MaskResult("ends", mask, comb, np.zeros((1, 2), dtype=np.int64), np.zeros((1, 4)), zeros, zeros,
                    np.ones(1, dtype=bool))
    want = _compare(Batch(px, np.array([[6, 40]]), np.arange(1)), mr, device)
    assert want[0, 26] > want[0, 27] and want[0, 56 + 26] > want[0, 56 + 27]


def _large_cells():
    """Planes of more than 8192 pixels: threads own several 32-pixel chunks."""
    return [make_cell(i, min_size=96, max_size=110)[0] for i in range(2)], (112, 112)


def test_texture_kernel_large_planes(device):
    cells, shape = _large_cells()
    batch, mr = _masked(cells, shape, "li")
    _compare(batch, mr, device)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_texture_kernel_global_workspace(sim_small_shared, dtype):
    cells = [make_cell(i, min_size=40, max_size=52)[0] for i in range(3)]
    if dtype == np.float32:
        cells = [(c / np.float32(997.0)).astype(np.float32) for c in cells]
    batch, mr = _masked(cells, (64, 64), "otsu")
    assert gpu_kernels.workspace_bytes("texture_planes_global", 64, 64) > 16 * 1024
    _compare(batch, mr, sim_small_shared)
    _compare(*_masked(*_large_cells(), "otsu"), sim_small_shared)
    launches = gpu_kernels.module().launches
    name = "texture_planes_f32_global" if dtype == np.float32 else "texture_planes_global"
    assert any(launch[0] == name and launch[3] == 0 for launch in launches)


def test_texture_declines_other_dtypes():
    from scip_gpu.batch import Batch
    from scip_gpu.dispatch import select

    batch = Batch(np.zeros((1, 1, 4, 4), dtype=np.float64), np.array([[4, 4]]), np.arange(1))
    impl = select("texture.block", (batch, None, None), backend="cuda")
    assert impl.backend == "reference"
