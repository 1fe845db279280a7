"""TIFF inputs.

- ``tiff``: one file per channel; a regex with the named groups ``id`` and ``channel`` groups
  files into objects. Every named group becomes a ``meta_*`` column (SCIP exports none of them).
- ``multipage_tiff`` / ``ome_tiff``: one file per object, channels as pages (or the OME ``C``
  axis); named groups of an optional regex on the path become metadata.

Planes are read as tifffile gives them, (rows, columns): SCIP's TIFF loader transposes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, ObjectError
from .base import Source, expand_paths, named_groups, regex_groups, select_channels


def _natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _files(cfg, what: str) -> list[Path]:
    roots = expand_paths(cfg.path, what)
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            pattern = cfg.glob or "*"
            files += sorted(p for p in root.glob(pattern) if p.is_file())
        else:
            files.append(root)
    if not files:
        raise InputError(f"dataset.path {cfg.path!r}: no files match dataset.glob {cfg.glob!r}")
    return files


def _read(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series
            if len(series) > 1 and all(len(sr.shape) == 2 and sr.shape == series[0].shape for sr in series):
                # plain multi-page file whose pages tifffile lists as separate series
                return np.stack([sr.asarray() for sr in series]), "CYX"
            return series[0].asarray(), series[0].axes
    except FileNotFoundError:
        raise ObjectError(f"{path}: file not found (was it removed during the run?)", "load") from None
    except Exception as exc:
        raise ObjectError(f"{path}: unreadable or corrupt TIFF ({type(exc).__name__}: {exc})", "load") from exc


def _to_cyx(arr: np.ndarray, axes: str, path) -> np.ndarray:
    """Reorder a TIFF series to (C, Y, X); other axes must be singletons."""
    axes = axes.upper()
    if arr.size == 0:
        raise ObjectError(f"{path}: empty image (shape {arr.shape})", "load")
    if "Y" not in axes or "X" not in axes:
        raise ObjectError(f"{path}: no Y/X axes in the TIFF series (axes {axes!r}, shape {arr.shape})")
    chan_axes = [a for a in axes if a in "CSIQ"]
    for a, n in zip(axes, arr.shape):
        if a not in "YX" and a not in chan_axes[:1] and n != 1:
            raise ObjectError(
                f"{path}: axis {a!r} has {n} planes (axes {axes!r}, shape {arr.shape}); only channel "
                "stacks of single planes are read here")
    order = chan_axes[:1] + ["Y", "X"]
    rest = [a for a in axes if a not in order]
    arr = np.transpose(arr, [axes.index(a) for a in rest + order])
    arr = arr.reshape(arr.shape[len(rest):])
    return arr if arr.ndim == 3 else arr[None]


def group_channel_files(cfg, *, fmt: str, needs: str, what: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Match files with ``dataset.regex`` and group them: one row per value of the named groups
    other than ``channel`` and ``z``, holding the files of each selected channel (ordered by the
    ``z`` group when there is one) in ``_files`` and the group values in ``meta_*`` columns.

    Returns
    -------
    table : DataFrame, in natural order of the group values
    keys : list of str
        The grouping named groups.
    channel_keys : list of str
        The selected channel keys (``dataset.channels``, else all found, naturally sorted).
    """
    if not cfg.regex:
        raise InputError(f"dataset.regex is required for format {fmt}: it needs {needs}")
    groups = named_groups(cfg.regex, "dataset.regex")
    required = ["id", "channel"] if fmt == "tiff" else ["channel"]
    missing = [g for g in required if g not in groups]
    if missing:
        raise InputError(f"dataset.regex {cfg.regex!r} lacks the named group(s) {missing}; format {fmt} "
                         f"needs {needs}")
    keys = [g for g in groups if g not in ("channel", "z")]
    if not keys:
        raise InputError(f"dataset.regex {cfg.regex!r} has no group identifying a {what} (e.g. well, site)")
    files = _files(cfg, "folder")
    matched = []
    for f in files:
        g = regex_groups(cfg.regex, str(f), where="dataset.regex")
        if g is not None:
            matched.append({**g, "_file": str(f)})
    if not matched:
        raise InputError(f"dataset.regex {cfg.regex!r} matches none of the {len(files)} files "
                         f"found in {cfg.path!r} (e.g. {files[0].name})")
    table = pd.DataFrame(matched)
    if "z" not in table:
        table["z"] = "0"
    present = sorted(table["channel"].astype(str).unique(), key=_natural_key)
    if cfg.channels is not None:
        if not any(str(c) in present for c in cfg.channels):
            raise InputError(f"dataset.channels {list(cfg.channels)}: no file has these channel keys; "
                             f"the regex found channels {present}")
        channel_keys = [str(c) for c in cfg.channels]
    else:
        channel_keys = present
    rows = []
    for key, grp in table.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        files_per_channel = []
        for ch in channel_keys:
            sel = grp[grp["channel"].astype(str) == ch]
            files_per_channel.append([f for _, f in sorted(zip(sel["z"].map(_natural_key), sel["_file"]))])
        rows.append({**{f"meta_{k}": v for k, v in zip(keys, key)},
                     "meta_path": next((f[0] for f in files_per_channel if f), grp["_file"].iloc[0]),
                     "_files": files_per_channel})
    out = pd.DataFrame(rows)
    cols = [f"meta_{k}" for k in keys]
    order = sorted(range(len(out)), key=lambda i: [_natural_key(out[c].iat[i]) for c in cols])
    return out.iloc[order].reset_index(drop=True), keys, channel_keys


class ChannelTiffSource(Source):
    kind = "per-channel TIFF"

    def objects(self) -> pd.DataFrame:
        table, _, self._channel_keys = group_channel_files(
            self.cfg, fmt="tiff", needs="(?P<id>...) and (?P<channel>...) to group files into objects",
            what="object")
        return table

    def selected_channels(self, objects):
        return list(self._channel_keys)

    def channel_names(self, objects):
        if self.cfg.channel_names is not None:
            return list(self.cfg.channel_names)
        return list(self._channel_keys)

    def describe(self, row) -> str:
        ident = row.get("meta_id", row.name)
        return f"object id={ident} ({row['meta_path']})"

    def load(self, rows: pd.DataFrame) -> list:
        out = []
        for _, row in rows.iterrows():  # one file per channel per object
            name = self.describe(row)
            try:
                planes = []
                for ch_i, files in enumerate(row["_files"]):
                    label = self._channel_keys[ch_i]
                    if not files:
                        raise ObjectError(f"{name}: no file for channel {label!r}", "load")
                    if len(files) > 1:
                        raise ObjectError(f"{name}: {len(files)} files for channel {label!r}: {files}", "load")
                    arr, axes = _read(Path(files[0]))
                    img = _to_cyx(arr, axes, files[0])
                    if img.shape[0] != 1:
                        raise ObjectError(f"{files[0]}: expected one plane per channel file, found {img.shape[0]}")
                    planes.append(img[0])
                shapes = {p.shape for p in planes}
                if len(shapes) > 1:
                    raise ObjectError(f"{name}: channel images differ in shape {sorted(shapes)}", "load")
                out.append(np.stack(planes))
            except ObjectError as exc:
                out.append(exc)
        return out


class FileSource(Source):
    """One (multi-page or OME) TIFF per object."""

    kind = "TIFF file per object"

    def objects(self) -> pd.DataFrame:
        files = _files(self.cfg, "TIFF folder")
        rows = []
        for f in files:
            g = regex_groups(self.cfg.regex, str(f), where="dataset.regex")
            if g is None:
                continue
            g.setdefault("id", f.stem.split(".")[0])
            rows.append({"meta_path": str(f), **{f"meta_{k}": v for k, v in g.items()}})
        if not rows:
            raise InputError(f"dataset.regex {self.cfg.regex!r} matches none of the {len(files)} files in {self.cfg.path!r}")
        return pd.DataFrame(rows)

    def selected_channels(self, objects):
        if self.cfg.channels is not None:
            return [int(c) for c in self.cfg.channels]
        if not len(objects):
            return []
        try:  # the first readable file tells how many channels there are
            arr, axes = _read(Path(objects["meta_path"].iloc[0]))
            return list(range(_to_cyx(arr, axes, objects["meta_path"].iloc[0]).shape[0]))
        except ObjectError as exc:
            raise InputError(f"cannot tell the number of channels: {exc}. Set dataset.channels") from exc

    def load(self, rows: pd.DataFrame) -> list:
        out = []
        for _, row in rows.iterrows():
            try:
                arr, axes = _read(Path(row["meta_path"]))
                img = _to_cyx(arr, axes, row["meta_path"])
                out.append(select_channels(img, self.cfg.channels, row["meta_path"]))
            except ObjectError as exc:
                out.append(exc)
        return out
