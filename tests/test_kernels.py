"""CUDA kernels: they compile (nvcc to PTX, no GPU needed) and, on a GPU, equal their NumPy
reference functions."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from scip_gpu._resources import kernels_dir
from scip_gpu.backend import gpu_available
from scip_gpu.gpu_kernels import SOURCES

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kernel_compiles_to_ptx(tmp_path, source, arch):
    ptx = tmp_path / f"{source}.{arch}.ptx"
    res = subprocess.run([NVCC, "-ptx", f"-arch={arch}", "--std=c++17", "-Werror", "all-warnings",
                          str(kernels_dir() / source), "-o", str(ptx)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = ptx.read_text()
    for name in SOURCES[source]:
        assert f".entry {name}" in text


def test_every_kernel_source_is_listed():
    assert sorted(p.name for p in kernels_dir().glob("*.cu")) == sorted(SOURCES)


gpu = pytest.mark.skipif(not gpu_available()[0], reason="no usable GPU")


@pytest.mark.gpu
@gpu
def test_masked_statistics_kernel_equals_reference():
    import cupy

    from scip_gpu import gpu_kernels
    from scip_gpu.stats import compact_statistics, sort_planes, view_members

    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 300.0, (500, 700)).round()
    valid = rng.random((500, 700)) < rng.random((500, 1))
    valid[:3] = False
    valid[1, 5] = True
    order, sv = sort_planes(values, valid)
    members, n = view_members(order, sv, valid)
    want = compact_statistics(members, n)
    got = gpu_kernels.masked_statistics(cupy.asarray(members), cupy.asarray(n)).get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@gpu
def test_glcm_kernel_equals_reference():
    import cupy

    from scip_gpu import gpu_kernels
    from scip_gpu.batch import valid_mask
    from scip_gpu.features import texture as T

    rng = np.random.default_rng(1)
    m, h, w = 64, 40, 40
    values = rng.random((m, h, w)) * 1000
    extents = rng.integers(4, 40, (m, 2))
    inside = valid_mask(extents, (h, w))
    view = (rng.random((m, h, w)) < 0.7) & inside
    offsets = [T.glcm_offset(d, a) for d in T.DISTANCES for a in T.ANGLES[:2]]
    q = T.quantise_scip(values, view)
    want = T.graycoprops_batched(T.glcm_batched(q, inside, offsets)[..., :-1, :-1])
    edges = T.quantisation_edges(values, view)
    got = gpu_kernels.glcm_props(cupy.asarray(values), cupy.asarray(view), cupy.asarray(extents),
                                 cupy.asarray(edges), offsets).get()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The same kernel sources, compiled for the CPU with a small CUDA emulation (tests/cuda_sim):
# their logic is checked against the NumPy references even where no GPU exists.

GXX = shutil.which("g++")
SIM = pytest.mark.skipif(GXX is None, reason="g++ is not installed")
SIM_DIR = kernels_dir().parent / "tests" / "cuda_sim"


def _build(tmp_path, driver):
    exe = tmp_path / driver.replace(".cpp", "")
    res = subprocess.run([GXX, "-std=c++20", "-O1", "-pthread", str(SIM_DIR / driver), "-o", str(exe)],
                         capture_output=True, text=True)
    if res.returncode != 0 and "barrier" in res.stderr:
        pytest.skip("this g++ lacks C++20 <barrier>")
    assert res.returncode == 0, res.stderr
    return exe


@SIM
def test_masked_statistics_kernel_logic_on_cpu(tmp_path):
    from scip_gpu.stats import compact_statistics, sort_planes, view_members

    rng = np.random.default_rng(0)
    values = rng.integers(0, 50, (120, 333)).astype(float)  # ties
    values[60:] = rng.gamma(2.0, 300.0, (60, 333))
    valid = rng.random(values.shape) < rng.random((120, 1))
    valid[:2] = False
    valid[1, 7] = True
    valid[5] = True
    values[5] = 3.0  # constant segment
    order, sv = sort_planes(values, valid)
    members, n = view_members(order, sv, valid)
    want = compact_statistics(members, n)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        np.array([members.size, n.size], np.int64).tofile(f)
        members.astype(np.float64).tofile(f)
        n.astype(np.int64).tofile(f)
    subprocess.run([str(_build(tmp_path, "run_masked_stats.cpp")), str(inp), str(out)], check=True)
    got = np.fromfile(out, np.float64).reshape(-1, 11)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9)


@SIM
def test_glcm_kernel_logic_on_cpu(tmp_path):
    from scip_gpu.batch import valid_mask
    from scip_gpu.features import texture as T

    rng = np.random.default_rng(1)
    m, h, w = 40, 24, 24
    values = rng.random((m, h, w)) * 1000
    values[3] = 7.0  # constant: correlation 1
    extents = rng.integers(2, 24, (m, 2)).astype(np.int64)
    inside = valid_mask(extents, (h, w))
    view = (rng.random((m, h, w)) < 0.7) & inside
    view[4] = False  # empty view
    offsets = sorted({max(o, (-o[0], -o[1])) for o in
                      (T.glcm_offset(d, a) for d in T.DISTANCES for a in T.ANGLES)})
    want = T.graycoprops_batched(T.glcm_batched(T.quantise_scip(values, view), inside, offsets)[..., :-1, :-1])
    edges = T.quantisation_edges(values, view)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(inp, "wb") as f:
        np.array([m, h, w, len(offsets)], np.int32).tofile(f)
        values.tofile(f)
        view.astype(np.uint8).tofile(f)
        extents.tofile(f)
        edges.astype(np.float64).tofile(f)
        np.asarray(offsets, np.int32).tofile(f)
    subprocess.run([str(_build(tmp_path, "run_glcm.cpp")), str(inp), str(out)], check=True)
    got = np.fromfile(out, np.float64).reshape(m, len(offsets), 6)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
