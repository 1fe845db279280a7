"""Fields of view: projection, illumination, metadata joins, and BBBC021 end to end."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import tifffile

from scip_gpu.config import MetadataJoin
from scip_gpu.errors import InputError, ObjectError
from scip_gpu.fields import finish_illumination, join_metadata, project

from .fields_data import MOA, write_bbbc021_replica
from .test_cli import run_cli


@pytest.mark.parametrize("method", ["min", "mean", "max", "median"])
def test_projection(method):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, (2, 5, 8, 9)).astype(np.uint16)
    got = project(stack, method)
    np.testing.assert_array_equal(got, getattr(np, method)(stack, axis=1))
    assert project(stack[:, :1], None).shape == (2, 8, 9)
    with pytest.raises(ObjectError, match="5 z planes"):
        project(stack, None)


def test_illumination_matches_scip_recipe():
    from scipy import ndimage as ndi
    from skimage.transform import downscale_local_mean, rescale

    rng = np.random.default_rng(1)
    total = rng.random((2, 40, 52)) * 1000 * 3
    got = finish_illumination(total, 3, median_filter_size=5, downscale=1)
    avg = total / 3
    want = np.stack([ndi.median_filter(avg[c], size=5) for c in range(2)])
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)
    got = finish_illumination(total, 3, median_filter_size=3, downscale=4)
    small = downscale_local_mean(avg, (1, 4, 4))
    small = np.stack([ndi.median_filter(small[c], size=3) for c in range(2)])
    want = rescale(small, 4, anti_aliasing=True, channel_axis=0)[:, :40, :52]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5)
    zeros = finish_illumination(np.zeros((1, 8, 8)), 1, median_filter_size=3, downscale=1)
    assert (zeros == 1).all()  # zeros replaced by 1: no division by zero


def test_metadata_join(tmp_path, caplog):
    table = pd.DataFrame({"meta_plate": ["P1", "P1", "P2"], "meta_well": ["A01", "B01", "A01"]})
    (tmp_path / "m.csv").write_text("Plate,Well,Compound,Dose\nP1,A01,x,1\nP1,A01,x,1\nP2,A01,y,2\n")
    with caplog.at_level("WARNING", logger="scip_gpu"):
        out = join_metadata(table, [MetadataJoin(str(tmp_path / "m.csv"), {"Plate": "plate", "Well": "well"},
                                                 {"Compound": "compound"})])
    assert out["meta_compound"].iloc[0] == "x" and out["meta_compound"].iloc[2] == "y"
    assert pd.isna(out["meta_compound"].iloc[1])  # no row for (P1, B01): a left join keeps it, empty
    assert list(out["meta_plate"]) == ["P1", "P1", "P2"] and list(out["meta_well"]) == ["A01", "B01", "A01"]
    # ... and says so (keys written differently, A1 for A01, left every row empty without a word)
    assert [r.getMessage() for r in caplog.records] == [
        "dataset.metadata[0]: 1 of 3 row(s) match no row of m.csv on ['Plate', 'Well'] (their columns from it "
        "are empty); e.g. [{'meta_plate': 'P1', 'meta_well': 'B01'}]"]
    (tmp_path / "bad.csv").write_text("Plate,Well,Compound\nP1,A01,x\nP1,A01,z\n")
    with pytest.raises(InputError, match="different values for the same key"):
        join_metadata(table, [MetadataJoin(str(tmp_path / "bad.csv"), {"Plate": "plate", "Well": "well"}, {})])
    with pytest.raises(InputError, match="has no column"):
        join_metadata(table, [MetadataJoin(str(tmp_path / "m.csv"), {"Nope": "plate"}, {})])
    (tmp_path / "own.csv").write_text("Plate,Well,status,index\nP1,A01,dead,3\n")  # scip_gpu's own columns
    with pytest.raises(InputError, match=r"\['meta_status', 'meta_index'\] already exist .*or are scip_gpu's own"):
        join_metadata(table, [MetadataJoin(str(tmp_path / "own.csv"), {"Plate": "plate", "Well": "well"}, {})])
    fields = table.assign(meta_field=["P1_A01", "P1_B01", "P2_A01"])
    with pytest.raises(InputError, match=r"\['meta_label'\]"):  # (a fields dataset's objects have a label)
        join_metadata(fields, [MetadataJoin(str(tmp_path / "m.csv"), {"Plate": "plate", "Well": "well"},
                                            {"Compound": "label"})])
    label = MetadataJoin(str(tmp_path / "m.csv"), {"Plate": "plate", "Well": "well"}, {"Compound": "label"})
    assert "meta_label" in join_metadata(table, [label])  # single objects: a label of the user's


@pytest.fixture(scope="module")
def bbbc021(tmp_path_factory):
    root = tmp_path_factory.mktemp("bbbc021")
    per_field = write_bbbc021_replica(root)
    out = root.parent / "bbbc021-out"
    res = run_cli("+dataset=bbbc021", f"dataset.path={root}",
                  f"dataset.metadata.0.path={root / 'BBBC021_v1_image.csv'}",
                  f"dataset.metadata.1.path={root / 'BBBC021_v1_moa.csv'}",
                  "illumination.median_filter_size=5", "illumination.downscale=2",
                  "features.families=[intensity,bbox,regions]", "cluster=sync", f"output={out}", cwd=root.parent)
    assert res.returncode == 0, res.stderr
    return root, out, per_field


def test_bbbc021_objects_and_metadata(bbbc021):
    root, out, per_field = bbbc021
    df = pd.read_parquet(out / "features.parquet")
    n_fields = 2 * 2 * 2
    counts = df.groupby("meta_field").size()
    assert len(counts) == n_fields
    assert (abs(counts - per_field) <= 1).all(), counts  # every synthetic cell found, once
    assert {"meta_plate", "meta_well", "meta_site", "meta_compound", "meta_concentration", "meta_moa",
            "meta_label", "meta_touches_border", "meta_bbox_minr"} <= set(df.columns)
    taxol = df[(df["meta_plate"] == "Week1_22123") & (df["meta_well"] == "B02")]
    assert set(taxol["meta_compound"]) == {"taxol"} and set(taxol["meta_moa"]) == set([MOA[("taxol", "0.3")]])
    # SCIP after segmentation: no prefix; DAPI measured in the nucleus, the others in the cell
    assert "feat_mean_DAPI" in df and "feat_edge_mean_Actin" in df and "feat_raw_mean_DAPI" not in df
    assert (df["feat_sum_DAPI"] < df["feat_sum_Tubulin"] * 10).all()
    # bbox in field coordinates, inside the field
    assert (df["meta_bbox_maxr"] <= 160).all() and (df["meta_bbox_maxc"] <= 192).all()
    assert ((df["meta_bbox_maxr"] - df["meta_bbox_minr"]) > 5).all()
    edge = (df["meta_bbox_minr"] == 0) | (df["meta_bbox_minc"] == 0) | (df["meta_bbox_maxr"] == 160) | \
        (df["meta_bbox_maxc"] == 192)
    assert (df["meta_touches_border"] == edge).all() and (~edge).sum() > 50
    assert (df["meta_regions_DAPI"] == 1).all()


def test_bbbc021_illumination_and_labels(bbbc021):
    root, out, per_field = bbbc021
    corr = sorted((out / "illumination").glob("*.tif"))
    assert [p.stem for p in corr] == ["Week1_22123", "Week2_24121"]
    c = tifffile.imread(corr[0])
    assert c.shape == (3, 160, 192) and c.dtype == np.float32
    # the vignetting shows in the correction image: brighter centre than corners
    assert c[0, 80, 96] > c[0, 5, 5]
    import zarr

    labels = sorted((out / "labels").glob("*.ome.zarr"))  # OME-Zarr label images (the default)
    assert len(labels) == 8
    root = zarr.open_group(str(labels[0]), mode="r")
    assert root.attrs["labels"] == ["nucleus", "cell"]
    lab = np.stack([np.asarray(root[k]["0"]) for k in root.attrs["labels"]])
    assert lab.shape[-2:] == (160, 192)
    assert lab.shape[0] == 2 and 7 <= lab[1].max() <= 9  # nucleus and cell
    assert ((lab[0] > 0) <= (lab[1] > 0)).all()  # every nucleus inside its cell
    # the nucleus radius estimated per field and the parameters derived from it are logged
    radii = re.findall(r"nucleus radius ([0-9.]+) px \(estimated\) -> smoothing", (out / "run.log").read_text())
    assert len(radii) == 8 and all(5 < float(r) < 9 for r in radii), radii  # discs of 6-8 px
    import anndata as ad

    a = ad.read_h5ad(out / "features.h5ad")
    assert a.n_obs == len(pd.read_parquet(out / "features.parquet")) and a.obs_names.is_unique


def test_precomputed_illumination_is_reused(bbbc021, tmp_path):
    root, out, _ = bbbc021
    res = run_cli("+dataset=bbbc021", f"dataset.path={root}", f"illumination.precomputed={out / 'illumination'}",
                  "features.families=[intensity]", "cluster=sync", f"output={tmp_path / 'again'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df1 = pd.read_parquet(out / "features.parquet").sort_values(["meta_field", "meta_label"]).reset_index(drop=True)
    df2 = pd.read_parquet(tmp_path / "again" / "features.parquet").sort_values(["meta_field", "meta_label"]).reset_index(drop=True)
    pd.testing.assert_series_equal(df1["feat_mean_Actin"], df2["feat_mean_Actin"])


def test_cytoplasm_compartment(bbbc021, tmp_path):
    root, ref_out, _ = bbbc021
    res = run_cli("+dataset=bbbc021", f"dataset.path={root}", "illumination.median_filter_size=5",
                  "segmentation.compartments={DAPI: nucleus, Tubulin: cytoplasm, Actin: cell}",
                  "features.families=[intensity,shape]", "segmentation.labels_format=ome_tiff", "cluster=sync",
                  f"output={tmp_path / 'cyto'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with tifffile.TiffFile(next((tmp_path / "cyto" / "labels").glob("*.ome.tif"))) as tf:
        lab = tf.series[0].asarray()
    assert lab.shape[0] == 3  # nucleus, cell, cytoplasm
    nuc, cell, cyto = lab
    assert not ((cyto > 0) & (nuc > 0)).any() and ((cyto > 0) <= (cell > 0)).all()
    df = pd.read_parquet(tmp_path / "cyto" / "features.parquet")
    # the cytoplasm (cell minus nucleus) is smaller than the cell
    assert (df["feat_area_Tubulin"] < df["feat_area_Actin"]).all()


def test_bbbc021_qc_report_shows_label_outlines(bbbc021):
    import base64
    import io
    import re

    from PIL import Image

    root, out, _ = bbbc021
    png = Image.open(out / "qc_fields.png")
    png.load()
    assert png.size[0] > 3 * 250  # three fields side by side
    text = (out / "report.html").read_text()
    fields = re.search(r'<section id="fields">(.*?)</section>', text, re.S)
    assert fields is None  # the fields picture takes the montage's place
    montage = re.search(r'<section id="montage">(.*?)</section>', text, re.S).group(1)
    (b64,) = re.findall(r'src="data:image/png;base64,([^"]+)"', montage)
    assert base64.b64decode(b64) == (out / "qc_fields.png").read_bytes()
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 100) & (img[..., 2] < 100)  # nucleus outlines
    cyan = (img[..., 0] < 50) & (img[..., 1] > 150) & (img[..., 2] > 200)  # cell outlines
    assert red.sum() > 200 and cyan.sum() > 200
    groups = re.search(r'<section id="groups">(.*?)</section>', text, re.S).group(1)
    assert "meta_plate" in groups  # grouped by the first field metadata with few values


@pytest.mark.slow
def test_illumination_on_a_local_cluster_equals_sync(tmp_path, capsys):
    """illumination=jones_2006 on a real LocalCluster (a worker process; one task per field, so
    the driver adds the partial sums of two tasks): the same correction image and the same values,
    bit for bit, as cluster=sync. (Client.submit once refused the shared argument ``key``.)"""
    from scip_gpu.cli import task

    from .fields_data import write_fields
    from .test_config import _compose

    fields = write_fields(tmp_path / "plate1", n_fields=2)
    args = ["+dataset=fields_tiff", f"dataset.path={tmp_path / 'plate1'}", "segmentation=watershed",
            "illumination=jones_2006", "illumination.key=well", "illumination.median_filter_size=25",
            "segmentation.fields_per_partition=1", "features.families=[intensity]", "export.formats=[parquet]"]
    for cluster in ("cluster=sync", "cluster=local"):
        out = tmp_path / cluster.split("=")[1]
        assert task(_compose([*args, cluster, "cluster.n_workers=1", f"output={out}"])) == 0, capsys.readouterr().err
    assert "Dask cluster with 1 worker(s)" in (tmp_path / "local" / "run.log").read_text()
    sync, local = (tifffile.imread(tmp_path / c / "illumination" / "B02.tif") for c in ("sync", "local"))
    np.testing.assert_array_equal(local, sync)
    # (a median of 25 px smooths the two fields' cells out of the correction image, as real
    # corrections from many fields do; with 5 px the corrected fields carry their cells' imprints
    # and the other field's as holes, which the segmentation's background fit reads as scale)
    np.testing.assert_array_equal(sync, finish_illumination(np.sum(fields, axis=0, dtype=np.float64), 2,
                                                            median_filter_size=25, downscale=1))
    keys = ["meta_field", "meta_label"]
    want = pd.read_parquet(tmp_path / "sync" / "features.parquet").sort_values(keys).reset_index(drop=True)
    got = pd.read_parquet(tmp_path / "local" / "features.parquet").sort_values(keys).reset_index(drop=True)
    assert len(want) >= 3 and (want["meta_status"] == "ok").all()
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_compartments_must_name_channels():
    """A channel name in segmentation.compartments that the dataset does not have would be
    ignored: it stops the run at start-up, naming it and the channels."""
    from scip_gpu.cli import to_config
    from scip_gpu.errors import ConfigError
    from scip_gpu.field_pipeline import check_segmentation

    from .test_config import _compose

    cfg, _ = to_config(_compose(["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed",
                                 "segmentation.compartments={Tubulin: cytoplasm}"]))
    with pytest.raises(ConfigError, match=r"no channel named 'Tubulin' \(the channels are \['1', '2', '4'\]"):
        check_segmentation(cfg, ["1", "2", "4"])
    check_segmentation(cfg, ["DAPI", "Tubulin", "Actin"])
