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
5. objects (``field_objects``): each cell's bounding box; batches of crops with their
   compartment masks (nucleus, cell, cytoplasm) are gathered from the field where it is
   (``gather_crops``; on the device with ``device=cuda``) and enter the same batch path as
   one-cell-per-image data; every channel is measured in the mask of its compartment.

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

from .backend import array_module, asnumpy, is_gpu, ndimage
from .config import reserved_meta
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
        clash = [c for c in sub.columns if c in table.columns and c not in keys
                 or c not in keys and reserved_meta(c[len("meta_"):], fields="meta_field" in table.columns)]
        if clash:
            raise InputError(f"{where}[{j}].columns: {clash} already exist in the table (or are scip_gpu's own); "
                             f"map them to other names ({where}[{j}].columns: {{CSV column: new name}})")
        table = left.merge(sub, on=keys, how="left", indicator="_matched")
        unmatched = int((table.pop("_matched") == "left_only").sum())
        if unmatched:  # (their added columns are empty: often keys written differently, e.g. A01 / A1)
            import logging

            examples = left.loc[~left.set_index(keys).index.isin(sub.set_index(keys).index), keys].drop_duplicates()
            logging.getLogger("scip_gpu").warning(
                "%s[%d]: %d of %d row(s) match no row of %s on %s (their columns from it are empty); e.g. %s",
                where, j, unmatched, len(table), path.name, list(on), examples.head(3).to_dict("records"))
    return table


# ---------------------------------------------------------------------------------------------
# Projection and illumination correction


def field_files(row) -> list | None:
    """The files of a field's row, one list per channel (per-channel TIFF fields), else None."""
    files = row.get("_files") if hasattr(row, "get") else None
    return list(files) if isinstance(files, (list, tuple)) else None


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


def check_field_values(img, name: str, channel_names, files=None) -> None:
    """ObjectError when a (float) field has NaN or infinite pixels, naming per channel how many
    and, when given (``files``: one list per channel), the channel's files: such a field can be
    neither segmented nor summed into an illumination correction. One count per channel comes
    back from a device."""
    if np.dtype(img.dtype).kind != "f":
        return
    xp = array_module(img)
    bad = np.asarray(asnumpy(xp.count_nonzero(~xp.isfinite(img), axis=tuple(range(1, img.ndim)))))
    if not bad.any():
        return
    where = []
    for c, n in enumerate(bad.tolist()):
        if n:
            ch = channel_names[c] if c < len(channel_names) else c
            src = f" in {', '.join(map(str, files[c]))}" if files is not None and c < len(files) and files[c] else ""
            where.append(f"{n} in channel {ch!r}{src}")
    raise ObjectError(f"{name}: contains {int(bad.sum())} NaN or infinite pixel value(s) ({'; '.join(where)}); "
                      "such a field can be neither segmented nor profiled", "validate")


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


def field_sums(task, *, source, projection: str | None, key: str | None, device: str = "cpu") -> dict:
    """Partial pixel sums over a partition of fields (worker task): ``{"sums": {(group, shape):
    [sum, count]}, "errors": [...]}``, kept apart per field shape (the driver averages the shape
    most fields of a group have; a field of another shape is not summed into it).

    With ``device="cuda"`` each field is projected and added on the device (it goes there once,
    as read); the sums come back to the host once, at the end of the task (one image per group
    and shape, the same numbers: the fields are added in the same order)."""
    from .backend import device_module

    xp = device_module(device)
    _, rows = task
    sums: dict[tuple, list] = {}
    errors = []
    for _, row in rows.iterrows():
        try:
            img = project(xp.asarray(source.load_field(row)), projection)  # host -> device: the field
            check_field_values(img, source.describe(row), [str(c) for c in range(img.shape[0])],
                               field_files(row))
            img = img.astype(xp.float64)
        except ObjectError as exc:
            errors.append(str(exc))
            continue
        group = str(row[f"meta_{key}"]) if key else "all"
        k = (group, tuple(int(v) for v in img.shape))
        if k in sums:
            sums[k][0] += img
            sums[k][1] += 1
        else:
            sums[k] = [img, 1]
    for k, (total, count) in sums.items():
        sums[k] = [asnumpy(total), count]  # device -> host: one image per group and shape
    return {"sums": sums, "errors": errors}


# ---------------------------------------------------------------------------------------------
# Objects from label images


@dataclass
class FieldObjects:
    """The objects of one field: the field and its label images where they were computed (the
    device, with ``device=cuda``), and each object's label and box in the field (host).

    Crops are taken a batch at a time, with their compartment masks, from the field where it is
    (``gather_crops``; on a device in one indexing operation).
    """

    image: object  # (C, H, W)
    labels: dict  # compartment -> (H, W) label image, labels agreeing across compartments
    label: np.ndarray  # (n,) int64: each object's label
    bbox: np.ndarray  # (n, 4) int64: (r0, c0, r1, c1) in field coordinates
    touches_border: np.ndarray  # (n,) bool
    #: (n, 4) int64 box each object is cropped to: its bbox grown by ``field_objects``'s margin
    #: within the field (None: the bbox)
    crop: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.label)

    @property
    def crop_box(self) -> np.ndarray:
        """(n, 4) (r0, c0, r1, c1) of each object's crop in field coordinates."""
        return self.bbox if self.crop is None else self.crop

    @property
    def extents(self) -> np.ndarray:
        """(n, 2) (height, width) of each object's crop."""
        box = self.crop_box
        return box[:, 2:] - box[:, :2]


def channel_compartments(seg_cfg, channel_names) -> list[str]:
    """Compartment each channel is measured in."""
    out = []
    for i, name in enumerate(channel_names):
        default = "nucleus" if i == seg_cfg.nucleus_channel else "cell"
        out.append(seg_cfg.compartments.get(name, default))
    return out


def label_boxes(parent, min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels present in ``parent`` with at least ``min_size`` pixels, and their bounding boxes.

    Returns
    -------
    label : (n,) int64 ndarray (host)
    bbox : (n, 4) int64 ndarray (host)
        (r0, c0, r1, c1), half-open, as ``scipy.ndimage.find_objects`` gives them.

    On the host ``find_objects``; on a device the same boxes from ``cupyx.scipy.ndimage``'s
    per-label ``minimum``/``maximum`` of the row and column coordinates, and one copy of six
    numbers per label to the host (the boxes decide the crops' shapes, hence the batches).
    """
    xp = array_module(parent)
    h, w = parent.shape
    if not is_gpu(xp):
        sizes = np.bincount(parent.ravel())
        slices = ndimage(np).find_objects(parent)
        keep = [(lab0 + 1, sl) for lab0, sl in enumerate(slices) if sl is not None and sizes[lab0 + 1] >= min_size]
        label = np.array([lab for lab, _ in keep], dtype=np.int64)
        bbox = np.array([(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop) for _, sl in keep],
                        dtype=np.int64).reshape(-1, 4)
        return label, bbox
    n = int(parent.max()) if parent.size else 0  # device -> host: one number
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    ndi = ndimage(xp)
    index = xp.arange(1, n + 1)
    rows, cols = xp.indices((h, w), dtype=xp.int32)
    sizes = xp.bincount(parent.ravel(), minlength=n + 1)[1:]
    table = xp.stack([index, sizes,
                      xp.asarray(ndi.minimum(rows, parent, index)), xp.asarray(ndi.minimum(cols, parent, index)),
                      xp.asarray(ndi.maximum(rows, parent, index)) + 1,
                      xp.asarray(ndi.maximum(cols, parent, index)) + 1]).astype(xp.int64)
    table = table.get()  # device -> host: the boxes (6 numbers per label)
    keep = (table[1] > 0) & (table[1] >= min_size)
    return table[0, keep], np.ascontiguousarray(table[2:, keep].T)


def field_objects(img, labels: dict, compartments: list[str], *, min_size: int, margin: int = 0) -> FieldObjects:
    """The parent objects (``labels['cell']``) of a (C, H, W) field, their labels and boxes.

    ``labels`` maps compartments to label images whose labels agree (nucleus ``i`` lies in cell
    ``i``); ``cytoplasm`` is derived as cell minus nucleus when absent. The image and the label
    images stay where they are (on the device with ``device=cuda``); only the boxes come to the
    host (``label_boxes``). Each object is cropped to its box grown by ``margin`` pixels on
    every side within the field (the field's pixels there, outside the object's masks), so that
    the crop's border is the field's only where the object touches it.
    """
    from .segmentation import subtract

    xp = array_module(img)
    if is_gpu(xp):  # label images from the host (Cellpose's) join the field on the device, once
        labels = {k: v if array_module(v) is xp else xp.asarray(v) for k, v in labels.items()}
    labels = dict(labels)
    parent = labels["cell"]
    if "cytoplasm" not in labels and "cytoplasm" in compartments:
        nucleus = labels.get("nucleus")
        labels["cytoplasm"] = subtract(parent, nucleus if nucleus is not None else parent * 0)
    h, w = parent.shape
    label, bbox = label_boxes(parent, min_size)
    touches = (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == h) | (bbox[:, 3] == w)
    kept = {k: labels[k] for k in set(compartments) | {"cell"}}
    crop = None
    if margin:
        crop = np.concatenate([np.maximum(bbox[:, :2] - margin, 0),
                               np.minimum(bbox[:, 2:] + margin, np.array([h, w]))], axis=1).astype(bbox.dtype)
    return FieldObjects(img, kept, label, bbox, touches, crop)


def _crop_index(objs: FieldObjects, which: np.ndarray, shape: tuple[int, int]):
    """Device indices of crops ``which`` of ``objs`` at the padded ``shape``: (rows (k, H),
    cols (k, W), valid (k, H, W), extents (k, 2) int64), from one small host -> device copy."""
    xp = array_module(objs.image)
    hh, ww = shape
    host = np.concatenate([objs.crop_box[which, :2], objs.extents[which]], axis=1).astype(np.int64)  # r0 c0 h w
    dev = xp.asarray(host) if is_gpu(xp) else host  # host -> device: 4 numbers per crop
    r = xp.arange(hh)[None, :]
    c = xp.arange(ww)[None, :]
    in_r = r < dev[:, 2:3]
    in_c = c < dev[:, 3:4]
    rows = xp.where(in_r, dev[:, 0:1] + r, 0)  # any pixel of the field beyond the extent: zeroed
    cols = xp.where(in_c, dev[:, 1:2] + c, 0)
    return rows, cols, in_r[:, :, None] & in_c[:, None, :], dev[:, 2:4]


def gather_crops(objs: FieldObjects, which, shape: tuple[int, int], compartments: list[str] | None = None,
                 dtype=None):
    """Crops ``which`` (positions into ``objs``) of the field, zero-padded to ``shape``: on a
    device in one indexing operation (no per-object loop, no host round trip), on the host by one
    slice copy per crop (faster there than fancy indexing; the same values).

    Returns
    -------
    pixels : (k, C, H, W) array
        Each crop in its top-left corner (``dtype``; default the field's), zero beyond its extent.
    extents : (k, 2) int64 array
        (height, width) of each crop, on the field's device.
    masks : (k, C, H, W) bool array, only with ``compartments``
        Each channel's compartment mask (``compartments[c]``): the pixels of the crop's own label
        in that compartment's label image.
    """
    xp = array_module(objs.image)
    which = np.asarray(which, dtype=np.int64)
    if not is_gpu(xp):
        return _slice_crops(objs, which, shape, compartments, dtype)
    rows, cols, valid, extents = _crop_index(objs, which, shape)
    r, c = rows[:, :, None], cols[:, None, :]
    px = xp.moveaxis(objs.image[:, r, c], 0, 1)  # (k, C, H, W)
    zero = xp.zeros((), dtype=px.dtype)
    px = xp.where(valid[:, None], px, zero)
    if dtype is not None:
        px = px.astype(dtype, copy=False)
    px = xp.ascontiguousarray(px)
    if compartments is None:
        return px, extents
    lab = xp.asarray(objs.label[which]) if is_gpu(xp) else objs.label[which]  # host -> device: one per crop
    own = {k: (objs.labels[k][r, c] == lab[:, None, None]) & valid for k in set(compartments)}
    masks = xp.stack([own[k] for k in compartments], axis=1)
    return px, extents, masks


def _slice_crops(objs: FieldObjects, which: np.ndarray, shape, compartments, dtype):
    """``gather_crops`` on the host: one slice copy per crop, about twice as fast there as
    NumPy's fancy indexing (the same values)."""
    c = objs.image.shape[0]
    px = np.zeros((len(which), c, *shape), dtype=dtype or objs.image.dtype)
    masks = np.zeros((len(which), len(compartments), *shape), dtype=bool) if compartments is not None else None
    kinds = list(dict.fromkeys(compartments or []))
    for n, j in enumerate(which):
        r0, c0, r1, c1 = (int(v) for v in objs.crop_box[j])
        px[n, :, :r1 - r0, :c1 - c0] = objs.image[:, r0:r1, c0:c1]
        if masks is not None:
            own = {k: objs.labels[k][r0:r1, c0:c1] == objs.label[j] for k in kinds}
            for i, k in enumerate(compartments):
                masks[n, i, :r1 - r0, :c1 - c0] = own[k]
    extents = objs.extents[which]
    return (px, extents) if masks is None else (px, extents, masks)


def crop_stats(objs: FieldObjects, *, multiple: int = 8, chunk: int = 256) -> np.ndarray:
    """(3, n, C) host array of each crop's largest value, smallest value and count of NaN or
    infinite values per channel (in the field's pixel type), to validate the crops
    (``pipeline.check_image_values``) without copying their pixels to the host: the crops are
    gathered on the field's device in groups of one padded shape and reduced there; one copy of
    3C numbers per crop comes back."""
    from .batch import group_by_shape, valid_mask

    xp = array_module(objs.image)
    dtype = objs.image.dtype
    if objs.n == 0:
        return np.zeros((3, 0, objs.image.shape[0]), dtype=dtype)
    if dtype.kind == "f":
        lowest, highest = -np.inf, np.inf
    else:
        lowest, highest = np.iinfo(dtype).min, np.iinfo(dtype).max
    parts, order = [], []
    for shape, members in group_by_shape(objs.extents, margin=0, multiple=multiple, batch_size=chunk,
                                         exact_min=objs.n + 1):  # padded shapes: few groups
        px, extents = gather_crops(objs, members, shape)
        valid = valid_mask(extents, shape)[:, None]
        hi = xp.where(valid, px, xp.asarray(lowest, dtype=dtype)).max(axis=(2, 3))
        lo = xp.where(valid, px, xp.asarray(highest, dtype=dtype)).min(axis=(2, 3))
        bad = ((~xp.isfinite(px)) & valid).sum(axis=(2, 3)) if dtype.kind == "f" else xp.zeros_like(hi)
        parts.append(xp.stack([hi, lo, bad.astype(dtype)]))
        order.append(members)
    stats = xp.concatenate(parts, axis=1)
    stats = stats.get() if is_gpu(xp) else stats  # device -> host: 3C numbers per crop
    out = np.empty_like(stats)
    out[:, np.concatenate(order)] = stats
    return out


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
