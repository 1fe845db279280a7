"""The Python API: scip_gpu.profile on in-memory arrays, paths and dataset configurations."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import scip_gpu
from scip_gpu.config import Config, DatasetConfig, DatasetFormat
from scip_gpu.demo import make_cell
from scip_gpu.errors import ConfigError, InputError, OutputError

NAMES = ["BF", "DNA", "SPOT"]


def _cells(n=5):
    return [make_cell(i)[0] for i in range(n)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The first 3 demo cells profiled by the pipeline from a Config built in Python, with no
    masks or families given: the command line's defaults (li + otsu, every family)."""
    from scip_gpu.pipeline import run

    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = Config(dataset=DatasetConfig(name="demo", format=DatasetFormat.demo, n_objects=3, channel_names=NAMES),
                 output=str(out), progress=False)
    cfg.cluster.type = "sync"
    summary = run(cfg)
    assert summary.n_features == 1383  # not 33: a Config built in Python has the masks
    df = pd.read_parquet(out / "features.parquet").sort_values("meta_index")
    return df[[c for c in df.columns if c.startswith("feat_")]]


def test_in_memory_list_matches_the_pipeline(reference):
    adata = scip_gpu.profile(_cells(3), channel_names=NAMES)
    assert adata.shape == (3, 1369) and list(adata.var_names) == list(reference.columns)
    np.testing.assert_array_equal(adata.X, reference.to_numpy(np.float32))
    assert (adata.obs["meta_status"] == "ok").all() and adata.obs["meta_id"].tolist() == list(range(3))
    assert adata.uns["errors"].empty and adata.uns["scip_gpu"]["output"] == ""  # temporary folder, removed
    assert "profiled 3 objects (3 ok" in adata.uns["scip_gpu"]["summary"]


def test_dense_numpy_and_dask_arrays_and_a_zarr_path(tmp_path):
    import dask.array as da
    import zarr

    cells = [c[:, :40, :40] for c in _cells(3)]  # one size: an (N, C, H, W) array
    stack = np.stack(cells)
    ref = scip_gpu.profile(cells, "masks=li", features="intensity")
    got = scip_gpu.profile(da.from_array(stack, chunks=(2, 3, 40, 40)), "masks=li", features="intensity")
    np.testing.assert_array_equal(got.X, ref.X)
    store = tmp_path / "cells.zarr"
    zarr.open(str(store), mode="w", shape=stack.shape, chunks=(2, 3, 40, 40), dtype=stack.dtype)[:] = stack
    got = scip_gpu.profile(str(store), "masks=li", "features=intensity", output=tmp_path / "run")  # type inferred
    np.testing.assert_array_equal(got.X, ref.X)
    assert got.obs["meta_zarr_idx"].tolist() == [0, 1, 2] and (tmp_path / "run" / "features.h5ad").is_file()


def test_dataset_config_name_overrides_and_existing_output(tmp_path):
    adata = scip_gpu.profile("demo", "masks=li", dataset_options={"n_objects": 3}, features="intensity",
                             output=tmp_path / "run")
    assert adata.n_obs == 3 and set(adata.var["mask"]) == {"li", ""}  # ("": the raw set)
    assert set(adata.var["family"]) == {"intensity", "raw"}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    with pytest.raises(OutputError, match="already exists and is not empty"):
        scip_gpu.profile(_cells(2), output=mine)
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("call,error,needle", [
    (lambda: scip_gpu.profile(_cells(2), dataset_options={"n_objcts": 3}), ConfigError, "dataset.n_objects"),
    (lambda: scip_gpu.profile(_cells(2), batch_sise=3), ConfigError, "did you mean batch_size"),
    (lambda: scip_gpu.profile(_cells(2), masks="lii"), ConfigError, "did you mean li"),
    (lambda: scip_gpu.profile(_cells(2), batch_size="abc"), ConfigError, "batch_size: Value 'abc'"),
    (lambda: scip_gpu.profile(_cells(2), "batch_size=abc"), ConfigError, "batch_size=abc: expected a whole number"),
    (lambda: scip_gpu.profile(np.zeros((2, 30, 30), np.uint16)), InputError, "images[:, None]"),
    (lambda: scip_gpu.profile(5), InputError, "a list of (C, H, W) arrays, got int"),
    (lambda: scip_gpu.profile("/nonexistent/run1"), InputError, "'/nonexistent/run1' does not exist"),
    (lambda: scip_gpu.profile(_cells(2), channel_names=["a", "b"]), ConfigError, "2 name(s) for the 3 channel(s)"),
    (lambda: scip_gpu.profile(_cells(2), dataset_options={"channels": [0, 4]}), ConfigError,
     "channel 4 is not in the data"),
    (lambda: scip_gpu.profile(_cells(2), "masks=none", "features.raw=false"), ConfigError,
     "the configuration measures nothing"),
    (lambda: scip_gpu.profile([]), InputError, "no objects found in the images given"),
])
def test_mistakes_raise_one_clear_error(call, error, needle):
    with pytest.raises(error) as exc:
        call()
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.slow
def test_local_cluster_does_not_rerun_the_calling_script(tmp_path):
    """A script without a __main__ guard: worker processes do not run it again."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import scip_gpu
        from scip_gpu.demo import make_cell
        with open({str(marker)!r}, "a") as f:
            f.write("ran\\n")
        adata = scip_gpu.profile([make_cell(i)[0] for i in range(4)], "cluster.n_workers=1", cluster="local",
                                 features="intensity")
        print("objects", adata.n_obs, (adata.obs["meta_status"] == "ok").sum())
    """))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "objects 4 4" in res.stdout
    assert marker.read_text() == "ran\n"  # once: the workers did not import the script


def test_given_masks_are_profiled_like_a_mask_method():
    """Masks given with in-memory images: their statistics against NumPy on the same pixels;
    a (H, W) mask covers every channel, a (C, H, W) one each channel; a mask of the wrong size is
    that object's error."""
    cells = _cells(3)
    yy, xx = np.ogrid[:80, :80]
    masks = [(yy - c.shape[1] / 2) ** 2 + (xx - c.shape[2] / 2) ** 2 < 12 ** 2 for c in cells]
    masks = [m[:c.shape[1], :c.shape[2]] for m, c in zip(masks, cells)]
    per_channel = [np.stack([m, m, np.zeros_like(m)]).astype(np.uint8) * 7 for m in masks]  # labels: non-zero
    per_channel[2] = per_channel[2][:, :-1]  # wrong size
    a = scip_gpu.profile(cells, "masks=none", masks=masks, channel_names=NAMES, features="intensity")
    assert [v for v in a.var_names if v.startswith("feat_mask_")][:2] == ["feat_mask_mean_BF", "feat_mask_median_BF"]
    for i, (c, m) in enumerate(zip(cells, masks)):
        px = c[1][m].astype(np.float64)
        np.testing.assert_allclose(a[i, ["feat_mask_mean_DNA", "feat_mask_max_DNA", "feat_mask_std_DNA"]].X.ravel(),
                                   [px.mean(), px.max(), px.std()], rtol=1e-6)
        rows = np.flatnonzero(m.any(axis=1))
        assert a.obs["meta_mask_regions_SPOT"].iat[i] == 1 and a.obs["meta_mask_bbox_minr"].iat[i] == rows[0]
    b = scip_gpu.profile(cells, masks=per_channel, channel_names=NAMES, features="intensity")
    assert b.obs["meta_status"].tolist() == ["ok", "ok", "error"]
    assert "its mask has shape" in b.uns["errors"]["error"].iat[0]
    np.testing.assert_array_equal(b[:2, "feat_mask_mean_DNA"].X, a[:2, "feat_mask_mean_DNA"].X)
    assert np.isnan(b[:2, "feat_mask_mean_SPOT"].X).all() and {"feat_li_mean_BF", "feat_otsu_mean_BF"} <= set(b.var_names)
    with pytest.raises(InputError, match="2 mask"):
        scip_gpu.profile(cells, masks=masks[:2])


def test_options_compose_as_on_the_command_line(tmp_path):
    from scip_gpu.api import compose, infer_dataset

    cfg, _ = compose(_cells(1), ("cluster=local",), {"cluster": {"n_workers": 4}, "batch_size": 8})
    assert (cfg.cluster.type.value, cfg.cluster.n_workers, cfg.batch_size) == ("local", 4, 8)
    cfg, name = compose("demo", ("masks=li",), {})
    assert name == "demo" and cfg.cluster.type.value == "sync" and [m.name for m in cfg.masks.methods] == ["li"]
    (tmp_path / "a.ome.tif").touch()
    assert infer_dataset(tmp_path) == "ome_tiff" and infer_dataset(tmp_path / "x.tif") == "multipage_tiff"
    (tmp_path / "nothing_here").mkdir()  # a folder without TIFFs nor zarr metadata
    with pytest.raises(ConfigError, match="cannot tell the dataset type"):
        infer_dataset(tmp_path / "nothing_here")
    with pytest.raises(InputError, match="does not exist"):
        infer_dataset(tmp_path / "not_there")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_paths_are_recognised(tmp_path, version):
    from scip_gpu.api import infer_dataset

    from .io.ngff_data import write_image

    cyx = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    path = write_image(tmp_path / "field.ome.zarr", np.zeros((2, 16, 16), np.uint16), cyx, version, ["a", "b"])
    assert infer_dataset(path) == "ome_zarr"
    import zarr

    for fmt in (2, 3):
        a = zarr.open_array(str(tmp_path / f"dense{fmt}.zarr"), mode="w", shape=(2, 1, 8, 8), dtype="u2", zarr_format=fmt)
        a.attrs["note"] = "attributes do not make an array a group"
        assert infer_dataset(tmp_path / f"dense{fmt}.zarr") == "zarr"
