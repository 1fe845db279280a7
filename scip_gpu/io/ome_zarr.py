"""OME-Zarr (OME-NGFF) input: images and high-content-screening plates, NGFF 0.4 and 0.5.

NGFF 0.4 stores are zarr v2 (``.zattrs``, the OME keys at the top level of the attributes);
NGFF 0.5 stores are zarr v3 (``zarr.json``, the OME keys under ``attributes["ome"]``). zarr
opens both; ``ome_attrs`` gives the OME keys of a group whatever its version.

- An **image** group has ``multiscales``: one array per resolution level (``datasets``, 0 =
  full resolution), axes named and typed (``t``/time, ``c``/channel, ``z``/``y``/``x``/space, or
  a custom axis), channel names in ``omero.channels[].label``.
- A **plate** group has ``plate`` (rows, columns, ``wells[].path`` such as ``A/1``); each well
  group has ``well.images[].path``, one image per field of view.

Two dataset formats use them:

- ``ome_zarr`` (``OmeZarrFieldSource``): fields of view for segmentation; every field of every
  well of a plate, or every image the path matches (each series of a ``bioformats2raw.layout``
  store), is one field. Metadata: ``meta_plate``,
  ``meta_well``, ``meta_row``, ``meta_column``, ``meta_fov`` (the field's path in its well) for
  plates, ``meta_path`` for images; ``meta_field`` identifies the field.
- ``ome_zarr_objects`` (``OmeZarrObjectSource``): per-object crops, the axis besides channel,
  y and x indexing the objects (e.g. a custom ``n`` axis or ``t``); an image without one is one
  object.

Listing reads metadata only; pixels are read lazily, per field or per partition of objects, at
``dataset.level``. ``dataset.channels`` takes channel indices or omero channel labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError, ObjectError, raise_if_transient
from .base import (Source, check_some_usable, expand_paths, load_each, most_common, nullable_ints, object_error,
                   regex_groups, row_error, store_rows)


# ---------------------------------------------------------------------------------------------
# Metadata


def _is_array(path) -> bool:
    """Whether ``path`` holds a zarr array (v2 or v3, SCIP's ragged object arrays included)."""
    p = Path(path)
    if (p / ".zarray").is_file():
        return True
    try:
        return json.loads((p / "zarr.json").read_text()).get("node_type") == "array"
    except (OSError, ValueError, AttributeError):
        return False


def open_group(path):
    """The zarr group at ``path`` (zarr v2 or v3), read only."""
    import zarr

    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:
        hint = ("; it is a zarr array, not an OME-Zarr group: +dataset=zarr reads a dense (N, C, H, W) array, "
                "+dataset=scip_zarr SCIP's ragged layout") if _is_array(path) else ""
        raise InputError(f"{path}: cannot be opened as a zarr group ({type(exc).__name__}: {exc}){hint}") from exc


def ome_attrs(group) -> tuple[dict, str | None]:
    """The OME metadata of a group and its NGFF version: ``attributes["ome"]`` (0.5 and later) or
    the attributes themselves (0.4 and earlier, the version in ``multiscales``/``plate``/``well``)."""
    attrs = dict(group.attrs)
    if isinstance(attrs.get("ome"), dict):
        ome = attrs["ome"]
        return ome, str(ome.get("version")) if ome.get("version") is not None else None
    version = None
    for key in ("multiscales", "plate", "well"):
        node = attrs.get(key)
        node = node[0] if key == "multiscales" and isinstance(node, list) and node else node
        if isinstance(node, dict) and node.get("version") is not None:
            version = str(node["version"])
            break
    return attrs, version


@dataclass
class ImageInfo:
    """One OME-Zarr image at the chosen resolution level."""

    path: str  # the image group
    array_path: str  # the level's array
    axes: list[str]  # axis names, canonical: t, c, z, y, x or the custom name
    shape: tuple
    dtype: str
    labels: list[str] | None  # omero channel labels, when given
    version: str | None


_TYPES = {"channel": "c", "time": "t"}


def _axes(multiscale: dict, ndim: int, where: str) -> list[str]:
    """Axis names: from ``axes`` (names and types, NGFF 0.4+), else NGFF 0.3's names, else the
    last ``ndim`` of t, c, z, y, x (NGFF 0.1/0.2)."""
    axes = multiscale.get("axes")
    if axes is None:
        return list("tczyx"[-ndim:]) if ndim <= 5 else [f"dim{i}" for i in range(ndim)]
    names = []
    for a in axes:
        if isinstance(a, str):  # NGFF 0.3
            names.append(a.lower())
            continue
        name, kind = str(a.get("name", "")).lower(), a.get("type")
        names.append(_TYPES.get(kind, name) if kind != "space" else name)
    space = [i for i, a in enumerate(axes) if isinstance(a, dict) and a.get("type") == "space"]
    if len(space) >= 2:  # the last two space axes are (y, x), whatever their names
        for i, canon in zip(space[-3:][::-1], "xyz"):
            names[i] = canon
    if len(names) != ndim:
        raise InputError(f"{where}: multiscales.axes lists {len(names)} axes for an array of {ndim} dimensions")
    if "x" not in names or "y" not in names:
        raise InputError(f"{where}: multiscales.axes {names} has no y and x axes")
    return names


def image_info(path, level: int) -> ImageInfo:
    """Metadata of the image group at ``path`` and its array at resolution ``level``.

    Raises InputError naming the image when it is not an OME-Zarr image (no ``multiscales``)
    or lacks the level."""
    where = str(path)
    group = open_group(path)
    ome, version = ome_attrs(group)
    ms = ome.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        has = sorted(k for k in ome if k != "version")
        raise InputError(f"{where}: not an OME-Zarr image: its attributes have no 'multiscales' entry "
                         f"(found: {has or 'none'}; an OME-Zarr image, or a plate with 'plate', is expected)")
    datasets = ms[0].get("datasets") or []
    if not 0 <= level < len(datasets):
        paths = [d.get("path") for d in datasets]
        raise InputError(f"{where}: resolution level dataset.level={level} does not exist; the image has "
                         f"{len(datasets)} level(s) (0..{len(datasets) - 1}: paths {paths})")
    array_path = f"{str(path).rstrip('/')}/{datasets[level]['path']}"
    try:
        arr = group[str(datasets[level]["path"])]
        shape, dtype = tuple(arr.shape), str(arr.dtype)
    except Exception as exc:
        raise InputError(f"{where}: resolution level {level} (path {datasets[level].get('path')!r}) cannot be "
                         f"read ({type(exc).__name__}: {exc})") from exc
    axes = _axes(ms[0], len(shape), where)
    channels = (ome.get("omero") or {}).get("channels") if isinstance(ome.get("omero"), dict) else None
    labels = None
    if isinstance(channels, list) and channels:
        labels = [str(ch.get("label", i)) if isinstance(ch, dict) else str(i) for i, ch in enumerate(channels)]
    return ImageInfo(str(path), array_path, axes, shape, dtype, labels, version)


def n_channels(info: ImageInfo) -> int:
    return info.shape[info.axes.index("c")] if "c" in info.axes else 1


def resolve_channels(channels, info: ImageInfo) -> list[int]:
    """``dataset.channels`` (indices or omero labels) as channel indices of this image.

    ConfigError for a label not in the image's omero metadata or an index out of range."""
    n = n_channels(info)
    if channels is None:
        return list(range(n))
    out = []
    for c in channels:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if not info.labels or c not in info.labels:
                raise ConfigError(f"dataset.channels: channel {c!r} is not in the omero metadata of {info.path} "
                                  f"(its channels: {info.labels or 'none named'}); give a channel label or index")
            out.append(info.labels.index(c))
        else:
            i = int(c)
            if not -n <= i < n:
                raise ConfigError(f"dataset.channels: channel index {i} is out of range for {info.path}, which has "
                                  f"{n} channel(s) (valid: 0..{n - 1})")
            out.append(i % n)
    return out


def read_image(info: ImageInfo, channels: list[int], leading: dict[str, int | slice] | None = None) -> np.ndarray:
    """Pixels of an image as (leading..., C, Z, Y, X) for the channels (read lazily: only their
    chunks). ``leading``: the index along other axes (e.g. ``{"t": 0}``; a slice keeps the axis,
    first). Axes neither given nor c/z/y/x must have size 1."""
    import zarr

    arr = zarr.open_array(info.array_path, mode="r")
    leading = leading or {}
    index, keep = [], []
    for name, size in zip(info.axes, arr.shape):
        if name == "c":
            index.append(np.asarray(channels, dtype=np.intp))
        elif name in ("z", "y", "x"):
            index.append(slice(None))
        elif name in leading:
            index.append(leading[name])
        elif size == 1:
            index.append(slice(None))
        else:
            raise ObjectError(f"{info.path}: axis {name!r} has {size} entries; one is supported here (axes "
                              f"{info.axes}, shape {tuple(arr.shape)})", "load")
        if not isinstance(index[-1], (int, np.integer)):
            keep.append(name)
    data = np.asarray(arr.oindex[tuple(index)])
    if "c" not in keep:  # one channel without a channel axis
        if list(channels) != [0]:
            raise ObjectError(f"{info.path}: has one channel (no channel axis); channels {channels} requested",
                              "load")
        data, keep = data[np.newaxis], ["c"] + keep
    if "z" not in keep:
        data, keep = data[np.newaxis], ["z"] + keep
    spatial = ["c", "z", "y", "x"]
    first = [k for k in keep if k not in spatial and k in leading]  # sliced: kept, in front
    ones = [k for k in keep if k not in spatial and k not in leading]  # size 1: dropped
    data = data.transpose([keep.index(k) for k in first + ones + spatial])
    return data.reshape(data.shape[: len(first)] + data.shape[len(first) + len(ones):])


def _channel_names(cfg, labels: list[str] | None, selected: list[int]) -> list[str]:
    if cfg.channel_names is not None:
        return list(cfg.channel_names)
    if labels:
        return [labels[i] for i in selected]
    return [f"ch{i}" for i in selected]


# ---------------------------------------------------------------------------------------------
# Fields of view: plates and images


def plate_fields(path, level: int) -> list[dict]:
    """One row per field of every well of the plate at ``path`` (a field that cannot be read is a
    row holding the cause)."""
    group = open_group(path)
    ome, version = ome_attrs(group)
    plate = ome["plate"]
    name = str(plate.get("name") or store_stem(path))
    rows = [r.get("name") for r in plate.get("rows", [])]
    cols = [c.get("name") for c in plate.get("columns", [])]
    out = []
    for w in plate.get("wells", []):
        wpath = str(w["path"])
        parts = wpath.split("/")
        r = rows[w["rowIndex"]] if "rowIndex" in w and w["rowIndex"] < len(rows) else parts[0]
        c = cols[w["columnIndex"]] if "columnIndex" in w and w["columnIndex"] < len(cols) else parts[-1]
        meta = {"meta_plate": name, "meta_well": f"{r}{c}", "meta_row": str(r), "meta_column": str(c)}
        well_dir = f"{str(path).rstrip('/')}/{wpath}"
        try:
            well = ome_attrs(open_group(well_dir))[0].get("well")
            if not isinstance(well, dict):
                raise InputError(f"{well_dir}: a well of plate {name} without 'well' metadata")
            images = [str(im["path"]) for im in well.get("images", [])]
        except Exception as exc:  # noqa: BLE001 - this well's error, the others are profiled
            raise_if_transient(exc, well_dir)  # (the storage's, not the well's: the run stops)
            out.append({**meta, "meta_fov": "", "meta_path": well_dir, "_error": _cause(exc, well_dir)})
            continue
        for fov in images:
            out.append({**meta, "meta_fov": fov, "meta_path": f"{well_dir}/{fov}", "_image": f"{well_dir}/{fov}"})
    if not out:
        raise InputError(f"{path}: plate {name} lists no wells")
    return out


def image_paths(path, ome: dict) -> list[str]:
    """The images of a store that is not a plate: itself (``multiscales``), or the series of a
    ``bioformats2raw.layout`` store (``OME/series``, else the groups ``0``, ``1``, ...)."""
    if "multiscales" in ome or "bioformats2raw.layout" not in ome:
        return [str(path)]  # (without multiscales: image_info names what is missing)
    root = str(path).rstrip("/")
    try:
        series = ome_attrs(open_group(f"{root}/OME"))[0].get("series")
    except InputError:
        series = None
    if not series:
        group, series = open_group(path), []
        while str(len(series)) in group:
            series.append(str(len(series)))
    return [f"{root}/{s}" for s in series] or [str(path)]


def store_stem(path) -> str:
    """A store's name without ``.zarr`` and ``.ome`` (``plate_0.4.ome.zarr`` -> ``plate_0.4``)."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".zarr", ".ome"):
        name = name.removesuffix(suffix)
    return name


def _cause(exc: BaseException, where: str) -> str:
    return str(exc) if isinstance(exc, (InputError, ConfigError)) else f"{where}: cannot be read ({exc})"


class _OmeZarrSource(Source):
    """What the two OME-Zarr formats share: images at a level, channels by index or label."""

    def _infos(self, table: pd.DataFrame) -> pd.DataFrame:
        """Read every image's metadata at the level; a bad image is a row error (the whole run
        stops when it is the only image, or no image can be read). The channel set is chosen
        from the first image that can be read; the channels of each image are found by label."""
        level = int(self.cfg.level)
        infos, errs = [], []
        for rec in table.to_dict("records"):
            info = None
            if isinstance(rec.get("_error"), str):
                errs.append(rec["_error"])
            else:
                try:
                    info = image_info(rec["_image"], level)
                    errs.append(None)
                except InputError as exc:
                    if len(table) == 1:
                        raise
                    errs.append(str(exc))
            infos.append(info)
        ok = [i for i in infos if i is not None]
        if not ok:
            table["_error"] = errs
            check_some_usable(table, f"dataset.path {self.cfg.path!r}")
        ref = ok[0]
        self._reference = ref
        self._selected = resolve_channels(self.cfg.channels, ref)  # ConfigError: the run stops
        self._labels = ref.labels
        chans = []
        for k, info in enumerate(infos):
            if info is None:
                chans.append(None)
                continue
            try:
                if self.cfg.channels is None:
                    sel = list(range(n_channels(info)))
                else:
                    sel = resolve_channels([self._labels[i] if self._use_labels() else i for i in self._selected], info)
                chans.append(sel)
            except ConfigError as exc:
                errs[k] = str(exc)
                chans.append(None)
        table["_array"] = [i.array_path if i is not None else None for i in infos]
        table["_axes"] = [",".join(i.axes) if i is not None else None for i in infos]
        table["_channels"] = [c for c in chans]
        table["_error"] = errs
        check_some_usable(table, f"dataset.path {self.cfg.path!r}")
        return table

    def _use_labels(self) -> bool:
        """Channels chosen by label (then found by label in every image) or by index."""
        return bool(self.cfg.channels) and any(isinstance(c, str) and not c.lstrip("-").isdigit()
                                               for c in self.cfg.channels)

    def selected_channels(self, objects):
        return list(self._selected)

    def channel_names(self, objects) -> list[str]:
        if self.cfg.channels is None:  # the channel count most images have
            counts = [len(c) for c in objects["_channels"] if isinstance(c, list)]
            n = most_common(counts, what=self.unit, describe=lambda c: f"{c} channel(s)")
            self._selected = list(range(n))
        return _channel_names(self.cfg, self._labels, self._selected)

    def _info(self, row) -> ImageInfo:
        return ImageInfo(row["_image"], row["_array"], row["_axes"].split(","), (), "", None, None)


class OmeZarrFieldSource(_OmeZarrSource):
    """Fields of view in OME-Zarr: the fields of a plate's wells, or images (one field each)."""

    kind = "OME-Zarr fields of view"
    unit = "field"
    fields = True

    def objects(self) -> pd.DataFrame:
        rows = store_rows(expand_paths(self.cfg.path, "OME-Zarr store"), self._store_rows, "OME-Zarr store",
                          self.cfg.regex)
        table = self._infos(pd.DataFrame(rows))
        if "meta_plate" in table:
            ids = table["meta_plate"].astype(str) + "_" + table["meta_well"].astype(str) + "_" \
                + table["meta_fov"].astype(str)
        else:
            ids = pd.Series([store_stem(p) for p in table["meta_path"]])
        if ids.duplicated().any():  # several stores of the same name: numbered
            ids = ids + "_" + pd.Series(np.arange(len(ids)).astype(str))
        meta = [c for c in table.columns if c.startswith("meta_")]
        table["meta_field"] = list(ids)
        return table[meta + ["meta_field"] + [c for c in table.columns if c.startswith("_")]]

    def _store_rows(self, path: Path) -> list[dict]:
        group = open_group(path)
        ome, _ = ome_attrs(group)
        groups = regex_groups(self.cfg.regex, str(path), where="dataset.regex")
        if groups is None:
            raise InputError(f"dataset.regex {self.cfg.regex!r} does not match the store path {path}")
        extra = {f"meta_{k}": v for k, v in groups.items()}
        if "plate" in ome:
            return [{**r, **extra} for r in plate_fields(path, int(self.cfg.level))]
        return [{"meta_path": p, **extra, "_image": p} for p in image_paths(path, ome)]

    def describe(self, row) -> str:
        return f"field {row['meta_field']}"

    def load_field(self, row) -> np.ndarray:
        """(C, Z, H, W) image of one field; raises ObjectError (whatever went wrong)."""
        err = row_error(row)
        if err is not None:
            raise err
        try:
            info = self._info(row)
            return read_image(info, list(row["_channels"]))  # a t axis of more than one entry: an error
        except Exception as exc:  # noqa: BLE001 - whatever fails, it is this field's error
            raise object_error(exc, lambda: f"{self.describe(row)} ({row.get('meta_path')})") from None

    def load(self, rows):  # pragma: no cover - fields are loaded one at a time by process_fields
        return load_each(self.load_field, rows)


# ---------------------------------------------------------------------------------------------
# Objects: an image of per-object crops


def object_axis(info: ImageInfo) -> str | None:
    """The axis indexing the objects: the one axis besides c, y and x (of more than one entry when
    there are several). None: the image is one object."""
    others = [(a, s) for a, s in zip(info.axes, info.shape) if a not in ("c", "y", "x")]
    big = [a for a, s in others if s > 1]
    if len(big) > 1:
        raise InputError(f"{info.path}: axes {info.axes} of shape {info.shape}: an image of objects has one axis "
                         f"besides c, y and x (found {big} with more than one entry); 3-D crops are not supported")
    return big[0] if big else (others[0][0] if others else None)


class OmeZarrObjectSource(_OmeZarrSource):
    """Objects in OME-Zarr images: (N, C, Y, X) crops, N any axis besides c, y and x."""

    kind = "OME-Zarr objects"
    unit = "object"

    def objects(self) -> pd.DataFrame:
        rows = store_rows(expand_paths(self.cfg.path, "OME-Zarr image"), self._store_rows, "OME-Zarr image",
                          self.cfg.regex)
        table = self._infos(pd.DataFrame(rows))
        per_store = []
        for rec in table.to_dict("records"):
            if isinstance(rec.get("_error"), str) or not isinstance(rec.get("_array"), str):
                per_store.append([rec])
                continue
            info = ImageInfo(rec["_image"], rec["_array"], rec["_axes"].split(","), rec["_shape"], "", None, None)
            try:
                axis = object_axis(info)
            except InputError as exc:
                if len(table) == 1:
                    raise
                per_store.append([{**rec, "_error": str(exc)}])
                continue
            n = info.shape[info.axes.index(axis)] if axis else 1
            per_store.append([{**rec, "meta_zarr_idx": i, "_object_axis": axis} for i in range(n)])
        table = pd.DataFrame([r for rs in per_store for r in rs])
        cols = [c for c in table.columns if c.startswith("meta_")] + [c for c in table.columns if c.startswith("_")]
        return nullable_ints(table[cols], ["meta_zarr_idx"])

    def _store_rows(self, path: Path) -> list[dict]:
        groups = regex_groups(self.cfg.regex, str(path), where="dataset.regex")
        if groups is None:
            raise InputError(f"dataset.regex {self.cfg.regex!r} does not match the store path {path}")
        rows = []
        for p in image_paths(path, ome_attrs(open_group(path))[0]):
            info = image_info(p, int(self.cfg.level))  # the level's shape, for the object count
            rows.append({"meta_path": p, **{f"meta_{k}": v for k, v in groups.items()}, "_image": p,
                         "_shape": info.shape})
        return rows

    def describe(self, row) -> str:
        idx = row.get("meta_zarr_idx")
        return str(row["meta_path"]) if pd.isna(idx) else f"{row['meta_path']}[{idx}]"

    def load(self, rows: pd.DataFrame) -> list:
        """(C, H, W) images: one read per image and partition (the span of its objects)."""
        out: list = [None] * len(rows)
        records = rows.to_dict("records")
        expected = len(self._selected)
        by_image: dict[str, list[int]] = {}
        for p, rec in enumerate(records):
            err = row_error(rec)
            if err is not None:
                out[p] = err
            else:
                by_image.setdefault(rec["_array"], []).append(p)
        for pos in by_image.values():
            rec0 = records[pos[0]]
            info = self._info(rec0)
            axis = rec0.get("_object_axis")
            axis = axis if isinstance(axis, str) else None
            idx = [int(records[p]["meta_zarr_idx"]) for p in pos]
            try:
                chans = list(rec0["_channels"])
                if len(chans) != expected:
                    raise ObjectError(f"{rec0['meta_path']}: has {len(chans)} channel(s) where most images have "
                                      f"{expected}; set dataset.channels to choose the channels to profile", "load")
                lo, hi = min(idx), max(idx) + 1
                block = read_image(info, chans, {axis: slice(lo, hi)} if axis else None)
                if not axis:
                    block = block[None]
                if block.shape[2] != 1:  # (n, C, Z, Y, X)
                    raise ObjectError(f"{rec0['meta_path']}: has {block.shape[2]} z planes; 2-D crops are "
                                      "expected", "load")
                for p, i in zip(pos, idx):
                    out[p] = block[i - lo, :, 0]
            except Exception as exc:  # noqa: BLE001 - every object of this image gets the cause
                for p in pos:
                    out[p] = object_error(exc, lambda p=p: self.describe(records[p]))
        return out


__all__ = ["OmeZarrFieldSource", "OmeZarrObjectSource", "image_info", "ome_attrs", "read_image",
           "resolve_channels"]
