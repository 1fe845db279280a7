"""End to end: the command line on the demo, on SCIP's real cells, and on bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

FAST = ["cluster=sync", "features=intensity"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "scip_gpu", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def start_cli(*args, cwd):
    """``python -m scip_gpu ARGS`` started in the background (stdout and stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "scip_gpu", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_parquet(folder):
    return pd.read_parquet(folder).sort_values("meta_index").reset_index(drop=True)


def reference_run(tmp_path_factory, args) -> pd.DataFrame:
    """The rows of an undisturbed ``cluster=sync`` run of ``args`` (the reference of the fault,
    resume and lock tests)."""
    tmp = tmp_path_factory.mktemp("ref")
    res = run_cli(*args, "cluster=sync", f"output={tmp / 'ref'}", cwd=tmp)
    assert res.returncode == 0, res.stderr
    return read_parquet(tmp / "ref" / "features.parquet")


def test_demo_end_to_end_outputs(tmp_path):
    out = tmp_path / "run"
    res = run_cli("+dataset=demo", "dataset.n_objects=40", *FAST, f"output={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "profiled 40 objects (40 ok, 0 with errors)" in res.stdout and str(out) in res.stdout
    for name in ("features.parquet", "features.h5ad", "config.yaml", "provenance.json", "run.log", "errors.csv"):
        assert (out / name).exists(), name
    df = read_parquet(out / "features.parquet")
    assert len(df) == 40 and (df["meta_status"] == "ok").all()
    assert df["meta_index"].tolist() == list(range(40))
    assert {"meta_id", "meta_label", "feat_li_mean_BF", "feat_otsu_combined_edge_sum_SPOT", "feat_raw_mad_DNA",
            "meta_li_regions_BF", "meta_otsu_bbox_minr"} <= set(df.columns)

    import anndata as ad

    a = ad.read_h5ad(out / "features.h5ad")
    feat = [c for c in df.columns if c.startswith("feat_")]
    assert list(a.var_names) == feat and a.X.dtype == np.float32
    np.testing.assert_array_equal(a.X, df[feat].to_numpy(np.float32))
    assert a.var.loc["feat_li_bgcorr_median_DNA", ["family", "mask", "view", "channel", "feature"]].tolist() == \
        ["intensity", "li", "bgcorr", "DNA", "median"]
    assert "meta_label" in a.obs and "meta_li_bbox_maxc" in a.obs

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["objects"] == 40 and prov["objects_with_errors"] == 0 and prov["device"] == "cpu"
    assert {"numpy", "dask", "scikit-image"} <= set(prov["packages"]) and prov["ended"] >= prov["started"]
    assert "n_objects: 40" in (out / "config.yaml").read_text()
    assert "profiled 40 objects" in (out / "run.log").read_text()
    assert pd.read_csv(out / "errors.csv").empty


def test_existing_output_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    res = run_cli("+dataset=demo", "dataset.n_objects=5", *FAST, f"output={out}", cwd=tmp_path)
    assert res.returncode == 2
    assert "already exists and is not empty" in res.stderr and "resume=true" not in res.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_a_folder_holding_a_run_is_refused_with_the_way_to_resume(tmp_path):
    """A run stopped at its start (here: a cluster that cannot start) leaves its folder; the
    same command again is refused with the way to finish it there (resume=true), which works."""
    out = tmp_path / "run"
    res = run_cli("+dataset=demo", "dataset.n_objects=5", "cluster=address", "features=intensity",
                  f"output={out}", cwd=tmp_path)
    assert res.returncode == 2 and "needs cluster.address" in res.stderr
    res = run_cli("+dataset=demo", "dataset.n_objects=5", *FAST, f"output={out}", cwd=tmp_path)
    assert res.returncode == 2 and "add resume=true to the same command" in res.stderr.splitlines()[-1]
    res = run_cli("+dataset=demo", "dataset.n_objects=5", *FAST, f"output={out}", "resume=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(read_parquet(out / "features.parquet")) == 5


@pytest.mark.slow
def test_default_output_folders_are_new(tmp_path):
    for _ in range(2):
        res = run_cli("+dataset=demo", "dataset.n_objects=3", *FAST, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    runs = sorted((tmp_path / "outputs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("demo-") for r in runs)


@pytest.mark.parametrize("args,needle", [
    (["masks.methods.0.method=threshold"], "threshold"),
    (["outptu=x"], "outptu"),
    (["+dataset=scip_zarr", "dataset.path=/nonexistent.zarr"], "does not exist"),
    (["+dataset=demo", "masks.main_channel_index=7"], "channel index 7 is out of range"),
    (["+dataset=demo", "device=cuda"], "no GPU can be used"),
])
def test_bad_configuration_fails_at_start(tmp_path, args, needle):
    res = run_cli(*args, "cluster=sync", cwd=tmp_path)
    assert res.returncode != 0
    assert needle in res.stderr + res.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_local_dask_cluster(tmp_path):
    out = tmp_path / "run"
    res = run_cli("+dataset=demo", "dataset.n_objects=30", "features=intensity", "cluster=local",
                  "cluster.n_workers=2", "partition_size=8", f"output={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df = read_parquet(out / "features.parquet")
    assert len(df) == 30 and len(list((out / "features.parquet").glob("part-*.parquet"))) == 4
    ref = run_cli("+dataset=demo", "dataset.n_objects=30", *FAST, f"output={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0
    pd.testing.assert_frame_equal(df, read_parquet(tmp_path / "ref" / "features.parquet"))


def test_scip_real_cells(tmp_path, shared_data):
    out = tmp_path / "ifc"
    res = run_cli("+dataset=scip_zarr", f"dataset.path={shared_data / 'scip-ifc-10cells.zarr'}",
                  "dataset.channels=[0,1,4]", "dataset.channel_names=[BF,CD,SSC]", *FAST, f"output={out}",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df = read_parquet(out / "features.parquet")
    assert len(df) == 10 and df["meta_object_number"].iloc[0] == 809
    assert (df["meta_status"] == "ok").all()
    assert df["feat_raw_max_BF"].notna().all()


def _bad_tiff_dataset(folder):
    """Per-channel TIFFs: good objects plus one of each kind of bad input."""
    rng = np.random.default_rng(0)
    from scip_gpu.demo import make_cell

    for i in range(6):
        img, _ = make_cell(i, min_size=40, max_size=50)
        for c in range(3):
            tifffile.imwrite(folder / f"obj{i}_ch{c}.tif", img[c])
    (folder / "obj1_ch2.tif").write_bytes(b"II*\x00truncated")  # corrupt
    (folder / "obj2_ch1.tif").unlink()  # missing channel
    for c in range(3):
        tifffile.imwrite(folder / f"obj3_ch{c}.tif", rng.integers(0, 900, (5, 5), dtype=np.uint16))  # tiny
        with pytest.warns(UserWarning, match="zero-size"):
            tifffile.imwrite(folder / f"obj4_ch{c}.tif", np.zeros((0, 7), np.uint16))  # empty
    for c in range(3):
        nan_img = np.full((40, 40), 100.0, np.float32)
        nan_img[3, 4] = np.nan
        tifffile.imwrite(folder / f"obj5_ch{c}.tif", nan_img)  # NaN pixels
    (folder / "obj6_ch0.tif").write_bytes(b"")  # zero-byte file, lone channel


def test_bad_inputs_are_reported_and_the_rest_profiled(tmp_path):
    data = tmp_path / "tiffs"
    data.mkdir()
    _bad_tiff_dataset(data)
    args = ["+dataset=tiff", f"dataset.path={data}", r"dataset.regex='obj(?P<id>\d+)_ch(?P<channel>\d+)\.tif'",
            *FAST]
    res = run_cli(*args, f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "could not be profiled" in res.stderr
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index("meta_index")
    df = read_parquet(tmp_path / "out" / "features.parquet")
    assert len(df) == 7  # every object keeps its row
    by_id = dict(zip(df["meta_id"], df["meta_index"]))
    causes = {obj: errors.loc[by_id[obj], "error"] for obj in ("1", "2", "3", "4", "5", "6")}
    assert "obj1_ch2.tif" in causes["1"] and "corrupt" in causes["1"]
    assert "no file for channel '1'" in causes["2"]
    assert "smaller than the 11x11 footprint" in causes["3"]
    assert "empty image" in causes["4"]
    assert "NaN" in causes["5"]
    assert "obj6_ch0.tif" in causes["6"] and "corrupt" in causes["6"]
    ok = df[df["meta_id"] == "0"].iloc[0]
    assert ok["meta_status"] == "ok" and not np.isnan(ok["feat_li_mean_0"])
    assert (df.loc[df["meta_id"] != "0", "meta_status"] == "error").all()
    assert df.loc[df["meta_id"] != "0", "feat_raw_mean_0"].isna().all()

    strict = run_cli(*args, "strict=true", f"output={tmp_path / 'strict'}", cwd=tmp_path)
    assert strict.returncode == 1


def test_import_does_not_load_gpu_stacks():
    code = ("import sys, scip_gpu, scip_gpu.pipeline, scip_gpu.cli, scip_gpu.features, scip_gpu.io;"
            "bad = [m for m in ('cupy', 'cucim', 'torch', 'cellpose') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_no_arguments_profiles_the_bundled_demo(tmp_path):
    res = run_cli(cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "profiled 300 objects (300 ok, 0 with errors) x 1383 measurements" in res.stdout
    runs = list((tmp_path / "outputs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo-")
    df = read_parquet(runs[0] / "features.parquet")
    assert len(df) == 300 and set(df["meta_label"]) == {"small_round", "large_oval", "spotty"}
    # the three synthetic phenotypes differ where they were made to differ
    area = df.groupby("meta_label")["feat_li_area_combined"].median()
    assert area["large_oval"] > area["small_round"]
    spots = df.groupby("meta_label")["meta_otsu_regions_SPOT"].median()
    assert spots["spotty"] > spots["small_round"]


def test_print_config_without_running(tmp_path):
    res = run_cli("--cfg", "job", "+dataset=demo", "masks=li", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "method: li" in res.stdout and "n_objects: 300" in res.stdout
    assert not (tmp_path / "outputs").exists()
