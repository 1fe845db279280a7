"""OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3): images of objects, plates of fields, bad
stores, label images and AnnData written as zarr. Every store is written here from the spec
(tests/io/ngff_data.py) and the values read are compared with the arrays written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scip_gpu.config import DatasetConfig, DatasetFormat
from scip_gpu.errors import ConfigError, InputError
from scip_gpu.io import make_source

from ..fields_data import make_field
from .ngff_data import AXES_CYX, AXES_CZYX, AXES_NCYX, write_image, write_plate

VERSIONS = ["0.4", "0.5"]
LABELS = ["BF", "DAPI", "SSC"]


def _objects(path, **kw):
    return make_source(DatasetConfig(format=DatasetFormat.ome_zarr_objects, path=str(path), **kw))


@pytest.mark.parametrize("version", VERSIONS)
def test_image_of_objects_levels_and_channels(tmp_path, version):
    import zarr

    data = np.random.default_rng(0).integers(0, 4000, (5, 3, 16, 16)).astype(np.uint16)
    path = write_image(tmp_path / "cells.ome.zarr", data, AXES_NCYX, version, LABELS, levels=2)
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == (2 if version == "0.4" else 3)
    for level in (0, 1):
        for channels in (["SSC", "BF"], [2, 0]):  # by omero label or by index
            src = _objects(path, channels=channels, level=level)
            table = src.objects()
            assert list(table["meta_zarr_idx"]) == [0, 1, 2, 3, 4]
            assert src.channel_names(table) == ["SSC", "BF"]  # named from omero
            got = src.load(table.iloc[1:4])
            for k, img in enumerate(got):
                np.testing.assert_array_equal(img, data[1 + k][[2, 0], :: 2**level, :: 2**level])
    src = _objects(path)  # all channels, in order, named from omero
    table = src.objects()
    assert src.channel_names(table) == LABELS
    np.testing.assert_array_equal(np.stack(src.load(table)), data)
    # one object per image: a (c, y, x) image is one object
    one = write_image(tmp_path / "one.ome.zarr", data[3], AXES_CYX, version, LABELS)
    src = _objects(one, channels=["DAPI"])
    table = src.objects()
    assert len(table) == 1
    np.testing.assert_array_equal(src.load(table)[0], data[3][[1]])


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_fields_with_metadata(tmp_path, version):
    f1, f2 = np.random.default_rng(1).integers(0, 4000, (2, 3, 24, 20)).astype(np.uint16)
    axes = AXES_CZYX if version == "0.4" else AXES_CYX  # with and without a z axis
    fields = {("A", "1"): [f1[:, None] if version == "0.4" else f1], ("B", "3"): [f2[:, None] if version == "0.4" else f2]}
    path = write_plate(tmp_path / "plate.ome.zarr", fields, axes, version, ["DAPI", "Tubulin", "Actin"])
    src = make_source(DatasetConfig(format=DatasetFormat.ome_zarr, path=str(path), channels=["Actin", "DAPI"]))
    assert src.fields
    table = src.objects()
    meta = table[[c for c in table.columns if c.startswith("meta_")]]
    assert meta.drop(columns="meta_path").to_dict("records") == [
        {"meta_plate": "P1", "meta_well": "A1", "meta_row": "A", "meta_column": "1", "meta_fov": "0",
         "meta_field": "P1_A1_0"},
        {"meta_plate": "P1", "meta_well": "B3", "meta_row": "B", "meta_column": "3", "meta_fov": "0",
         "meta_field": "P1_B3_0"}]
    assert src.channel_names(table) == ["Actin", "DAPI"]
    for (_, row), f in zip(table.iterrows(), (f1, f2)):
        img = src.load_field(row)
        assert img.shape == (2, 1, 24, 20)  # (C, Z, H, W)
        np.testing.assert_array_equal(img[:, 0], f[[2, 0]])


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_stores_are_named(tmp_path, version):
    data = np.zeros((2, 3, 8, 8), np.uint8)
    no_ms = write_image(tmp_path / "nometa.ome.zarr", data, AXES_NCYX, version, LABELS, omit=("multiscales",))
    with pytest.raises(InputError, match=r"nometa.ome.zarr: not an OME-Zarr image: its attributes have no "
                                         r"'multiscales' entry \(found: \['omero'\]"):
        _objects(no_ms).objects()
    path = write_image(tmp_path / "ok.ome.zarr", data, AXES_NCYX, version, LABELS, levels=2)
    with pytest.raises(InputError, match=r"ok.ome.zarr: resolution level dataset.level=2 does not exist; the "
                                         r"image has 2 level\(s\) \(0..1: paths \['0', '1'\]\)"):
        _objects(path, level=2).objects()
    with pytest.raises(ConfigError, match=r"channel 'GFP' is not in the omero metadata of .*ok.ome.zarr "
                                          r"\(its channels: \['BF', 'DAPI', 'SSC'\]\)"):
        _objects(path, channels=["DAPI", "GFP"]).objects()
    # among several images, the bad one is an error row and the others are profiled
    src = _objects(tmp_path / "*.ome.zarr")
    table = src.objects()
    assert table["_error"].notna().sum() == 1 and len(table) == 3
    loaded = src.load(table)
    assert "no 'multiscales'" in str(loaded[0]) and [x.shape for x in loaded[1:]] == [(3, 8, 8)] * 2


def _cli(overrides, capsys):
    """The command line in this process (Hydra's compose, then the CLI's task): its exit status
    and stderr."""
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import task
    from scip_gpu.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    status = task(cfg)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("override,needle", [
    ("dataset.path={nometa}", "not an OME-Zarr image: its attributes have no 'multiscales' entry"),
    ("dataset.level=3", "resolution level dataset.level=3 does not exist"),
    ("dataset.channels=[DAPI,GFP]", "channel 'GFP' is not in the omero metadata"),
])
def test_bad_store_exits_2_before_writing(tmp_path, capsys, override, needle):
    data = np.zeros((1, 3, 64, 64), np.uint16)
    write_image(tmp_path / "nometa.ome.zarr", data[0], AXES_CYX, "0.5", LABELS, omit=("multiscales",))
    path = write_image(tmp_path / "field.ome.zarr", data[0], AXES_CYX, "0.5", LABELS)
    out = tmp_path / "out"
    status, err = _cli(["+dataset=ome_zarr", f"dataset.path={path}", override.format(nometa=tmp_path / "nometa.ome.zarr"),
                        "cluster=sync", f"output={out}"], capsys)
    assert status == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("scip_gpu:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert not out.exists()  # nothing written


def test_plate_run_writes_ome_zarr_labels_and_anndata_zarr(tmp_path, capsys):
    """A 1-plate / 2-well / 1-field NGFF 0.5 plate through the command line: objects carry the
    plate/well/field columns; labels are OME-Zarr label images (NGFF 0.4) that agree with the
    objects found; features.zarr holds the same AnnData as features.h5ad."""
    import anndata as ad
    import zarr

    f1, f2 = make_field(1, shape=(128, 128), n_cells=4)[0], make_field(2, shape=(128, 128), n_cells=4)[0]
    path = write_plate(tmp_path / "plate.ome.zarr", {("A", "1"): [f1], ("B", "2"): [f2]}, AXES_CYX, "0.5",
                       ["DAPI", "Tubulin", "Actin"])
    out = tmp_path / "run"
    status, err = _cli(["+dataset=ome_zarr", f"dataset.path={path}", "features.families=[intensity,bbox]",
                        "export.formats=[parquet,anndata,anndata_zarr]", "cluster=sync", f"output={out}"], capsys)
    assert status == 0, err
    df = pd.read_parquet(out / "features.parquet")
    assert {"meta_plate", "meta_well", "meta_row", "meta_column", "meta_fov", "meta_field", "meta_label"} <= set(df)
    assert sorted(df.groupby("meta_well").size().to_dict().items()) == [("A1", 4), ("B2", 4)]  # 4 cells each
    for field, img in (("P1_A1_0", f1), ("P1_B2_0", f2)):
        root = zarr.open_group(str(out / "labels" / f"{field}.ome.zarr"), mode="r")
        assert root.metadata.zarr_format == 2 and root.attrs["labels"] == ["nucleus", "cell"]
        labs = {}
        for name in ("nucleus", "cell"):
            g = root[name]
            ms = g.attrs["multiscales"][0]
            assert g.attrs["image-label"]["version"] == "0.4" and ms["version"] == "0.4"
            assert [a["name"] for a in ms["axes"]] == ["y", "x"] and ms["datasets"][0]["path"] == "0"
            labs[name] = np.asarray(g["0"])
            assert labs[name].shape == img.shape[1:] and labs[name].dtype == np.uint32
        cells = df[df["meta_field"] == field]
        # every object row is a cell label, and its box is that label's box (scipy as reference)
        from scipy import ndimage as ndi

        boxes = ndi.find_objects(labs["cell"])
        for _, r in cells.iterrows():
            sl = boxes[int(r["meta_label"]) - 1]
            assert (r["meta_bbox_minr"], r["meta_bbox_minc"], r["meta_bbox_maxr"], r["meta_bbox_maxc"]) == \
                (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        assert set(cells["meta_label"]) == set(np.unique(labs["cell"])) - {0}
        assert ((labs["nucleus"] > 0) <= (labs["cell"] > 0)).all()
    h5 = ad.read_h5ad(out / "features.h5ad")
    z = ad.read_zarr(out / "features.zarr")
    assert zarr.open_group(str(out / "features.zarr"), mode="r").metadata.zarr_format == 3
    np.testing.assert_array_equal(z.X, h5.X)
    pd.testing.assert_frame_equal(z.obs, h5.obs)
    pd.testing.assert_frame_equal(z.var, h5.var)
    assert z.X.dtype == np.float32 and z.n_obs == len(df) == 8


def test_bioformats2raw_series_are_images(tmp_path):
    import zarr

    data = np.random.default_rng(3).integers(0, 255, (2, 2, 12, 10)).astype(np.uint8)
    root = zarr.open_group(str(tmp_path / "conv.ome.zarr"), mode="w", zarr_format=2)
    root.attrs.update({"bioformats2raw.layout": 3})
    for i in range(2):
        write_image(tmp_path / "conv.ome.zarr" / str(i), data[i], AXES_CYX, "0.4", ["a", "b"])
    src = make_source(DatasetConfig(format=DatasetFormat.ome_zarr, path=str(tmp_path / "conv.ome.zarr"),
                                    channels=["b"]))
    table = src.objects()
    assert list(table["meta_field"]) == ["0", "1"]
    for (_, row), want in zip(table.iterrows(), data):
        np.testing.assert_array_equal(src.load_field(row)[:, 0], want[[1]])


def test_objects_run_matches_dense_zarr(tmp_path, capsys):
    """The same crops as an OME-Zarr image (NGFF 0.5, channels by label) and as a dense zarr
    array (channels by index) give the same features."""
    import zarr

    from scip_gpu.demo import DemoSource

    demo = DemoSource(DatasetConfig(format=DatasetFormat.demo, n_objects=6, n_channels=3, min_size=40, max_size=40))
    cells = np.stack(demo.load(demo.objects()))  # (6, 3, 40, 40)
    write_image(tmp_path / "cells.ome.zarr", cells, AXES_NCYX, "0.5", LABELS)
    dense = zarr.open_array(str(tmp_path / "cells.zarr"), mode="w", shape=cells.shape, dtype=cells.dtype)
    dense[...] = cells
    common = ["masks=li", "features=intensity", "cluster=sync", "progress=false"]
    s1, err1 = _cli(["+dataset=ome_zarr_objects", f"dataset.path={tmp_path / 'cells.ome.zarr'}",
                     "dataset.channels=[SSC,BF]", *common, f"output={tmp_path / 'a'}"], capsys)
    s2, err2 = _cli(["+dataset=zarr", f"dataset.path={tmp_path / 'cells.zarr'}", "dataset.channels=[2,0]",
                     "dataset.channel_names=[SSC,BF]", *common, f"output={tmp_path / 'b'}"], capsys)
    assert s1 == 0 and s2 == 0, err1 + err2
    a = pd.read_parquet(tmp_path / "a" / "features.parquet").sort_values("meta_index")
    b = pd.read_parquet(tmp_path / "b" / "features.parquet").sort_values("meta_index")
    feats = [c for c in a.columns if c.startswith("feat_")]
    assert len(feats) > 50 and feats == [c for c in b.columns if c.startswith("feat_")]
    assert (a["meta_status"] == "ok").all() and list(a["meta_zarr_idx"]) == list(range(6))
    np.testing.assert_array_equal(a[feats].to_numpy(), b[feats].to_numpy())
