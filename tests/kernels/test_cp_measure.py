"""CellProfiler-family kernels (kernels/cp_intensity.cu, cp_texture.cu, cp_colocalization.cu,
cp_costes.cu) against the CPU path (the numba kernels of scip_gpu._numba_cp): bit for bit (on a GPU the
Haralick features within 1e-12: CUDA's log2 / exp), on demo cells and hand-made edge cases;
each kernel also with its workspace in global memory."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import _gpu_cp_measure, cp_cpu_kernels, dispatch, gpu_kernels
from scip_gpu.demo import make_cell
from scip_gpu.features.cp_colocalization import channel_pairs
from scip_gpu.features.cp_common import cp_image
from scip_gpu.features.cp_texture import quantise_cp

from ..features.test_cp_costes import _costes_by_scan, _example

pytest.importorskip("numba")


def _cells(n=3, size=(24, 30)):
    """(n, 3, 32, 32) planes of demo cells (uint16 pixels, stretched to the type's range, as
    CellProfiler's [0, 1] image) and masks of their brighter half; noise outside the cells."""
    rng = np.random.default_rng(3)
    px = rng.integers(0, 4000, (n, 3, 32, 32))
    for i in range(n):
        cell = make_cell(i, min_size=size[0], max_size=size[1])[0]
        h, w = min(cell.shape[1], 32), min(cell.shape[2], 32)
        px[i, :, :h, :w] = cell[:, :h, :w]
    x = cp_image(np.minimum(px * 16, 65535).astype(np.uint16))
    thr = np.quantile(x.reshape(n, 3, -1), 0.55, axis=2)[:, :, None, None]
    view = x > thr
    return x, view


def _edge(view):
    from scip_gpu import ops

    m = view.shape[0]
    ext = np.tile(np.array(view.shape[1:]), (m, 1))
    return view & ~ops.binary_erosion_disk(view, ext, 1)


def _exact(got, want):
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    diff = np.flatnonzero(np.where(np.isnan(want), 0, got - want))
    assert diff.size == 0, (f"{diff.size} values differ, e.g. {got.ravel()[diff[0]]!r} != "
                            f"{want.ravel()[diff[0]]!r} (flat index {diff[0]})")


# ---------------------------------------------------------------------------------------------
# cp_intensity.planes


def _intensity_planes():
    x, view = _cells()
    x = x.reshape(-1, 32, 32)
    view = view.reshape(-1, 32, 32).copy()
    view[1] = False  # empty view: NaN row
    view[2] = False
    view[2, 5, 7] = True  # one pixel
    view[3, :, :] = True  # the whole plane (no edge pixel: pixels beyond count as inside)
    x[4][view[4]] = 0.0  # a zero-sum object: NaN centre of mass and mass displacement
    x[5] = np.round(x[5] * 8) / 8  # ties
    edge = _edge(view)
    edge[3] = False
    return x, view, edge


def test_cp_intensity_kernel_equals_cpu(device):
    x, view, edge = _intensity_planes()
    want = cp_cpu_kernels.plane_intensity(x, view, edge)
    got = _gpu_cp_measure.plane_intensity(device.asarray(x), device.asarray(view), device.asarray(edge)).get()
    _exact(got, want)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    assert np.isnan(got[3, 5:10]).all() and np.isnan(got[4, [10, 15, 16]]).all()
    # an independent check of a few values: NumPy on plane 0
    v = x[0][view[0]]
    np.testing.assert_allclose(got[0, [0, 1, 2, 3, 4]], [v.sum(), v.mean(), v.std(), v.min(), v.max()], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# cp_texture.haralick


def _haralick_planes(levels):
    x, view = _cells(2)
    q = quantise_cp(x.reshape(-1, 32, 32), view.reshape(-1, 32, 32), levels)
    q[1] = 0
    q[1, 4, 4:9] = 3  # pairs along rows only: NaN plane at scales > 0 in other directions
    q[2, :, :] = np.where(q[2] > 0, levels - 1, 0)  # one level
    return q


def _close(got, want, rtol):
    """Bit for bit in the emulation (the C library's log2 / exp, as numba's); within ``rtol``
    on a GPU (CUDA's log2 / exp may differ from the C library's in the last bit)."""
    if hasattr(gpu_kernels.module(), "launches"):  # tests/cuda_sim
        _exact(got, want)
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("levels", "scale"), [(256, 3), (8, 1)])
def test_cp_haralick_kernel_equals_cpu(device, levels, scale):
    q = _haralick_planes(levels)
    want = cp_cpu_kernels.haralick(q, scale, levels)
    got = _gpu_cp_measure.haralick(device.asarray(q), scale, levels).get()
    # the same sums of the same terms
    _close(got, want, 1e-12)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    # an independent check: the ASM and contrast of plane 0, direction (0, 1), by hand
    a, b = q[0, :, :-scale], q[0, :, scale:]
    ok = (a > 0) & (b > 0)
    glcm = np.zeros((levels, levels))
    np.add.at(glcm, (a[ok], b[ok]), 1)
    glcm = glcm + glcm.T
    p = glcm / glcm.sum()
    i, j = np.indices(p.shape)
    np.testing.assert_allclose(got[0, 0, [0, 1]], [(p * p).sum(), (p * (i - j) ** 2).sum()], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# cp_colocalization.pairs


def _coloc_objects():
    x, view = _cells(4)
    n = x.shape[0]
    x = x.reshape(n, 3, -1).copy()
    view = view[:, 0].reshape(n, -1).copy()
    view[1] = False  # empty object: NaN
    x[2, 1] = np.round(x[2, 1] * 4) / 4  # ties: dense ranks
    x[3, 2] = 0.25  # a constant channel: no Pearson, slope
    return x, view


def test_cp_colocalization_kernel_equals_cpu(device):
    x, view = _coloc_objects()
    pairs = channel_pairs(3)
    want = cp_cpu_kernels.pair_colocalization(x, view, pairs)
    got = _gpu_cp_measure.pair_colocalization(device.asarray(x), device.asarray(view), pairs).get()
    _exact(got, want)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    # an independent check: Pearson's r of object 0, channels 0 and 1
    a, b = x[0, 0][view[0]], x[0, 1][view[0]]
    np.testing.assert_allclose(got[0, 0, 0], np.corrcoef(a, b)[0, 1], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# cp_colocalization.costes


def _costes_objects():
    """Demo cells on the uint16 grid, and on a coarse grid (the bisection's whole course);
    undefined cases: empty, 2 pixels, a constant channel, anti-correlated channels, a pixel
    off the [0, 1] scale; and the definition's example (one sign change of the background's r)."""
    x, view = _coloc_objects()
    x, view = x[:3].copy(), view[:3].copy()
    x[2, 2] = 1 - x[2, 0]  # channels 0 and 2 anti-correlated
    rng = np.random.default_rng(7)
    fi, si = _example(rng)  # 100 pixels on the grid 1/100
    n, p = x.shape[0] + 3, x.shape[2]
    xs = np.zeros((n, 3, p))
    vs = np.zeros((n, p), bool)
    xs[:3], vs[:3] = x, view
    xs[3, 0, :100], xs[3, 1, :100] = fi, si
    xs[3, 2, :100] = np.round(np.clip(si + rng.normal(0, 0.03, 100), 0, 1) * 100) / 100
    vs[3, :100] = True
    xs[4], vs[4] = xs[3], vs[3]
    vs[4, 2:] = False  # 2 pixels
    xs[5], vs[5] = xs[3], vs[3]
    xs[5, 1, 50] = 1.5  # off CellProfiler's scale: no Costes of pairs with channel 1
    return xs, vs


@pytest.mark.parametrize("scale", [100, 65535])
def test_cp_costes_kernel_equals_cpu(device, scale):
    x, view = _costes_objects()
    pairs = channel_pairs(3)
    want = cp_cpu_kernels.costes_pairs(x, view, pairs, scale)
    got = _gpu_cp_measure.costes_pairs(device.asarray(x), device.asarray(view), pairs, scale).get()
    _exact(got, want)
    assert np.isnan(got[1]).all() and np.isnan(got[4]).all() and np.isnan(got[5, [0, 2]]).all()
    assert np.isnan(got[2, 1]).all() and np.isfinite(got[3, 0]).all() and np.isfinite(got[5, 1]).all()
    # independent checks: the array path, and the definition by a scan of every candidate
    ref = dispatch.STAGES["cp_colocalization.costes"].impls["reference"].fn(x, view, pairs, scale)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    if scale == 100:
        np.testing.assert_allclose(got[3, 0], _costes_by_scan(x[3, 0, :100], x[3, 1, :100], 100), rtol=1e-12)


def test_cp_costes_kernel_many_pairs_and_iteration_bound(device, monkeypatch):
    """24 channels (276 pairs: a first round of 256 pairs with one thread each, then 20 pairs
    with trees of 7 candidates); then the bisection's iteration bound cut short, so that some
    searches end undefined ("did not converge") at different rounds."""
    from scip_gpu.features import cp_colocalization

    rng = np.random.default_rng(11)
    base = rng.random((2, 1, 40))
    x = np.round(np.clip(base + 0.4 * rng.random((2, 24, 40)), 0, 1) * 100) / 100
    view = rng.random((2, 40)) < 0.9
    pairs = channel_pairs(24)
    assert len(pairs) == 276
    want = cp_cpu_kernels.costes_pairs(x, view, pairs, 100)
    got = _gpu_cp_measure.costes_pairs(device.asarray(x), device.asarray(view), pairs, 100).get()
    _exact(got, want)
    assert np.isfinite(got).mean() > 0.5
    x, view = _costes_objects()
    pairs = channel_pairs(3)
    full = cp_cpu_kernels.costes_pairs(x, view, pairs, 65535)
    monkeypatch.setattr(cp_colocalization, "COSTES_MAX_ITER", 20)
    want = cp_cpu_kernels.costes_pairs(x, view, pairs, 65535)
    got = _gpu_cp_measure.costes_pairs(device.asarray(x), device.asarray(view), pairs, 65535).get()
    _exact(got, want)
    assert np.isnan(got).sum() > np.isnan(full).sum()  # the bound ended some searches


# ---------------------------------------------------------------------------------------------
# global-memory workspaces


def test_cp_kernels_global_workspace(sim_small_shared):
    cp = sim_small_shared
    x, view, edge = _intensity_planes()
    assert gpu_kernels.workspace_bytes("cp_intensity_planes", 32, 32) > 16 * 1024
    _exact(_gpu_cp_measure.plane_intensity(cp.asarray(x), cp.asarray(view), cp.asarray(edge)).get(),
           cp_cpu_kernels.plane_intensity(x, view, edge))
    q = _haralick_planes(256)[:3]
    _close(_gpu_cp_measure.haralick(cp.asarray(q), 3, 256).get(), cp_cpu_kernels.haralick(q, 3, 256), 1e-12)
    x, view = _coloc_objects()
    pairs = channel_pairs(3)
    _exact(_gpu_cp_measure.pair_colocalization(cp.asarray(x), cp.asarray(view), pairs).get(),
           cp_cpu_kernels.pair_colocalization(x, view, pairs))
    x, view = _costes_objects()
    _exact(_gpu_cp_measure.costes_pairs(cp.asarray(x), cp.asarray(view), pairs, 100).get(),
           cp_cpu_kernels.costes_pairs(x, view, pairs, 100))
    launches = [(name, shared) for name, _, _, shared in gpu_kernels.module().launches]
    for name in ("cp_intensity_planes", "cp_haralick_planes", "cp_colocalization_objects", "cp_costes_objects"):
        assert (name, 0) in launches


def test_cp_kernels_large_planes(device):
    """96 x 96 planes: threads sort chunks of up to 72 keys before the merge rounds, and the
    colocalisation workspace (3 x 9216 pixels) exceeds a GPU's shared memory."""
    rng = np.random.default_rng(5)
    x = np.round(rng.random((2, 3, 96, 96)) * 3000) / 3000  # ties
    view = rng.random((2, 96, 96)) < 0.8
    planes, pv = x[:, 0], np.repeat(view[:, None], 3, axis=1)[:, 0]
    edge = _edge(pv)
    _exact(_gpu_cp_measure.plane_intensity(device.asarray(planes), device.asarray(pv), device.asarray(edge)).get(),
           cp_cpu_kernels.plane_intensity(planes, pv, edge))
    q = quantise_cp(planes, pv, 256)
    _close(_gpu_cp_measure.haralick(device.asarray(q), 1, 256).get(), cp_cpu_kernels.haralick(q, 1, 256), 1e-12)
    xs, vs = x.reshape(2, 3, -1), view.reshape(2, -1)
    pairs = channel_pairs(3)
    _exact(_gpu_cp_measure.pair_colocalization(device.asarray(xs), device.asarray(vs), pairs).get(),
           cp_cpu_kernels.pair_colocalization(xs, vs, pairs))


def test_launch_leaves_room_for_a_kernels_static_shared_memory(sim_module, monkeypatch):
    """CUDA refuses a launch whose dynamic plus static shared memory exceeds the device's opt-in
    limit. cp_costes_objects has ~17 KiB of static shared memory (more than the 8 KiB kept for
    it in ``Limits.max_shared``): a workspace within ``max_shared`` but not within the opt-in
    limit less the static memory must take the global-memory variant, and equal the CPU path."""
    import copy

    from .. import fake_cupy
    from ..cuda_sim import sim

    static = sim_module.get_function("cp_costes_objects").shared_size_bytes
    assert static > 8192  # nvcc's figure for sm_90 (kernel-resources-sm_90.json)
    mod = copy.copy(sim_module)
    mod.launches = []
    mod.limits = sim.SimLimits(max_shared=64 * 1024, sm_count=2, optin=72 * 1024)
    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", mod)
    rng = np.random.default_rng(5)
    p = 2500  # 3 channels of doubles: 60,000 bytes of workspace
    ws = gpu_kernels.workspace_bytes("cp_costes_objects", 50, 50)
    assert 72 * 1024 - static < ws <= 64 * 1024
    assert gpu_kernels.shared_capacity("cp_costes_objects") == 72 * 1024 - static
    x = np.round(np.clip(rng.random((1, 1, p)) + 0.3 * rng.random((2, 3, p)), 0, 1) * 100) / 100
    view = rng.random((2, p)) < 0.8
    pairs = channel_pairs(3)
    got = _gpu_cp_measure.costes_pairs(cupy.asarray(x), cupy.asarray(view), pairs, 100).get()
    _exact(got, cp_cpu_kernels.costes_pairs(x, view, pairs, 100))
    assert [s for name, _, _, s in mod.launches if name == "cp_costes_objects"] == [0]  # global variant
