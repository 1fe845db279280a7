"""Running a fields-of-view dataset: illumination pass, then one task per partition of fields.

Pass 1 (only with ``illumination.method``): each task sums the projected fields of its
partition per illumination group; the driver adds the partial sums and finishes a group's
correction image (written to ``<output>/illumination/<group>.tif``) as soon as the group's last
partial sum arrives, so at most the groups in flight are held in memory.

Pass 2: each task loads, projects and corrects its fields, segments them (watershed per field,
or Cellpose on all fields of the partition in one batched call), writes their label images,
crops every object with its compartment masks, profiles the objects in padded batches and
writes one Parquet file.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import export
from .backend import asnumpy, device_module
from .batch import Batch, group_by_shape, profile_dtype
from .errors import InputError, ObjectError, describe_exception, raise_if_transient, transient_io
from .fields import (channel_compartments, check_field_values, crop_stats, export_labels, field_files,
                     field_objects, field_sums, finish_illumination, gather_crops, load_correction, project,
                     safe_name, write_correction)
from .masks import MaskResult
from .pipeline import (PartitionResult, StageTimer, check_image_type, check_image_values, check_values,
                       free_device_memory, parquet_codec, worker_name)
from .profile import Plan, auto_batch_size, profile_batch, segmentation_mask_name
from .report import nan_counts

log = logging.getLogger("scip_gpu")

OBJECT_META = {"meta_label": np.int64(0), "meta_touches_border": False}


def object_meta_frame(field_meta: pd.DataFrame) -> pd.DataFrame:
    """Meta columns of the object rows: the field's, plus label and border flag."""
    meta = field_meta.copy()
    for k, v in OBJECT_META.items():
        meta[k] = v
    return meta


# ---------------------------------------------------------------------------------------------
# Segmentation


def watershed_fields(images: list, seg, names: list[str] | None = None) -> list:
    """``watershed_nuclei`` of the nucleus channel of every field with the configured
    parameters (None: derived from the nucleus radius estimated per field); the radius and the
    parameters used are logged per field."""
    from . import segmentation as S

    names = names or [f"field {i}" for i in range(len(images))]
    nuclei = []
    for img, name in zip(images, names):
        labels, p = S.watershed_nuclei(
            img[seg.nucleus_channel], radius=seg.radius, smoothing=seg.smoothing,
            threshold=seg.threshold, threshold_method=seg.threshold_method.value, block_size=seg.block_size,
            min_distance=seg.min_distance, distance_smoothing=seg.distance_smoothing, min_size=seg.min_size,
            max_hole_size=seg.max_hole_size, min_contrast=seg.min_contrast, return_parameters=True)
        r = p.pop("radius")
        log.info("%s: nucleus radius %s px (%s) -> %s; %d nuclei", name,
                 "n/a" if r is None else f"{r:.1f}", "given" if seg.radius is not None else "estimated",
                 ", ".join(f"{k} {v}" for k, v in p.items()), int(labels.max()))
        nuclei.append(labels)
    return nuclei


#: families whose values depend on the pixels around the object (CellProfiler's edge pixels: an
#: object pixel with a 4-neighbour outside the object; distances to the object's edge; the
#: granularity of the image around it): their cells are cropped one pixel beyond their box, so
#: that the crop's border is background, as on the whole field, except where the cell touches
#: the field's border (there the field's border is the image's, as in CellProfiler)
AROUND_FAMILIES = frozenset({"cp_intensity", "cp_radial", "cp_radial_zernike", "cp_granularity"})


def field_coordinates() -> frozenset:
    """CellProfiler's coordinates (family, feature): measured in the crop, reported in the
    field's coordinates, as CellProfiler measuring the whole field does: the ``_X`` / ``_Y``
    features of AreaShape (centre, bounding box) and Location."""
    from .features import cp_intensity, cp_sizeshape

    return frozenset({("cp_sizeshape", f) for f in cp_sizeshape.FEATURES if f.endswith(("_X", "_Y"))}
                     | {("cp_intensity", f) for f in cp_intensity.LOCATION})


def to_field_coordinates(values: np.ndarray, plan, origins: np.ndarray) -> None:
    """Shift the ``field_coordinates()`` columns of ``values`` (rows: objects) from their crops'
    coordinates to the field's, in place: X by the crop's first column, Y by its first row
    (``origins``: (n, 2) rows and columns)."""
    coords = field_coordinates()
    for i, c in enumerate(plan.columns):
        if (c.family, c.feature) in coords:
            values[:, i] += origins[:, 1] if c.feature.endswith("_X") else origins[:, 0]


def crop_margin(plan) -> int:
    """Pixels of the field kept around each cell's box in its crop: 1 with a family of
    ``AROUND_FAMILIES`` in the plan, else 0 (the box itself, as SCIP crops)."""
    return 1 if any(fam in AROUND_FAMILIES for _, fam in plan.spans) else 0


def segment(images: list, seg, channel_names, names: list[str] | None = None) -> list[dict]:
    """Label images per field: ``{"nucleus": ..., "cell": ...}`` with agreeing labels."""
    from . import segmentation as S

    method = seg.method.value
    cells = seg.cells.value
    nc, cc = seg.nucleus_channel, seg.cell_channel
    if method == "watershed":
        nuclei = watershed_fields(images, seg, names)
    else:
        from .cellpose_seg import load_model, segment_fields

        model = load_model(seg.cellpose.nucleus_model or seg.cellpose.model)
        nuclei = segment_fields(model, [img[nc] for img in images], diameter=seg.cellpose.diameter,
                                flow_threshold=seg.cellpose.flow_threshold, batch_size=seg.cellpose.batch_size)
        nuclei = [S.remove_small_labels(n, seg.min_size or 0) for n in nuclei]
    out = []
    for i, (img, nuc) in enumerate(zip(images, nuclei)):
        if cells == "expand":
            cell = S.expand_cells(nuc, seg.expand_distance)
        elif cells == "watershed":
            cell = S.seeded_watershed(img[cc], nuc)
        elif cells == "cellpose":
            from .cellpose_seg import load_model, segment_fields

            model = load_model(seg.cellpose.model)
            cell = segment_fields(model, [img[cc]], diameter=seg.cellpose.diameter,
                                  flow_threshold=seg.cellpose.flow_threshold)[0]
            cell = S.remove_small_labels(cell, seg.min_size or 0)
            nuc = S.assign_children(cell, nuc, seg.min_overlap)  # SCIP's child-to-parent rule
        else:
            cell = nuc
        out.append({"nucleus": nuc, "cell": cell})
    return out


def check_segmentation(cfg, channel_names) -> None:
    """Fail at start-up, in one line naming the key, when the segmentation cannot run as
    configured: ``segmentation.compartments`` naming a channel the dataset does not have; Cellpose
    without cellpose installed, or without its weights on disk (nothing is downloaded; the
    message names the paths looked at). The Cellpose checks are skipped for ``cluster=address``,
    whose workers may see other files and packages than this machine (there a missing model is
    an error of every field)."""
    from .errors import ConfigError

    seg = cfg.segmentation
    unknown = [ch for ch in seg.compartments if ch not in channel_names]
    if unknown:
        raise ConfigError(f"segmentation.compartments: no channel named {unknown[0]!r} (the channels are "
                          f"{list(channel_names)}; dataset.channel_names names them)")
    from .cellpose_seg import check_cellpose

    check_cellpose(cfg)


def field_batch(objects: list, where: np.ndarray, positions: list[int], shape, compartments: list[str],
                name: str) -> tuple[Batch, MaskResult]:
    """The Batch of objects ``positions`` (of a partition whose object ``i`` is object
    ``where[i, 1]`` of field ``where[i, 0]``, in field order) and its segmentation MaskResult
    (SCIP: zero background, one region), gathered from the fields where they are
    (``fields.gather_crops``, one indexing operation per field; nothing goes through the host
    but 5 numbers per object: its box and label)."""
    from .backend import array_module

    positions = np.asarray(positions, dtype=np.int64)
    fields = where[positions, 0]
    order = np.argsort(fields, kind="stable")  # field by field (sorted positions: already so)
    pieces = []
    for f in dict.fromkeys(fields[order].tolist()):
        objs = objects[f]
        which = where[positions[fields == f], 1]
        pieces.append((gather_crops(objs, which, shape, compartments, dtype=profile_dtype(objs.image.dtype)),
                       objs.bbox[which]))
    xp = array_module(pieces[0][0][0])
    if len({p[0][0].dtype for p in pieces}) > 1:  # as ``assemble``: never promoted
        raise TypeError("a batch must hold one pixel type")
    join = (lambda k: pieces[0][0][k]) if len(pieces) == 1 else (lambda k: xp.concatenate([p[0][k] for p in pieces]))
    pixels, extents, mask = join(0), join(1), join(2)
    bbox = np.concatenate([p[1] for p in pieces]).astype(np.float64)
    if (order != np.arange(len(order))).any():  # back to the order of ``positions``
        back = np.argsort(order)
        take = xp.asarray(back) if xp is not np else back
        pixels, extents, mask, bbox = pixels[take], extents[take], mask[take], bbox[back]
    n, c = mask.shape[:2]
    zeros = xp.zeros((n, c))
    mr = MaskResult(name, mask, mask.any(axis=1), mask.any(axis=(2, 3)).astype(xp.int64),
                    xp.asarray(bbox) if xp is not np else bbox, zeros, zeros.copy(), xp.ones(n, dtype=bool))
    return Batch(pixels, extents, positions), mr


def field_neighbor_rows(labels: dict, object_labels, compartments, options) -> np.ndarray:
    """CellProfiler's neighbour columns (``cp_neighbors``) of a field's objects, from its label
    images (host copies; computed on the CPU on every device)."""
    from .features.cp_neighbors import rows_of_field

    host = {k: asnumpy(v) for k, v in labels.items()}
    return rows_of_field(host, object_labels, compartments, options)


# ---------------------------------------------------------------------------------------------
# Pass 2: one partition of fields


def process_fields(task, *, source, plan: Plan, folder: str, schema, device: str,
                   corrections: dict | None, labels_dir: str | None) -> PartitionResult:
    """Load, correct, segment and profile the fields of one partition; write its Parquet file.

    With ``device=cuda`` a field goes to the device once, after it is read, and stays there:
    projection, illumination correction (each group's correction image copied once per
    partition), segmentation, the objects' boxes, their validation and their batches (crops and
    compartment masks gathered from the field on the device). What comes back to the host:
    the feature tables (one copy per batch); the boxes and labels of the objects and 3 numbers
    per channel per object to validate them (one copy each per field); for float fields (e.g.
    illumination-corrected ones), one count of NaN or infinite pixels per channel (a field with
    any is an error, before it is segmented); the label images when
    they are exported (``segmentation.export_labels``); inside the segmentation, one flag per
    round of each watershed flood (``ops.watershed``, kernels/watershed.cu) and a few numbers
    per field (thresholds, the nucleus radius; ``scip_gpu.segmentation``). Cellpose takes its
    fields as host arrays.

    ``device_seconds`` of the result is the wall time of the device work (everything but
    reading the fields, writing label images and writing the part).
    """
    t0 = time.perf_counter()
    started = time.time()
    part, rows = task
    cfg = plan.cfg
    xp = device_module(device)
    seg = cfg.segmentation
    timer = StageTimer(enabled=cfg.profile_stages, xp=xp)
    compartments = channel_compartments(seg, plan.channel_names)
    n_ch = len(plan.channel_names)
    errors: list[dict] = []
    proj = cfg.projection.method.value if cfg.projection.method is not None else None
    key = cfg.illumination.key
    on_device: dict[str, object] = {}  # correction images, copied once per partition
    busy = [0.0]

    class _busy:  # wall time of the device work
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            busy[0] += time.perf_counter() - self.t
            return False

    images, field_rows = [], []
    for _, row in rows.iterrows():
        try:
            with timer("load"):
                img = source.load_field(row)
            if img.shape[0] != n_ch:
                raise ObjectError(f"{source.describe(row)}: has {img.shape[0]} channels, {n_ch} expected", "load")
            with _busy():
                with timer("project"):
                    img = project(xp.asarray(img), proj)  # host -> device: the field, once
                check_field_values(img, source.describe(row), plan.channel_names, field_files(row))
                if corrections is not None:
                    group = str(row[f"meta_{key}"]) if key else "all"
                    corr = corrections.get(group)
                    if corr is None:
                        raise ObjectError(f"{source.describe(row)}: no illumination correction for group {group!r}",
                                          "illumination")
                    with timer("illumination"):
                        if group not in on_device:
                            on_device[group] = xp.asarray(load_correction(corr))  # host -> device, once
                        c = on_device[group]
                        if c.shape != img.shape:
                            raise ObjectError(f"{source.describe(row)}: correction image {c.shape} does not match "
                                              f"the field {img.shape}", "illumination")
                        img = img.astype(xp.float32) / c
                        check_field_values(img, f"{source.describe(row)} after illumination correction by {corr}",
                                           plan.channel_names)
            images.append(img)
            field_rows.append(row)
        except ObjectError as exc:
            errors.append({"meta_index": int(row["meta_field_index"]), "object": source.describe(row),
                           "stage": "field", "error": str(exc)})

    labels_all = []
    if images:
        try:
            with _busy(), timer("segmentation"):
                labels_all = segment(images, seg, plan.channel_names, [source.describe(r) for r in field_rows])
        except Exception as exc:  # noqa: BLE001 - segmented again field by field: only the bad ones fail
            kept = []
            for img, row in zip(images, field_rows):
                try:
                    if len(images) == 1:  # (that field's own failure)
                        raise exc
                    with _busy(), timer("segmentation"):
                        kept.append((img, segment([img], seg, plan.channel_names, [source.describe(row)])[0], row))
                except Exception as one:  # noqa: BLE001 - e.g. Cellpose weights missing: every field fails
                    raise_if_transient(one, source.describe(row))  # (weights on a storage gone: not the field's)
                    errors.append({"meta_index": int(row["meta_field_index"]), "object": source.describe(row),
                                   "stage": "field",
                                   "error": f"{source.describe(row)}: segmentation failed: {describe_exception(one)}"})
            images, labels_all, field_rows = ([list(v) for v in zip(*kept)] if kept else ([], [], []))

    objects, where, metas, stats = [], [], [], []
    name = segmentation_mask_name(cfg)
    margin = crop_margin(plan)
    # CellProfiler's neighbours (cp_neighbors) need the whole field's label images
    n_start, n_stop = plan.spans.get((name, "cp_neighbors"), (0, 0))
    neighbors = []
    for f, (img, labels, row) in enumerate(zip(images, labels_all, field_rows)):
        if "cytoplasm" in compartments:  # cell minus nucleus, exported with the other labels
            from .segmentation import subtract

            labels["cytoplasm"] = subtract(labels["cell"], labels["nucleus"])
        if labels_dir is not None:  # device -> host: the label images, written for napari
            export_labels(Path(labels_dir), row["meta_field"], labels, seg.labels_format)
        with _busy(), timer("crops"):
            objs = field_objects(img, labels, compartments, min_size=seg.min_size or 0, margin=margin)
            stats.append(crop_stats(objs, multiple=cfg.pad_multiple))  # device -> host: 3C numbers per object
        objects.append(objs)
        if n_stop > n_start:  # device -> host: the label images (cp_neighbors only)
            try:
                with timer("cp_neighbors"):
                    neighbors.append(field_neighbor_rows(labels, [int(v) for v in objs.label],
                                                         compartments, cfg.features.cellprofiler))
            except Exception as exc:  # the field's neighbour columns stay NaN, its objects are profiled
                neighbors.append(np.full((objs.n, n_stop - n_start), np.nan))
                errors.append({"meta_index": int(row["meta_field_index"]), "object": source.describe(row),
                               "stage": "cp_neighbors",
                               "error": f"{source.describe(row)}: neighbours not measured: {describe_exception(exc)}"})
        field_meta = {k: row[k] for k in row.index if k.startswith("meta_")}
        for j in range(objs.n):
            where.append((f, j))
            metas.append({**field_meta, "meta_label": int(objs.label[j]),
                          "meta_touches_border": bool(objs.touches_border[j])})
    del images, labels_all
    where = np.asarray(where, dtype=np.int64).reshape(-1, 2)
    origins = (np.concatenate([o.crop_box[:, :2] for o in objects]).astype(np.float64) if objects
               else np.zeros((0, 2)))  # each object's crop in the field (rows as ``where``)
    n_obj = len(metas)
    values = np.full((n_obj, plan.n_features), np.nan)
    status = np.array(["ok"] * n_obj, dtype=object)

    def describe(i: int) -> str:
        return f"field {metas[i]['meta_field']} label {metas[i]['meta_label']}"

    def run_group(pos: list[int], shape) -> None:
        try:
            with timer("transfer"):
                batch, mr = field_batch(objects, where, pos, shape, compartments, name)
            values[pos] = profile_batch(batch, plan, timer, given=[mr])
        except Exception as exc:
            free_device_memory(xp)
            if len(pos) == 1:
                raise_if_transient(exc, describe(pos[0]))
                status[pos[0]] = "error"
                errors.append({"meta_index": int(metas[pos[0]]["meta_field_index"]), "object": describe(pos[0]),
                               "stage": "features", "error": f"{describe(pos[0])}: {describe_exception(exc)}"})
                return
            half = len(pos) // 2
            run_group(pos[:half], shape)
            run_group(pos[half:], shape)

    good, shapes, dtypes = [], [], []
    for i, (f, j) in enumerate(where):
        objs = objects[f]
        h, w = (int(v) for v in objs.extents[j])
        try:  # the checks of check_image, from the crop's largest and smallest values per channel
            check_image_type((n_ch, h, w), objs.image.dtype, n_ch, describe(i))
            hi, lo, bad = stats[f][:, j]
            if bad.any():
                raise ObjectError(f"{describe(i)}: contains {int(bad.sum())} NaN or infinite pixel value(s)",
                                  "validate")
            check_image_values((n_ch, h, w), hi, lo, plan.min_side, describe(i))
        except ObjectError as exc:
            status[i] = "error"
            errors.append({"meta_index": int(metas[i]["meta_field_index"]), "object": describe(i),
                           "stage": "validate", "error": str(exc)})
            continue
        good.append(i)
        shapes.append((h, w))
        dtypes.append(objs.image.dtype)
    with _busy():
        batch_size = cfg.batch_size or auto_batch_size(
            xp, n_ch, tuple(int(v) + plan.margin for v in np.max(shapes, axis=0)) if shapes else (1, 1),
            plan.n_features, max((profile_dtype(d).itemsize for d in dtypes), default=2))
        groups = group_by_shape(shapes, margin=plan.margin, multiple=cfg.pad_multiple, batch_size=batch_size,
                                dtypes=dtypes)  # one pixel type per batch
        for shape, members in groups:
            run_group([good[m] for m in members], shape)
    objects.clear()  # (the fields' device arrays freed before the part is written)
    if neighbors:  # the rows profiled: their neighbours (error rows stay NaN)
        ok = status == "ok"
        values[ok, n_start:n_stop] = np.concatenate(neighbors)[ok]
    to_field_coordinates(values, plan, origins)
    for i, cause in check_values(values, plan.columns).items():  # never an ok row with infinite features
        values[i] = np.nan
        status[i] = "error"
        errors.append({"meta_index": int(metas[i]["meta_field_index"]), "object": describe(i),
                       "stage": "features", "error": f"{describe(i)}: {cause}"})

    plan_names = {c.name for c in plan.columns}
    meta_names = [n for n in schema.names if n not in plan_names and n != "meta_status"]
    table = pd.DataFrame(metas, columns=meta_names)
    table["meta_status"] = status
    table = pd.concat([table, pd.DataFrame(values, columns=[c.name for c in plan.columns])], axis=1)
    n_ok = int((status == "ok").sum())

    nan_stats = nan_counts(values, plan.columns, status == "ok")

    def result(notes: list) -> PartitionResult:
        return PartitionResult(part, n_obj, n_ok, errors, time.perf_counter() - t0, timer.seconds, notes,
                               worker_name(), started, busy[0], nan_stats)

    if folder is None:  # fields of a partition the driver recovers (_recover_fields): it writes the part
        return result([]), table
    export.write_part(Path(folder), part, table, schema, compression=parquet_codec(cfg))
    return result([f"partition {part}: {len(rows)} field(s), {n_obj} object(s)"])


# ---------------------------------------------------------------------------------------------
# Pass 1 and the driver


def illumination_corrections(ex, table, *, cfg, source, out: Path, channel_names, resume: bool = False,
                             device: str = "cpu") -> dict[str, str]:
    """Correction image per group: precomputed, or computed by a distributed reduction (the
    fields summed on ``device`` in the workers, the sums added and finished on the host)."""
    ill = cfg.illumination
    key = ill.key
    if key and f"meta_{key}" not in table:
        raise InputError(f"illumination.key: the fields have no metadata {key!r} "
                         f"(available: {[c[5:] for c in table.columns if c.startswith('meta_')]})")
    groups = table[f"meta_{key}"].astype(str) if key else pd.Series("all", index=table.index)
    if ill.precomputed:
        folder = Path(ill.precomputed)
        found = {g: folder / f"{safe_name(g)}.tif" for g in groups.unique()}
        missing = [g for g, p in found.items() if not p.is_file()]
        if missing:
            raise InputError(f"illumination.precomputed: {folder} has no correction image for group(s) "
                             f"{missing[:5]} (expected files like {safe_name(missing[0])}.tif)")
        log.info("illumination: using precomputed correction images from %s", folder)
        return {g: str(p) for g, p in found.items()}

    target = out / "illumination" if ill.export else Path(tempfile.mkdtemp(prefix=".illumination-", dir=out))
    if resume and ill.export:  # an interrupted run that finished its corrections: reuse them
        found = {g: target / f"{safe_name(g)}.tif" for g in groups.unique()}
        if all(p.is_file() for p in found.values()):
            log.info("illumination: reusing the correction images of the interrupted run in %s", target)
            return {g: str(p) for g, p in found.items()}
    order = table.assign(_group=groups).sort_values("_group", kind="stable")
    size = max(1, cfg.segmentation.fields_per_partition)
    tasks = []
    for g, grp in order.groupby("_group", sort=False):  # partitions never span groups
        for s in range(0, len(grp), size):
            tasks.append((len(tasks), grp.iloc[s:s + size]))
    remaining = {}
    for _, rows in tasks:
        g = rows["_group"].iloc[0]
        remaining[g] = remaining.get(g, 0) + 1
    proj = cfg.projection.method.value if cfg.projection.method is not None else None
    sums: dict[str, list] = {}
    paths: dict[str, str] = {}
    log.info("illumination: mean image of %d group(s) over %d field(s)", len(remaining), len(table))
    names = [f"scip_gpu-illumination-{i}-{out.name}" for i, _ in tasks]
    shared = dict(source=source, projection=proj, key=key, device=device)
    for task, res, exc in ex.map_unordered(field_sums, tasks, names, **shared):
        g = task[1]["_group"].iloc[0]
        results = [res]
        if exc is not None:
            results = _illumination_by_field(ex, task, exc, g, name=names[task[0]], shared=shared)
        for res in results:
            for msg in res["errors"]:
                log.warning("illumination: %s (left out of the mean)", msg)
            for (grp, shape), (total, count) in res["sums"].items():
                by_shape = sums.setdefault(grp, {})
                if shape in by_shape:
                    by_shape[shape][0] += total
                    by_shape[shape][1] += count
                else:
                    by_shape[shape] = [total, count]
        remaining[g] -= 1
        if remaining[g] == 0 and g in sums:  # the group is complete: finish it, free its sum
            by_shape = sums.pop(g)  # the shape most fields have (ties: the larger shape)
            shape = max(by_shape, key=lambda k: (by_shape[k][1], k))
            total, count = by_shape.pop(shape)
            if by_shape:
                log.warning("illumination: group %r: %d field(s) of shape %s left out of its mean, which is "
                            "of the %d field(s) of shape %s (they are reported as errors)", g,
                            sum(c for _, c in by_shape.values()), " and ".join(map(str, by_shape)), count, shape)
            image = asnumpy(finish_illumination(total, count, median_filter_size=ill.median_filter_size,
                                                downscale=ill.downscale))
            paths[g] = str(write_correction(target, g, image, channel_names))
            log.info("illumination: group %r from %d field(s) -> %s", g, count, paths[g])
    return paths


def _illumination_by_field(ex, task, exc: Exception, group, *, name: str, shared: dict) -> list[dict]:
    """The partial sums of a partition whose illumination task failed as a whole: when it killed
    its workers, one task per field (a field that kills its worker is left out of the mean, and
    reported when its objects are profiled); any other failure stops the run."""
    from .cluster import ClusterFailure, WorkerKilled
    from .errors import RunIncomplete, disk_full

    if disk_full(exc):
        raise exc
    if isinstance(exc, ClusterFailure) or transient_io(exc):  # the cluster's or the storage's fault, not the fields'
        raise RunIncomplete(f"illumination: summing the fields of group {group!r} could not be run: {exc}")
    if not isinstance(exc, WorkerKilled):
        raise InputError(f"illumination: summing the fields of group {group!r} failed: {exc}") from exc
    part, rows = task
    log.warning("illumination: summing fields of group %r: %s; one task per field to find the one(s) to blame",
                group, exc)
    singles = [(part, rows.iloc[i:i + 1]) for i in range(len(rows))]
    names = [f"{name}-field-{int(m)}" for m in rows["meta_field_index"]]
    out, killed = [], 0
    results = ex.map_unordered(field_sums, singles, names, priority=1, **shared)
    try:
        for single, res, err in results:
            what = single[1].iloc[0]
            if err is None:
                out.append(res)
            elif isinstance(err, WorkerKilled):
                killed += 1
                out.append({"errors": [f"{shared['source'].describe(what)}: {err}"], "sums": {}})
                if killed >= 3 and len(out) == killed:
                    raise RunIncomplete(f"illumination: the workers died on {killed} fields of group {group!r} "
                                        f"and on none came back ({err})")
            else:
                _illumination_by_field(ex, single, err, group, name=name, shared=shared)  # raises
    finally:
        results.close()
    return out


def execute(ex, table, *, cfg, source, plan, folder, schema, device, progress, out, done):
    """Both passes; returns (partition results, number of partitions, provenance extras)."""
    from .pipeline import partition_tasks
    from .state import write_summary

    corrections = None
    if cfg.illumination.method is not None:
        corrections = illumination_corrections(ex, table, cfg=cfg, source=source, out=out,
                                               channel_names=plan.channel_names, resume=bool(done), device=device)
    labels_dir = str(out / "labels") if cfg.segmentation.export_labels else None
    tasks = partition_tasks(table, max(1, cfg.segmentation.fields_per_partition))
    todo = [t for t in tasks if t[0] not in done]
    for t in tasks:
        if t[0] in done:
            progress.update(len(t[1]))
    log.info("segmenting and profiling %d field(s) in %d partition(s) on %s", len(table), len(todo),
             ex.description)
    names = {i: f"scip_gpu-fields-{i}-{out.name}" for i, _ in todo}
    results = [PartitionResult(**d) for d in done.values()]
    unfinished: dict[int, str] = {}
    shared = dict(source=source, plan=plan, schema=schema, device=device, corrections=corrections,
                  labels_dir=labels_dir)
    for task, res, exc in ex.map_unordered(process_fields, todo, list(names.values()), folder=str(folder), **shared):
        if exc is not None:
            res = _recover_fields(ex, task, exc, folder=Path(folder), name=names[task[0]], **shared)
            if not isinstance(res, PartitionResult):  # not marked done: resume=true runs it again
                unfinished[task[0]] = res
                continue
        write_summary(out, res)
        results.append(res)
        for note in res.notes:
            log.info(note)
        progress.update(len(task[1]), res)
    if unfinished:
        from .pipeline import raise_unfinished

        raise_unfinished(unfinished, len(tasks), sum(len(t[1]) for t in todo if t[0] in unfinished), "fields")
    extra = {"fields": len(table), "fields_with_errors": len({e["meta_index"] for r in results for e in r.errors
                                                              if e["stage"] == "field"})}
    if corrections is not None:
        extra["illumination_images"] = corrections
    return results, len(tasks), extra


def _recover_fields(ex, task, exc: Exception, *, folder: Path, name: str, source, plan, schema, device,
                    corrections, labels_dir):
    """A partition of fields whose task failed as a whole: as ``pipeline.recover_partition``, one
    field per task (a field whose task kills its workers is a field error naming the cause)."""
    from .pipeline import run_one_by_one, unrecoverable

    part, rows = task
    cause = unrecoverable(part, exc, len(rows), "field")
    if cause is not None:
        return cause
    t0 = time.perf_counter()
    tables: dict[int, pd.DataFrame] = {}
    errors: list[dict] = []
    n = n_ok = 0
    singles = [(part, rows.iloc[i:i + 1]) for i in range(len(rows))]
    names = [f"{name}-field-{int(m)}" for m in rows["meta_field_index"]]
    results = ex.map_unordered(process_fields, singles, names, priority=1, folder=None, source=source, plan=plan,
                               schema=schema, device=device, corrections=corrections, labels_dir=labels_dir)

    def came_back(row, res) -> None:
        nonlocal n, n_ok
        one, tab = res
        tables[int(row["meta_field_index"])] = tab
        errors.extend(one.errors)
        n, n_ok = n + one.n, n_ok + one.n_ok

    killed, cause = run_one_by_one(results, part=part, source=source, index="meta_field_index", stage="field",
                                   unit="fields", errors=errors, came_back=came_back)
    if cause is not None:
        return cause
    parts = [tables[k] for k in sorted(tables)]
    table = (pd.concat(parts, ignore_index=True) if parts
             else pd.DataFrame({c: pd.Series(dtype=object) for c in schema.names}))
    export.write_part(folder, part, table, schema, compression=parquet_codec(plan.cfg))
    return PartitionResult(part, n, n_ok, errors, time.perf_counter() - t0, {},
                           [f"partition {part}: {len(rows)} field(s), {n} object(s); {killed} field(s) killed "
                            "their workers" if killed else f"partition {part}: recovered field by field"])
