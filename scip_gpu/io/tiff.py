"""TIFF inputs.

- ``tiff``: one file per channel; a regex with the named groups ``id`` and ``channel`` groups
  files into objects. Every named group becomes a ``meta_*`` column (SCIP exports none of them).
- ``multipage_tiff`` / ``ome_tiff``: one file per object, channels as pages (or the OME ``C``
  axis); named groups of an optional regex on the path become metadata.

Planes are read as tifffile gives them, (rows, columns): SCIP's TIFF loader transposes them.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError, ObjectError
from .base import (Source, expand_paths, integer_channels, log, missing_file_message, most_common, named_groups,
                   object_error, regex_groups, select_channels)

#: files read on the driver to tell the channel count of one-file-per-object datasets when
#: ``dataset.channels`` is not set (all of them up to this number, else this many spread evenly)
CHANNEL_PROBES = 500


def _fmt(cfg) -> str:
    return getattr(cfg.format, "value", cfg.format)


def _natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _files(cfg, what: str) -> list[Path]:
    """Every input the dataset path and ``dataset.glob`` match, whatever it is: regular files, and
    also broken links, folders and other entries that cannot be read (each then fails with its
    cause in the error report)."""
    roots = expand_paths(cfg.path, what)
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files += sorted(root.glob(cfg.glob or "*"))
        else:
            files.append(root)
    if not files:
        raise InputError(f"dataset.path {cfg.path!r}: no files match dataset.glob {cfg.glob!r}")
    return files


def _matching(cfg, files: list[Path]) -> list[tuple[Path, dict]]:
    """The files that ``dataset.regex`` matches, with its named groups; the others are not inputs
    (they are counted in a warning)."""
    out, skipped = [], []
    for f in files:
        g = regex_groups(cfg.regex, str(f), where="dataset.regex")
        (skipped if g is None else out).append(f if g is None else (f, g))
    if skipped and out:
        log.warning("dataset.regex %r does not match %d of the %d file(s) that dataset.glob %r matches; they "
                    "are not read (e.g. %s)", cfg.regex, len(skipped), len(files), cfg.glob, skipped[0])
    return out


def _open_tiff(path: Path, fn):
    """``fn(tifffile.TiffFile)`` with every failure as the file's ``ObjectError``."""
    import tifffile

    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ObjectError(f"{path}: is a folder, not a TIFF file", "load")
        if not stat.S_ISREG(mode):  # a FIFO would block the read forever
            raise ObjectError(f"{path}: is not a regular file (a pipe, socket or device), not a TIFF file", "load")
        with tifffile.TiffFile(path) as tf:
            return fn(tf)
    except ObjectError:
        raise
    except FileNotFoundError:
        raise ObjectError(missing_file_message(path), "load") from None
    except Exception as exc:
        raise ObjectError(f"{path}: unreadable or corrupt TIFF ({type(exc).__name__}: {exc})", "load") from exc


def _plain_pages(series) -> bool:
    # plain multi-page file whose pages tifffile lists as separate series
    return len(series) > 1 and all(len(sr.shape) == 2 and sr.shape == series[0].shape for sr in series)


def _series(tf, path) -> list:
    """The file's series (tifffile's ``TiffFile.series``: the images it holds), when they are one
    image: a single series, or the pages of a plain multi-page file (one 2-D series of one shape
    per page, its channels); reduced-resolution series (thumbnails) are left aside. Several
    series otherwise (images of different sizes, a pyramid
    stored as series, several positions) are the file's ``ObjectError``, naming what it holds:
    reading the first one only would lose the others, and its channel count would mislead."""
    series = tf.series
    if not series:
        raise ObjectError(f"{path}: unreadable or corrupt TIFF (no image found in it)", "load")
    # reduced-resolution images (NewSubfileType bit 0: the thumbnail of a Zeiss LSM file, a
    # preview) are not images of their own
    full = [sr for sr in series if not getattr(sr.keyframe, "is_reduced", False)]
    series = full or series
    if len(series) == 1 or _plain_pages(series):
        return series
    shapes = {tuple(sr.shape) for sr in series}
    listed = ", ".join(f"{tuple(sr.shape)} {sr.axes} {sr.dtype}" for sr in series[:6])
    more = f", and {len(series) - 6} more" if len(series) > 6 else ""
    kind = "different shapes" if len(shapes) > 1 else "the same shape"
    raise ObjectError(f"{path}: {len(series)} series of {kind} ({listed}{more}); scip_gpu reads one image per file "
                      "(its channels as pages or as an axis)", "load")


def _ome_channel_names(tf) -> list[str] | None:
    """The channel names of an OME-TIFF's first image (OME-XML ``Channel/@Name``), else None."""
    import tifffile

    if not tf.is_ome:
        return None
    image = tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image")
    image = image[0] if isinstance(image, list) else image
    channels = ((image or {}).get("Pixels") or {}).get("Channel")
    channels = channels if isinstance(channels, list) else [channels] if channels else []
    names = [str(c.get("Name", "")).strip() if isinstance(c, dict) else "" for c in channels]
    return names or None


def _read(path: Path):
    """Pixels and axes of a TIFF's one image (the pages of a plain multi-page file as C)."""
    def read(tf):
        series = _series(tf, path)
        if _plain_pages(series):
            return np.stack([sr.asarray() for sr in series]), "CYX"
        return series[0].asarray(), series[0].axes

    return _open_tiff(path, read)


def _probe(path: Path) -> tuple[tuple, str]:
    """Shape and axes of what ``_read`` gives, read from the file's header only."""
    def probe(tf):
        series = _series(tf, path)
        if _plain_pages(series):
            return (len(series), *series[0].shape), "CYX"
        return tuple(series[0].shape), series[0].axes

    return _open_tiff(path, probe)


def _cyx_layout(shape: tuple, axes: str, path) -> tuple[list[int], tuple[int, int, int]]:
    """How a TIFF series of ``shape`` and ``axes`` becomes (C, Y, X): the axis order and the
    resulting shape. The channel axis is the first of C, S, I, Q with more than one plane (else
    the first of them); every other axis but Y and X must be a singleton."""
    axes = axes.upper()
    shape = tuple(int(n) for n in shape)
    if len(axes) != len(shape):
        raise ObjectError(f"{path}: the TIFF series has axes {axes!r} for a shape {shape}", "load")
    if math.prod(shape) == 0:
        raise ObjectError(f"{path}: empty image (shape {shape})", "load")
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise ObjectError(f"{path}: the TIFF series needs one Y and one X axis, it has axes {axes!r} "
                          f"(shape {shape})", "load")
    y, x = axes.index("Y"), axes.index("X")
    chan = [i for i, a in enumerate(axes) if a in "CSIQ"]
    c = next((i for i in chan if shape[i] != 1), chan[0] if chan else None)
    for i, (a, n) in enumerate(zip(axes, shape)):
        if i not in (c, y, x) and n != 1:
            raise ObjectError(
                f"{path}: axis {a!r} has {n} planes (axes {axes!r}, shape {shape}); only channel "
                "stacks of single planes are read here", "load")
    order = ([c] if c is not None else []) + [y, x]
    return [i for i in range(len(shape)) if i not in order] + order, (shape[c] if c is not None else 1,
                                                                       shape[y], shape[x])


def _to_cyx(arr: np.ndarray, axes: str, path) -> np.ndarray:
    """Reorder a TIFF series to (C, Y, X); other axes must be singletons."""
    perm, cyx = _cyx_layout(arr.shape, axes, path)
    return np.transpose(arr, perm).reshape(cyx)


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
    matched = [{**g, "_file": str(f)} for f, g in _matching(cfg, files)]
    if not matched:
        raise InputError(f"dataset.regex {cfg.regex!r} matches none of the {len(files)} files "
                         f"found in {cfg.path!r} (e.g. {files[0].name})")
    table = pd.DataFrame(matched)
    if "z" not in table:
        table["z"] = "0"
    table["channel"] = table["channel"].astype(str)
    present = sorted(table["channel"].unique(), key=_natural_key)
    grouped = [(key if isinstance(key, tuple) else (key,), grp)
               for key, grp in table.groupby(keys, sort=False, dropna=False)]
    if cfg.channels is not None:
        missing = [str(c) for c in cfg.channels if str(c) not in present]
        if missing:  # (caught before anything is written, not once per object)
            raise ConfigError(f"dataset.channels {list(cfg.channels)}: no file has the channel key(s) {missing}; "
                              f"the regex found channels {present}")
        channel_keys = [str(c) for c in cfg.channels]
    else:  # the channel set most objects have; an object with another one is an error
        sets = [tuple(sorted(grp["channel"].unique(), key=_natural_key)) for _, grp in grouped]
        channel_keys = list(most_common(sets, what=what, describe=lambda v: f"channels {list(v)}",
                                        size=lambda v: (len(v), [_natural_key(c) for c in v])))
    rows = []
    for key, grp in grouped:
        files_per_channel = []
        for ch in channel_keys:
            sel = grp[grp["channel"] == ch]
            files_per_channel.append([f for _, f in sorted(zip(sel["z"].map(_natural_key), sel["_file"]))])
        extra = ([] if cfg.channels is not None else
                 sorted(set(grp["channel"]) - set(channel_keys), key=_natural_key))
        rows.append({**{f"meta_{k}": v for k, v in zip(keys, key)},
                     "meta_path": next((f[0] for f in files_per_channel if f), grp["_file"].iloc[0]),
                     "_files": files_per_channel,
                     "_extra": [(ch, grp.loc[grp["channel"] == ch, "_file"].iloc[0]) for ch in extra]})
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
        ident = row.get("meta_id")
        return f"object id={ident} ({row['meta_path']})" if ident is not None else str(row["meta_path"])

    def load(self, rows: pd.DataFrame) -> list:
        out = []
        for row in rows.to_dict("records"):  # one file per channel per object
            try:
                out.append(self.load_one(row))
            except Exception as exc:  # noqa: BLE001 - whatever fails, it is this object's error
                out.append(object_error(exc, lambda row=row: self.describe(row)))
        return out

    def load_one(self, row) -> np.ndarray:
        name = self.describe(row)
        check_extra_channels(row, name, self._channel_keys)
        planes = []
        for label, files in zip(self._channel_keys, row["_files"]):
            if not files:
                raise ObjectError(f"{name}: no file for channel {label!r}", "load")
            if len(files) > 1:
                raise ObjectError(f"{name}: {len(files)} files for channel {label!r}: {files}", "load")
            arr, axes = _read(Path(files[0]))
            img = _to_cyx(arr, axes, files[0])
            if img.shape[0] != 1:
                raise ObjectError(f"{files[0]}: expected one plane per channel file, found {img.shape[0]}", "load")
            planes.append(img[0])
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            raise ObjectError(f"{name}: channel images differ in shape {sorted(shapes)}", "load")
        return np.stack(planes)


def check_extra_channels(row, name: str, channel_keys) -> None:
    """An object with files for channels that most objects lack (``dataset.channels`` not set)."""
    extra = row.get("_extra")
    if extra:
        keys = [ch for ch, _ in extra]
        raise ObjectError(f"{name}: has file(s) for channel(s) {keys} (e.g. {extra[0][1]}) besides the channels "
                          f"{list(channel_keys)} that most objects have; set dataset.channels to choose the "
                          "channels to profile", "load")


class FileSource(Source):
    """One (multi-page or OME) TIFF per object."""

    kind = "TIFF file per object"

    def objects(self) -> pd.DataFrame:
        files = _files(self.cfg, "TIFF folder")
        rows = []
        for f, g in _matching(self.cfg, files):
            g.setdefault("id", f.stem.split(".")[0])
            rows.append({"meta_path": str(f), **{f"meta_{k}": v for k, v in g.items()}})
        if not rows:
            raise InputError(f"dataset.regex {self.cfg.regex!r} matches none of the {len(files)} files in {self.cfg.path!r}")
        return pd.DataFrame(rows)

    def selected_channels(self, objects):
        channels = integer_channels(self.cfg.channels, _fmt(self.cfg))
        if channels is not None:
            return channels
        self._n_channels = self._channel_count(list(objects["meta_path"])) if len(objects) else 0
        return list(range(self._n_channels))

    def channel_names(self, objects) -> list[str]:
        """The configured names, else an OME-TIFF's channel names (those of the first file, when
        they are unique and one per channel of the count most files have), else ``ch{i}``."""
        selected = self.selected_channels(objects)
        if self.cfg.channel_names is None and len(objects):
            try:
                names = _open_tiff(Path(objects["meta_path"].iloc[0]), _ome_channel_names)
            except ObjectError:
                names = None
            count = self.channel_count(objects)
            if (names and len(set(names)) == len(names) == count and all(names)
                    and all(0 <= c < len(names) for c in selected)):
                return [names[c] for c in selected]
        return super().channel_names(objects)

    def channel_count(self, objects) -> int | None:
        if getattr(self, "_n_channels", None) is None and len(objects):
            try:
                self._n_channels = self._channel_count(list(objects["meta_path"]), log_it=False)
            except InputError:  # no file readable: each is an error of its own
                return None
        return getattr(self, "_n_channels", None)

    def _channel_count(self, paths: list[str], log_it: bool = True) -> int:
        """The channel count most files have (read from the headers of up to ``CHANNEL_PROBES``
        files spread over the list); a file with another count is then an object error."""
        n = len(paths)
        picks = range(n) if n <= CHANNEL_PROBES else sorted(set(np.linspace(0, n - 1, CHANNEL_PROBES).astype(int)))
        counts, first_error = [], None
        for i in picks:
            try:
                shape, axes = _probe(Path(paths[i]))
                counts.append(_cyx_layout(shape, axes, paths[i])[1][0])
            except Exception as exc:  # noqa: BLE001 - an unreadable file fails on its own when loaded
                first_error = first_error or object_error(exc, paths[i])
        if not counts:
            raise InputError(f"cannot tell the number of channels: none of the {len(picks)} file(s) read can be "
                             f"used (e.g. {first_error}). Set dataset.channels")
        return most_common(counts, what="readable file", describe=lambda c: f"{c} channel(s)", log_it=log_it)

    def load(self, rows: pd.DataFrame) -> list:
        out = []
        channels = integer_channels(self.cfg.channels, _fmt(self.cfg))
        expected = getattr(self, "_n_channels", None)
        for path in rows["meta_path"]:
            try:
                arr, axes = _read(Path(path))
                img = _to_cyx(arr, axes, path)
                out.append(select_channels(img, channels, path, expected))
            except Exception as exc:  # noqa: BLE001 - whatever fails, it is this file's error
                out.append(object_error(exc, str(path)))
        return out
