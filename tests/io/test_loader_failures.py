"""Bad inputs among good ones, per loader, through a whole run (``scip_gpu.pipeline.run``,
``cluster=sync``): every good object is ``ok`` with features, every bad one is in errors.csv
with a cause naming it, and no bad input decides anything for the good ones (issue 12: items 2,
3, 5, 8 and 10).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from scip_gpu import pipeline
from scip_gpu.cli import to_config
from scip_gpu.config import DatasetConfig, DatasetFormat
from scip_gpu.demo import make_cell
from scip_gpu.errors import InputError, ObjectError
from scip_gpu.io import make_source
from scip_gpu.io.base import expand_paths
from scip_gpu.io.zarr_ragged import write_ragged_zarr

from ..test_config import _compose


def cell(i: int, channels: int = 3) -> np.ndarray:
    """A realistic (C, H, W) uint16 cell (small: the runs stay fast)."""
    return make_cell(i, n_channels=max(channels, 3), min_size=24, max_size=30)[0][:channels]


def run(tmp_path, *overrides, name="out"):
    """A whole run; returns its feature table (by meta_index) and its error report."""
    out = tmp_path / name
    cfg, _ = to_config(_compose([*overrides, "features=intensity", "cluster=sync", "progress=false",
                                 f"output={out}"]))
    summary = pipeline.run(cfg)
    df = pd.read_parquet(out / "features.parquet").sort_values("meta_index").reset_index(drop=True)
    errors = pd.read_csv(out / "errors.csv")
    assert summary.n_objects == len(df) and summary.n_errors == len(errors)
    return df, errors


def check(df, errors, bad: dict[str, list[str]], *, key="meta_path"):
    """Rows whose ``key`` ends with a name in ``bad`` are errors whose message names the input and
    holds the given words; every other row is ok with its features (those of the whole image, never
    NaN for a real image; mask features may be NaN where a mask is empty)."""
    feats = [c for c in df.columns if c.startswith("feat_raw_")]
    assert feats
    is_bad = df[key].astype(str).map(lambda v: any(v.endswith(b) for b in bad))
    good = df[~is_bad]
    assert len(good) and (good["meta_status"] == "ok").all(), good[["meta_status", key]]
    assert good[feats].notna().all().all()
    assert (df.loc[is_bad, "meta_status"] == "error").all()
    assert len(errors) == is_bad.sum(), errors
    for name, words in bad.items():
        rows = df[df[key].astype(str).str.endswith(name)]
        assert len(rows) >= 1, name
        for idx in rows["meta_index"]:
            msg = errors.loc[errors["meta_index"] == idx, "error"]
            assert len(msg) == 1, (name, errors)
            msg = msg.iloc[0]
            assert name in msg or name in errors.loc[errors["meta_index"] == idx, "object"].iloc[0], msg
            for w in words:
                assert w in msg, (name, w, msg)


# ---------------------------------------------------------------------------------------------
# 2. The channel set is what most objects have; the odd objects are the errors


def test_odd_channel_count_multipage_tiff(tmp_path):
    src = tmp_path / "cells"
    src.mkdir()
    tifffile.imwrite(src / "a_first.tif", cell(9, 2), photometric="minisblack")  # the first file: 2 channels
    tifffile.imwrite(src / "b_four.tif", np.concatenate([cell(8), cell(8)[:1]]), photometric="minisblack")
    for i in range(4):
        tifffile.imwrite(src / f"cell{i}.tif", cell(i), photometric="minisblack")
    df, errors = run(tmp_path, "+dataset=multipage_tiff", f"dataset.path='{src}'")
    assert len(df) == 6 and "feat_raw_mean_ch2" in df.columns
    check(df, errors, {"a_first.tif": ["has 2 channel(s)", "most objects have 3"],
                       "b_four.tif": ["has 4 channel(s)", "most objects have 3"]})


def test_odd_channel_key_per_channel_tiff(tmp_path):
    src = tmp_path / "tiffs"
    src.mkdir()
    for i in range(4):
        for c, plane in enumerate(cell(i, 2)):
            tifffile.imwrite(src / f"cell{i}_ch{c}.tif", plane)
    tifffile.imwrite(src / "cell0_ch9.tif", cell(0)[2])  # one object has an extra channel
    (src / "cell3_ch1.tif").unlink()  # one lacks a channel
    df, errors = run(tmp_path, "+dataset=tiff", f"dataset.path='{src}'",
                     "dataset.regex='cell(?P<id>\\d)_ch(?P<channel>\\d)'")
    assert len(df) == 4 and {"feat_raw_mean_0", "feat_raw_mean_1"} <= set(df.columns)
    assert "feat_raw_mean_9" not in df.columns
    errs = errors.set_index("meta_index")["error"]
    assert set(errs.index) == {0, 3}
    assert "channel(s) ['9']" in errs[0] and "cell0_ch9.tif" in errs[0] and "id=0" in errs[0]
    assert "no file for channel '1'" in errs[3] and "id=3" in errs[3]
    assert (df.loc[[1, 2], "meta_status"] == "ok").all() and df.loc[[1, 2], "feat_raw_mean_1"].notna().all()


def test_odd_channel_count_ragged_zarr(tmp_path):
    imgs = [cell(i) for i in range(5)]
    imgs[1] = cell(1, 2)  # the smallest channel count must not decide
    write_ragged_zarr(tmp_path / "run.zarr", imgs, chunk_size=2)
    df, errors = run(tmp_path, "+dataset=scip_zarr", f"dataset.path={tmp_path / 'run.zarr'}")
    assert "feat_raw_mean_ch2" in df.columns
    check(df.assign(name=df["meta_path"] + "[" + df["meta_zarr_idx"].astype(str) + "]"), errors,
          {"run.zarr[1]": ["has 2 channel(s) where most objects have 3"]}, key="name")


def test_odd_channel_count_dense_zarr_stores(tmp_path):
    zarr = pytest.importorskip("zarr")
    for name, imgs in (("a.zarr", [cell(0, 2)]), ("b.zarr", [cell(i)[:, :24, :24] for i in range(1, 4)])):
        data = np.stack([im[:, :24, :24] for im in imgs])
        zarr.open_array(str(tmp_path / name), mode="w", shape=data.shape, dtype="u2")[:] = data
    df, errors = run(tmp_path, "+dataset=zarr", f"dataset.path='{tmp_path}/*.zarr'")
    assert len(df) == 4 and "feat_raw_mean_ch2" in df.columns
    check(df, errors, {"a.zarr": ["a.zarr[0]", "has 2 channel(s) where most objects have 3"]})


def test_fields_channel_set_is_the_majority(tmp_path):
    for site in range(3):
        for ch in (1, 2):
            tifffile.imwrite(tmp_path / f"A01_s{site}_w{ch}.tif", np.ones((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "A01_s0_w7.tif", np.ones((8, 8), np.uint16))
    src = make_source(DatasetConfig(format=DatasetFormat.fields_tiff, path=str(tmp_path),
                                    regex=r"(?P<well>A01)_s(?P<site>\d)_w(?P<channel>\d)\.tif"))
    objs = src.objects()
    assert src.channel_names(objs) == ["1", "2"]
    with pytest.raises(ObjectError, match=r"field A01_0: has file\(s\) for channel\(s\) \['7'\]"):
        src.load_field(objs.iloc[0])
    assert src.load_field(objs.iloc[1]).shape == (2, 1, 8, 8)


# ---------------------------------------------------------------------------------------------
# 3. Any failure of one object stays with that object


def test_tiff_with_unexpected_axes_fails_alone(tmp_path):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"cell{i}.tif", cell(i), photometric="minisblack")
    tifffile.imwrite(tmp_path / "yyx.tif", cell(5), photometric="minisblack", metadata={"axes": "YYX"})  # numpy cannot reorder it
    df, errors = run(tmp_path, "+dataset=multipage_tiff", f"dataset.path='{tmp_path}'", "dataset.glob=*.tif",
                     "partition_size=10")
    check(df, errors, {"yyx.tif": ["one Y and one X axis", "'YYX'"]})



def test_tiff_with_several_series_fails_alone_naming_them(tmp_path):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"cell{i}.tif", cell(i), photometric="minisblack")
    with tifffile.TiffWriter(tmp_path / "series.tif") as tw:  # three images: one per write
        tw.write(cell(4), photometric="minisblack")
        tw.write(cell(4)[0, :16, :16])
        tw.write(np.ones((8, 8), np.uint8))
    with tifffile.TiffFile(tmp_path / "series.tif") as tf:  # what tifffile makes of it
        assert [s.shape for s in tf.series] == [cell(4).shape, (16, 16), (8, 8)]
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:  # an image and its thumbnail (as LSM)
        tw.write(cell(5), photometric="minisblack")
        tw.write(np.ones((8, 8), np.uint8), subfiletype=1)  # reduced resolution: not an image of its own
    df, errors = run(tmp_path, "+dataset=multipage_tiff", f"dataset.path='{tmp_path}'", "dataset.glob=*.tif",
                     "partition_size=10")
    h, w = cell(4).shape[1:]
    check(df, errors, {"series.tif": [f"3 series of different shapes ((3, {h}, {w}) QYX uint16, (16, 16) YX uint16, "
                                      "(8, 8) YX uint8)", "one image per file"]})
    assert "channel(s)" not in errors["error"].iloc[0]
    assert (df[df["meta_path"].astype(str).str.endswith("thumb.tif")]["meta_status"] == "ok").all()
    assert df["meta_path"].astype(str).str.endswith("thumb.tif").sum() == 1

def test_any_exception_of_a_loader_stays_with_its_object(tmp_path, monkeypatch):
    from scip_gpu.io import tiff

    for i in range(4):
        for c, plane in enumerate(cell(i, 2)):
            tifffile.imwrite(tmp_path / f"cell{i}_ch{c}.tif", plane)
    real = tiff._read

    def flaky(path):  # a failure no loader anticipates (not an ObjectError)
        if path.name == "cell2_ch1.tif":
            raise KeyError("unexpected tag")
        return real(path)

    monkeypatch.setattr(tiff, "_read", flaky)
    df, errors = run(tmp_path, "+dataset=tiff", f"dataset.path='{tmp_path}'",
                     "dataset.regex='cell(?P<id>\\d)_ch(?P<channel>\\d)'")
    errs = errors.set_index("meta_index")["error"]
    assert list(errs.index) == [2] and "id=2" in errs[2] and "KeyError: 'unexpected tag'" in errs[2]
    assert (df.drop(index=2)["meta_status"] == "ok").all()


def test_a_loader_that_raises_for_the_partition_is_retried_object_by_object(tmp_path):
    from scip_gpu.export import arrow_schema
    from scip_gpu.profile import build_plan

    for i in range(4):
        tifffile.imwrite(tmp_path / f"cell{i}.tif", cell(i), photometric="minisblack")
    cfg, _ = to_config(_compose(["+dataset=multipage_tiff", f"dataset.path='{tmp_path}'", "features=intensity"]))
    src = make_source(cfg.dataset)

    class Fragile(type(src)):  # fails as a whole when one given object is among the rows
        def load(self, rows):
            if rows["meta_path"].str.endswith("cell1.tif").any():
                raise RuntimeError("loader bug")
            return super().load(rows)

    src = Fragile(cfg.dataset)
    objs = src.objects()
    objs.insert(0, "meta_index", np.arange(len(objs)))
    plan = build_plan(cfg, src.channel_names(objs))
    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    res = pipeline.process_partition((0, objs), source=src, plan=plan, folder=str(tmp_path / "out"),
                                     schema=schema, device="cpu")
    assert res.n_ok == 3 and [e["meta_index"] for e in res.errors] == [1]
    assert "cell1.tif" in res.errors[0]["error"] and "RuntimeError: loader bug" in res.errors[0]["error"]


def test_corrupt_dense_zarr_chunk_fails_only_its_objects(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.stack([cell(i)[:, :24, :24] for i in range(6)])
    z = zarr.open_array(str(tmp_path / "d.zarr"), mode="w", shape=data.shape, chunks=(1, 3, 24, 24), dtype="u2",
                        zarr_format=2)
    z[:] = data
    (tmp_path / "d.zarr" / "3.0.0.0").write_bytes(b"not a compressed chunk")
    df, errors = run(tmp_path, "+dataset=zarr", f"dataset.path={tmp_path / 'd.zarr'}")
    check(df.assign(name=df["meta_path"] + "[" + df["meta_zarr_idx"].astype(str) + "]"), errors,
          {"d.zarr[3]": ["cannot be read"]}, key="name")


def test_ragged_chunk_shorter_than_its_elements(tmp_path):
    store = write_ragged_zarr(tmp_path / "r.zarr", [cell(i) for i in range(3)], chunk_size=2)
    meta = json.loads((store / ".zarray").read_text())
    meta["chunks"] = [4]  # elements 2 and 3 of chunk 0 do not exist
    meta["shape"] = [4]
    (store / ".zarray").write_text(json.dumps(meta))
    attrs = json.loads((store / ".zattrs").read_text())
    attrs["shape"].append([3, 24, 24])
    attrs["object_number"].append(3)
    (store / ".zattrs").write_text(json.dumps(attrs))
    (store / "1").unlink()
    src = make_source(DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(store)))
    loaded = src.load(src.objects())
    assert isinstance(loaded[0], np.ndarray) and isinstance(loaded[1], np.ndarray)
    assert all(isinstance(x, ObjectError) and "chunk holds only 2 element(s)" in str(x) for x in loaded[2:])


# ---------------------------------------------------------------------------------------------
# 5. Every input the pattern matches gets a row


def test_broken_links_get_a_row_and_an_error(tmp_path):
    src = tmp_path / "cells"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"cell{i}.tif", cell(i), photometric="minisblack")
    os.symlink(tmp_path / "gone.tif", src / "dangling.tif")
    os.symlink("loop.tif", src / "loop.tif")
    (src / "folder.tif").mkdir()
    os.mkfifo(src / "pipe.tif")  # never opened: reading it would wait forever
    df, errors = run(tmp_path, "+dataset=multipage_tiff", f"dataset.path='{src}'")
    assert len(df) == 7
    check(df, errors, {"dangling.tif": ["broken symbolic link", "gone.tif"],
                       "loop.tif": ["unreadable"], "folder.tif": ["is a folder"],
                       "pipe.tif": ["not a regular file"]})


def test_broken_link_for_one_channel_file(tmp_path):
    for i in range(3):
        for c, plane in enumerate(cell(i, 2)):
            tifffile.imwrite(tmp_path / f"cell{i}_ch{c}.tif", plane)
    (tmp_path / "cell1_ch0.tif").unlink()
    os.symlink(tmp_path / "elsewhere" / "cell1_ch0.tif", tmp_path / "cell1_ch0.tif")
    df, errors = run(tmp_path, "+dataset=tiff", f"dataset.path='{tmp_path}'",
                     "dataset.regex='cell(?P<id>\\d)_ch(?P<channel>\\d)'")
    errs = errors.set_index("meta_index")["error"]
    assert list(errs.index) == [1] and "cell1_ch0.tif: broken symbolic link" in errs[1]
    assert (df.drop(index=1)["meta_status"] == "ok").all()


# ---------------------------------------------------------------------------------------------
# 8. Malformed entries of .zattrs["shape"] (and object_number)


def _ragged_with_attrs(path, n=6, **entries):
    store = write_ragged_zarr(path, [cell(i) for i in range(n)], chunk_size=4)
    attrs = json.loads((store / ".zattrs").read_text())
    for key, values in entries.items():
        for i, v in values.items():
            attrs[key][i] = v
    (store / ".zattrs").write_text(json.dumps(attrs))
    return store


def test_malformed_shape_entries_are_object_errors(tmp_path):
    store = _ragged_with_attrs(tmp_path / "r.zarr", n=8, shape={1: "abc", 2: [3, "x", 30], 4: None,
                                                                 5: [3, -1, 30], 6: [1, 3, 24, 24]},
                               object_number={7: "seven"})
    df, errors = run(tmp_path, "+dataset=scip_zarr", f"dataset.path='{store}'")
    assert len(df) == 8
    check(df.assign(name=df["meta_path"] + "[" + df["meta_zarr_idx"].astype(str) + "]"), errors, {
        "r.zarr[1]": [".zattrs['shape'] entry 'abc'"], "r.zarr[2]": ["[3, 'x', 30]"],
        "r.zarr[4]": ["entry None"], "r.zarr[5]": ["non-negative integers"], "r.zarr[6]": ["[1, 3, 24, 24]"],
        "r.zarr[7]": ["object_number", "'seven'"]}, key="name")
    assert df["meta_object_number"].isna().tolist() == [False] * 7 + [True]


@pytest.mark.parametrize("attrs,words", [
    ({"shape": [[3, 24, 24]]}, ["must list one [C, H, W] per element (2)", "length 1"]),
    ({"shape": "3x24x24"}, ["must list one [C, H, W] per element", "str"]),
    ([1, 2], [".zattrs holds a list"]),
    ({"shape": [[3, 24, 24], [3, 24, 24]], "object_number": 5}, ["object_number", "int"]),
])
def test_unusable_store_is_one_input_error(tmp_path, attrs, words):
    store = write_ragged_zarr(tmp_path / "r.zarr", [cell(0), cell(1)])
    (store / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError) as exc:
        make_source(DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(store))).objects()
    assert str(store) in str(exc.value)
    for w in words:
        assert w in str(exc.value)


def test_store_whose_every_entry_is_malformed_is_an_input_error(tmp_path):
    store = _ragged_with_attrs(tmp_path / "r.zarr", n=2, shape={0: "a", 1: "b"})
    with pytest.raises(InputError, match=r"no object can be read: .*r.zarr\[0\]: .zattrs\['shape'\] entry 'a'"):
        make_source(DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(store))).objects()


# ---------------------------------------------------------------------------------------------
# 10. Literal paths with glob characters; one unreadable store among several


def test_folder_named_with_brackets(tmp_path):
    src = tmp_path / "plate[1]"
    src.mkdir()
    for i in range(3):
        tifffile.imwrite(src / f"cell{i}.tif", cell(i), photometric="minisblack")
    assert expand_paths(str(src), "folder") == [src]
    df, errors = run(tmp_path, "+dataset=multipage_tiff", f"dataset.path='{src}'")
    assert len(df) == 3 and (df["meta_status"] == "ok").all() and errors.empty
    store = write_ragged_zarr(tmp_path / "run[2]*.zarr", [cell(0), cell(1)])
    df, errors = run(tmp_path, "+dataset=scip_zarr", f"dataset.path='{store}'", name="out2")
    assert len(df) == 2 and (df["meta_status"] == "ok").all()
    with pytest.raises(InputError, match="does not exist, and as a pattern it matches no"):
        expand_paths(str(tmp_path / "plate[2]"), "folder")


def test_dangling_dataset_path(tmp_path):
    os.symlink(tmp_path / "moved.zarr", tmp_path / "link.zarr")
    with pytest.raises(InputError, match="broken symbolic link .*moved.zarr"):
        expand_paths(str(tmp_path / "link.zarr"), "zarr store")


def test_one_unreadable_ragged_store_among_several(tmp_path):
    for k in range(3):
        write_ragged_zarr(tmp_path / f"run{k}.zarr", [cell(3 * k + i) for i in range(3)])
    (tmp_path / "run1.zarr" / ".zarray").write_text("{ not json")
    shutil.copytree(tmp_path / "run0.zarr", tmp_path / "run3.zarr")
    (tmp_path / "run3.zarr" / ".zattrs").write_text(json.dumps({"shape": [[3, 24, 24]]}))
    df, errors = run(tmp_path, "+dataset=scip_zarr", f"dataset.path='{tmp_path}/run*.zarr'",
                     "dataset.regex='run(?P<run>\\d)'")
    assert len(df) == 8  # 3 + 3 objects and one row per unreadable store
    check(df, errors, {"run1.zarr": [".zarray cannot be read", "none of its objects is profiled"],
                       "run3.zarr": [".zattrs['shape'] must list one"]})
    bad = df[df["meta_zarr_idx"].isna()]
    assert sorted(bad["meta_run"]) == ["1", "3"]  # the store's metadata is kept


def test_one_unreadable_dense_store_among_several(tmp_path):
    zarr = pytest.importorskip("zarr")
    for k in range(2):
        data = np.stack([cell(2 * k + i)[:, :24, :24] for i in range(2)])
        zarr.open_array(str(tmp_path / f"s{k}.zarr"), mode="w", shape=data.shape, dtype="u2")[:] = data
    (tmp_path / "s2.zarr").mkdir()  # not a zarr array
    zarr.open_array(str(tmp_path / "s3.zarr"), mode="w", shape=(2, 24), dtype="u2")[:] = 1
    df, errors = run(tmp_path, "+dataset=zarr", f"dataset.path='{tmp_path}/s*.zarr'")
    assert len(df) == 6
    check(df, errors, {"s2.zarr": ["cannot be opened as a zarr array"], "s3.zarr": ["found shape (2, 24)"]})


def test_every_store_unreadable_is_an_input_error(tmp_path):
    for k in range(2):
        (tmp_path / f"s{k}.zarr").mkdir()
    with pytest.raises(InputError, match=r"none of the 2 zarr stores can be read: .*s0.zarr.*s1.zarr"):
        make_source(DatasetConfig(format=DatasetFormat.zarr_ragged, path=f"{tmp_path}/s*.zarr")).objects()


def test_a_store_read_with_the_wrong_format_says_which_one_reads_it(tmp_path):
    zarr = pytest.importorskip("zarr")
    ragged = write_ragged_zarr(tmp_path / "r.zarr", [cell(0), cell(1)])
    with pytest.raises(InputError, match=r"r.zarr: cannot be opened as a zarr array .*\+dataset=scip_zarr reads it"):
        make_source(DatasetConfig(format=DatasetFormat.zarr, path=str(ragged))).objects()
    for version in (2, 3):
        dense = zarr.create_array(str(tmp_path / f"d{version}.zarr"), shape=(2, 3, 8, 8), dtype="u2",
                                  zarr_format=version)
        dense[:] = 1
        with pytest.raises(InputError, match=rf"d{version}.zarr: cannot be opened as a zarr group .*not an "
                                             r"OME-Zarr group: \+dataset=zarr reads a dense"):
            make_source(DatasetConfig(format=DatasetFormat.ome_zarr, path=str(tmp_path / f"d{version}.zarr"))).objects()
