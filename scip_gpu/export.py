"""Writing a run's outputs.

- ``{filename}.parquet/part-NNNNN.parquet``: one file per partition, written by the worker that
  computed it, atomically (temporary name, then rename). The schema metadata key ``scip_gpu``
  holds the JSON description of every column.
- ``{filename}.h5ad``: AnnData with features in ``X`` (float32), the column descriptions in
  ``var`` and the metadata (``meta_*``) in ``obs``. ``X`` is streamed from the Parquet parts, so
  memory does not grow with the number of objects beyond the ``obs`` table.
- ``errors.csv``: one row per object that could not be profiled (also when there are none).

Every file is written under a temporary name of its own process (``temp_path``: ``.NAME.PID.RANDOM.tmp``)
and renamed into place, so that two processes never write one temporary file, and readers of a
Parquet dataset skip the temporary files (they start with ``.``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .features.registry import Column, columns_json, var_table

PARQUET_META_KEY = b"scip_gpu"
ERROR_COLUMNS = ["meta_index", "object", "stage", "error"]


def temp_path(final: Path) -> Path:
    """A temporary name for writing ``final`` that no other process or call uses
    (``.NAME.PID.RANDOM.tmp`` next to it); rename it to ``final`` when complete."""
    import secrets

    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def _replacing(final: Path):
    """``with _replacing(final) as tmp``: write ``tmp``; on success it replaces ``final``
    atomically, on any failure (Ctrl-C included) it is removed and ``final`` is left as it was."""
    tmp = temp_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


def arrow_schema(meta: pd.DataFrame, columns: Sequence[Column]):
    """Schema of every partition file: meta columns as in the object table, features float64."""
    import pyarrow as pa

    base = pa.Schema.from_pandas(meta, preserve_index=False)
    fields = [f if f.type != pa.null() else pa.field(f.name, pa.string()) for f in base]
    fields.append(pa.field("meta_status", pa.string()))
    fields += [pa.field(c.name, pa.float64()) for c in columns]
    return pa.schema(fields, metadata={PARQUET_META_KEY: columns_json(columns).encode()})


def write_part(folder: Path, part: int, table: pd.DataFrame, schema, values: np.ndarray | None = None) -> Path:
    """Write one partition's table atomically; returns the final path.

    ``table`` holds the leading columns of ``schema`` (all of them when ``values`` is None);
    ``values`` (rows, F) the float64 columns that follow. Float columns are written without
    dictionary encoding (it never pays for measurements and triples the writing time).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / part_name(part)
    if values is None:
        arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    else:
        lead = len(table.columns)
        head = pa.Table.from_pandas(table, schema=pa.schema(list(schema)[:lead]), preserve_index=False)
        by_column = np.ascontiguousarray(np.asarray(values, dtype=np.float64).T)  # one copy, then zero-copy
        arrays = head.columns + [pa.array(col) for col in by_column]
        arrow = pa.Table.from_arrays(arrays, schema=schema)
    dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
    with _replacing(final) as tmp:
        pq.write_table(arrow, tmp, use_dictionary=dictionary)
    return final


def read_columns(path: Path) -> list[dict]:
    """Column descriptions stored in a Parquet file's schema metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(PARQUET_META_KEY, b"[]"))


def _import_anndata() -> None:
    try:
        import anndata  # noqa: F401
        import h5py  # noqa: F401
    except Exception:  # reported where they are used
        pass


def preload_anndata() -> None:
    """Import anndata (about 0.4 s) in a background thread of the driver, which mostly waits
    while the partitions run, instead of after the last one."""
    import threading

    threading.Thread(target=_import_anndata, name="scip_gpu-preload-anndata", daemon=True).start()


def _anndata_without_x(parts: Sequence[Path], columns: Sequence[Column], meta_columns: Sequence[str],
                       uns: dict | None):
    """The AnnData of the Parquet parts without X (obs, var, uns) and the feature column names."""
    import anndata as ad
    import pyarrow.parquet as pq

    feat = [c for c in columns if c.kind == "feat"]
    obs_cols = list(meta_columns) + ["meta_status"] + [c.name for c in columns if c.kind == "meta"]
    obs = pd.concat([pq.read_table(p, columns=obs_cols).to_pandas() for p in parts], ignore_index=True) \
        if parts else pd.DataFrame(columns=obs_cols)
    if "meta_index" in obs:
        obs.index = obs["meta_index"].astype(str)
    elif {"meta_field", "meta_label"} <= set(obs.columns):  # objects segmented from fields
        obs.index = obs["meta_field"].astype(str) + "-" + obs["meta_label"].astype(str)
    else:
        obs.index = obs.index.astype(str)
    obs.index.name = None
    for col in obs.columns:  # h5ad and zarr store object columns as strings only
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str)
    var = var_table(feat) if feat else pd.DataFrame(index=pd.Index([], dtype=str))
    return ad.AnnData(obs=obs, var=var, uns=uns or {}), [c.name for c in feat]


def _x_blocks(parts: Sequence[Path], names: Sequence[str]):
    """X, one partition at a time (float32 blocks straight from Arrow, no DataFrame)."""
    import pyarrow.parquet as pq

    for p in parts:
        table = pq.read_table(p, columns=list(names))
        block = np.empty((table.num_rows, len(names)), dtype=np.float32)
        for j, col in enumerate(table.columns):
            block[:, j] = col.to_numpy()
        yield block


def _x_chunk_rows(n: int, k: int) -> int:
    return max(1, min(n, 2**20 // max(k, 1)))


def write_anndata(parts: Sequence[Path], path: Path, columns: Sequence[Column], meta_columns: Sequence[str],
                  uns: dict | None = None) -> None:
    """Write the AnnData file from the Parquet parts (X streamed, float32)."""
    import h5py

    adata, names = _anndata_without_x(parts, columns, meta_columns, uns)
    with _replacing(path) as tmp:  # a temporary file of this process, renamed when complete
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "a") as f:
            if "X" in f:
                del f["X"]
            n, k = adata.n_obs, len(names)
            x = f.create_dataset("X", shape=(n, k), dtype="float32",
                                 chunks=(_x_chunk_rows(n, k), k) if n and k else None)
            x.attrs["encoding-type"] = "array"
            x.attrs["encoding-version"] = "0.2.0"
            row = 0
            for block in _x_blocks(parts, names):  # one partition in memory at a time
                x[row:row + len(block)] = block
                row += len(block)


def write_anndata_zarr(parts: Sequence[Path], path: Path, columns: Sequence[Column], meta_columns: Sequence[str],
                       uns: dict | None = None) -> None:
    """Write the AnnData as a zarr (v3) store (``anndata.read_zarr`` reads it), X streamed,
    float32, the same content as ``write_anndata``'s .h5ad."""
    import anndata as ad
    import zarr

    adata, names = _anndata_without_x(parts, columns, meta_columns, uns)
    with replacing_dir(path) as tmp, warnings.catch_warnings():
        # anndata consolidates the metadata (as it reads fastest), which zarr notes is outside the v3 spec
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # zarr v3 (anndata's next default); no sharding: X is written one row block at a time
        settings = {"zarr_write_format": 3, "auto_shard_zarr_v3": False}
        with ad.settings.override(**{k: v for k, v in settings.items() if hasattr(ad.settings, k)}):
            adata.write_zarr(tmp)
        group = zarr.open_group(str(tmp), mode="a", use_consolidated=False)
        n, k = adata.n_obs, len(names)
        x = group.create_array("X", shape=(n, k), dtype="float32",
                               chunks=(max(_x_chunk_rows(n, k), 1), max(k, 1)))
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        row = 0
        for block in _x_blocks(parts, names):
            x[row:row + len(block)] = block
            row += len(block)
        zarr.consolidate_metadata(str(tmp))  # again, now with X


@contextlib.contextmanager
def replacing_dir(final: Path):
    """``with replacing_dir(final) as tmp``: write the folder ``tmp`` (a zarr store); on success it
    takes the place of ``final`` (this run's own earlier copy, on resume, is removed), on any
    failure it is removed and ``final`` is left as it was."""
    import shutil

    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        if final.exists():
            old = temp_path(final)
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a temporary file of this process, then rename)."""
    with _replacing(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_errors(path: Path, errors: Sequence[dict]) -> None:
    with _replacing(Path(path)) as tmp:
        pd.DataFrame(list(errors), columns=ERROR_COLUMNS).to_csv(tmp, index=False)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("scip_gpu", "numpy", "scipy", "scikit-image", "pandas", "pyarrow", "dask", "distributed",
                 "zarr", "numcodecs", "tifffile", "anndata", "h5py", "hydra-core", "omegaconf",
                 "cupy-cuda13x", "cucim-cu13", "dask-cuda", "cellpose", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_revision() -> str | None:
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if res.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
