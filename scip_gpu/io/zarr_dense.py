"""Dense zarr arrays of shape (N, C, H, W) (or (N, H, W) for one channel)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError, ObjectError
from .base import Source, expand_paths, regex_groups, select_channels


def _open(path):
    import zarr

    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"{path}: cannot be opened as a zarr array ({type(exc).__name__}: {exc})") from exc


class DenseZarrSource(Source):
    kind = "dense zarr"

    def objects(self) -> pd.DataFrame:
        rows = []
        for path in expand_paths(self.cfg.path, "zarr array"):
            arr = _open(path)
            if arr.ndim not in (3, 4):
                raise InputError(
                    f"{path}: expected an (N, C, H, W) or (N, H, W) array, found shape {arr.shape}")
            groups = regex_groups(self.cfg.regex, str(path), where="dataset.regex")
            if groups is None:
                raise InputError(f"dataset.regex {self.cfg.regex!r} does not match the zarr path {path}")
            c = 1 if arr.ndim == 3 else arr.shape[1]
            for i in range(arr.shape[0]):
                rows.append({"meta_path": str(path), "meta_zarr_idx": i,
                             **{f"meta_{k}": v for k, v in groups.items()}, "_channels": c})
        return pd.DataFrame(rows)

    def selected_channels(self, objects):
        if self.cfg.channels is not None:
            return [int(c) for c in self.cfg.channels]
        return list(range(int(objects["_channels"].min()))) if len(objects) else []

    def describe(self, row) -> str:
        return f"{row['meta_path']}[{row['meta_zarr_idx']}]"

    def load(self, rows: pd.DataFrame) -> list:
        out: list = [None] * len(rows)
        for path, grp in rows.groupby("meta_path", sort=False):
            idx = grp["meta_zarr_idx"].to_numpy()
            pos = [rows.index.get_loc(i) for i in grp.index]
            try:
                arr = _open(path)
                lo, hi = int(idx.min()), int(idx.max()) + 1
                block = np.asarray(arr[lo:hi])  # one contiguous read per store and partition
            except Exception as exc:
                for p, (_, row) in zip(pos, grp.iterrows()):
                    out[p] = ObjectError(f"{self.describe(row)}: cannot be read ({type(exc).__name__}: {exc})")
                continue
            if block.ndim == 3:
                block = block[:, None]
            for p, i, (_, row) in zip(pos, idx, grp.iterrows()):
                try:
                    out[p] = select_channels(block[i - lo], self.cfg.channels, self.describe(row))
                except ObjectError as exc:
                    out[p] = exc
        return out
