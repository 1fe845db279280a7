"""The kernels' compile-time variants (``SCIP_GPU_DEFINES``): the default two-level disk median
and block radix sort, and the previous sliding-histogram median and bitonic sort kept under
``-DSG_LEGACY_MEDIAN -DSG_LEGACY_SORT`` for A/B timing on a GPU. Both must equal the CPU path
bit for bit, on edge-case planes (one pixel, 1xN, Nx1, constant, full 9-bit and 16-bit ranges).
"""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import _gpu_intensity, gpu_kernels, ops
from scip_gpu.batch import assemble
from scip_gpu.features.intensity import compute_raw
from scip_gpu.profile import FeatureContext

from .. import fake_cupy
from ..cuda_sim import sim


@pytest.fixture(scope="module")
def legacy_module():
    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    return sim.sim_module(defines=gpu_kernels.LEGACY_DEFINES)


@pytest.fixture(params=["default", "legacy"])
def variant(request, monkeypatch):
    """Fake CuPy over the emulated module of one variant, the host's workspace sizes to match."""
    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    if request.param == "legacy":
        mod = request.getfixturevalue("legacy_module")
        monkeypatch.setenv("SCIP_GPU_DEFINES", " ".join(gpu_kernels.LEGACY_DEFINES))
    else:
        mod = request.getfixturevalue("sim_module")
        monkeypatch.delenv("SCIP_GPU_DEFINES", raising=False)
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", mod)
    return cupy


def _edge_planes(rng, top: int, shape=(24, 40)):
    """(m, H, W) uint16 planes below ``top`` and their extents: the whole plane, 1xW, Hx1, 1x1,
    a constant plane, a two-valued one, random sizes."""
    h, w = shape
    ext = np.array([(h, w), (1, w), (h, 1), (1, 1), (h, w), (h, w), (11, 7), (5, 33), (17, 2)], dtype=np.int64)
    x = rng.integers(0, top, (len(ext), h, w)).astype(np.uint16)
    x[4] = top // 3  # constant
    x[5] = np.where(rng.random((h, w)) < 0.5, 0, top - 1)  # the two extremes only
    x[0, :, : w // 2] = np.sort(x[0, :, : w // 2], axis=None).reshape(h, -1)  # smooth part: long runs
    return x, ext


def test_median_disk_kernel_equals_skimage(variant):
    """The otsu kernel's disk median (values 0..513, every coarse bin used) against
    scikit-image's rank median, over each plane's extent."""
    rng = np.random.default_rng(7)
    x, ext = _edge_planes(rng, 514)
    for radius in (5, 2, 0):
        want = ops.median_disk_skimage(x, ext, radius)
        out = variant.empty(x.shape, dtype=np.uint16)
        args = (variant.asarray(x), np.int32(1), np.int32(x.shape[1]), np.int32(x.shape[2]),
                variant.asarray(ext), np.int32(len(x)), np.int32(radius), out)
        gpu_kernels.launch("median_disk_planes", len(x), args,
                           workspace=gpu_kernels.workspace_bytes("median_disk_planes", *x.shape[1:]))
        got = out.get()
        for k, (h, w) in enumerate(ext):
            np.testing.assert_array_equal(got[k, :h, :w], want[k, :h, :w], err_msg=f"plane {k}, radius {radius}")
            assert not got[k, h:].any() and not got[k, :, w:].any()


@pytest.mark.parametrize("top", [256, 4096, 65536])
def test_raw_statistics_sort_equals_cpu(variant, top):
    """The intensity kernel's one sort per plane (1, 2, 3 and 4 radix passes; none for the
    constant plane) through the raw set's 11 statistics, bit for bit."""
    rng = np.random.default_rng(top)
    x, ext = _edge_planes(rng, top)
    cells = [np.stack([x[k, :h, :w], x[(k + 1) % len(x), :h, :w]]) for k, (h, w) in enumerate(ext)]
    shape = x.shape[1:]
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    ctx = FeatureContext()
    want = compute_raw(batch, None, ctx)
    got = _gpu_intensity.intensity_raw(assemble(cells, np.arange(len(cells)), shape, variant), None, ctx).get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-14, atol=0)


def test_legacy_variant_masks_and_intensity_equal_cpu(legacy_module, monkeypatch):
    """The whole otsu mask and intensity kernels compiled with the legacy variants (as a GPU
    session's A/B run compiles them) equal the CPU path."""
    from .test_intensity import masked_batch, to_device
    from .test_masks import _cells, _cpu_and_device
    from scip_gpu.features.intensity import compute_intensity

    import anndata  # noqa: F401

    monkeypatch.setenv("SCIP_GPU_DEFINES", " ".join(gpu_kernels.LEGACY_DEFINES))
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", legacy_module)
    cells, shape = _cells("ragged")
    cells = cells[2:4]  # (small: the emulation of a whole mask chain is slow)
    passed = np.ones((len(cells), 3), dtype=bool)
    cpu, dev = _cpu_and_device("otsu", cells, shape, cupy, passed)
    np.testing.assert_array_equal(dev[0].get(), cpu.mask)
    np.testing.assert_array_equal(dev[2].get(), cpu.regions)
    batch, mr = masked_batch(cells, shape, "otsu", passed)
    ctx = FeatureContext(edge_width=2)
    want = compute_intensity(batch, mr, ctx)
    got = _gpu_intensity.intensity_block(assemble(cells, np.arange(len(cells)), shape, cupy),
                                         to_device(mr, cupy), ctx).get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-14, atol=0)


def _label_planes(rng):
    """(m, 24, 24) uint8 planes and extents that stress the run-based unions: speckle of several
    densities (many merges, long chains), diagonal staircases (8- vs 4-connectivity), a comb
    whose teeth join only at the bottom, a spiral, a checkerboard, full and empty planes, 1xN,
    Nx1 and 1x1 extents."""
    h = w = 24
    planes = [rng.random((h, w)) < d for d in (0.35, 0.5, 0.6, 0.75)]
    stairs = np.zeros((h, w), bool)
    for k in range(0, w - 1, 3):
        stairs[np.arange(h), (np.arange(h) + k) % w] = True
    comb = np.zeros((h, w), bool)
    comb[:, ::2] = True
    comb[-1] = True
    spiral = np.zeros((h, w), bool)
    top, left, bottom, right = 0, 0, h - 1, w - 1
    while top <= bottom and left <= right:
        spiral[top, left:right + 1] = spiral[top:bottom + 1, right] = True
        spiral[bottom, left:right + 1] = spiral[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    checker = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    planes += [stairs, stairs[:, ::-1], comb, comb[::-1, ::-1].T, spiral, checker,
               np.ones((h, w), bool), np.zeros((h, w), bool), rng.random((h, w)) < 0.5,
               rng.random((h, w)) < 0.5, rng.random((h, w)) < 0.5, rng.random((h, w)) < 0.6]
    ext = np.full((len(planes), 2), (h, w), dtype=np.int64)
    ext[-4:] = [(1, w), (h, 1), (1, 1), (13, 7)]
    return np.stack(planes).astype(np.uint8), ext


def test_label_kernel_equals_scipy(variant):
    """sg_label (both variants): the components of scipy.ndimage.label, each pixel labelled
    with its component's first pixel in raster order."""
    from scipy import ndimage as ndi

    x, ext = _label_planes(np.random.default_rng(11))
    m, h, w = x.shape
    for eight in (1, 0):
        out = variant.empty(x.shape, dtype=np.int32)
        args = (variant.asarray(x), np.int32(h), np.int32(w), variant.asarray(ext), np.int32(m),
                np.int32(eight), out)
        gpu_kernels.launch("label_planes", m, args, workspace=gpu_kernels.workspace_bytes("label_planes", h, w))
        got = out.get()
        structure = np.ones((3, 3), bool) if eight else ndi.generate_binary_structure(2, 1)
        for k, (eh, ew) in enumerate(ext):
            lab, n = ndi.label(x[k, :eh, :ew], structure=structure)
            first = np.full(n + 1, -1)
            flat = lab.ravel()
            idx = np.arange(flat.size)
            for lbl in range(n, 0, -1):
                first[lbl] = idx[flat == lbl].min()
            np.testing.assert_array_equal(got[k, :eh, :ew], first[lab], err_msg=f"plane {k}, eight={eight}")
            assert (got[k, eh:] == -1).all() and (got[k, :, ew:] == -1).all()
