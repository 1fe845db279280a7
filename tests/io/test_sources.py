"""Object sources: every input format, metadata columns, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scip_gpu.config import DatasetConfig, DatasetFormat
from scip_gpu.errors import InputError, ObjectError
from scip_gpu.io import make_source
from scip_gpu.io.zarr_ragged import write_ragged_zarr


def _images(n=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, (c, int(rng.integers(20, 40)), int(rng.integers(20, 40))), dtype=np.uint16)
            for _ in range(n)]


def _load_all(cfg):
    src = make_source(cfg)
    objs = src.objects()
    return src, objs, src.load(objs)


def test_ragged_zarr_roundtrip(tmp_path):
    imgs = _images()
    write_ragged_zarr(tmp_path / "run1.zarr", imgs, [10, 11, 12, 13, 14], chunk_size=2)
    cfg = DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(tmp_path / "run1.zarr"),
                        channels=[2, 0], regex=r"(?P<run>run\d+)\.zarr$")
    src, objs, loaded = _load_all(cfg)
    assert objs["meta_object_number"].tolist() == [10, 11, 12, 13, 14]
    assert objs["meta_run"].unique().tolist() == ["run1"]
    assert src.channel_names(objs) == ["ch2", "ch0"]
    for im, got in zip(imgs, loaded):
        np.testing.assert_array_equal(got, im[[2, 0]])


def test_shared_scip_zarr(shared_data):
    cfg = DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(shared_data / "scip-ifc-10cells.zarr"))
    src, objs, loaded = _load_all(cfg)
    assert len(objs) == 10 and objs["meta_object_number"].iloc[0] == 809
    assert loaded[0].shape == (7, 45, 27) and loaded[0].dtype == np.uint16
    assert [im.shape for im in loaded][2] == (7, 54, 56)


def test_ragged_zarr_bad_channel_and_corrupt_chunk(tmp_path):
    imgs = _images(4)
    store = write_ragged_zarr(tmp_path / "a.zarr", imgs, chunk_size=2)
    (store / "1").write_bytes(b"garbage")
    cfg = DatasetConfig(format=DatasetFormat.zarr_ragged, path=str(store), channels=[0, 5])
    _, _, loaded = _load_all(cfg)
    assert isinstance(loaded[0], ObjectError) and "channel index 5 is out of range" in str(loaded[0])
    assert "a.zarr[0]" in str(loaded[0])
    assert isinstance(loaded[2], ObjectError) and "cannot be decoded" in str(loaded[2])


def test_dense_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(1).integers(0, 100, (6, 2, 16, 16), dtype=np.uint16)
    z = zarr.open_array(str(tmp_path / "d.zarr"), mode="w", shape=data.shape, chunks=(4, 2, 16, 16), dtype="u2")
    z[:] = data
    src, objs, loaded = _load_all(DatasetConfig(format=DatasetFormat.zarr, path=str(tmp_path / "d.zarr")))
    assert objs["meta_zarr_idx"].tolist() == list(range(6))
    assert src.channel_names(objs) == ["ch0", "ch1"]
    for i in range(6):
        np.testing.assert_array_equal(loaded[i], data[i])


def _write_channel_tiffs(folder, n=3, channels=("1", "2", "4")):
    rng = np.random.default_rng(2)
    truth = {}
    for well in ("A01", "B02"):
        for i in range(n):
            h, w = 20 + i, 30  # non-square: a transposition would show
            planes = []
            for ch in channels:
                p = rng.integers(0, 1000, (h, w), dtype=np.uint16)
                tifffile.imwrite(folder / f"{well}_{i}_Ch{ch}.tif", p)
                planes.append(p)
            truth[(well, str(i))] = np.stack(planes)
    return truth


def test_channel_tiffs_group_and_export_every_group(tmp_path):
    truth = _write_channel_tiffs(tmp_path)
    cfg = DatasetConfig(format=DatasetFormat.tiff, path=str(tmp_path),
                        regex=r"(?P<well>[A-Z]\d+)_(?P<id>\d+)_Ch(?P<channel>\d+)\.tif$",
                        channels=["4", "1"], channel_names=["actin", "dapi"])
    src, objs, loaded = _load_all(cfg)
    assert len(objs) == 6
    assert {"meta_well", "meta_id", "meta_path"} <= set(objs.columns)
    assert src.channel_names(objs) == ["actin", "dapi"]
    for (_, row), img in zip(objs.iterrows(), loaded):
        want = truth[(row["meta_well"], row["meta_id"])][[2, 0]]
        np.testing.assert_array_equal(img, want)  # planes as in the file, not transposed
        assert img.shape[1:] == want.shape[1:]


def test_channel_tiffs_missing_and_corrupt(tmp_path):
    _write_channel_tiffs(tmp_path)
    (tmp_path / "A01_1_Ch2.tif").unlink()
    (tmp_path / "B02_0_Ch4.tif").write_bytes(b"II*\x00 truncated")
    cfg = DatasetConfig(format=DatasetFormat.tiff, path=str(tmp_path),
                        regex=r"(?P<well>[A-Z]\d+)_(?P<id>\d+)_Ch(?P<channel>\d+)\.tif$")
    src, objs, loaded = _load_all(cfg)
    errs = {(r["meta_well"], r["meta_id"]): str(x) for (_, r), x in zip(objs.iterrows(), loaded)
            if isinstance(x, ObjectError)}
    assert set(errs) == {("A01", "1"), ("B02", "0")}
    assert "no file for channel '2'" in errs[("A01", "1")]
    assert "B02_0_Ch4.tif" in errs[("B02", "0")] and "corrupt" in errs[("B02", "0")]


def test_channel_tiff_input_errors(tmp_path):
    _write_channel_tiffs(tmp_path, n=1)
    base = dict(format=DatasetFormat.tiff, path=str(tmp_path))
    with pytest.raises(InputError, match="lacks the named group"):
        make_source(DatasetConfig(**base, regex=r"(?P<id>\d+)")).objects()
    with pytest.raises(InputError, match="matches none"):
        make_source(DatasetConfig(**base, regex=r"(?P<id>\d+)_(?P<channel>x)")).objects()
    with pytest.raises(InputError, match="does not exist"):
        make_source(DatasetConfig(format=DatasetFormat.tiff, path=str(tmp_path / "nope"),
                                  regex=r"(?P<id>\d)(?P<channel>\d)")).objects()
    with pytest.raises(InputError, match="no files match"):
        make_source(DatasetConfig(**{**base, "glob": "*.png"}, regex=r"(?P<id>\d)(?P<channel>\d)")).objects()
    with pytest.raises(InputError, match="invalid regular expression"):
        make_source(DatasetConfig(**base, regex=r"(?P<id>\d")).objects()


def test_multipage_and_ome_tiff(tmp_path):
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 500, (3, 25, 31), dtype=np.uint16) for _ in range(3)]
    for i, im in enumerate(imgs):
        tifffile.imwrite(tmp_path / f"cell{i}.tif", im, photometric="minisblack")  # pages = channels
        tifffile.imwrite(tmp_path / f"cell{i}.ome.tif", im[None].transpose(1, 0, 2, 3), metadata={"axes": "CZYX"})
    src, objs, loaded = _load_all(DatasetConfig(format=DatasetFormat.multipage_tiff, path=str(tmp_path),
                                                glob="cell?.tif", regex=r"cell(?P<id>\d)"))
    assert objs["meta_id"].tolist() == ["0", "1", "2"]
    for im, got in zip(imgs, loaded):
        np.testing.assert_array_equal(got, im)
    src, objs, loaded = _load_all(DatasetConfig(format=DatasetFormat.ome_tiff, path=str(tmp_path),
                                                glob="*.ome.tif", channels=[1]))
    for im, got in zip(imgs, loaded):
        np.testing.assert_array_equal(got, im[[1]])


def test_ome_tiff_channel_names_name_the_columns(tmp_path):
    """An OME-TIFF's channel names (OME-XML Channel/@Name) name the channels, as an OME-Zarr's
    omero labels do (they were ch0, ch1, ...); the configured names win; names that are not one
    per channel, or repeat, are not used."""
    rng = np.random.default_rng(3)
    for i in range(3):
        tifffile.imwrite(tmp_path / f"cell{i}.ome.tif", rng.integers(0, 500, (3, 20, 20), dtype=np.uint16),
                         metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "BF"]}})
    tifffile.imwrite(tmp_path / "plain0.tif", np.zeros((3, 20, 20), np.uint16), photometric="minisblack")
    tifffile.imwrite(tmp_path / "same0.ome.tif", np.zeros((3, 20, 20), np.uint16),
                     metadata={"axes": "CYX", "Channel": {"Name": ["A", "A", "B"]}})

    def names(glob, **kw):
        src = make_source(DatasetConfig(format=DatasetFormat.ome_tiff, path=str(tmp_path), glob=glob, **kw))
        return src.channel_names(src.objects())

    assert names("cell*.ome.tif") == ["DAPI", "GFP", "BF"]
    assert names("cell*.ome.tif", channels=[2, 0]) == ["BF", "DAPI"]
    assert names("cell*.ome.tif", channel_names=["a", "b", "c"]) == ["a", "b", "c"]
    assert names("plain0.tif") == ["ch0", "ch1", "ch2"]
    assert names("same0.ome.tif") == ["ch0", "ch1", "ch2"]


def test_ome_tiff_with_z_stack_is_an_object_error(tmp_path):
    tifffile.imwrite(tmp_path / "z.ome.tif", np.zeros((2, 4, 8, 8), np.uint16), metadata={"axes": "CZYX"})
    _, _, loaded = _load_all(DatasetConfig(format=DatasetFormat.ome_tiff, path=str(tmp_path), channels=[0]))
    assert isinstance(loaded[0], ObjectError) and "'Z' has 4 planes" in str(loaded[0])


def test_channel_keys_not_in_the_data_stop_before_any_object(tmp_path):
    """A dataset.channels key no file has is a configuration error (not one error per object)."""
    from scip_gpu.errors import ConfigError

    _write_channel_tiffs(tmp_path, n=1)
    cfg = DatasetConfig(format=DatasetFormat.tiff, path=str(tmp_path), channels=["1", "7"],
                        regex=r"(?P<well>[A-Z]\d+)_(?P<id>\d+)_Ch(?P<channel>\d+)\.tif$")
    with pytest.raises(ConfigError, match=r"no file has the channel key\(s\) \['7'\]; the regex found channels "
                                          r"\['1', '2', '4'\]"):
        make_source(cfg).objects()
