"""Reading dense zarr chunks straight into device memory with kvikio (GPUDirect Storage, or
kvikio's own POSIX reads into device buffers), where the store allows it.

A chunk can be read as it is into a device array only when its bytes on disk are the array's
values: an uncompressed, unfiltered, C-ordered chunk of a fixed-size little-endian number type,
in a store on the local file system. ``device_read_plan`` decides, from the store's metadata
alone, whether that holds and why not; everything else reads through the host (zarr and its
codecs), the fallback. kvikio and CuPy are imported only when a read is made.

``SCIP_GPU_KVIKIO=0`` in the environment turns device reads off.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV = "SCIP_GPU_KVIKIO"


@dataclass(frozen=True)
class DenseLayout:
    """Where the chunks of a dense zarr array are and what their bytes hold."""

    path: str
    shape: tuple
    chunks: tuple
    dtype: str  # NumPy dtype string, little-endian
    fill_value: float
    zarr_format: int
    separator: str  # between chunk indices in a chunk's key
    prefix: str  # before the chunk indices ("" for v2; "c/" or "" for v3)

    def chunk_path(self, index: tuple) -> Path:
        return Path(self.path) / (self.prefix + self.separator.join(str(i) for i in index))


def _fill(value, dt: np.dtype):
    """The store's fill value as a number of its type (zarr writes NaN and the infinities of
    float arrays as the strings "NaN", "Infinity", "-Infinity"; null means 0 here)."""
    if value is None:
        return 0
    if isinstance(value, str):
        value = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    return np.asarray(value, dtype=dt).item()


def _v2_layout(path: Path, meta: dict) -> tuple[DenseLayout | None, str]:
    if meta.get("compressor") is not None:
        return None, f"its chunks are compressed ({meta['compressor'].get('id', meta['compressor'])})"
    if meta.get("filters"):
        return None, f"its chunks are filtered ({[f.get('id') for f in meta['filters']]})"
    if meta.get("order", "C") != "C":
        return None, "its chunks are in Fortran order"
    dt = np.dtype(meta["dtype"]) if not isinstance(meta["dtype"], list) else None
    if dt is None or dt.kind not in "uif" or dt.hasobject:
        return None, f"its values are not plain numbers ({meta['dtype']})"
    if dt.byteorder == ">" and dt.itemsize > 1:
        return None, "its values are big-endian"
    return DenseLayout(str(path), tuple(meta["shape"]), tuple(meta["chunks"]), dt.newbyteorder("<").str,
                       _fill(meta.get("fill_value"), dt), 2, meta.get("dimension_separator", "."), ""), ""


def _v3_layout(path: Path, meta: dict) -> tuple[DenseLayout | None, str]:
    codecs = meta.get("codecs") or []
    names = [c.get("name") for c in codecs]
    if names != ["bytes"]:
        return None, f"its chunks go through the codecs {names}, not the plain bytes codec alone"
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    dt = np.dtype(meta["data_type"]) if isinstance(meta.get("data_type"), str) else None
    if dt is None or dt.kind not in "uif":
        return None, f"its values are not plain numbers ({meta.get('data_type')})"
    if endian != "little" and dt.itemsize > 1:
        return None, "its values are big-endian"
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return None, f"its chunk grid is {grid.get('name')!r}, not regular"
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name") == "default" else ".")
    prefix = "c" + sep if enc.get("name") == "default" else ""
    return DenseLayout(str(path), tuple(meta["shape"]), tuple(grid["configuration"]["chunk_shape"]),
                       dt.newbyteorder("<").str, _fill(meta.get("fill_value"), dt), 3, sep, prefix), ""


def dense_layout(path) -> tuple[DenseLayout | None, str]:
    """The layout of a dense zarr array whose chunks can be read into device memory as they are,
    or (None, why not), from its metadata file (``.zarray`` or ``zarr.json``)."""
    p = Path(str(path))
    if "://" in str(path) or not p.is_dir():
        return None, "it is not a folder on the local file system"
    try:
        if (p / "zarr.json").is_file():
            meta = json.loads((p / "zarr.json").read_text())
            if meta.get("node_type") != "array":
                return None, "it is not an array"
            return _v3_layout(p, meta)
        if (p / ".zarray").is_file():
            return _v2_layout(p, json.loads((p / ".zarray").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"its metadata cannot be read ({type(exc).__name__}: {exc})"
    return None, "it has no zarr array metadata"


def kvikio_available() -> bool:
    """Whether kvikio can be imported (without importing it)."""
    return importlib.util.find_spec("kvikio") is not None


def device_read_plan(path, device: str) -> tuple[DenseLayout | None, str]:
    """(layout, "") when the store's chunks are read straight into device memory with kvikio;
    (None, why not) when they are read through the host."""
    if device != "cuda":
        return None, "the device is not a GPU"
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{ENV}=0"
    if not kvikio_available():
        return None, "kvikio is not installed (pip install kvikio-cu13)"
    return dense_layout(path)


#: kvikio's thread pool in a process that reads with it, unless ``KVIKIO_NTHREADS`` says otherwise:
#: kvikio's own default is one thread, through which every read of the process (all the
#: partitions in flight) would pass one 4 MiB task at a time
KVIKIO_THREADS = 8
_configured: set = set()
_configure_lock = threading.Lock()


def configure_kvikio(kvikio) -> int | None:
    """Size kvikio's thread pool once per process (``KVIKIO_THREADS``, at most the machine's
    cores), unless ``KVIKIO_NTHREADS`` is set; returns the threads set, or None when left as is."""
    with _configure_lock:
        if id(kvikio) in _configured:
            return None
        _configured.add(id(kvikio))
        if os.environ.get("KVIKIO_NTHREADS"):
            return None
        n = max(1, min(KVIKIO_THREADS, os.cpu_count() or 1))
        defaults = _defaults_module(kvikio)
        try:
            if hasattr(defaults, "set"):  # kvikio >= 25.04
                defaults.set("num_threads", n)
            elif hasattr(defaults, "num_threads_reset"):
                defaults.num_threads_reset(n)
            else:
                logging.getLogger(__name__).warning(
                    "io: kvikio's thread pool left at its default (kvikio %s has no defaults.set or "
                    "defaults.num_threads_reset); KVIKIO_NTHREADS sets it", getattr(kvikio, "__version__", "?"))
                return None
        except Exception as exc:  # noqa: BLE001 - a kvikio without the setting: its default
            logging.getLogger(__name__).warning("io: kvikio's thread pool left at its default (%s: %s)",
                                                type(exc).__name__, exc)
            return None
        logging.getLogger(__name__).info("io: kvikio reads with %d threads (KVIKIO_NTHREADS to change)", n)
        return n


def _defaults_module(kvikio):
    """kvikio's ``defaults`` (its settings): the submodule ``kvikio.defaults``, which ``import
    kvikio`` does not import (kvikio 25.10 to 26.10: the package's ``__init__`` imports the
    compiled ``kvikio._lib.defaults`` only), so it is imported here; else the object's
    ``defaults`` attribute (the stand-ins of the tests, or a kvikio that has it)."""
    import importlib
    import types

    name = getattr(kvikio, "__name__", None)
    if isinstance(kvikio, types.ModuleType) and name:
        try:
            return importlib.import_module(f"{name}.defaults")
        except ImportError:
            pass
    return getattr(kvikio, "defaults", None)


#: chunk files open at once in ``read_rows`` (each a kvikio read in flight: its thread pool has
#: ``KVIKIO_THREADS``): a partition of one-object chunks would otherwise open thousands of
#: files, times the partitions in flight, beyond a common limit of 1024 descriptors per process
OPEN_FILES = 64


def read_rows(layout: DenseLayout, lo: int, hi: int, *, xp=None, kvikio=None):
    """Objects ``lo:hi`` (along the first axis) of the array as one device array, read chunk by
    chunk with kvikio into device buffers (missing chunks: the fill value). Chunks must span the
    other axes whole (as ``(k, C, H, W)`` chunks do).

    Up to ``OPEN_FILES`` chunks' reads are in flight at once (``CuFile.pread``: kvikio's thread
    pool reads them in parallel; the oldest is waited for and its file closed before the next
    opens); a chunk that lies whole inside ``lo:hi`` is read straight into its rows of the
    result, the others (the edges) into a chunk-sized buffer, copied into the result once read.
    On a GPU the reader's stream is synchronised after those copies, before their buffers go
    back to CuPy's pool: a GPUDirect Storage read writes device memory outside any stream, and
    another read could otherwise be given a buffer whose copy has not run yet.

    ``xp``/``kvikio``: the array module and kvikio (default: CuPy and kvikio, imported here).
    """
    if xp is None:
        import cupy as xp  # noqa: PLC0415 - only when a device read is made
    if kvikio is None:
        import kvikio  # noqa: PLC0415
    if tuple(layout.chunks[1:]) != tuple(layout.shape[1:]):
        raise ValueError(f"{layout.path}: chunks {layout.chunks} do not span the image axes {layout.shape[1:]}")
    configure_kvikio(kvikio)
    step = layout.chunks[0]
    dtype = np.dtype(layout.dtype)
    out = xp.empty((hi - lo, *layout.shape[1:]), dtype=dtype)
    # reads in flight, oldest first: (future, its open file, bytes expected, path,
    # edge: (buffer, rows of the chunk, rows of out) or None)
    pending: collections.deque = collections.deque()
    first_error: list = []  # (the first read's error, raised once every read has ended)
    edges = False

    def retire() -> None:  # the oldest read: waited for, its file closed, an edge copied
        nonlocal edges
        fut, file, nbytes, path, edge = pending.popleft()
        try:
            n, exc = _wait(fut)
        finally:
            file.close()
        if exc is None and n != nbytes:
            exc = OSError(f"{path}: read {n} of {nbytes} bytes (a truncated chunk)")
        if exc is not None:
            first_error.append(exc)
        elif edge is not None and not first_error:
            buf, rows, at = edge
            out[at] = buf[rows]
            edges = True

    try:
        for k in range(lo // step, -(-hi // step)):
            if first_error:
                break
            first, last = k * step, (k + 1) * step  # the chunk's rows (zarr stores whole edge chunks)
            a, b = max(lo, first), min(hi, last)
            path = layout.chunk_path((k,) + (0,) * (len(layout.shape) - 1))
            if not path.is_file():
                out[a - lo:b - lo] = layout.fill_value
                continue
            while len(pending) >= OPEN_FILES:
                retire()
            file = contextlib.ExitStack()  # (closes the CuFile: its context's exit)
            f = file.enter_context(kvikio.CuFile(str(path), "r"))
            try:
                if (a, b) == (first, last):
                    dest, edge = out[a - lo:b - lo], None
                else:
                    dest = xp.empty((step, *layout.shape[1:]), dtype=dtype)
                    edge = (dest, slice(a - first, b - first), slice(a - lo, b - lo))
                pending.append((f.pread(dest), file, dest.nbytes, path, edge))
            except BaseException:
                file.close()
                raise
    finally:  # (every started read is waited for before its file closes, errors or not)
        while pending:
            retire()
    if first_error:
        raise first_error[0]
    if edges and xp is not np:
        xp.cuda.get_current_stream().synchronize()  # (the edge buffers' copies, before the pool reuses them)
    return out


def _wait(future) -> tuple[int | None, BaseException | None]:
    try:
        return future.get(), None
    except Exception as exc:  # noqa: BLE001 - raised by read_rows once every read has ended
        return None, exc
