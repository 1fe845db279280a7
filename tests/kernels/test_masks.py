"""Mask kernels (kernels/masks.cu) against the CPU path: identical masks, region counts,
combined masks, bounding boxes and background levels."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import gpu_kernels
from scip_gpu.batch import assemble
from scip_gpu.cli import to_config
from scip_gpu.demo import make_cell
from scip_gpu.masks import compute_masks

from ..test_config import _compose


def _cells(case: str):
    rng = np.random.default_rng(3)
    if case == "exact":  # fixed-size crops, batched unpadded
        cells = [make_cell(i, min_size=40, max_size=40)[0][:, :40, :40] for i in range(5)]
        return cells, cells[0].shape[1:]
    cells = [make_cell(i, min_size=24, max_size=52)[0] for i in range(7)]
    cells[1][1] = 100  # a constant channel
    cells[2][2] = (cells[2][2] // 16).astype(np.uint16)  # maximum <= 512: no digitising
    cells[3] = cells[3][:, :11, :]  # the smallest side otsu takes
    noisy = rng.integers(0, 4000, cells[4].shape[1:])
    cells[4][0] = noisy.astype(np.uint16)  # many small components
    if case == "uint8":
        cells = [(c // 32).astype(np.uint8) for c in cells]
    if case in ("float32", "float64"):  # (negative values too; a constant channel; noise)
        t = np.dtype(case).type
        cells = [(c.astype(case) - t(300)) / t(997) for c in cells]
    return cells, (64, 64)


def _cpu_and_device(method, cells, shape, device, passed, combined_indices=None):
    overrides = ["+dataset=demo", f"masks={'li' if method == 'li' else 'scip'}"]
    if method == "spot":
        overrides.append("masks.methods=[{method: spot, name: spot, kwargs: {spotsize: 3}}]")
    cfg, _ = to_config(_compose(overrides))
    mcfg = next(m for m in cfg.masks.methods if m.method.value == method)
    masks_cfg = cfg.masks
    if combined_indices is not None:
        masks_cfg.combined_indices = combined_indices
    batch = assemble(cells, np.arange(len(cells)), shape, np)
    cpu = compute_masks(batch, mcfg, masks_cfg, passed)
    kwargs = {**({"smooth": 1.0} if method == "li" else {}), **dict(mcfg.kwargs)}
    b = assemble(cells, np.arange(len(cells)), shape, device)
    p = device.asarray(passed)
    mask, regions = gpu_kernels.channel_masks(b, method, kwargs, p, masks_cfg.remove_border_regions)
    out = gpu_kernels.combine(b, mask, regions, p, masks_cfg.main_channel_index, masks_cfg.combined_indices)
    return cpu, (out[0], out[1], regions, *out[2:])


@pytest.mark.parametrize("method", ["li", "otsu", "spot"])
@pytest.mark.parametrize("case", ["ragged", "exact", "uint8", "float32", "float64"])
def test_mask_kernels_equal_cpu(device, method, case):
    if method == "spot" and case.startswith("float"):
        pytest.skip("the spot kernel takes integer pixels (float ones take the reference)")
    cells, shape = _cells(case)
    passed = np.ones((len(cells), cells[0].shape[0]), dtype=bool)
    passed[0, 1] = False
    passed[5 % len(cells), 0] = False  # main channel filtered out: the object is not usable
    cpu, dev = _cpu_and_device(method, cells, shape, device, passed)
    names = ("mask", "combined", "regions", "bbox", "background", "combined_background", "usable")
    for name, got in zip(names, dev):
        want = getattr(cpu, name)
        np.testing.assert_array_equal(got.get(), want, err_msg=f"{method}/{case}: {name}")
    assert cpu.mask.any() and (~cpu.usable).any()  # the case exercises both


def test_combined_indices_and_global_workspace(sim_small_shared):
    cells, shape = _cells("ragged")
    passed = np.ones((len(cells), 3), dtype=bool)
    cpu, dev = _cpu_and_device("otsu", cells, shape, sim_small_shared, passed, combined_indices=[0, 2])
    np.testing.assert_array_equal(dev[0].get(), cpu.mask)
    np.testing.assert_array_equal(dev[1].get(), cpu.combined)
    np.testing.assert_array_equal(dev[5].get(), cpu.combined_background)
    launches = gpu_kernels.module().launches
    assert any(name == "mask_otsu" and shared == 0 for name, _, _, shared in launches)  # global variant ran


def test_li_threshold_device_function_equals_cpu_bit_for_bit():
    """sg_threshold_li (kernels/masks.cu: blocked prefix sums over the block's threads) and the
    numba li_rows add in the same order: the same thresholds to the last bit; both equal
    scikit-image's threshold_li to rounding. Rows shorter and longer than the 256 chunks, not
    multiples of them, with ties, a constant row and a tiny gap."""
    from skimage.filters import threshold_li

    from scip_gpu import cpu_kernels

    from ..cuda_sim import sim

    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    src = "".join((gpu_kernels.kernels_dir() / f).read_text() for f in ("common.cuh", "masks.cu"))
    src += ('extern "C" __global__ void li_rows_test(const double* s, const int n, const int P, '
            'const int max_iter, double* out) {\n'
            '    const double t = sg_threshold_li(s + (long long)blockIdx.x * P, n, max_iter);\n'
            '    if (threadIdx.x == 0) out[blockIdx.x] = t;\n}\n')
    mod = sim.SimModule(src, ["li_rows_test"])
    rng = np.random.default_rng(7)
    for n in (5, 255, 256, 700, 4096, 5000):
        rows = [rng.gamma(2.0, 0.01, n), np.round(rng.random(n) * 40) / 40 + 0.5, np.full(n, 0.25)]
        rows.append(np.where(rng.random(n) < 0.5, 0.1, 0.1 + 1e-12) + rng.random(n) * (np.arange(n) % 2))
        x = np.sort(np.stack(rows), axis=1)
        want = cpu_kernels.threshold_li(x, np.ones_like(x, dtype=bool))
        got = np.full(len(x), np.nan)
        mod.get_function("li_rows_test")((len(x),), (gpu_kernels.THREADS,),
                                         (x, np.int32(n), np.int32(n), np.int32(10_000), got))
        np.testing.assert_array_equal(got, want)
        for r in range(len(x)):
            if x[r, 0] != x[r, -1]:
                assert want[r] == pytest.approx(threshold_li(x[r]), rel=1e-9)
        assert want[2] == 0.25


def test_division_by_the_plane_width_is_exact():
    """SgDivW (kernels/common.cuh: p / w by a multiply and a shift, used in the per-pixel loops)
    against integer division: every p below 70,000 for small and awkward widths, random p up to
    and past 2^24 (past it, and for widths above 2^16, the kernel divides)."""
    from ..cuda_sim import sim

    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    src = (gpu_kernels.kernels_dir() / "common.cuh").read_text()
    src += ('extern "C" __global__ void div_test(const int* p, const int* w, const long long n, int* out) {\n'
            '    for (long long k = threadIdx.x; k < n; k += blockDim.x) out[k] = SgDivW(w[k]).div(p[k]);\n}\n')
    mod = sim.SimModule(src, ["div_test"])
    rng = np.random.default_rng(3)
    widths = [1, 2, 3, 5, 7, 63, 64, 65, 100, 127, 255, 256, 1000, 1023, 1280, 4095, 65535, 65536, 65537, 1 << 20]
    ps, ws = [], []
    for w in widths:
        dense = np.arange(0, 70_000, 7 if w > 1000 else 1)
        edge = np.array([2**24 - 1, 2**24 - 2, 2**24, 2**24 + 1, 2**31 - 1, w * 1000 - 1, w * 1000, w - 1, w])
        p = np.concatenate([dense, rng.integers(0, 2**24, 2000), edge]).clip(0, 2**31 - 1)
        ps.append(p)
        ws.append(np.full(len(p), w))
    p = np.concatenate(ps).astype(np.int32)
    w = np.concatenate(ws).astype(np.int32)
    out = np.zeros(len(p), np.int32)
    mod.get_function("div_test")((1,), (gpu_kernels.THREADS,), (p, w, np.int64(len(p)), out))
    np.testing.assert_array_equal(out, p // w)


def test_global_workspaces_stay_within_the_scratch_budget(sim_small_shared, monkeypatch):
    """A global-memory variant's grid shrinks so that its scratch (one workspace per block)
    stays within SCRATCH_BYTES (4 blocks per multiprocessor of a large plane's workspace would
    take gigabytes), and one block still runs when a single workspace exceeds it; the masks do
    not change."""
    cells, shape = _cells("ragged")
    passed = np.ones((len(cells), 3), dtype=bool)
    ws = gpu_kernels.workspace_bytes("mask_otsu", *shape)
    results = {}
    for budget in (10**12, 2 * ws + 5, ws - 1):
        monkeypatch.setattr(gpu_kernels, "SCRATCH_BYTES", budget)
        gpu_kernels.module().launches.clear()
        cpu, dev = _cpu_and_device("otsu", cells, shape, sim_small_shared, passed)
        np.testing.assert_array_equal(dev[0].get(), cpu.mask)
        results[budget] = [grid for name, grid, _, shared in gpu_kernels.module().launches if name == "mask_otsu"]
    n_planes = len(cells) * 3
    assert results[10**12] == [min(n_planes, 4 * gpu_kernels.limits().sm_count)]
    assert results[2 * ws + 5] == [2] and results[ws - 1] == [1]
