"""Dense zarr chunks into device memory with kvikio: which stores qualify, and the read itself
(with NumPy and a stand-in kvikio that reads files into the given buffer)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from scip_gpu.io import device_read
from scip_gpu.io.device_read import dense_layout, device_read_plan, read_rows


class _Future:
    """kvikio's IOFuture: here the read happens when it is waited for, so a result used before
    ``get()``, or a file closed before its reads are waited for, shows."""

    def __init__(self, file, buf):
        self.file, self.buf = file, buf

    def get(self):
        if self.file.closed:
            raise AssertionError(f"{self.file.path} closed before its read was waited for")
        return self.file.read_now(self.buf)


class _CuFile:
    """kvikio.CuFile's pread: the file's bytes into the buffer, a future of the bytes read."""

    def __init__(self, path, mode):
        self.path, self.closed = path, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True
        return False

    def pread(self, buf):
        return _Future(self, buf)

    def read_now(self, buf):
        data = np.fromfile(self.path, dtype=np.uint8)
        view = buf.reshape(-1).view(np.uint8)  # (a view: the buffer must be contiguous)
        view[:len(data)] = data[:len(view)]
        return min(len(data), view.size)


class _Defaults:
    def __init__(self):
        self.calls = []

    def set(self, key, value):
        self.calls.append((key, value))


class _Kvikio:
    CuFile = _CuFile
    defaults = _Defaults()


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


@pytest.mark.parametrize("fmt", [2, 3])
def test_a_nan_fill_value_fills_missing_chunks_as_zarr_does(tmp_path, fmt):
    """zarr writes a float array's NaN fill value as the string "NaN" in its metadata."""
    imgs = _images().astype(np.float32)
    imgs[8:16] = np.nan  # a whole chunk of the fill value: not written
    arr = zarr.create_array(str(tmp_path / "f.zarr"), shape=imgs.shape, chunks=(8, 2, 6, 5), dtype="float32",
                            compressors=None, zarr_format=fmt, fill_value=np.nan)
    arr[:] = imgs
    layout, why = dense_layout(tmp_path / "f.zarr")
    assert why == "" and np.isnan(layout.fill_value)
    assert not layout.chunk_path((1, 0, 0, 0)).exists()
    got = read_rows(layout, 0, 23, xp=np, kvikio=_Kvikio)
    np.testing.assert_array_equal(got, np.asarray(arr[:]))  # NaN where NaN
    assert np.isnan(got[8:16]).all()


def test_reads_start_together_and_whole_chunks_land_in_place(tmp_path):
    """Every chunk's read is started before any is waited for (kvikio's thread pool reads them in
    parallel); chunks inside the rows go straight into the result, the edges through a buffer."""
    imgs = _images()
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=2)
    arr[:] = imgs
    layout, _ = dense_layout(tmp_path / "a.zarr")
    events, targets = [], []

    class Future(_Future):
        def get(self):
            events.append(("get", self.file.path))
            return super().get()

    class CuFile(_CuFile):
        def pread(self, buf):
            events.append(("start", self.path))
            targets.append(buf)
            return Future(self, buf)

    kvikio = SimpleNamespace(CuFile=CuFile, defaults=_Defaults())

    # rows 2..20: chunks 0..5, of which 0 and 5 are edges; 2 and 3 hold only the fill value (zeros),
    # which zarr does not write
    got = read_rows(layout, 2, 21, xp=np, kvikio=kvikio)
    np.testing.assert_array_equal(got, np.asarray(arr[2:21]))
    assert [k for k, _ in events] == ["start"] * 4 + ["get"] * 4
    assert [np.shares_memory(t, got) for t in targets] == [False, True, True, False]


def test_a_failed_read_waits_for_the_others_then_raises(tmp_path):
    imgs = _images(16)
    imgs[8:16] = 1  # (every chunk written)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=imgs.shape, chunks=(4, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=2)
    arr[:] = imgs
    layout, _ = dense_layout(tmp_path / "a.zarr")
    waited = []

    class Future(_Future):
        def get(self):
            waited.append(self.file.path)
            if self.file.path.endswith("1.0.0.0"):
                raise OSError("cuFile: read failed")
            return super().get()

    class CuFile(_CuFile):
        def pread(self, buf):
            return Future(self, buf)

    kvikio = SimpleNamespace(CuFile=CuFile, defaults=_Defaults())

    with pytest.raises(OSError, match="read failed"):
        read_rows(layout, 0, 16, xp=np, kvikio=kvikio)
    assert len(waited) == 4  # every started read waited for (before its file closed: _Future checks)


def test_kvikio_thread_pool_is_sized_once_unless_the_environment_says(monkeypatch):
    monkeypatch.setattr(device_read, "_configured", set())
    monkeypatch.delenv("KVIKIO_NTHREADS", raising=False)
    monkeypatch.setattr(device_read.os, "cpu_count", lambda: 16)

    class New:  # kvikio >= 25.04
        defaults = _Defaults()

    assert device_read.configure_kvikio(New) == device_read.KVIKIO_THREADS == 8
    assert device_read.configure_kvikio(New) is None  # once per process
    assert New.defaults.calls == [("num_threads", 8)]

    class Old:  # earlier kvikio: num_threads_reset
        class defaults:
            calls = []

            @classmethod
            def num_threads_reset(cls, n):
                cls.calls.append(n)

    monkeypatch.setattr(device_read.os, "cpu_count", lambda: 2)
    assert device_read.configure_kvikio(Old) == 2 and Old.defaults.calls == [2]  # (at most the cores)

    class User:
        defaults = _Defaults()

    monkeypatch.setenv("KVIKIO_NTHREADS", "3")  # the user's choice stays
    assert device_read.configure_kvikio(User) is None and User.defaults.calls == []


def test_the_thread_pool_is_sized_through_the_defaults_submodule_kvikio_does_not_import(monkeypatch):
    """``import kvikio`` leaves ``kvikio.defaults`` unimported (kvikio 25.10-26.10: its
    ``__init__`` imports the compiled ``kvikio._lib.defaults`` only), so the package has no
    ``defaults`` attribute: the submodule is imported to size the pool."""
    import sys
    import types

    monkeypatch.setattr(device_read, "_configured", set())
    monkeypatch.delenv("KVIKIO_NTHREADS", raising=False)
    monkeypatch.setattr(device_read.os, "cpu_count", lambda: 16)
    package = types.ModuleType("kvikio_standin")
    package.__path__ = []  # (a package)
    defaults = types.ModuleType("kvikio_standin.defaults")
    defaults.calls = []
    defaults.set = lambda key, value: defaults.calls.append((key, value))
    monkeypatch.setitem(sys.modules, "kvikio_standin", package)
    monkeypatch.setitem(sys.modules, "kvikio_standin.defaults", defaults)
    assert not hasattr(package, "defaults") or package.defaults is defaults
    assert device_read.configure_kvikio(package) == 8
    assert defaults.calls == [("num_threads", 8)]


def test_at_most_open_files_chunks_are_open_at_once(tmp_path, monkeypatch):
    """One-object chunks: a partition would open thousands of files at once (beyond a process's
    1024 descriptors); the oldest read is waited for and its file closed before the next opens."""
    imgs = _images(11)
    imgs[8:16] = 1  # (every chunk written)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=imgs.shape, chunks=(1, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=2)
    arr[:] = imgs
    layout, _ = dense_layout(tmp_path / "a.zarr")
    monkeypatch.setattr(device_read, "OPEN_FILES", 3)
    open_now, most = [], [0]

    class CuFile(_CuFile):
        def __init__(self, path, mode):
            super().__init__(path, mode)
            open_now.append(self)
            most[0] = max(most[0], sum(not f.closed for f in open_now))

    kvikio = SimpleNamespace(CuFile=CuFile, defaults=_Defaults())
    got = read_rows(layout, 1, 10, xp=np, kvikio=kvikio)
    np.testing.assert_array_equal(got, np.asarray(arr[1:10]))
    assert most[0] == 3 and len(open_now) == 9 and all(f.closed for f in open_now)


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


# ---------------------------------------------------------------------------------------------
# Wired into the pipeline: io.kvikio chooses, per store, kvikio or the host


def _stores(tmp_path):
    """An uncompressed store, a compressed one and one whose chunks split the images."""
    rng = np.random.default_rng(1)
    imgs = rng.integers(1, 4000, size=(6, 2, 24, 24)).astype(np.uint16)
    paths = {}
    for name, kw in {"plain": dict(compressors=None, chunks=(4, 2, 24, 24)),
                     "zstd": dict(chunks=(4, 2, 24, 24)),
                     "split": dict(compressors=None, chunks=(4, 1, 24, 24))}.items():
        arr = zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=imgs.shape, dtype="uint16", zarr_format=2, **kw)
        arr[:] = imgs
        paths[name] = tmp_path / f"{name}.zarr"
    return imgs, paths


def _source(path):
    from scip_gpu.cli import to_config
    from scip_gpu.io import make_source

    from ..test_config import _compose

    cfg, _ = to_config(_compose(["+dataset=zarr", f"dataset.path={path}"]))
    src = make_source(cfg.dataset)
    return src, src.objects()


def test_io_kvikio_chooses_per_store_and_says_why(tmp_path, monkeypatch, caplog):
    from scip_gpu.config import kvikio_mode
    from scip_gpu.errors import ConfigError

    _, paths = _stores(tmp_path)
    caplog.set_level("INFO", logger="scip_gpu")
    src, table = _source(str(tmp_path / "*.zarr"))
    monkeypatch.setattr(device_read, "kvikio_available", lambda: False)
    how = src.plan_device_reads(table, "auto", "cuda")  # kvikio missing (as here): all through the host
    assert set(how.values()) == {"host: kvikio is not installed (pip install kvikio-cu13)"}
    assert src.device_layouts == {}
    with pytest.raises(ConfigError, match=r"io.kvikio=true: .*plain.zarr cannot be read .* kvikio is not installed"):
        src.plan_device_reads(table, True, "cuda")
    monkeypatch.setattr(device_read, "kvikio_available", lambda: True)
    how = src.plan_device_reads(table, "auto", "cuda")
    assert how[str(paths["plain"])] == "kvikio" and list(src.device_layouts) == [str(paths["plain"])]
    assert "compressed (zstd)" in how[str(paths["zstd"])]
    assert "do not hold whole images" in how[str(paths["split"])]
    assert f"io: {paths['plain']} read with kvikio straight into device memory" in caplog.text
    assert f"io: {paths['zstd']} read through the host (its chunks are compressed (zstd))" in caplog.text
    with pytest.raises(ConfigError, match=r"split.zarr cannot be read into device memory with kvikio: its chunks "
                                          r"\(4, 1, 24, 24\) do not hold whole images \(2, 24, 24\)"):
        src.plan_device_reads(table, True, "cuda")
    assert set(src.plan_device_reads(table, False, "cuda").values()) == {"host: io.kvikio=false"}
    assert src.device_layouts == {}
    assert src.plan_device_reads(table, True, "cpu")[str(paths["plain"])] == "host: the device is not a GPU"
    assert [kvikio_mode(v) for v in ("auto", "true", True, "False", "maybe")] == ["auto", True, True, False, None]


@pytest.fixture
def cupy(monkeypatch):
    from .. import fake_cupy

    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    return fake_cupy.install(monkeypatch)


@pytest.mark.parametrize("kvikio_works", [True, False])
def test_device_reads_profile_the_rows_of_the_host_path(tmp_path, monkeypatch, cupy, caplog, kvikio_works):
    """device=cuda on dense zarr stores: the uncompressed one read with kvikio into device memory
    (a stand-in kvikio, fake CuPy), validated there, the others through the host; the rows equal
    a device=cpu run. A failing kvikio read falls back to the host path (logged), same rows."""
    import json
    import sys
    import types

    import pandas as pd

    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    from .. import fake_cupy
    from ..test_config import _compose

    imgs, paths = _stores(tmp_path)
    imgs[3] = 7  # a blank object: the same validation error on both paths
    zarr.open_array(str(paths["plain"]), mode="r+")[3] = imgs[3]
    zarr.open_array(str(paths["zstd"]), mode="r+")[3] = imgs[3]
    reads = []

    class CuFile(_CuFile):
        def pread(self, buf):
            reads.append(self.path)
            if not kvikio_works:
                raise OSError("cuFile: no GPUDirect Storage here")
            assert isinstance(buf, fake_cupy.ndarray)  # straight into (fake) device memory
            return super().pread(buf)

    monkeypatch.setitem(sys.modules, "kvikio", types.SimpleNamespace(CuFile=CuFile))
    monkeypatch.setattr(device_read, "kvikio_available", lambda: True)
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    from scip_gpu import batch as batch_module

    on_device = []
    real = batch_module._assemble_on_device
    monkeypatch.setattr(batch_module, "_assemble_on_device",
                        lambda imgs, *a: on_device.append(len(imgs)) or real(imgs, *a))
    caplog.set_level("INFO", logger="scip_gpu")
    out = {}
    for device in ("cpu", "cuda"):
        cfg, yaml = to_config(_compose([
            "+dataset=zarr", f"dataset.path='{tmp_path}/[pz]*.zarr'", "masks=none", "features=intensity",
            "cluster=sync", f"device={device}", f"output={tmp_path / device}", "progress=false",
            "export.formats=[parquet]", "export.report=false"]))
        summary = run(cfg, yaml)
        assert summary.n_objects == 12 and summary.n_errors == 2
        out[device] = pd.read_parquet(tmp_path / device / "features.parquet")
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], check_exact=True)
    prov = json.loads((tmp_path / "cuda" / "provenance.json").read_text())
    assert prov["reads"][str(paths["plain"])] == "kvikio" and prov["reads"][str(paths["zstd"])].startswith("host: ")
    assert reads and all(p.startswith(str(paths["plain"])) for p in reads)
    errors = pd.read_csv(tmp_path / "cuda" / "errors.csv")
    assert errors["error"].str.contains(r"\[3\]: every pixel has the same value \(7\)").sum() == 2
    assert ("the read with kvikio failed" in caplog.text) is not kvikio_works
    # the good objects of both stores (those read through the host are copied to the device once
    # validated): batched on the device
    assert sum(on_device) == 10


@pytest.mark.parametrize("through_host", [0, 1, 3])
def test_objects_copied_from_the_host_are_on_the_device_before_the_batches(monkeypatch, cupy, through_host):
    """The batches run on their own non-blocking stream, which does not wait for the reading
    thread's: objects that a device read left on the host (kvikio failed, a compressed store)
    are copied to the device asynchronously, so the reading thread's stream is synchronised
    once, after the last copy, before they are handed on; with every object read on the
    device, the validation's copies back are the only waits."""
    import pandas as pd

    from scip_gpu import pipeline

    from .. import fake_cupy

    imgs = _images(5)[:, :, :, :]
    events = []
    real_asarray = cupy.asarray
    monkeypatch.setattr(cupy, "asarray", lambda a, *args, **kw: events.append("copy") or real_asarray(a, *args, **kw))
    null = cupy.cuda.get_current_stream()
    monkeypatch.setattr(null, "synchronize", lambda: events.append("synchronize"))

    class Source:
        def load_device(self, rows, xp):
            return [imgs[i] if i < through_host else fake_cupy._wrap(imgs[i].copy()) for i in range(len(rows))]

        def describe(self, row):
            return f"object {row.name}"

    rows = pd.DataFrame({"meta_index": range(5)})
    got = pipeline.load_partition_device(Source(), rows, 2, 2, cupy)
    assert all(isinstance(g, fake_cupy.ndarray) for g in got)
    np.testing.assert_array_equal(np.stack([g.get() for g in got]), imgs)
    assert events == ["copy"] * through_host + (["synchronize"] if through_host else [])


@pytest.mark.gpu
def test_kvikio_reads_chunks_into_gpu_memory(tmp_path):
    """The real thing (``pytest -m gpu`` with kvikio installed): chunks read with kvikio into
    CuPy arrays are what zarr reads."""
    cp = pytest.importorskip("cupy")
    pytest.importorskip("kvikio")
    imgs = _images()
    arr = zarr.create_array(str(tmp_path / "g.zarr"), shape=imgs.shape, chunks=(8, 2, 6, 5), dtype="uint16",
                            compressors=None, zarr_format=2)
    arr[:] = imgs
    layout, why = device_read_plan(tmp_path / "g.zarr", "cuda")
    assert why == ""
    got = read_rows(layout, 3, 21)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(got.get(), imgs[3:21])
    if not __import__("os").environ.get("KVIKIO_NTHREADS"):  # its pool sized (kvikio.defaults, imported for it)
        import importlib

        threads = importlib.import_module("kvikio.defaults").get("num_threads")
        assert threads == max(1, min(device_read.KVIKIO_THREADS, __import__("os").cpu_count() or 1))


def _in_flight_runs(tmp_path, monkeypatch, read: str, n: int = 384) -> dict:
    """device=cuda and device=cpu runs of one uncompressed dense store of ``n`` 3-channel cells
    (``scip`` preset), 4 partitions of 32 objects in flight: ``read`` "kvikio" (chunks read into
    device memory) or "host" (every kvikio read fails: the objects come through the host and are
    copied to the device by the reading thread while other partitions' batches run)."""
    import pandas as pd

    from scip_gpu.cli import to_config
    from scip_gpu.demo import make_cell
    from scip_gpu.pipeline import run

    from ..test_config import _compose

    cells = [make_cell(i, min_size=44, max_size=44)[0][:, :44, :44] for i in range(n)]
    arr = zarr.create_array(str(tmp_path / "cells.zarr"), shape=(n, 3, 44, 44), dtype="uint16", zarr_format=2,
                            compressors=None, chunks=(8, 3, 44, 44))
    arr[:] = np.stack(cells)
    if read == "host":
        def fail(*args, **kwargs):
            raise OSError("cuFile: read failed (the test)")

        monkeypatch.setattr(device_read, "kvikio_available", lambda: True)
        monkeypatch.setattr(device_read, "read_rows", fail)
    out = {}
    for device in ("cpu", "cuda"):
        cfg, yaml = to_config(_compose([
            "+dataset=zarr", f"dataset.path={tmp_path / 'cells.zarr'}", "masks=scip", "features=scip",
            "cluster=sync", "cluster.threads_per_worker=4", "partition_size=32", "batch_size=16",
            f"device={device}", f"output={tmp_path / device}", "progress=false", "export.formats=[parquet]",
            "export.report=false"]))
        summary = run(cfg, yaml)
        assert summary.n_ok == n
        out[device] = pd.read_parquet(tmp_path / device / "features.parquet")
    prov = __import__("json").loads((tmp_path / "cuda" / "provenance.json").read_text())
    assert prov["reads"][str(tmp_path / "cells.zarr")] == "kvikio"
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("read", ["kvikio", "host"])
def test_partitions_in_flight_on_a_gpu_equal_cpu(tmp_path, monkeypatch, read):
    """The real thing (``pytest -m gpu``): with 4 partitions in flight, objects read into device
    memory with kvikio, or through the host where every kvikio read fails (their copies to the
    device queued by the reading thread while other partitions' batches run on the device
    stage's own stream), give the CPU path's rows and values."""
    import pandas as pd

    pytest.importorskip("cupy")
    from scip_gpu.backend import gpu_available

    if not gpu_available()[0]:
        pytest.skip("no usable GPU")
    if read == "kvikio":
        pytest.importorskip("kvikio")
    out = _in_flight_runs(tmp_path, monkeypatch, read)
    pd.testing.assert_frame_equal(out["cuda"], out["cpu"], rtol=1e-9, atol=1e-12)
