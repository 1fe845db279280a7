"""Writing a run's outputs.

- ``{filename}.parquet/part-NNNNN.parquet``: one file per partition, written by the worker that
  computed it, atomically (temporary name, then rename). Nothing else is in that folder, so that
  pandas, pyarrow, polars and DuckDB all read it as one dataset. The parts carry no Arrow schema
  copy (``store_schema=False``: every column is a plain Parquet type) and, as schema metadata
  ``scip_gpu``, only a small JSON key naming the column description file.
- ``{filename}.columns.csv``: the description of every column (name, kind, family, feature,
  mask, view, channel, parameters, type, why it can be NaN), once for the run.
- ``{filename}.h5ad``: AnnData with features in ``X`` (float32), the column descriptions in
  ``var`` and the metadata (``meta_*``) in ``obs``. ``X`` is streamed from the Parquet parts, so
  memory does not grow with the number of objects beyond the ``obs`` table.
- ``{filename}.analysis.h5ad`` (``export.analysis_ready=true``): the same AnnData, analysis-ready:
  ok rows only, columns NaN in more than ``export.max_nan_share`` of them dropped, the remaining
  NaN replaced by the column's median over the ok rows (``var``: ``nan_share``, ``n_imputed``,
  ``impute_value``; ``uns["scip_gpu_analysis"]``: the dropped columns).
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
from dataclasses import fields as dataclass_fields
from typing import Sequence

import numpy as np
import pandas as pd

from .features.registry import Column, var_table
from .scratch import NO_POOL

PARQUET_META_KEY = b"scip_gpu"
#: version of the layout of the Parquet outputs (2: descriptions in the sidecar, not in each part)
PARQUET_LAYOUT = 2
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


def columns_file(filename: str) -> str:
    """Name of the column description file of the outputs called ``filename`` (in the run folder)."""
    return f"{filename}.columns.csv"


def _arrow_type(dtype: str):
    import pyarrow as pa

    return {"bool": pa.bool_(), "float64": pa.float64()}[dtype]


def arrow_schema(meta: pd.DataFrame, columns: Sequence[Column], filename: str = "features"):
    """Schema of every partition file: meta columns as in the object table, then the plan's
    columns (float64; flags bool). Its metadata is only a key naming the description file."""
    import pyarrow as pa

    base = pa.Schema.from_pandas(meta, preserve_index=False)
    fields = [f if f.type != pa.null() else pa.field(f.name, pa.string()) for f in base]
    fields.append(pa.field("meta_status", pa.string()))
    fields += [pa.field(c.name, _arrow_type(c.dtype)) for c in columns]
    key = {"layout": PARQUET_LAYOUT, "columns": columns_file(filename), "n_columns": len(fields)}
    return pa.schema(fields, metadata={PARQUET_META_KEY: json.dumps(key).encode()})


def check_column_names(schema, columns: Sequence[Column], formats: Sequence[str]) -> None:
    """Refuse, before anything is written, column names that the outputs cannot hold.

    - a name twice: a channel, mask or metadata name that rebuilds a name scip_gpu writes
      itself (channel ``combined``: ``feat_li_area_combined`` is also the combined mask's area).
      pandas would read the Parquet parts with the column twice, polars and DuckDB refuse them,
      AnnData cannot be written; or two names that differ only in case (channels ``DNA`` and
      ``dna``): DuckDB renames the second and a query of it returns the first;
    - a ``/`` in a column of AnnData's ``obs`` (every column but the features, which are ``var``
      names): ``obs`` columns are HDF5 / zarr keys, where ``/`` nests a group (anndata
      deprecates it); only with ``formats`` holding ``anndata``, ``anndata_zarr`` or
      ``analysis_ready``.

    Raises ``ConfigError`` naming the columns and what to rename.
    """
    from collections import Counter

    from .errors import ConfigError

    names = [f.name for f in schema]
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise ConfigError(
            f"the column name(s) {twice[:5]} would be written more than once: a channel name "
            "(dataset.channel_names), a mask name (masks.methods[].name) or a metadata column (regex group, "
            "CSV column) rebuilds a name scip_gpu writes itself (e.g. a channel named 'combined' and the "
            "combined mask's columns); rename it")
    folded: dict[str, str] = {}
    for n in names:
        other = folded.setdefault(n.casefold(), n)
        if other != n:
            raise ConfigError(
                f"the columns {other!r} and {n!r} differ only in case: DuckDB reads column names without case "
                "(it renames the second one and a query of it returns the first), and zarr's folders clash on "
                "case-insensitive file systems; rename a channel (dataset.channel_names), mask or metadata column")
    if {"anndata", "anndata_zarr", "analysis_ready"} & set(formats):
        feat = {c.name for c in columns if c.kind == "feat"}
        slashed = [n for n in names if n not in feat and "/" in n]
        if slashed:
            raise ConfigError(
                f"the column(s) {slashed[:5]} hold a '/', which AnnData cannot store in obs (HDF5 and zarr read "
                "it as a sub-group): rename the channel (dataset.channel_names), mask or metadata column it comes "
                "from, or write Parquet only (export.formats=[parquet])")


def _arrow_column(values: np.ndarray, type_):
    """One column of the (rows, F) value table as Arrow: flags (0/1) as bool, NaN as null."""
    import pyarrow as pa

    if pa.types.is_boolean(type_):
        missing = np.isnan(values)
        return pa.array(values == 1.0, type=pa.bool_(), mask=missing if missing.any() else None)
    return pa.array(values)


#: tile of ``columns_first``'s transposing copy (rows x columns of the (rows, F) table): a
#: 512x64 float64 tile's reads and writes stay in the cache
_TILE_ROWS, _TILE_COLS = 512, 64


def columns_first(values: np.ndarray, *, scratch=NO_POOL) -> np.ndarray:
    """The (rows, F) float64 table as a C-contiguous (F, rows) array, column by column: free for
    a column-major table, else one transposing copy by tiles (about 2.5x faster than NumPy's
    element-by-element transposed copy of a wide table, which runs along the output's rows and
    strides across the input's for every element). ``scratch``: a ``scratch.ScratchPool`` for
    the copy."""
    values = np.asarray(values, dtype=np.float64)
    if values.flags.f_contiguous:
        return values.T
    n, f = values.shape
    out = scratch.empty((f, n))
    for i in range(0, n, _TILE_ROWS):
        for j in range(0, f, _TILE_COLS):
            out[j:j + _TILE_COLS, i:i + _TILE_ROWS] = values[i:i + _TILE_ROWS, j:j + _TILE_COLS].T
    return out


def _arrow_columns(by_column: np.ndarray, fields) -> list:
    """The rows of the (F, rows) C-contiguous ``by_column`` as Arrow columns of ``fields``'
    types: float columns as zero-copy slices of one Arrow buffer (one Python call per column
    instead of a conversion), flag columns as ``_arrow_column`` makes them."""
    import pyarrow as pa

    f, n = by_column.shape
    whole = (pa.Array.from_buffers(pa.float64(), by_column.size, [None, pa.py_buffer(by_column)])
             if by_column.size else None)  # (zero-copy: the array keeps ``by_column`` alive)
    return [_arrow_column(by_column[j], field.type) if not pa.types.is_float64(field.type)
            else (whole.slice(j * n, n) if whole is not None else pa.array(by_column[j]))
            for j, field in enumerate(fields)]


_DICTIONARY: dict[int, tuple] = {}  # id(schema) -> (schema, its dictionary-encoded column names)


def _dictionary_columns(schema) -> list[str]:
    """The columns of ``schema`` written with dictionary encoding (every one but the floats),
    worked out once per schema object: every partition of a run passes the same one, and the
    loop over its thousands of fields held the GIL for milliseconds per partition."""
    import pyarrow as pa

    hit = _DICTIONARY.get(id(schema))
    if hit is not None and hit[0] is schema:  # (the schema itself is kept: its id is never reused)
        return hit[1]
    names = [f.name for f in schema if not pa.types.is_floating(f.type)]
    if len(_DICTIONARY) >= 8:
        _DICTIONARY.clear()
    _DICTIONARY[id(schema)] = (schema, names)
    return names


def write_part(folder: Path, part: int, table: pd.DataFrame, schema, values: np.ndarray | None = None, *,
               compression: str = "snappy", scratch=NO_POOL) -> Path:
    """Write one partition's table atomically (``compression``: its Parquet codec, ``export.compression``);
    returns the final path.

    ``table`` holds the leading columns of ``schema`` (all of them when ``values`` is None);
    ``values`` (rows, F) the float64 columns that follow (bool flag columns as 0/1, NaN where
    unknown). Float columns are written without dictionary encoding (it never pays for
    measurements and triples the writing time). No Arrow schema copy is stored in the footer:
    with 1000+ columns it weighed more than the values of a small partition. ``scratch``: a
    ``scratch.ScratchPool`` for the column-by-column copy (given back once written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / part_name(part)
    by_column = None
    if values is None:
        arrow = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    else:
        lead = len(table.columns)
        head = pa.Table.from_pandas(table, schema=pa.schema(list(schema)[:lead]), preserve_index=False)
        by_column = columns_first(values, scratch=scratch)
        arrow = pa.Table.from_arrays(head.columns + _arrow_columns(by_column, list(schema)[lead:]), schema=schema)
        del head
    arrow = arrow.replace_schema_metadata(None)  # no pandas metadata either
    dictionary = _dictionary_columns(schema)
    with _replacing(final) as tmp:
        # (without the Arrow schema copy, the footer's key-value metadata must be added by hand)
        with pq.ParquetWriter(tmp, arrow.schema, use_dictionary=dictionary, store_schema=False,
                              compression=compression) as writer:
            writer.add_key_value_metadata(schema.metadata or {})
            writer.write_table(arrow)
    if by_column is not None:
        del arrow  # (its columns are views of by_column: given back only once they are gone)
        scratch.give(by_column)
    return final


def write_columns(path: Path, columns: Sequence[Column], schema=None) -> None:
    """Write the column description file (every column of the parts: the leading meta columns
    with only their name, kind and type, then the plan's columns)."""
    from .features.registry import nan_reason

    rows = []
    if schema is not None:
        planned = {c.name for c in columns}
        for f in schema:
            if f.name not in planned:
                rows.append({"name": f.name, "kind": "meta", "family": "input", "dtype": str(f.type)})
    names: dict[type, list[str]] = {}  # (dataclasses.asdict deep-copies: a third of a second for 5000 columns)
    for c in columns:
        keys = names.get(type(c)) or names.setdefault(type(c), [f.name for f in dataclass_fields(c)])
        d = {k: getattr(c, k) for k in keys}
        d["nan_reason"] = nan_reason(c)
        rows.append(d)
    order = ["name", "kind", "family", "feature", "mask", "view", "channel", "params", "dtype"]
    extra = [k for keys in names.values() for k in keys if k not in order]  # e.g. CellProfiler's measurement name
    order += list(dict.fromkeys(extra)) + ["nan_reason"]
    with _replacing(Path(path)) as tmp:
        pd.DataFrame(rows).reindex(columns=order).to_csv(tmp, index=False)


def read_columns(path: Path) -> pd.DataFrame:
    """The column descriptions of a run's Parquet outputs, indexed by column name.

    ``path``: a part file, the ``{filename}.parquet`` folder, or the run folder.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() and path.suffix != ".parquet":  # the run folder
        found = sorted(path.glob("*.columns.csv"))
        if not found:
            raise FileNotFoundError(f"{path}: no *.columns.csv column description file")
        return pd.read_csv(found[0], index_col="name", keep_default_na=False)
    part = path if path.is_file() else min(path.glob("part-*.parquet"))
    key = json.loads((pq.read_schema(part).metadata or {}).get(PARQUET_META_KEY, b"{}"))
    folder = part.parent.parent
    return pd.read_csv(folder / key["columns"], index_col="name", keep_default_na=False)


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


def read_obs(parts: Sequence[Path], columns: Sequence[str]) -> pd.DataFrame:
    """The given columns of the parts as one frame; flag columns as pandas' nullable boolean
    (null in error rows), which AnnData writes as such."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        return pd.DataFrame(columns=list(columns))
    mapper = {pa.bool_(): pd.BooleanDtype()}.get
    return pd.concat([pq.read_table(p, columns=list(columns)).to_pandas(types_mapper=mapper) for p in parts],
                     ignore_index=True)


def _obs_for_anndata(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` with the index every AnnData output of a run shares (so that they join on
    ``obs_names``): ``meta_index``, or for objects segmented from fields ``<meta_field>-<meta_label>``;
    object columns as strings (h5ad and zarr store them as strings only), a missing value (null
    in the Parquet parts, e.g. a metadata CSV without a row for the object) kept missing: such a
    column becomes categorical (missing: NaN), not the made-up string ``"None"``."""
    if "meta_index" in obs:
        obs.index = obs["meta_index"].astype(str)
    elif {"meta_field", "meta_label"} <= set(obs.columns):  # objects segmented from fields
        obs.index = obs["meta_field"].astype(str) + "-" + obs["meta_label"].astype(str)
    else:
        obs.index = obs.index.astype(str)
    obs.index.name = None
    for col in obs.columns:
        if obs[col].dtype == object:
            missing = obs[col].isna()
            if missing.any():
                obs[col] = pd.Categorical(obs[col].where(missing, obs[col].astype(str)))
            else:
                obs[col] = obs[col].astype(str)
    return obs


def _obs_columns(columns: Sequence[Column], meta_columns: Sequence[str]) -> list[str]:
    """The parts' columns that make the AnnData's obs."""
    return list(meta_columns) + ["meta_status"] + [c.name for c in columns if c.kind == "meta"]


def _obs_frame(table) -> pd.DataFrame:
    """An Arrow table of obs columns as pandas, flags as nullable booleans (as ``read_obs``)."""
    import pyarrow as pa

    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def _anndata_without_x(parts: Sequence[Path], columns: Sequence[Column], meta_columns: Sequence[str],
                       uns: dict | None):
    """The AnnData of the Parquet parts without X (obs, var, uns) and the feature column names."""
    import anndata as ad

    feat = [c for c in columns if c.kind == "feat"]
    obs_cols = _obs_columns(columns, meta_columns)
    obs = _obs_for_anndata(read_obs(parts, obs_cols))
    var = var_table(feat) if feat else pd.DataFrame(index=pd.Index([], dtype=str))
    return ad.AnnData(obs=obs, var=var, uns=uns or {}), [c.name for c in feat]


def _x_of(table) -> np.ndarray:
    """(rows, columns) float32 of an Arrow table of float columns (no DataFrame)."""
    if table.num_columns == 0:
        return np.empty((table.num_rows, 0), dtype=np.float32)
    by_column = np.stack([col.to_numpy() for col in table.columns])  # (columns, rows): contiguous copies
    with np.errstate(over="ignore"):  # (float32: a value beyond its range is inf in X)
        return np.ascontiguousarray(by_column.T, dtype=np.float32)


def _x_blocks(parts: Sequence[Path], names: Sequence[str]):
    """X, one partition at a time."""
    import pyarrow.parquet as pq

    for p in parts:
        yield _x_of(pq.ParquetFile(p).read(columns=list(names)))


def _x_chunk_rows(n: int, k: int) -> int:
    return max(1, min(n, 2**20 // max(k, 1)))


def write_anndata(parts: Sequence[Path], path: Path, columns: Sequence[Column], meta_columns: Sequence[str],
                  uns: dict | None = None) -> None:
    """Write the AnnData file from the Parquet parts (X streamed, float32), all after the run
    (for object datasets the pipeline writes X while the partitions run: ``AnnDataWriter``)."""
    import pyarrow.parquet as pq

    rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    offsets = dict(enumerate(np.cumsum([0] + rows[:-1]).tolist())) if rows else {}
    AnnDataWriter(path, sum(rows), columns, meta_columns, offsets).finish(parts, uns)


def _write_elem(f, key: str, value) -> None:
    try:
        from anndata.io import write_elem
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import write_elem
    write_elem(f, key, value)


def _write_h5ad_without_x_var(f, adata) -> None:
    """Write ``adata``'s elements other than X and var (``AnnDataWriter`` writes those while the
    partitions run) into the open h5py file ``f`` as ``AnnData.write_h5ad`` does (strings as
    categoricals, the root's encoding attributes)."""
    adata.strings_to_categoricals(adata.obs)
    f.attrs.setdefault("encoding-type", "anndata")
    f.attrs.setdefault("encoding-version", "0.1.0")
    _write_elem(f, "obs", adata.obs)
    for key in ("obsm", "varm", "obsp", "varp", "layers"):
        _write_elem(f, key, dict(getattr(adata, key)))
    _write_elem(f, "uns", dict(adata.uns))


def x_side_path(run_folder: Path, part: int) -> Path:
    """Where a worker leaves partition ``part``'s rows of the AnnData X (float32, raw) for the
    driver's ``AnnDataWriter``: a hidden temporary file in the run folder, removed once written
    into X or when the run fails (and, as every ``.*.tmp``, by a resume)."""
    return Path(run_folder) / f".x-{part_name(part)}.f32.tmp"


def write_x_side(run_folder: Path, part: int, values: np.ndarray, columns: Sequence[Column], *,
                 scratch=NO_POOL) -> None:
    """Write a partition's X rows (its feature columns as float32) for ``AnnDataWriter``: the
    worker has the table in memory, which costs far less than decoding the part again."""
    from .report import column_runs

    values = np.asarray(values)
    feat = np.array([j for j, c in enumerate(columns) if c.kind == "feat"], dtype=np.intp)
    shape = (len(values), len(feat))
    block = scratch.empty(shape, np.float32)
    at = 0
    with np.errstate(over="ignore"):  # (X is float32: a value beyond its range is inf there, as before)
        for a, b in column_runs(feat):  # (one casting copy per run of columns, straight into X's rows)
            block[:, at:at + b - a] = values[:, a:b]
            at += b - a
    final = x_side_path(run_folder, part)
    tmp = temp_path(final)
    try:
        # (a Python file, not ndarray.tofile: on a full disk that raises an OSError without errno,
        # "N requested and M written", which read as a cluster fault, not as the full disk)
        with open(tmp, "wb") as f:
            f.write(np.ascontiguousarray(block).data)  # (any shape, zero-size ones too)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    scratch.give(block)


def read_x_side(path: Path, n: int, k: int) -> np.ndarray | None:
    """The (n, k) float32 rows a worker left (``write_x_side``), or None when there are none
    of that size."""
    if _side_size(path) != n * k * 4:
        return None
    try:
        return np.fromfile(path, dtype=np.float32).reshape(n, k)
    except OSError:
        return None


#: threads reading parts for ``AnnDataWriter`` (Parquet decoding releases the GIL; HDF5 writes
#: are one at a time)
X_THREADS = 4


def _raw_x_dataset(file, n: int, k: int):
    """The (n, k) float32 X of an ``.h5ad`` being written, and its byte offset in the file.

    X is contiguous (row-major, little-endian), its space allocated when it is created and never
    filled by HDF5, so that its rows can be written into the file at ``offset + 4 * k * row``
    without HDF5: a worker's rows are copied from its file by the kernel (``copy_file_range``),
    with no pass through this process's memory and no lock. HDF5 itself then never reads or
    writes X's bytes (its sieve buffer could otherwise write back stale bytes over rows written
    beside it). Without rows or columns: an empty dataset, offset None (nothing to write)."""
    import h5py

    if not (n and k):
        return file.create_dataset("X", shape=(n, k), dtype="float32"), None
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dsid = h5py.h5d.create(file.id, b"X", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((n, k)), dcpl=dcpl)
    offset = dsid.get_offset()
    if offset is None:  # (allocated early: HDF5 always gives it)
        raise RuntimeError(f"{file.filename}: HDF5 gave X no place in the file")
    return h5py.Dataset(dsid), int(offset)


def _side_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # (a part without rows: empty)
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise OSError(f"wrote {done} bytes of X at offset {offset}")
        view, offset = view[done:], offset + done


def _copy_file(src: Path, fd: int, offset: int, size: int) -> None:
    """``size`` bytes of ``src`` into ``fd`` at ``offset``: by the kernel (``os.copy_file_range``)
    where it can, else read and written in 64 MiB pieces."""
    with open(src, "rb", buffering=0) as f:
        at = 0
        if hasattr(os, "copy_file_range"):
            try:
                while at < size:
                    done = os.copy_file_range(f.fileno(), fd, size - at, at, offset + at)
                    if done <= 0:
                        break
                    at += done
            except OSError:  # (a file system or kernel without it: the copy below)
                pass
        while at < size:
            chunk = os.pread(f.fileno(), min(size - at, 2**26), at)
            if not chunk:
                raise OSError(f"{src}: {at} of {size} bytes")
            _pwrite_all(fd, np.frombuffer(chunk, dtype=np.uint8), offset + at)
            at += len(chunk)


class AnnDataWriter:
    """The run's ``.h5ad`` file, its X written while the partitions run.

    X (float32, one row per object in the order of the parts) goes into a temporary file of
    this process as each partition's part is written (``add``, called by the driver as the
    partition comes back; a background thread reads the part and writes its rows at the
    partition's offset). ``finish`` writes the parts not yet added, then obs, var and uns,
    and renames the file into place; ``abort`` (any failure, Ctrl-C) removes it. After the
    last partition only its own rows and obs/var are left to write, not all of X (the whole
    table read back from Parquet took longer than profiling it on a GPU).
    """

    def __init__(self, path: Path, n_rows: int, columns: Sequence[Column], meta_columns: Sequence[str],
                 offsets: dict[int, int], keep: Sequence[str] = ()):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import h5py

        self.path, self.offsets = Path(path), dict(offsets)
        self.columns, self.names = list(columns), [c.name for c in columns if c.kind == "feat"]
        self.obs_columns = _obs_columns(columns, meta_columns)
        self.obs: dict[int, pd.DataFrame] = {}
        self.keep = [c for c in keep if c in set(self.obs_columns) | set(self.names)]  # (read anyway)
        self.kept: dict[int, pd.DataFrame] = {}
        self.tmp = temp_path(self.path)
        n, k = int(n_rows), len(self.names)
        self.file = h5py.File(self.tmp, "w")
        self.x, self.x_offset = _raw_x_dataset(self.file, n, k)
        self._fd = os.open(self.tmp, os.O_WRONLY) if self.x_offset is not None else None
        self.x.attrs["encoding-type"] = "array"
        self.x.attrs["encoding-version"] = "0.2.0"
        self.added: set[int] = set()
        self.futures: list = []
        self._lock = threading.Lock()  # (h5py serialises its calls; the block reads run in parallel)
        self._pool = ThreadPoolExecutor(X_THREADS, thread_name_prefix="scip_gpu-anndata")
        feat = [c for c in self.columns if c.kind == "feat"]  # (var: 1 s for 5000 columns, meanwhile)
        self._var = self._pool.submit(self._write_var, feat)

    def _write_var(self, feat: Sequence[Column]) -> pd.DataFrame:
        """Write var (the feature columns' descriptions) into the file; returns it."""
        import anndata as ad

        var = var_table(feat) if feat else pd.DataFrame(index=pd.Index([], dtype=str))
        adata = ad.AnnData(var=var)
        adata.strings_to_categoricals(adata.var)  # (as AnnData.write_h5ad stores them)
        with self._lock:
            _write_elem(self.file, "var", adata.var)
        return adata.var

    def _write(self, part: int, path: Path) -> None:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)  # (one footer read)
        n = pf.metadata.num_rows
        side = self._side(part)
        k = len(self.names)
        from_side = _side_size(side) == 4 * n * k  # (else: resumed or recovered partitions, decoded from the part)
        small = list(dict.fromkeys(self.obs_columns + self.keep))
        table = pf.read(columns=small if from_side else small + [c for c in self.names if c not in set(small)])
        self.obs[part] = _obs_frame(table.select(self.obs_columns))
        if self.keep:
            self.kept[part] = _obs_frame(table.select(self.keep))
        if n and k:  # its rows of X, at their place in the file
            at = self.x_offset + 4 * k * self.offsets[part]
            if from_side:  # the worker's bytes are X's rows as they are: a copy in the kernel
                _copy_file(side, self._fd, at, 4 * n * k)
            else:
                _pwrite_all(self._fd, np.ascontiguousarray(_x_of(table.select(self.names)), dtype="<f4"), at)
        side.unlink(missing_ok=True)

    def add(self, part: int, path: Path) -> None:
        """Write partition ``part``'s rows (its part file ``path`` is complete) in the background."""
        if part in self.added:
            return
        self.added.add(part)
        self.futures.append(self._pool.submit(self._write, part, Path(path)))

    def finish(self, parts: Sequence[Path], uns: dict | None = None) -> None:
        """Complete X (the parts not added yet), write obs/var/uns, rename into place. Raises
        what a background write raised (the file is then removed)."""
        import anndata as ad

        try:
            for i, p in enumerate(parts):
                self.add(i, p)
            for fut in self.futures:
                fut.result()
            frames = [self.obs[i] for i in range(len(parts))]
            obs = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=self.obs_columns))
            _write_h5ad_without_x_var(self.file, ad.AnnData(obs=_obs_for_anndata(obs), var=self._var.result(),
                                                            uns=uns or {}))
            self._close_fd()
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _side(self, part: int) -> Path:
        """Where the worker leaves the part's X rows (the run folder: this file's)."""
        return x_side_path(self.path.parent, part)

    def kept_frame(self, n_parts: int) -> pd.DataFrame | None:
        """The ``keep`` columns of the parts 0..n_parts-1 in order, as ``read_obs`` reads them
        (after ``finish``); None when a part's are missing."""
        if not self.keep or any(i not in self.kept for i in range(n_parts)):
            return None
        return pd.concat([self.kept[i] for i in range(n_parts)], ignore_index=True) if n_parts else None

    def abort(self) -> None:
        """Drop the temporary file (the run failed or stopped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_fd()
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        self.tmp.unlink(missing_ok=True)
        for part in self.offsets:  # the workers' X rows not written yet
            self._side(part).unlink(missing_ok=True)


def _feature_blocks(parts: Sequence[Path], names: Sequence[str], ok: np.ndarray, size: int | None = None):
    """(first column, (n_ok, b) float64 block) of the ok rows, ``size`` columns at a time
    (default: blocks of about 128 MiB, at most 256 columns)."""
    import pyarrow.parquet as pq

    if size is None:
        size = int(max(1, min(256, 2**27 // (8 * max(len(ok), 1)))))
    files = [pq.ParquetFile(p) for p in parts]  # (each footer parsed once, not once per block)
    for a in range(0, len(names), size):
        cols = list(names[a:a + size])
        block = np.concatenate([np.column_stack([c.to_numpy() for c in f.read(columns=cols).columns])
                                if f.metadata.num_rows else np.empty((0, len(cols)))
                                for f in files]) if files else np.empty((0, len(cols)))
        yield a, block[ok]


def write_analysis_ready(parts: Sequence[Path], path: Path, columns: Sequence[Column], meta_columns: Sequence[str],
                         *, max_nan_share: float = 0.5, uns: dict | None = None) -> dict:
    """Write the analysis-ready AnnData (see the module docstring): no NaN in ``X``, so that
    ``scanpy.pp.pca`` and scikit-learn run on it as it is. Columns are read from the Parquet
    parts a block at a time (twice: shares and medians, then the values). Returns a summary."""
    import anndata as ad
    import h5py

    feat = [c for c in columns if c.kind == "feat"]
    names = [c.name for c in feat]
    obs_cols = list(meta_columns) + ["meta_status"] + [c.name for c in columns if c.kind == "meta"]
    obs = read_obs(parts, obs_cols)
    ok = (obs["meta_status"] == "ok").to_numpy()
    obs = obs[ok].reset_index(drop=True)
    n = len(obs)
    share = np.ones(len(names))
    median = np.full(len(names), np.nan)
    for a, block in _feature_blocks(parts, names, ok):
        miss = np.isnan(block)
        share[a:a + block.shape[1]] = miss.mean(axis=0) if n else 1.0
        some = ~miss.all(axis=0)
        if n:
            median[a:a + block.shape[1]][some] = np.nanmedian(block[:, some], axis=0)
    keep = (share <= max_nan_share) & ~np.isnan(median)
    kept = [c for c, k in zip(feat, keep) if k]
    var = var_table(kept) if kept else pd.DataFrame(index=pd.Index([], dtype=str))
    if kept:
        var["nan_share"] = share[keep]
        var["n_imputed"] = np.round(share[keep] * n).astype(np.int64)
        var["impute_value"] = median[keep]
    dropped = [nm for nm, k in zip(names, keep) if not k]
    obs = _obs_for_anndata(obs)
    info = {"rows": int(n), "rows_dropped_errors": int((~ok).sum()), "columns": len(kept),
            "columns_dropped": len(dropped), "max_nan_share": float(max_nan_share),
            "values_imputed": int(var["n_imputed"].sum()) if kept else 0}
    adata = ad.AnnData(obs=obs, var=var, uns={**(uns or {}), "scip_gpu_analysis": {**info, "dropped": dropped}})
    with _replacing(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "a") as f:
            if "X" in f:
                del f["X"]
            x = f.create_dataset("X", shape=(n, len(kept)), dtype="float32",
                                 chunks=(min(n, 4096), min(len(kept), 256)) if n and kept else None)
            x.attrs["encoding-type"] = "array"
            x.attrs["encoding-version"] = "0.2.0"
            j = 0
            for a, block in _feature_blocks(parts, names, ok):
                sel = keep[a:a + block.shape[1]]
                b = block[:, sel]
                b = np.where(np.isnan(b), median[a:a + block.shape[1]][sel], b)
                if b.shape[1]:
                    x[:, j:j + b.shape[1]] = b.astype(np.float32)
                j += b.shape[1]
    return info


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
