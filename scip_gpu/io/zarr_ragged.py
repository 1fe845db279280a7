"""SCIP's ragged zarr layout: one 1-D object array of flattened cells.

A zarr v2 array of ``dtype |O`` with a ``vlen-array`` filter: element ``i`` is cell ``i``
flattened, its shape ``[C, H, W]`` is ``.zattrs["shape"][i]``, and its acquisition id is
``.zattrs["object_number"][i]``. zarr-python 3 does not read object arrays, so the chunks are
decoded here with numcodecs, the codec library zarr itself uses.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd

from ..errors import InputError, ObjectError
from .base import (Source, check_some_usable, expand_paths, integer_channels, most_common, named_groups,
                   nullable_ints, object_error, regex_groups, row_error, select_channels, store_rows)


def read_attrs(path: Path) -> tuple[dict, dict]:
    try:
        meta = json.loads((path / ".zarray").read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: not a zarr v2 array (no .zarray); the zarr_ragged format expects SCIP's "
            "layout, a 1-D object array with a vlen-array filter") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}/.zarray cannot be read: {exc}") from exc
    try:
        attrs = json.loads((path / ".zattrs").read_text())
    except FileNotFoundError:
        attrs = {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}/.zattrs cannot be read: {exc}") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}/.zarray holds a {type(meta).__name__}, not a JSON object")
    if not isinstance(attrs, dict):
        raise InputError(f"{path}/.zattrs holds a {type(attrs).__name__}, not a JSON object")
    return meta, attrs


def _whole_number(v) -> int | None:
    """``v`` as a 64-bit int when it is a whole number (JSON ``3``, ``3.0`` or ``"3"``), else None."""
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not float(v).is_integer():
        return None
    return int(v) if -2**63 <= v < 2**63 else None


def parse_shape(entry) -> tuple[int, int, int]:
    """One ``.zattrs["shape"]`` entry as (C, H, W); ValueError naming what is wrong."""
    if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
        raise ValueError(f".zattrs['shape'] entry {entry!r} is not a [C, H, W] (or [H, W]) list")
    dims = [_whole_number(v) for v in entry]
    if any(d is None or d < 0 for d in dims):
        raise ValueError(f".zattrs['shape'] entry {entry!r} is not a list of non-negative integers")
    return tuple(dims) if len(dims) == 3 else (1, *dims)


@lru_cache(maxsize=8)
def _decode_chunk(path: str, chunk: int, compressor: str, filters: str) -> list:
    # one dimension: the chunk key is the chunk index whatever the dimension separator
    buf = (Path(path) / str(chunk)).read_bytes()
    comp = json.loads(compressor)
    if comp is not None:
        buf = numcodecs.get_codec(comp).decode(buf)
    for f in reversed(json.loads(filters) or []):
        buf = numcodecs.get_codec(f).decode(buf)
    return list(buf)


class RaggedZarrSource(Source):
    kind = "ragged zarr"

    def objects(self) -> pd.DataFrame:
        for g in named_groups(self.cfg.regex, "dataset.regex"):
            if g in ("path", "zarr_idx", "object_number"):
                raise InputError(f"dataset.regex: the group name {g!r} is reserved")
        rows = store_rows(expand_paths(self.cfg.path, "zarr store"), self._store_rows, "zarr store",
                          self.cfg.regex)
        table = nullable_ints(pd.DataFrame(rows), ["meta_zarr_idx", "meta_object_number"])
        check_some_usable(table, f"dataset.path {self.cfg.path!r}")
        # without dataset.channels: the channel count most objects have (the others are errors)
        counts = [s[0] for s in table["_shape"] if isinstance(s, tuple)] if len(table) else []
        self._n_channels = most_common(counts, what="object", describe=lambda c: f"{c} channel(s)",
                                       log_it=self.cfg.channels is None)
        return table

    def _store_rows(self, path: Path) -> list[dict]:
        """One row per element of a store; raises when the store as a whole cannot be used. An
        element whose shape or object number entry is malformed gets a row holding the cause."""
        meta, attrs = read_attrs(path)
        n = meta.get("shape")
        n = _whole_number(n[0]) if isinstance(n, list) and len(n) == 1 else None
        if meta.get("dtype") != "|O" or n is None or n < 0:
            raise InputError(
                f"{path}: expected a 1-D object array (dtype |O) as SCIP writes; found dtype "
                f"{meta.get('dtype')!r} and shape {meta.get('shape')!r}. For a dense (N, C, H, W) "
                "array use dataset.format=zarr")
        chunks = meta.get("chunks")
        size = _whole_number(chunks[0]) if isinstance(chunks, list) and len(chunks) == 1 else None
        if size is None or size <= 0:
            raise InputError(f"{path}/.zarray: 'chunks' must be [a positive integer], found {chunks!r}")
        shapes = attrs.get("shape")
        if not isinstance(shapes, list) or len(shapes) != n:
            raise InputError(
                f"{path}: .zattrs['shape'] must list one [C, H, W] per element ({n}); "
                f"found {type(shapes).__name__} of length {len(shapes) if isinstance(shapes, list) else 'n/a'}")
        numbers = attrs.get("object_number", list(range(n)))
        if not isinstance(numbers, list) or len(numbers) != n:
            raise InputError(
                f"{path}: .zattrs['object_number'] must list one number per element ({n}); found "
                f"{type(numbers).__name__} of length {len(numbers) if isinstance(numbers, list) else 'n/a'}")
        groups = regex_groups(self.cfg.regex, str(path), where="dataset.regex")
        if groups is None:
            raise InputError(f"dataset.regex {self.cfg.regex!r} does not match the zarr path {path}")
        groups = {f"meta_{k}": v for k, v in groups.items()}
        compressor, filters = json.dumps(meta.get("compressor")), json.dumps(meta.get("filters"))
        rows = []
        for i in range(n):
            row = {"meta_path": str(path), "meta_zarr_idx": i, "meta_object_number": _whole_number(numbers[i]),
                   **groups, "_shape": None, "_chunk": i // size, "_pos": i % size,
                   "_compressor": compressor, "_filters": filters}
            try:
                row["_shape"] = parse_shape(shapes[i])
                if row["meta_object_number"] is None:
                    raise ValueError(f".zattrs['object_number'] entry {numbers[i]!r} is not an integer")
            except ValueError as exc:
                row["_error"] = f"{path}[{i}]: {exc}"
            rows.append(row)
        return rows

    def selected_channels(self, objects):
        channels = integer_channels(self.cfg.channels, "zarr_ragged")
        if channels is not None:
            return channels
        n = getattr(self, "_n_channels", None)
        return list(range(n or 0))

    def describe(self, row) -> str:
        idx = row.get("meta_zarr_idx")
        return str(row["meta_path"]) if pd.isna(idx) else f"{row['meta_path']}[{idx}]"

    def load(self, rows: pd.DataFrame) -> list:
        out = []
        channels = integer_channels(self.cfg.channels, "zarr_ragged")
        expected = getattr(self, "_n_channels", None)
        for row in rows.to_dict("records"):  # per object: each is decoded from its own ragged slot
            try:
                out.append(self._load_one(row, channels, expected))
            except Exception as exc:  # noqa: BLE001 - whatever fails, it is this object's error
                out.append(object_error(exc, lambda row=row: self.describe(row)))
        return out

    def _load_one(self, row: dict, channels, expected) -> np.ndarray:
        err = row_error(row)
        if err is not None:
            raise err
        name = self.describe(row)
        try:
            chunk = _decode_chunk(row["meta_path"], int(row["_chunk"]), row["_compressor"], row["_filters"])
        except FileNotFoundError:
            raise ObjectError(f"{name}: its chunk file is missing from the store", "load") from None
        except Exception as exc:
            raise ObjectError(f"{name}: its chunk cannot be decoded ({type(exc).__name__}: {exc})", "load") from exc
        pos = int(row["_pos"])
        if pos >= len(chunk):
            raise ObjectError(f"{name}: its chunk holds only {len(chunk)} element(s)", "load")
        flat = np.asarray(chunk[pos])
        shape = row["_shape"]
        if flat.size != math.prod(shape):
            raise ObjectError(
                f"{name}: holds {flat.size} values but .zattrs['shape'] says {list(shape)}", "load")
        return select_channels(flat.reshape(shape), channels, name, expected)


def write_ragged_zarr(path, images, object_numbers=None, *, chunk_size: int = 256, dtype="<u2",
                      clevel: int = 5) -> Path:
    """Write images in SCIP's ragged zarr v2 layout (readable by SCIP and by this package).

    Images are streamed: one chunk is held in memory at a time.

    Parameters
    ----------
    path : path-like
        New folder for the store (must not exist).
    images : iterable of (C, H, W) arrays
        One image per object, each with its own size.
    object_numbers : sequence of int, optional
        Stored as ``.zattrs["object_number"]`` (default 0..N-1).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    compressor = {"id": "blosc", "cname": "lz4", "clevel": clevel, "shuffle": 1, "blocksize": 0}
    filters = [{"id": "vlen-array", "dtype": dtype}]
    vlen = numcodecs.get_codec(filters[0])
    comp = numcodecs.get_codec(compressor)
    info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "ui" else None
    shapes: list[list[int]] = []
    chunk: list[np.ndarray] = []

    def flush() -> None:
        block = np.empty(chunk_size, dtype=object)
        block[:] = chunk + [np.zeros(0, dtype)] * (chunk_size - len(chunk))  # zarr stores full chunks
        (path / str((len(shapes) - 1) // chunk_size)).write_bytes(comp.encode(vlen.encode(block)))
        chunk.clear()

    for img in images:
        img = np.asarray(img)
        if img.ndim != 3:
            raise ValueError(f"element {len(shapes)}: expected (C, H, W), got shape {img.shape}")
        if info is not None and img.size and (img.min() < info.min or img.max() > info.max):
            raise ValueError(f"element {len(shapes)}: values outside the range of {np.dtype(dtype)}")
        shapes.append([int(v) for v in img.shape])
        chunk.append(np.ascontiguousarray(img, dtype=dtype).ravel())
        if len(chunk) == chunk_size:
            flush()
    if chunk:
        flush()
    n = len(shapes)
    meta = {"zarr_format": 2, "shape": [n], "chunks": [chunk_size], "dtype": "|O", "compressor": compressor,
            "fill_value": 0, "filters": filters, "order": "C"}
    (path / ".zarray").write_text(json.dumps(meta, indent=4))
    numbers = list(object_numbers) if object_numbers is not None else list(range(n))
    (path / ".zattrs").write_text(json.dumps({"shape": shapes, "object_number": [int(v) for v in numbers]}))
    return path
