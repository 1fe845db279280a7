"""``bench_gpu.compiled_kernels``: what the ``first`` step of a GPU session reports of CuPy's
kernel cache (the NVRTC compilations a fresh machine's first batch pays)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_compiled_kernels_counts_binaries_and_names_the_saved_sources(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "bench_gpu", raising=False)
    import bench_gpu

    # CuPy's layout: <md5>_2.cubin, and with CUPY_CACHE_SAVE_CUDA_SOURCE=1 <md5>_2.cubin.cu beside it
    (tmp_path / "a_2.cubin").write_bytes(b"\0" * 40)
    (tmp_path / "a_2.cubin.cu").write_text('extern "C" __global__ void cupy_copy__uint16_float64(const int n)\n{}\n')
    (tmp_path / "b_2.cubin").write_bytes(b"\0" * 40)
    (tmp_path / "b_2.cubin.cu").write_text(
        'extern "C" __global__ void cupy_fill__float64(int n) {}\n'
        'extern "C" __global__  void\tcupy_copy__uint16_float64(int n) {}\n')
    (tmp_path / "c_2.cubin").write_bytes(b"\0" * 40)  # (compiled before the source was kept)
    out = bench_gpu.compiled_kernels(str(tmp_path))
    assert out["binaries"] == 3 and out["sources"] == 2
    assert out["kernels"] == {"cupy_copy__uint16_float64": 2, "cupy_fill__float64": 1}
    assert list(out["kernels"]) == ["cupy_copy__uint16_float64", "cupy_fill__float64"]  # most compiled first
    assert bench_gpu.compiled_kernels(None) == {} and bench_gpu.compiled_kernels(str(tmp_path / "no")) == {}
