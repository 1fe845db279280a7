"""Fields of view: projection, illumination correction, segmentation, objects.

High-content screens image fields of view holding many cells. A field goes through

1. loading (``FieldSource``: one TIFF per channel, and per z plane when the regex has a ``z``
   group, grouped into fields by the regex's other named groups);
2. z-projection (``project``: min, mean, max or median over the planes);
3. illumination correction (``IlluminationModel``: per group of fields the mean image,
   optionally downscaled, median-smoothed, zeros replaced by 1, rescaled; images are divided by
   it — Jones et al. 2006 / Singh et al. 2014, SCIP's ``jones_2006``). The mean images are a
   distributed reduction: partial sums per group come back from the workers and each group is
   finished as soon as its last partial sum arrives;
4. segmentation into labelled nuclei and cells (``scip_gpu.segmentation``: watershed;
   ``scip_gpu.cellpose_seg``: Cellpose), children assigned to parents as SCIP does;
5. objects (``field_objects``): each cell cropped to its bounding box with its compartment masks
   (nucleus, cell, cytoplasm); every channel is measured in the mask of its compartment. The
   crops then enter the same batch path as one-cell-per-image data.

Per object the metadata holds the field's metadata, ``meta_label`` (its label in the field),
``meta_field`` (the field's id) and ``meta_touches_border``; its bbox in field coordinates is the
bbox family of the segmentation mask.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .backend import array_module, asnumpy, ndimage
from .errors import InputError, ObjectError
from .export import temp_path
from .io.base import load_each, object_error
from .io.tiff import ChannelTiffSource, _read, _to_cyx, check_extra_channels, group_channel_files

COMPARTMENTS = ("nucleus", "cell", "cytoplasm")


# ---------------------------------------------------------------------------------------------
# Source


class FieldSource(ChannelTiffSource):
    """Fields of view stored as one TIFF per channel (and per z plane).

    The regex must have a ``channel`` group; an optional ``z`` group orders the planes of
    multi-focal stacks; every other named group is field metadata and together they identify a
    field. A file may itself hold a (Z, Y, X) stack.
    """

    kind = "fields of view"
    fields = True

    def objects(self) -> pd.DataFrame:
        table, keys, self._channel_keys = group_channel_files(
            self.cfg, fmt="fields_tiff", needs="(?P<channel>...) and the groups that identify a field "
            "(e.g. plate, well, site)", what="field")
        table.insert(len(keys), "meta_field", ["_".join(str(v) for v in vals)
                                               for vals in table[[f"meta_{k}" for k in keys]].itertuples(index=False)])
        return table

    def describe(self, row) -> str:
        return f"field {row['meta_field']}"

    def load_field(self, row) -> np.ndarray:
        """(C, Z, H, W) image of one field; raises ObjectError (whatever went wrong)."""
        try:
            return self._load_field(row)
        except Exception as exc:  # noqa: BLE001 - whatever fails, it is this field's error
            raise object_error(exc, lambda: self.describe(row)) from None

    def _load_field(self, row) -> np.ndarray:
        name = self.describe(row)
        check_extra_channels(row, name, self._channel_keys)
        planes = []
        for ch, files in zip(self._channel_keys, row["_files"]):
            if not files:
                raise ObjectError(f"{name}: no file for channel {ch!r}", "load")
            stack = []
            for f in files:
                arr, axes = _read(Path(f))
                img = _to_cyx(arr, axes.replace("Z", "C") if "C" not in axes else axes, f)
                stack.extend(img)  # a file may hold several z planes
            planes.append(np.stack(stack))
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            raise ObjectError(f"{name}: channels differ in shape or number of z planes {sorted(shapes)}", "load")
        return np.stack(planes)

    def load(self, rows):  # pragma: no cover - fields are loaded one at a time by process_fields
        return load_each(self.load_field, rows)


# ---------------------------------------------------------------------------------------------
# Metadata joins


def join_metadata(table: pd.DataFrame, joins, *, where: str = "dataset.metadata") -> pd.DataFrame:
    """Left-join user CSV tables onto ``table`` by key columns (applied in order).

    Each join maps CSV columns to meta keys: ``keys`` (keys to match, e.g.
    ``{Image_Metadata_Plate_DAPI: plate}``) and ``columns`` (values to add; empty: all other
    columns, under their own names). CSV values are read as strings; rows repeated identically
    are dropped, conflicting repeats are an error.
    """
    for j, join in enumerate(joins):
        if not join.path:
            continue
        path = Path(join.path)
        if not path.is_file():
            raise InputError(f"{where}[{j}].path: {path} does not exist")
        try:
            csv = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:
            raise InputError(f"{where}[{j}].path: {path} cannot be read as CSV ({exc})") from exc
        on = dict(join.keys)
        missing = [c for c in on if c not in csv.columns]
        if missing:
            raise InputError(f"{where}[{j}]: {path} has no column(s) {missing} (it has {list(csv.columns)[:12]})")
        absent = [f"meta_{k}" for k in on.values() if f"meta_{k}" not in table.columns]
        if absent:
            raise InputError(f"{where}[{j}].keys: the table has no column(s) {absent}")
        cols = dict(join.columns) or {c: c for c in csv.columns if c not in on}
        bad = [c for c in cols if c not in csv.columns]
        if bad:
            raise InputError(f"{where}[{j}].columns: {path} has no column(s) {bad}")
        sub = csv[list(on) + list(cols)].drop_duplicates()
        dup = sub.duplicated(subset=list(on), keep=False)
        if dup.any():
            example = sub[dup].head(2).to_dict("records")
            raise InputError(f"{where}[{j}]: {path} gives different values for the same key, e.g. {example}")
        sub = sub.rename(columns={**{c: f"meta_{k}" for c, k in on.items()},
                                  **{c: f"meta_{k}" for c, k in cols.items()}})
        keys = [f"meta_{k}" for k in on.values()]
        left = table.copy()
        for k in keys:
            left[k] = left[k].astype(str)
        clash = [c for c in sub.columns if c in table.columns and c not in keys]
        if clash:
            raise InputError(f"{where}[{j}].columns: {clash} already exist in the table")
        table = left.merge(sub, on=keys, how="left")
    return table


# ---------------------------------------------------------------------------------------------
# Projection and illumination correction


def project(img, method: str | None):
    """Project a (C, Z, H, W) stack over Z (``min``, ``mean``, ``max``, ``median``).

    Without a method, a single plane is taken as is and several planes are an error.
    """
    xp = array_module(img)
    if img.shape[1] == 1:
        return img[:, 0]
    if method is None:
        raise ObjectError(f"the field has {img.shape[1]} z planes: choose a projection "
                          "(projection=max, mean, min or median)", "project")
    if method == "mean":
        return img.astype(xp.float64).mean(axis=1)
    if method == "median":
        return xp.median(img.astype(xp.float64), axis=1)
    return getattr(xp, method)(img, axis=1)


def finish_illumination(total, count: int, *, median_filter_size: int, downscale: int):
    """Correction image of a group from its pixel sum and count (SCIP's ``jones_2006``).

    ``avg = total / count``; with ``downscale > 1`` the mean is block-averaged
    (``downscale_local_mean``), each channel is median-filtered (``size``), zeros become 1, and
    a downscaled image is rescaled back (anti-aliased) to the field's size.
    """
    xp = array_module(total)
    from .backend import skimage_module

    transform = skimage_module(xp, "transform")
    avg = total / count
    c, h, w = avg.shape
    if downscale > 1:
        avg = transform.downscale_local_mean(avg, (1, downscale, downscale))
    ndi = ndimage(xp)
    smooth = xp.stack([ndi.median_filter(avg[i], size=median_filter_size) for i in range(c)])
    smooth = xp.where(smooth == 0, 1.0, smooth)
    if downscale > 1:
        smooth = transform.rescale(smooth, downscale, anti_aliasing=True, channel_axis=0)[:, :h, :w]
    return smooth.astype(xp.float32)


@lru_cache(maxsize=16)
def load_correction(path: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(path).astype(np.float32)


def write_correction(folder: Path, group: str, image: np.ndarray, channel_names) -> Path:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe_name(group)}.tif"
    tmp = temp_path(path)  # this process's own temporary name
    tifffile.imwrite(tmp, np.asarray(image, np.float32), photometric="minisblack", metadata={"axes": "CYX"},
                     description=json.dumps({"group": group, "channels": list(channel_names)}))
    os.replace(tmp, path)
    return path


def safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(s)) or "all"


def field_sums(task, *, source, projection: str | None, key: str | None) -> dict:
    """Partial pixel sums per illumination group over a partition of fields (worker task)."""
    _, rows = task
    sums: dict[str, list] = {}
    errors = []
    for _, row in rows.iterrows():
        try:
            img = project(source.load_field(row), projection).astype(np.float64)
        except ObjectError as exc:
            errors.append(str(exc))
            continue
        group = str(row[f"meta_{key}"]) if key else "all"
        if group in sums:
            if sums[group][0].shape != img.shape:
                errors.append(f"{source.describe(row)}: shape {img.shape} differs from the other fields of "
                              f"illumination group {group!r} {sums[group][0].shape}")
                continue
            sums[group][0] += img
            sums[group][1] += 1
        else:
            sums[group] = [img, 1]
    return {"sums": sums, "errors": errors}


# ---------------------------------------------------------------------------------------------
# Objects from label images


@dataclass
class FieldObjects:
    """The objects of one field: crops, compartment masks and metadata."""

    pixels: list  # (C, h, w) crops
    masks: list  # (C, h, w) bool: each channel's compartment mask
    meta: list  # dicts: label, bbox, touches_border


def channel_compartments(seg_cfg, channel_names) -> list[str]:
    """Compartment each channel is measured in."""
    out = []
    for i, name in enumerate(channel_names):
        default = "nucleus" if i == seg_cfg.nucleus_channel else "cell"
        out.append(seg_cfg.compartments.get(name, default))
    return out


def field_objects(img, labels: dict, compartments: list[str], *, min_size: int) -> FieldObjects:
    """Crop every parent object (``labels['cell']``) of a (C, H, W) field with its masks.

    ``labels`` maps compartments to label images whose labels agree (nucleus ``i`` lies in cell
    ``i``); ``cytoplasm`` is derived as cell minus nucleus when absent.
    """
    from .segmentation import subtract

    xp = array_module(img)
    host = {k: asnumpy(v) for k, v in labels.items()}
    parent = host["cell"]
    if "cytoplasm" not in host and "cytoplasm" in compartments:
        host["cytoplasm"] = subtract(parent, host.get("nucleus", np.zeros_like(parent)))
    h, w = parent.shape
    sizes = np.bincount(parent.ravel())
    slices = ndimage(np).find_objects(parent)
    pixels, masks, meta = [], [], []
    img_h = asnumpy(img) if xp is not np else img
    for lab0, sl in enumerate(slices):  # one crop per object: the objects differ in size
        lab = lab0 + 1
        if sl is None or sizes[lab] < min_size:
            continue
        crop = {k: host[k][sl] == lab for k in set(compartments) | {"cell"}}
        pixels.append(np.ascontiguousarray(img_h[(slice(None), *sl)]))
        masks.append(np.stack([crop[c] for c in compartments]))
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        meta.append({"meta_label": lab, "bbox": (r0, c0, r1, c1),
                     "meta_touches_border": bool(r0 == 0 or c0 == 0 or r1 == h or c1 == w)})
    return FieldObjects(pixels, masks, meta)


def export_labels(folder: Path, field: str, labels: dict, fmt: str = "ome_zarr") -> Path:
    """Write a field's label images for napari: an OME-Zarr label group (``ome_zarr``, default)
    or an OME-TIFF with one plane per compartment (``ome_tiff``)."""
    fmt = getattr(fmt, "value", fmt)
    if fmt == "ome_zarr":
        return export_labels_zarr(folder, field, labels)
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    names = [k for k in COMPARTMENTS if k in labels]
    stack = np.stack([asnumpy(labels[k]).astype(np.uint32) for k in names])
    path = folder / f"{safe_name(field)}.ome.tif"
    tmp = temp_path(path)  # this process's own temporary name
    tifffile.imwrite(tmp, stack, ome=True, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": names}})
    os.replace(tmp, path)
    return path


#: NGFF version of the label images written (0.4, zarr v2: the version napari-ome-zarr and most
#: readers open)
LABELS_NGFF_VERSION = "0.4"


def export_labels_zarr(folder: Path, field: str, labels: dict, *, chunk: int = 1024) -> Path:
    """Write a field's label images as OME-Zarr labels (NGFF 0.4): ``<folder>/<field>.ome.zarr``
    is a labels group (attribute ``labels``: the compartments) holding one label image per
    compartment (``nucleus``, ``cell``, ``cytoplasm``): a (y, x) uint32 single-scale
    ``multiscales`` image with ``image-label`` metadata, which napari opens as a label layer."""
    import zarr

    from .export import replacing_dir

    folder.mkdir(parents=True, exist_ok=True)
    names = [k for k in COMPARTMENTS if k in labels]
    path = folder / f"{safe_name(field)}.ome.zarr"
    with replacing_dir(path) as tmp:  # this process's own temporary folder, renamed when complete
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        root.attrs.update({"labels": names})
        for name in names:
            lab = np.ascontiguousarray(asnumpy(labels[name]).astype(np.uint32))
            g = root.create_group(name)
            g.attrs.update({
                "multiscales": [{
                    "version": LABELS_NGFF_VERSION, "name": name,
                    "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}],
                }],
                "image-label": {"version": LABELS_NGFF_VERSION},
            })
            arr = g.create_array("0", shape=lab.shape, dtype=lab.dtype,
                                 chunks=tuple(min(chunk, s) or 1 for s in lab.shape),
                                 chunk_key_encoding={"name": "v2", "separator": "/"})  # as NGFF 0.4 asks
            arr[...] = lab
    return path
