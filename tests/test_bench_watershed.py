"""A dry run of benchmarks/bench_watershed.py (gpu_session.sh's step watershed) on the fake
CuPy and the CPU emulation of kernels/watershed.cu, the 512x512 field: every implementation
runs, the GPU's labels equal the CPU's and its relaxation launches are counted. Slow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scip_gpu import cpu_kernels

from . import fake_cupy
from .cuda_sim import sim

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_watershed_benchmark_dry_run(tmp_path, monkeypatch):
    if sim.compiler() is None or not cpu_kernels.available():
        pytest.skip("needs g++ (the CUDA emulation) and numba")
    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    from scip_gpu import backend, gpu_kernels

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "bench_watershed", raising=False)
    import bench_watershed

    img = bench_watershed.fields()["dsb2018-512x512"]
    inputs = bench_watershed.flood_inputs(img)  # (on NumPy, as the benchmark takes them)
    monkeypatch.setattr(bench_watershed, "flood_inputs", lambda _: inputs)
    fake_cupy.install(monkeypatch)
    monkeypatch.setattr(gpu_kernels, "_module_override", sim.shared_module())
    monkeypatch.setattr(backend, "gpu_available", lambda: (True, "Fake GPU"))
    assert bench_watershed.main(["--repeats", "1", "--fields", "dsb2018-512x512", "--out", str(tmp_path)]) == 0
    (res,) = tmp_path.glob("watershed-*.json")
    (point,) = json.loads(res.read_text())["points"]
    assert point["cuda_pixels_differing_from_numba"] == 0 and point["numba_pixels_differing_from_skimage"] == 0
    assert point["cuda_relax_launches"] >= 2 and point["floor_bytes_per_launch"] == 17 * 512 * 512
    assert point["mask_pixels"] > 50_000 and point["markers"] > 100
