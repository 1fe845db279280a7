"""A dry run of the GPU benchmark (benchmarks/bench_gpu.py) on the fake CuPy and the CPU
emulation of the CUDA kernels, both presets, a few objects: the script a GPU session runs
(gpu_session.sh's bench and cellprofiler steps) gets through every part and finds GPU and CPU
equal. Slow (1-3 minutes): ``pytest -m slow``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from . import fake_cupy
from .cuda_sim import sim

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("preset", ["scip", "cellprofiler"])
def test_gpu_benchmark_dry_run(preset, tmp_path, monkeypatch):
    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    from scip_gpu import backend, gpu_kernels

    cupy = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(cupy, "__version__", "fake", raising=False)
    monkeypatch.setattr(gpu_kernels, "_module_override", sim.shared_module())
    monkeypatch.setattr(backend, "gpu_available", lambda: (True, "Fake GPU"))
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, "bench_gpu", raising=False)
    import bench_gpu

    monkeypatch.setattr(bench_gpu, "copy_bandwidth", lambda: 1e12)  # 2 GiB of copies otherwise
    monkeypatch.setattr(bench_gpu, "h2d_bandwidth", lambda: 5e10)
    rc = bench_gpu.main(["--preset", preset, "-n", "4", "--unique", "2", "--batch-size", "2",
                         "--stage-batches", "1", "--cpu-objects", "2", "--cpu-workers", "1",
                         "--equality-objects", "2", "--ragged", "2", "--out", str(tmp_path)])
    assert rc == 0
    (res,) = tmp_path.glob("gpu-*.json")
    out = json.loads(res.read_text())
    assert out["dataset"]["preset"] == preset and out["dataset"]["columns"] == (5180 if preset == "scip" else 3360)
    for check in ("12-channel", "ragged-3-channel", "timed-loop"):
        fams = out["equality"][check]
        assert sum(v["columns"] for v in fams.values()) > 0
        assert all(v["outside_criterion"] == 0 and v["nan_mismatch"] == 0 for v in fams.values()), fams
    assert out["gpu"]["objects_per_s"] > 0 and out["cpu"]["objects_per_s"] > 0
