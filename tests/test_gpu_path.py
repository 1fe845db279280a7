"""The device=cuda code path, run on the CPU through a NumPy-backed stand-in for CuPy/cuCIM
(tests/fake_cupy.py): same results as the CPU path, no implicit device->host conversion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scip_gpu import gpu_kernels
from scip_gpu.batch import assemble
from scip_gpu.demo import make_cell
from scip_gpu.profile import build_plan, profile_batch

from . import fake_cupy
from .test_config import _compose


@pytest.fixture
def cupy(monkeypatch):
    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    return fake_cupy.install(monkeypatch)


def _reference_kernels(monkeypatch, cupy):
    """The CUDA kernel module emulated on the CPU (tests/cuda_sim): the fake has no NVRTC, so the
    kernels' own sources run, compiled with g++."""
    from .cuda_sim import sim

    if sim.compiler() is None:
        pytest.skip("g++ is not installed")
    monkeypatch.setattr(gpu_kernels, "_module_override", sim.shared_module())


@pytest.mark.parametrize("kernels", ["off", "on"])
def test_profile_batch_on_the_gpu_path_equals_cpu(cupy, monkeypatch, kernels):
    from scip_gpu.cli import to_config

    if kernels == "off":
        monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    else:
        _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    cells = [make_cell(i, min_size=40, max_size=56)[0] for i in range(3)]
    shape = (72, 72)
    cpu = profile_batch(assemble(cells, np.arange(3), shape, np), plan)
    batch = assemble(cells, np.arange(3), shape, cupy)
    assert isinstance(batch.pixels, fake_cupy.ndarray)
    gpu = profile_batch(batch, plan)
    assert type(gpu) is np.ndarray  # one copy back to the host
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    ok = ~np.isnan(cpu)
    np.testing.assert_allclose(gpu[ok], cpu[ok], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_cli_run_with_device_cuda_equals_cpu(cupy, monkeypatch, tmp_path):
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    _reference_kernels(monkeypatch, cupy)
    out = {}
    for device in ("cpu", "cuda"):
        cfg, yaml = to_config(_compose(["+dataset=demo", "dataset.n_objects=4", "features=scip", "cluster=sync",
                                        f"device={device}", f"output={tmp_path / device}", "progress=false"]))
        summary = run(cfg, yaml)
        assert summary.n_ok == 4
        out[device] = pd.read_parquet(tmp_path / device / "features.parquet")
    import json

    assert json.loads((tmp_path / "cuda" / "provenance.json").read_text())["device"] == "cuda"
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-9, atol=1e-9)


def _trace_copies_to_host(monkeypatch) -> list:
    """Record every copy of a fake device array to the host: (the scip_gpu function asking, size)."""
    import sys

    copies = []
    real = fake_cupy.ndarray.get

    def get(self, *args, **kwargs):
        frame = sys._getframe(1)
        while frame is not None and ("scip_gpu" not in frame.f_code.co_filename.replace("\\", "/").split("/tests/")[0]
                                     or frame.f_code.co_name in ("asnumpy", "_to_host")):  # (helpers: their caller)
            frame = frame.f_back
        copies.append((frame.f_code.co_name if frame is not None else "?", int(self.size)))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fake_cupy.ndarray, "get", get)
    return copies


#: where the fields path with device=cuda copies device data to the host (process_fields' docstring)
FIELD_COPIES = {
    "watershed",  # the watershed flood (kernels/watershed.cu): one flag per round of relaxation
    "field_sums",  # the illumination pass: each task's sum image per group and shape, once
    "estimate_nucleus_radius",  # a few numbers per field (per component)
    "_background_surface",  # a few numbers per field: the normal equations of the background fit
    "check_field_values",  # float fields: one count of NaN or infinite pixels per channel
    "label_boxes",  # the objects' labels and boxes
    "crop_stats",  # 3 numbers per channel per object, to validate them
    "profile_batch",  # the feature table of each batch
    "export_labels_zarr",  # the label images written (segmentation.export_labels)
}


def test_fields_with_device_cuda_equal_cpu(cupy, monkeypatch, tmp_path):
    """Fields of view (illumination correction, segmentation, crops) with device=cuda: the
    CPU path's rows and values; the fields stay on the device (no implicit conversion: the fake
    refuses it) and come back only at the documented points, never a field or a crop."""
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    from .fields_data import write_fields

    _reference_kernels(monkeypatch, cupy)
    root = tmp_path / "plate1"
    write_fields(root, n_fields=2, shape=(112, 128), n_cells=5)
    out = {}
    for device in ("cpu", "cuda"):
        if device == "cuda":
            copies = _trace_copies_to_host(monkeypatch)
        cfg, yaml = to_config(_compose(["+dataset=fields_tiff", f"dataset.path={root}", "segmentation=watershed",
                                        "illumination=jones_2006", "illumination.key=well",
                                        "illumination.median_filter_size=5",
                                        "features.families=[intensity,shape,bbox,regions]", "cluster=sync",
                                        f"device={device}", f"output={tmp_path / device}", "progress=false"]))
        assert run(cfg, yaml).n_ok >= 6
        out[device] = pd.read_parquet(tmp_path / device / "features.parquet").sort_values(
            ["meta_field", "meta_label"]).reset_index(drop=True)
        import json

        workers = json.loads((tmp_path / device / "provenance.json").read_text())["workers"]
        (w,) = workers.values()  # objects/s and busy share per worker, as for single-object data
        assert w["objects"] == len(out[device]) and 0 < w["device_busy"] <= 1
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-6, atol=1e-6)
    assert {name for name, _ in copies} <= FIELD_COPIES, sorted(set(copies))
    assert max(size for name, size in copies if name != "field_sums") <= 112 * 128  # a label image: never a field
    # the illumination pass: both fields (one well) summed on the device, one sum image comes back
    assert [size for name, size in copies if name == "field_sums"] == [3 * 112 * 128]
    assert {size for name, size in copies if name == "watershed"} == {1}  # the flood's flag, nothing else
    n_obj = len(out["cuda"])
    assert sum(name == "label_boxes" for name, _ in copies) == 2  # one copy per field
    assert sum(size for name, size in copies if name == "crop_stats") == 3 * 3 * n_obj


def _check_crops_gathered_on_the_device(cupy, device_array):
    from scipy import ndimage as ndi

    from scip_gpu.fields import crop_stats, field_objects, gather_crops

    rng = np.random.default_rng(3)
    img = rng.integers(0, 4000, size=(2, 40, 48)).astype(np.uint16)
    img[:, 30:34, 40:44] = 7  # object 4: constant
    cell = np.zeros((40, 48), np.int32)
    cell[2:10, 3:15] = 1
    cell[12:30, 0:9] = 2  # touches the left border
    cell[20:26, 20:47] = 3
    cell[30:34, 40:44] = 4
    cell[0, 47] = 5  # one pixel: under min_size
    nucleus = np.where(cell > 0, cell, 0) * (rng.random(cell.shape) < 0.5)
    comps = ["nucleus", "cytoplasm"]
    host = field_objects(img, {"cell": cell, "nucleus": nucleus}, comps, min_size=2)
    dev = field_objects(cupy.asarray(img), {"cell": cupy.asarray(cell), "nucleus": cupy.asarray(nucleus)}, comps,
                        min_size=2)
    slices = ndi.find_objects(cell)
    assert host.label.tolist() == dev.label.tolist() == [1, 2, 3, 4]
    want = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices[:4]]
    assert host.bbox.tolist() == dev.bbox.tolist() == [list(b) for b in want]
    assert dev.touches_border.tolist() == [False, True, False, False]
    shape = (24, 32)
    px, ext, masks = gather_crops(dev, [0, 1, 2, 3], shape, comps)
    assert isinstance(px, device_array) and px.shape == (4, 2, 24, 32)
    px, ext, masks = px.get(), ext.get(), masks.get()
    for got, want in zip(gather_crops(host, [0, 1, 2, 3], shape, comps), (px, ext, masks)):  # the host's slices
        np.testing.assert_array_equal(got, want)
    for k, sl in enumerate(slices[:4]):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        assert ext[k].tolist() == [h, w]
        np.testing.assert_array_equal(px[k, :, :h, :w], img[(slice(None), *sl)])
        assert not px[k, :, h:].any() and not px[k, :, :, w:].any()
        lab = k + 1
        np.testing.assert_array_equal(masks[k, 0, :h, :w], nucleus[sl] == lab)
        np.testing.assert_array_equal(masks[k, 1, :h, :w], (cell[sl] == lab) & (nucleus[sl] != lab))
        assert not masks[k, :, h:].any() and not masks[k, :, :, w:].any()
    # label images from the host (Cellpose's) join the field on the device
    mixed = field_objects(cupy.asarray(img), {"cell": cell, "nucleus": nucleus}, comps, min_size=2)
    assert all(isinstance(v, device_array) for v in mixed.labels.values())
    np.testing.assert_array_equal(gather_crops(mixed, [0, 1, 2, 3], shape, comps)[2].get(), masks)
    stats = crop_stats(dev, multiple=8)
    np.testing.assert_array_equal(stats, crop_stats(host, multiple=8))
    for k, sl in enumerate(slices[:4]):
        crop = img[(slice(None), *sl)]
        np.testing.assert_array_equal(stats[0, k], crop.max(axis=(1, 2)))
        np.testing.assert_array_equal(stats[1, k], crop.min(axis=(1, 2)))
    assert stats[0, 3].tolist() == stats[1, 3].tolist() == [7, 7] and not stats[2].any()


def test_crops_gathered_on_the_device_are_the_host_slices(cupy):
    """Boxes, crops, compartment masks and validation numbers of a field's objects, gathered on
    the (fake) device, against plain NumPy slicing of the same field (scipy's find_objects)."""
    _check_crops_gathered_on_the_device(cupy, fake_cupy.ndarray)


@pytest.mark.gpu
def test_crops_gathered_on_a_gpu_are_the_host_slices():
    """The same on a real GPU (CuPy, cupyx.scipy.ndimage): ``pytest -m gpu``."""
    cp = pytest.importorskip("cupy")
    _check_crops_gathered_on_the_device(cp, cp.ndarray)


def test_unpadded_batch_on_the_gpu_path_equals_cpu(cupy, monkeypatch):
    from scip_gpu.cli import to_config

    from .test_unpadded import same_size_cells

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    cells = same_size_cells(3)
    idx = np.arange(len(cells))
    cpu = profile_batch(assemble(cells, idx, (64, 64), np), plan)
    gpu = profile_batch(assemble(cells, idx, cells[0].shape[1:], cupy), plan)
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    ok = ~np.isnan(cpu)
    np.testing.assert_allclose(gpu[ok], cpu[ok], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [pytest.param((64, 64), marks=pytest.mark.slow), None])
def test_batch_on_the_gpu_never_synchronises(cupy, monkeypatch, shape):
    """Assembling a batch and profiling it with the CUDA kernels neither reads a device value
    on the host, nor copies from pageable host memory (which waits for the stream), nor copies
    back before the one copy of the table."""
    from scip_gpu.cli import to_config

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    if shape is None:  # ragged cells, padded
        cells = [make_cell(i, min_size=30, max_size=46)[0] for i in range(2)]
        shape = (56, 56)
    else:
        cells = [make_cell(i, min_size=64, max_size=64)[0][:, :64, :64] for i in range(2)]
    idx = np.arange(len(cells))
    profile_batch(assemble(cells, idx, shape, cupy), plan)  # first batch: constant tables go to the device
    fake_cupy.SYNCS.clear()
    table = profile_batch(assemble(cells, idx, shape, cupy), plan, to_host=False)
    assert dict(fake_cupy.SYNCS) == {}
    want = profile_batch(assemble(cells, idx, shape, np), plan)
    got = table.get()
    assert fake_cupy.SYNCS["get"] == 1
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-12)


def test_float_cells_families_on_the_gpu_never_synchronise(cupy, monkeypatch):
    """float32 cells (the fields' illumination-corrected crops) with their masks on the device
    (as the fields' segmentation gives them): every family of the ``scip`` preset (the float
    intensity and texture kernels, shape, the meta families) neither reads a device value on
    the host nor copies from pageable memory nor launches a kernel that CuPy generates, and
    gives the CPU path's values. (The li and otsu masks of float cells: the next test.)"""
    import dataclasses

    from scip_gpu.cli import to_config
    from scip_gpu.features.registry import FAMILIES
    from scip_gpu.masks import compute_masks

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    cells = [(make_cell(i, min_size=30, max_size=46)[0] / np.float32(997.0)).astype(np.float32) for i in range(3)]
    idx = np.arange(len(cells))
    host = assemble(cells, idx, (56, 56), np)
    mr = compute_masks(host, cfg.masks.methods[0], cfg.masks)
    dev_mr = dataclasses.replace(mr, **{f.name: cupy.asarray(getattr(mr, f.name))
                                        for f in dataclasses.fields(mr) if f.name != "name"})
    families = [fam for fam in plan.families[mr.name]]
    assert {"intensity", "texture", "shape", "empty", "regions", "bbox"} <= set(families)
    for rnd in range(2):  # (the first: constant tables copied to the device once)
        batch = assemble(cells, idx, (56, 56), cupy)
        fake_cupy.SYNCS.clear()
        fake_cupy.LAUNCHES.clear()
        got = [FAMILIES[fam].compute(batch, dev_mr, plan.context) for fam in families]
        if rnd:
            assert dict(fake_cupy.SYNCS) == {}
            assert dict(fake_cupy.LAUNCHES) == {}  # (the float kernels: nothing for NVRTC to compile)
    want = [FAMILIES[fam].compute(host, mr, plan.context) for fam in families]
    for fam, g, w in zip(families, got, want):
        g = g.get()
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=fam)
        np.testing.assert_allclose(g[~np.isnan(w)], w[~np.isnan(w)], rtol=1e-12, atol=1e-12, err_msg=fam)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_cells_batch_on_the_gpu_never_synchronises(cupy, monkeypatch, dtype):
    """A whole ``scip``-preset batch of float cells (li and otsu masks included: the mask
    kernels take float pixels, float32 filters rounded as SciPy's) does not synchronise, and
    for float32 cells launches no kernel that CuPy generates (before: 29 synchronisations and
    ~4,900 launches of 116 kinds per batch, the masks' references); it gives the CPU path's
    values."""
    from scip_gpu.cli import to_config

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    cells = [((make_cell(i, min_size=30, max_size=46)[0] - 200) / 997.0).astype(dtype) for i in range(3)]
    idx = np.arange(len(cells))
    profile_batch(assemble(cells, idx, (56, 56), cupy), plan)  # (constant tables to the device)
    fake_cupy.SYNCS.clear()
    fake_cupy.LAUNCHES.clear()
    table = profile_batch(assemble(cells, idx, (56, 56), cupy), plan, to_host=False)
    assert dict(fake_cupy.SYNCS) == {}
    if dtype == np.float32:  # (float64 cells' intensity and texture take the references)
        assert dict(fake_cupy.LAUNCHES) == {}
    want = profile_batch(assemble(cells, idx, (56, 56), np), plan)
    got = table.get()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert ok.sum() > 0.9 * want.size
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-12)


def test_batch_on_the_gpu_launches_no_kernel_that_cupy_generates(cupy, monkeypatch):
    """Besides the module's own (prebuilt) kernels, a ``scip``-preset batch launches no kernel
    that CuPy generates (each kind compiled by NVRTC on a fresh machine, counted by the
    stand-in's ``LAUNCHES``): the meta families write the table with kernels/meta.cu, the
    filters' all-True is a memset. A preset with a family still in the array namespace would
    show here."""
    from scip_gpu.cli import to_config

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    for n in (2, 5):
        cells = [make_cell(i, min_size=64, max_size=64)[0][:, :64, :64] for i in range(n)]
        profile_batch(assemble(cells, np.arange(n), (64, 64), cupy), plan)  # (constant tables copied once)
        fake_cupy.LAUNCHES.clear()
        table = profile_batch(assemble(cells, np.arange(n), (64, 64), cupy), plan, to_host=False)
        assert dict(fake_cupy.LAUNCHES) == {}
        assert not np.isnan(table.get()[:, :plan.spans[("li", "empty")][1]]).all()
    # the references would have launched a reduction, a negation and converting copies
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    fake_cupy.LAUNCHES.clear()
    profile_batch(assemble(cells, np.arange(n), (64, 64), cupy), plan, to_host=False)
    assert ("ufunc", "logical_or.reduce", "bool") in fake_cupy.LAUNCHES


def test_twelve_channel_cells_on_the_gpu_path_equal_cpu_bit_for_bit(cupy, monkeypatch):
    """The benchmark's dataset (12-channel 64x64 cells, li + otsu, every family): the CUDA
    kernels, run by the CPU emulation, give the CPU path's values exactly."""
    from scip_gpu.cli import to_config

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "dataset.n_channels=12", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, [f"ch{i}" for i in range(12)])
    cells = []
    for i in range(1):
        img = make_cell(i, n_channels=12, min_size=60, max_size=68)[0]
        img = np.pad(img, ((0, 0), (0, max(0, 64 - img.shape[1])), (0, max(0, 64 - img.shape[2]))), mode="reflect")
        cells.append(np.ascontiguousarray(img[:, :64, :64]))
    idx = np.arange(len(cells))
    cpu = profile_batch(assemble(cells, idx, (64, 64), np), plan)
    gpu = profile_batch(assemble(cells, idx, (64, 64), cupy), plan)
    assert cpu.shape == (1, 5154 + 2 * 13)  # measured columns + the empty flags (12 channels + combined) per mask
    np.testing.assert_array_equal(gpu, cpu)


def test_watershed_nuclei_on_the_gpu_path_equals_cpu(cupy, monkeypatch):
    """One implementation: the scale estimate and the watershed take the array namespace of
    their input (the flood: kernels/watershed.cu, emulated); only a few numbers per field go
    through the host."""
    from scip_gpu.segmentation import estimate_nucleus_radius, watershed_nuclei

    _reference_kernels(monkeypatch, cupy)
    from .test_segmentation import disc_grid

    img, n = disc_grid(5, noise=100.0)
    cpu, p_cpu = watershed_nuclei(img, return_parameters=True)
    gpu, p_gpu = watershed_nuclei(cupy.asarray(img), return_parameters=True)
    assert isinstance(gpu, fake_cupy.ndarray) and gpu.dtype == np.int32
    np.testing.assert_array_equal(gpu.get(), cpu)
    assert p_gpu == p_cpu and cpu.max() == n
    assert estimate_nucleus_radius(cupy.asarray(img)) == p_cpu["radius"]


def _run_both(overrides, tmp_path) -> dict:
    """The command line's run on the (stand-in) device and on the CPU: {device: feature table,
    rows in a fixed order}."""
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    out = {}
    for device in ("cuda", "cpu"):
        cfg, yaml = to_config(_compose([*overrides, "cluster=sync", f"device={device}",
                                        f"output={tmp_path / device}", "progress=false"]))
        summary = run(cfg, yaml)
        assert summary.n_errors == 0 and summary.n_fields_failed == 0
        df = pd.read_parquet(tmp_path / device / "features.parquet")
        keys = [c for c in ("meta_field", "meta_label", "meta_object_number") if c in df.columns]
        out[device] = df.sort_values(keys).reset_index(drop=True)
    return out


@pytest.mark.parametrize("preset", ["scip", pytest.param("cellprofiler", marks=pytest.mark.slow)])
def test_real_ifc_cells_on_the_gpu_path_equal_cpu(cupy, monkeypatch, tmp_path, shared_data, preset):
    """Ten real imaging-flow-cytometry cells (SCIP's ragged zarr: 7 uint16 channels, each cell
    its own size) through the command line with device=cuda (the kernels emulated): the CPU
    path's rows and values, every channel, every family of the preset."""
    _reference_kernels(monkeypatch, cupy)
    overrides = ["+dataset=scip_zarr", f"dataset.path={shared_data / 'scip-ifc-10cells.zarr'}", f"features={preset}"]
    out = _run_both([*overrides, *(["masks=scip"] if preset == "scip" else [])], tmp_path)
    assert len(out["cpu"]) == 10 and out["cpu"].shape[1] > 3000
    assert (out["cuda"]["meta_status"] == "ok").all()
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-9, atol=1e-12)


def test_real_nuclei_field_on_the_gpu_path_equals_cpu(cupy, monkeypatch, tmp_path, shared_data):
    """A real 512x512 nuclei field (DSB2018; the same image as each of the three channels of a
    BBBC021-named field) segmented by the watershed and profiled with device=cuda (the flood and
    the kernels emulated): the CPU path's objects (about the 125 nuclei of its ground truth) and
    values."""
    import tifffile

    _reference_kernels(monkeypatch, cupy)
    root = tmp_path / "plate"
    root.mkdir()
    img = tifffile.imread(shared_data / "nuclei-dsb2018" / "img2d.tif")
    for channel in (1, 2, 4):
        tifffile.imwrite(root / f"B02_s1_w{channel}.tif", img)
    out = _run_both(["+dataset=fields_tiff", f"dataset.path={root}", "segmentation=watershed"], tmp_path)
    assert 100 <= len(out["cpu"]) <= 150
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-9, atol=1e-12)


def test_fake_cupy_has_only_what_cupy_has(monkeypatch):
    """The stand-in refuses NumPy names, keywords and array methods that CuPy 14 lacks (the API
    list tests/data/cupy_api.json comes from the real CuPy), so the device path cannot use them
    unnoticed; what CuPy has works."""
    cupy = fake_cupy.install(monkeypatch)
    x = cupy.asarray(np.array([3, 1, 2, 1]))
    with pytest.raises(AttributeError, match="cupy.errstate does not exist"):
        cupy.errstate  # noqa: B018
    with pytest.raises(AttributeError, match="cupy.nanquantile does not exist"):
        cupy.nanquantile(x, 0.5)
    with pytest.raises(TypeError, match="cupy.unique.*CuPy 14.2.0 takes no keyword sorted"):
        cupy.unique(x, sorted=True)
    with pytest.raises(AttributeError, match="no attribute 'resize'"):
        x.resize(8)
    import sys

    seg = sys.modules["cucim.skimage.segmentation"]
    with pytest.raises(AttributeError, match="segmentation.watershed does not exist in cuCIM"):
        seg.watershed  # noqa: B018
    np.testing.assert_array_equal(seg.expand_labels(cupy.asarray(np.array([[1, 0, 0]])), distance=1).get(), [[1, 1, 0]])
    u, inv = cupy.unique(x, return_inverse=True)
    np.testing.assert_array_equal(u.get(), [1, 2, 3])
    np.testing.assert_array_equal(inv.get(), [2, 0, 1, 0])
    assert int(cupy.partition(x, 1)[1]) == 1


def test_stages_on_a_dataclass_of_device_arrays_run_on_the_device(monkeypatch):
    """A stage whose arguments hold device arrays inside a dataclass (the shape geometry of
    ``shape.raw_moments``) is dispatched as a device stage: its numba ``cpu`` kernel cannot
    take CuPy arrays (before, it was chosen, and the reference shape path failed on a GPU)."""
    from scip_gpu import dispatch
    from scip_gpu.features import shape as S

    cupy = fake_cupy.install(monkeypatch)
    labels = np.zeros((1, 6, 6), np.int32)
    labels[0, 1:4, 1:3] = 1
    labels[0, 4, 4] = 2
    geo = S._geometry(cupy.asarray(labels), 2)
    assert dispatch.backend_of((geo, 2), {}) == "cuda"
    assert dispatch.backend_of((S._geometry(labels, 2), 2), {}) == "cpu"
    assert dispatch.backend_of(([cupy.asarray(labels)],), {}) == "cuda"
    raw = S._raw_moments(geo, 2)
    assert isinstance(raw, cupy.ndarray)
    np.testing.assert_array_equal(raw.get()[1:, 0, 0], [6, 1])  # areas, by hand
    np.testing.assert_array_equal(raw.get()[1:, 1, 0], [0 + 1 + 2 + 0 + 1 + 2, 0])  # row sums inside each box


def test_copies_on_their_own_streams_are_ordered_by_events(cupy, monkeypatch):
    """The command line's batch loop copies pixels in and tables out on streams of their own:
    the batch carries its copy's event, the compute stream waits for it before the first
    kernel (in ``profile_batch``, or earlier by ``wait_for_copies``), the table's copy stream
    waits for the compute stream's event before copying; no host synchronisation, and the rows
    are the synchronous path's."""
    from scip_gpu.batch import wait_for_copies
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import copy_back, copy_streams

    _reference_kernels(monkeypatch, cupy)
    cfg, _ = to_config(_compose(["+dataset=demo", "features=scip", "masks=scip"]))
    plan = build_plan(cfg, ["BF", "DNA", "SPOT"])
    cells = [make_cell(i, min_size=30, max_size=46)[0] for i in range(2)]
    idx = np.arange(len(cells))
    want = profile_batch(assemble(cells, idx, (56, 56), np), plan)
    h2d, d2h = copy_streams(cupy)
    assert h2d is not d2h and h2d.non_blocking and d2h.non_blocking
    compute = cupy.cuda.get_current_stream()
    profile_batch(assemble(cells, idx, (56, 56), cupy), plan)  # first batch: constant tables to the device
    batch = assemble(cells, idx, (56, 56), cupy, copy_stream=h2d)
    copied = batch.cache["_copied"]
    n_waits = len(compute.waited)
    fake_cupy.SYNCS.clear()
    table = profile_batch(batch, plan, to_host=False)
    assert compute.waited[n_waits:] == [copied] and "_copied" not in batch.cache
    wait_for_copies(batch)  # a second call waits for nothing more
    assert compute.waited[n_waits:] == [copied]
    from scip_gpu.batch import _host_buffer

    host = _host_buffer((batch.n, plan.n_features), np.float64, cupy, zero=False)  # pinned
    n_d2h = len(d2h.waited)
    done = copy_back(table, host, d2h)
    assert len(d2h.waited) == n_d2h + 1 and d2h.waited[-1] is not done
    assert copy_streams(cupy) == (h2d, d2h)  # one pair per process and device
    assert dict(fake_cupy.SYNCS) == {}
    np.testing.assert_array_equal(np.isnan(host), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(host[ok], want[ok], rtol=1e-12, atol=1e-12)


def test_device_stage_on_its_own_non_blocking_stream(cupy, monkeypatch, tmp_path):
    """The batches of every partition run on one non-blocking compute stream per process and
    device (``compute_stream``), not on the default stream, where the reading of the partitions
    in flight (validation of device reads, kvikio) queues its work; the reading itself stays
    off that stream."""
    from scip_gpu import pipeline
    from scip_gpu.export import arrow_schema

    from .test_overlap import _setup

    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    cfg, src, objs, plan = _setup(8, ["masks=none"])
    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    seen = {"profile": [], "load": []}
    real_profile, real_load = pipeline.profile_batch, type(src).load

    def profile(batch, plan, timer=None, **kw):
        seen["profile"].append(cupy.cuda.get_current_stream())
        return real_profile(batch, plan, **kw) if timer is None else real_profile(batch, plan, timer, **kw)

    def load(self, rows):
        seen["load"].append(cupy.cuda.get_current_stream())
        return real_load(self, rows)

    monkeypatch.setattr(pipeline, "profile_batch", profile)
    monkeypatch.setattr(type(src), "load", load)
    folder = tmp_path / "features.parquet"
    folder.mkdir()
    for t in pipeline.partition_tasks(objs, 4):  # (2 partitions of 4)
        res = pipeline.process_partition(t, source=src, plan=plan, folder=str(folder), schema=schema, device="cuda")
        assert res.n_ok == 4
    compute = pipeline.compute_stream(cupy)
    assert compute.non_blocking and not compute.null and compute not in pipeline.copy_streams(cupy)
    assert seen["profile"] and all(s is compute for s in seen["profile"])
    assert seen["load"] and all(s is not compute for s in seen["load"])
    assert cupy.cuda.get_current_stream().null  # (restored after the device stage)
