"""The CUDA kernel module: it compiles (nvcc, no GPU needed) without register spills, every
source is part of it, and the older kernels (masked statistics, GLCM) equal their NumPy
references, on the CPU through tests/cuda_sim and on a GPU (``pytest -m gpu``)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from scip_gpu import gpu_kernels
from scip_gpu._resources import kernels_dir

NVCC = shutil.which("nvcc")


def _compile(tmp_path, arch: str, *flags: str):
    src = tmp_path / "module.cu"
    src.write_text(gpu_kernels.module_source())
    return subprocess.run([NVCC, f"-arch={arch}", "--std=c++17", "--fmad=false", "-Werror", "all-warnings",
                           *flags, str(src)], capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_module_compiles_to_ptx_for_sm80(tmp_path):
    res = _compile(tmp_path, "sm_80", "-ptx", "-o", str(tmp_path / "m.ptx"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "m.ptx").read_text()
    for name in gpu_kernels.kernel_names():
        assert f".entry {name}" in text


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_module_compiles_for_sm90_without_spills(tmp_path):
    res = _compile(tmp_path, "sm_90", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "m.cubin"))
    assert res.returncode == 0, res.stderr
    report = res.stderr
    entries = re.findall(r"Compiling entry function '(\w+)'", report)
    assert sorted(entries) == sorted(gpu_kernels.kernel_names())
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report


def test_every_kernel_source_is_in_the_module():
    on_disk = {p.name for p in kernels_dir().iterdir() if p.suffix in (".cu", ".cuh")}
    assert on_disk == set(gpu_kernels.SOURCES)


def test_masked_statistics_kernel_equals_reference(device):
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
    got = gpu_kernels.masked_statistics(device.asarray(members), device.asarray(n)).get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-9)


def test_glcm_kernel_equals_reference(device):
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
    got = gpu_kernels.glcm_props(device.asarray(values), device.asarray(view), device.asarray(extents),
                                 device.asarray(edges), offsets).get()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", gpu_kernels.PREBUILT_ARCHS)
def test_prebuilt_binary_matches_the_sources(arch):
    """The shipped binary was built from the current kernel sources (else every Hopper GPU
    would compile the module at its first batch): rebuild with
    ``python -m scip_gpu.gpu_kernels build`` after editing kernels/."""
    assert gpu_kernels.prebuilt_current(arch), f"kernels/prebuilt/module.{arch}.cubin is stale or missing"



def test_emulated_launch_checks_arguments_like_a_gpu(sim_module):
    """CuPy packs each scalar argument by its own size: an np.int64 for an `int` parameter
    would shift every later parameter on a GPU. The emulation refuses what a GPU would
    misread (and the wrappers' launches all pass it: the kernel tests)."""
    fn = sim_module.get_function("masked_statistics")
    assert sim_module.signature("masked_statistics") == (("p", 8), ("p", 8), ("p", 8), ("i", 4), ("p", 8))
    assert sim_module.signature("label_planes")[:2] == (("p", 1), ("i", 4))  # unsigned char*, int
    values, out = np.zeros(4), np.zeros(16)
    starts, counts = np.array([0], np.int64), np.array([4], np.int64)
    with pytest.raises(TypeError, match="argument 3 is int64"):
        fn((1,), (256,), (values, starts, counts, np.int64(1), out))
    with pytest.raises(TypeError, match="4 arguments for 5 parameters"):
        fn((1,), (256,), (values, starts, counts, np.int32(1)))
    with pytest.raises(TypeError, match="argument 0 must be an array"):
        fn((1,), (256,), (np.float64(0), starts, counts, np.int32(1), out))
    with pytest.raises(TypeError, match="argument 0 is not aligned to the 8 bytes"):
        fn((1,), (256,), (np.zeros(40, np.uint8)[1:33].view(np.float64), starts, counts, np.int32(1), out))
