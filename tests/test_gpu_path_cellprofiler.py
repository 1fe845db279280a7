"""The cellprofiler preset (the optional Zernike intensity moments on) on the device=cuda path,
run on the CPU through the NumPy-backed stand-in for CuPy (tests/fake_cupy.py): its
array-namespace code (kernels off) and its CUDA kernels where a stage has one (kernels on:
emulated by tests/cuda_sim); the same values as the CPU path (numba kernels), no implicit
device->host conversion."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import gpu_kernels
from scip_gpu.batch import assemble
from scip_gpu.demo import make_cell
from scip_gpu.profile import build_plan, profile_batch

from .test_config import _compose
from .test_gpu_path import _reference_kernels, cupy  # noqa: F401  (fixture)


@pytest.mark.parametrize("kernels", ["off", "on"])
def test_cellprofiler_preset_on_the_gpu_path_equals_cpu(cupy, monkeypatch, kernels):  # noqa: F811
    from scip_gpu.cli import to_config

    from . import fake_cupy

    if kernels == "off":
        monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    else:
        _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=cellprofiler", "masks=li",
                                 "features.cellprofiler.radial_zernikes=true"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    n = 5 if kernels == "off" else 2  # (the emulated kernels run one block after the other)
    cells = [make_cell(i, min_size=30, max_size=40)[0] for i in range(n)]
    cpu = profile_batch(assemble(cells, np.arange(n), (48, 48), np), plan)
    batch = assemble(cells, np.arange(n), (48, 48), cupy)
    assert isinstance(batch.pixels, fake_cupy.ndarray)
    before = len(gpu_kernels.module().launches) if kernels == "on" else 0
    gpu = profile_batch(batch, plan)
    if kernels == "on":  # the stages with a CUDA kernel ran it
        launched = {name for name, *_ in gpu_kernels.module().launches[before:]}
        assert {"cp_intensity_planes", "cp_haralick_planes", "cp_colocalization_objects", "cp_costes_objects",
                "cp_radii", "cp_radial", "granularity_planes", "cp_zernike_planes", "cp_sizeshape_pad",
                "cp_sizeshape_planes"} <= launched
        # the AreaShape block runs as its kernels, not as the reference's stages
        assert not {"cp_feret", "cp_filled_area", "cp_pattern_sums"} & launched
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    ok = ~np.isnan(cpu)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(gpu[ok], cpu[ok], rtol=1e-9, atol=1e-9)


def test_cellprofiler_families_of_fields_on_the_gpu_path_equal_cpu(cupy, monkeypatch, tmp_path):  # noqa: F811
    """Segmented fields with device=cuda (fields and label images on the device): the
    CellProfiler intensity and neighbour columns are the CPU path's."""
    import pandas as pd

    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    from .fields_data import write_fields

    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    root = tmp_path / "plate1"
    write_fields(root, n_fields=1, shape=(96, 112), n_cells=5)
    out = {}
    for device in ("cpu", "cuda"):
        cfg, yaml = to_config(_compose(["+dataset=fields_tiff", f"dataset.path={root}", "segmentation=watershed",
                                        "features=cellprofiler", "features.families=[cp_intensity,cp_neighbors]",
                                        "cluster=sync", f"device={device}", f"output={tmp_path / device}",
                                        "progress=false"]))
        assert run(cfg, yaml).n_ok >= 3
        out[device] = pd.read_parquet(tmp_path / device / "features.parquet").sort_values(
            ["meta_field", "meta_label"]).reset_index(drop=True)
    nb = [c for c in out["cpu"].columns if "_Neighbors_" in c]
    assert nb and out["cpu"][nb].notna().any().all()
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-9, atol=1e-9)
