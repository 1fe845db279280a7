"""Dense zarr arrays of shape (N, C, H, W) (or (N, H, W) for one channel).

With ``device=cuda`` the stores whose chunks can be read as they are (uncompressed, on the local
file system: ``io.device_read``) are read with kvikio straight into device memory
(``plan_device_reads``, ``load_device``); the others, and any store whose device read fails,
through the host (zarr and its codecs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, ObjectError, describe_exception
from .base import (Source, check_some_usable, expand_paths, integer_channels, most_common, nullable_ints,
                   object_error, regex_groups, row_error, select_channels, store_rows)


def _open(path):
    import zarr

    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as exc:
        hint = ("; an object array is SCIP's ragged layout: +dataset=scip_zarr reads it"
                if "vlen-array" in str(exc) else "")
        raise InputError(f"{path}: cannot be opened as a zarr array ({type(exc).__name__}: {exc}){hint}") from exc


log = logging.getLogger("scip_gpu")


class DenseZarrSource(Source):
    kind = "dense zarr"
    #: store path -> DenseLayout of the stores read into device memory (``plan_device_reads``)
    device_layouts: dict = {}

    def plan_device_reads(self, table: pd.DataFrame, mode, device: str) -> dict[str, str]:
        """Choose, per store of ``table``, how its objects are read (``io.kvikio``: "auto", True
        or False): with kvikio into device memory where ``device_read_plan`` allows it and the
        chunks hold whole images, else through the host. Logs and returns {store: "kvikio" or
        "host: why"}; with ``mode=True`` a store that cannot be read with kvikio is a ConfigError
        naming it and why."""
        from ..errors import ConfigError
        from .device_read import device_read_plan

        self.device_layouts = {}
        how: dict[str, str] = {}
        listed = (~table["_error"].map(lambda e: isinstance(e, str)) if "_error" in table  # (unreadable stores:
                  else pd.Series(True, index=table.index))                                # their objects' errors)
        for path in dict.fromkeys(p for p in table.loc[listed, "meta_path"] if isinstance(p, str)):
            if mode is False:
                layout, why = None, "io.kvikio=false"
            else:
                layout, why = device_read_plan(path, device)
                if layout is not None and tuple(layout.chunks[1:]) != tuple(layout.shape[1:]):
                    layout, why = None, f"its chunks {layout.chunks} do not hold whole images {layout.shape[1:]}"
            if layout is None and mode is True and device == "cuda":
                raise ConfigError(f"io.kvikio=true: {path} cannot be read into device memory with kvikio: {why} "
                                  "(io.kvikio=auto reads it through the host)")
            if layout is not None:
                self.device_layouts[path] = layout
                how[path] = "kvikio"
            else:
                how[path] = f"host: {why}"
            if device == "cuda":
                log.info("io: %s read %s", path, "with kvikio straight into device memory" if layout is not None
                         else f"through the host ({why})")
        return how

    def load_device(self, rows: pd.DataFrame, xp) -> list:
        """As ``load``, the objects of the stores in ``device_layouts`` as device arrays read
        with kvikio (one read of the rows' chunks per store); the objects of the other stores,
        and of a store whose device read fails (logged), as host arrays read by ``load``."""
        from .device_read import read_rows

        out: list = [None] * len(rows)
        channels = integer_channels(self.cfg.channels, "zarr")
        expected = getattr(self, "_n_channels", None)
        records = rows.to_dict("records")
        by_store: dict[str, list[int]] = {}
        host: list[int] = []
        for p, row in enumerate(records):
            err = row_error(row)
            if err is not None:
                out[p] = err
            elif row["meta_path"] in self.device_layouts:
                by_store.setdefault(row["meta_path"], []).append(p)
            else:
                host.append(p)
        for path, pos in by_store.items():
            idx = [int(records[p]["meta_zarr_idx"]) for p in pos]
            lo, hi = min(idx), max(idx) + 1
            try:
                block = read_rows(self.device_layouts[path], lo, hi, xp=xp)
            except Exception as exc:  # noqa: BLE001 - the host path reads it (and reports what it cannot)
                log.warning("io: %s: the read with kvikio failed (%s); reading objects %d..%d through the host",
                            path, describe_exception(exc), lo, hi - 1)
                host.extend(pos)
                continue
            for p, i in zip(pos, idx):
                img = block[i - lo]
                try:
                    out[p] = select_channels(img[None] if img.ndim == 2 else img, channels,
                                             self.describe(records[p]), expected)
                except Exception as exc:  # noqa: BLE001 - whatever fails, it is this object's error
                    out[p] = object_error(exc, lambda p=p: self.describe(records[p]))
        if host:
            host.sort()
            for p, img in zip(host, self.load(rows.iloc[host])):
                out[p] = img
        return out

    def objects(self) -> pd.DataFrame:
        rows = store_rows(expand_paths(self.cfg.path, "zarr array"), self._store_rows, "zarr array",
                          self.cfg.regex)
        table = nullable_ints(pd.DataFrame(rows), ["meta_zarr_idx"])
        check_some_usable(table, f"dataset.path {self.cfg.path!r}")
        # without dataset.channels: the channel count most objects have (the others are errors)
        counts = [int(c) for c in table["_channels"] if not pd.isna(c)] if len(table) else []
        self._n_channels = most_common(counts, what="object", describe=lambda c: f"{c} channel(s)",
                                       log_it=self.cfg.channels is None)
        return table

    def _store_rows(self, path: Path) -> list[dict]:
        arr = _open(path)
        if arr.ndim not in (3, 4):
            raise InputError(f"{path}: expected an (N, C, H, W) or (N, H, W) array, found shape {arr.shape}")
        groups = regex_groups(self.cfg.regex, str(path), where="dataset.regex")
        if groups is None:
            raise InputError(f"dataset.regex {self.cfg.regex!r} does not match the zarr path {path}")
        groups = {f"meta_{k}": v for k, v in groups.items()}
        c = 1 if arr.ndim == 3 else arr.shape[1]
        return [{"meta_path": str(path), "meta_zarr_idx": i, **groups, "_channels": c} for i in range(arr.shape[0])]

    def selected_channels(self, objects):
        channels = integer_channels(self.cfg.channels, "zarr")
        if channels is not None:
            return channels
        return list(range(getattr(self, "_n_channels", None) or 0))

    def describe(self, row) -> str:
        idx = row.get("meta_zarr_idx")
        return str(row["meta_path"]) if pd.isna(idx) else f"{row['meta_path']}[{idx}]"

    def load(self, rows: pd.DataFrame) -> list:
        out: list = [None] * len(rows)
        channels = integer_channels(self.cfg.channels, "zarr")
        expected = getattr(self, "_n_channels", None)
        records = rows.to_dict("records")
        by_store: dict[str, list[int]] = {}
        for p, row in enumerate(records):
            err = row_error(row)
            if err is not None:
                out[p] = err
            else:
                by_store.setdefault(row["meta_path"], []).append(p)
        for path, pos in by_store.items():
            idx = [int(records[p]["meta_zarr_idx"]) for p in pos]
            try:
                arr = _open(path)
            except Exception as exc:  # noqa: BLE001 - e.g. removed since the objects were listed
                for p in pos:
                    out[p] = ObjectError(f"{self.describe(records[p])}: {exc}", "load")
                continue
            lo, hi = min(idx), max(idx) + 1
            try:
                block = np.asarray(arr[lo:hi])  # one contiguous read per store and partition
                images = [block[i - lo] for i in idx]
            except Exception:  # noqa: BLE001 - e.g. one corrupt chunk: read object by object
                images = []
                for p, i in zip(pos, idx):
                    try:
                        images.append(np.asarray(arr[i]))
                    except Exception as exc:  # noqa: BLE001
                        images.append(ObjectError(f"{self.describe(records[p])}: cannot be read "
                                                  f"({type(exc).__name__}: {exc})", "load"))
            for p, img in zip(pos, images):
                if isinstance(img, Exception):
                    out[p] = img
                    continue
                try:
                    out[p] = select_channels(img[None] if img.ndim == 2 else img, channels,
                                             self.describe(records[p]), expected)
                except Exception as exc:  # noqa: BLE001 - whatever fails, it is this object's error
                    out[p] = object_error(exc, lambda p=p: self.describe(records[p]))
        return out
