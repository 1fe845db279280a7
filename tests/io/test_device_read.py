"""Dense zarr chunks into device memory with kvikio: which stores qualify, and the read itself
(with NumPy and a stand-in kvikio that reads files into the given buffer)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from scip_gpu.io import device_read
from scip_gpu.io.device_read import dense_layout, device_read_plan, read_rows


class _CuFile:
    """kvikio.CuFile's read: the file's bytes into the buffer; returns the bytes read."""

    def __init__(self, path, mode):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, buf):
        data = np.fromfile(self.path, dtype=np.uint8)
        view = buf.reshape(-1).view(np.uint8)
        view[:len(data)] = data[:len(view)]
        return min(len(data), view.size)


class _Kvikio:
    CuFile = _CuFile


def _images(n=23):
    rng = np.random.default_rng(0)
    imgs = rng.integers(1, 4000, size=(n, 2, 6, 5)).astype(np.uint16)
    imgs[8:16] = 0  # a whole chunk of the fill value: zarr does not write it
    return imgs


@pytest.mark.parametrize("fmt", [2, 3])
def test_uncompressed_chunks_are_read_as_zarr_reads_them(tmp_path, fmt):
    imgs = _images()
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=imgs.shape, chunks=(8, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=fmt)
    arr[:] = imgs
    layout, why = dense_layout(tmp_path / "a.zarr")
    assert why == "" and layout.shape == imgs.shape and layout.chunks == (8, 2, 6, 5)
    assert not layout.chunk_path((1, 0, 0, 0)).exists()  # the chunk of zeros is missing
    for lo, hi in [(0, 23), (3, 21), (9, 12), (16, 23), (22, 23)]:
        got = read_rows(layout, lo, hi, xp=np, kvikio=_Kvikio)
        np.testing.assert_array_equal(got, np.asarray(arr[lo:hi]))
        assert got.dtype == np.uint16


def test_a_truncated_chunk_is_an_error(tmp_path):
    imgs = _images(8)
    arr = zarr.create_array(str(tmp_path / "t.zarr"), shape=imgs.shape, chunks=(8, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=2)
    arr[:] = imgs
    layout, _ = dense_layout(tmp_path / "t.zarr")
    path = layout.chunk_path((0, 0, 0, 0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OSError, match="truncated"):
        read_rows(layout, 0, 8, xp=np, kvikio=_Kvikio)


def test_which_stores_are_read_through_the_host(tmp_path, monkeypatch):
    imgs = _images(8)
    zarr.create_array(str(tmp_path / "zstd2.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype="uint16",
                      zarr_format=2)
    zarr.create_array(str(tmp_path / "zstd3.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype="uint16",
                      zarr_format=3)
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype="uint16",
                      compressors=None, zarr_format=3)
    zarr.create_array(str(tmp_path / "big.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype=">u2",
                      compressors=None, zarr_format=2)
    assert "compressed (zstd)" in dense_layout(tmp_path / "zstd2.zarr")[1]  # (zarr 3's default for v2)
    assert "codecs ['bytes', 'zstd']" in dense_layout(tmp_path / "zstd3.zarr")[1]
    assert "big-endian" in dense_layout(tmp_path / "big.zarr")[1]
    assert "not a folder" in dense_layout("s3://bucket/cells.zarr")[1]
    assert "no zarr array metadata" in dense_layout(tmp_path)[1]

    plain = tmp_path / "plain.zarr"
    assert device_read_plan(plain, "cpu") == (None, "the device is not a GPU")
    monkeypatch.setattr(device_read, "kvikio_available", lambda: False)
    assert "kvikio is not installed" in device_read_plan(plain, "cuda")[1]  # (as here)
    monkeypatch.setattr(device_read, "kvikio_available", lambda: True)
    layout, why = device_read_plan(plain, "cuda")
    assert why == "" and layout.zarr_format == 3
    assert device_read_plan(tmp_path / "zstd2.zarr", "cuda")[0] is None
    monkeypatch.setenv(device_read.ENV, "0")
    assert device_read_plan(plain, "cuda") == (None, "SCIP_GPU_KVIKIO=0")


def test_kvikio_is_not_installed_here_and_not_imported():
    import sys

    assert not device_read.kvikio_available()
    assert "kvikio" not in sys.modules and "cupy" not in sys.modules
