"""A run: list objects, profile them partition by partition, export.

``run`` is the whole pipeline behind ``python -m scip_gpu``; ``process_partition`` is the one
fused task that a worker runs per partition of objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import export
from .backend import array_module, device_module, is_gpu, select_device
from .batch import (_host_buffer, adjacent_run_end, assemble, block_view, group_by_shape, profile_dtype, stage,
                    wait_for_copies)
from .cluster import EarlyCluster, ExecutorInBackground, buffer_log, check_dashboard, with_partitions_in_flight
from .config import Config, expand_user_paths, log_level, validate
from .errors import (ConfigError, ObjectError, OutputError, RunIncomplete, RunInterrupted, ScipGpuError,
                     StorageUnavailable, describe_exception, disk_full, raise_if_transient, transient_io)
from .io import make_source
from .profile import GPU_BATCH_MAX, Plan, StageTimer, auto_batch_size, build_plan, profile_batch
from .report import nan_counts
from .scratch import NO_POOL, POOL

log = logging.getLogger("scip_gpu")


@dataclass
class PartitionResult:
    part: int
    n: int
    n_ok: int
    errors: list = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    #: where it ran (Dask worker address, or host:pid), when it started (epoch seconds) and the
    #: wall time its device stage (assemble, masks, features, copy back) held the device
    worker: str = ""
    started: float = 0.0
    device_seconds: float = 0.0
    #: the report's NaN statistics of the partition's rows (``report.nan_counts``), computed from
    #: the table in memory (None: not known, the report reads the part)
    nan_stats: dict | None = None
    #: wall seconds of its stages: reading and validating ("read"), staging its first batch on
    #: the host ("stage"), waiting for the device ("wait"), holding it ("device"), checking and
    #: writing its part ("write")
    phases: dict = field(default_factory=dict)


def free_device_memory(xp) -> None:
    """Return cached device memory to the driver (after an out-of-memory error)."""
    if is_gpu(xp):
        xp.get_default_memory_pool().free_all_blocks()
        xp.get_default_pinned_memory_pool().free_all_blocks()


@dataclass
class RunSummary:
    output: Path
    n_objects: int
    n_ok: int
    n_errors: int
    n_features: int
    seconds: float
    errors: list = field(default_factory=list)
    #: fields of view that could not be read or segmented (they have no object, hence no row;
    #: ``n_errors`` counts the objects only)
    n_fields_failed: int = 0

    def line(self) -> str:
        rate = self.n_objects / self.seconds if self.seconds > 0 else float("nan")
        fields = f"; {self.n_fields_failed} field(s) could not be profiled" if self.n_fields_failed else ""
        return (f"scip_gpu: profiled {self.n_objects} objects ({self.n_ok} ok, {self.n_errors} with errors{fields}) "
                f"x {self.n_features} measurements in {self.seconds:.1f} s ({rate:.0f} objects/s) -> {self.output}")


# ---------------------------------------------------------------------------------------------
# One partition (runs on a worker)


def max_pixel_magnitude(h: int, w: int) -> float:
    """Largest pixel magnitude an h x w image may have: the statistics sum 4th powers of
    deviations (kurtosis) of up to h*w pixels, of the image and of its Sobel map (at most 2 and
    about 11 times the magnitude), in float64; with a margin of 32x they stay finite."""
    return float((np.finfo(np.float64).max / (h * w)) ** 0.25 / 32)


def min_channel_range(h: int, w: int) -> float:
    """Smallest non-zero value range a float channel may have: below it, 4th powers of the
    deviations in a view underflow (kurtosis and skewness would be 0/0), with a margin of 2**16
    for views whose deviations are smaller than the channel's range."""
    return float((np.finfo(np.float64).tiny * h * w) ** 0.25 * 2.0**16)


def _check_value_range(hi: np.ndarray, lo: np.ndarray, h: int, w: int, name) -> None:
    """Float pixel values the float64 statistics cannot represent make the object an error
    (``validate``) rather than an ``ok`` row with infinite, or silently NaN, features."""
    peak = float(max(np.abs(hi).max(), np.abs(lo).max()))
    limit = max_pixel_magnitude(h, w)
    if peak > limit:
        raise ObjectError(
            f"{name}: pixel values up to {peak:.3g} are beyond what the statistics can represent in float64 "
            f"(4th-order moments of a {h}x{w} image overflow above {limit:.3g}): rescale the image", "validate")
    spread = hi - lo
    small = np.flatnonzero((spread > 0) & (spread < min_channel_range(h, w)))
    if len(small):
        k = int(small[0])
        raise ObjectError(
            f"{name}: channel {k} varies by only {spread[k]:.3g}: deviations that small underflow in the "
            f"float64 statistics (4th-order moments; below {min_channel_range(h, w):.3g}): rescale the image",
            "validate")


def check_values(values: np.ndarray, columns) -> dict[int, str]:
    """Rows of a feature table (R, F) holding an infinite value: {row: cause}. No feature is
    infinite for representable pixel values; such a row is made an error, never an ``ok`` row."""
    bad = np.isinf(values)
    out = {}
    for r in np.flatnonzero(bad.any(axis=1)):
        cols = [columns[j].name for j in np.flatnonzero(bad[r])]
        out[int(r)] = (f"{len(cols)} feature(s) overflowed to infinity ({', '.join(cols[:3])}"
                       f"{', ...' if len(cols) > 3 else ''}): pixel values beyond what the float64 statistics "
                       "can represent")
    return out


def check_image(img, n_channels: int, min_side: int, name) -> np.ndarray:
    """Validate one loaded (C, H, W) image; raise ObjectError naming the input and the cause.

    Float pixel values must be within what the float64 statistics represent: magnitudes up to
    ``max_pixel_magnitude`` and, per channel, a value range of 0 or at least
    ``min_channel_range`` (beyond them features would be infinite, or NaN from 0/0).

    ``name``: the object's name, or a function giving it (called only for a message).
    """
    if callable(name):
        try:
            return check_image(img, n_channels, min_side, "")
        except ObjectError:
            return check_image(img, n_channels, min_side, name())
    img = np.asarray(img)
    if img.ndim != 3:
        raise ObjectError(f"{name}: expected a (C, H, W) image, got shape {img.shape}", "validate")
    check_image_type(img.shape, img.dtype, n_channels, name)
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise ObjectError(f"{name}: contains {bad} NaN or infinite pixel value(s)", "validate")
    hi, lo = img.max(axis=(1, 2)), img.min(axis=(1, 2))  # per channel
    check_image_values(img.shape, hi, lo, min_side, name)
    return img


#: images validated by one ``ops.image_stats`` call (``check_images``): bounds the block of one call
CHECK_RUN = 256


def check_images(items: Sequence, n_channels: int, min_side: int, name_of) -> list:
    """``check_image`` of every item (an image, or the exception its load raised), in order:
    the image, or (exception, stage) for a bad object, with ``check_image``'s messages.

    Runs of consecutive images of one shape and type that lie one after the other in memory
    (the objects of one read block; up to ``CHECK_RUN``) are validated from one ``ops.image_stats``
    call per run (their largest and smallest value and count of NaN or infinite values per
    channel: one compiled pass over the block) instead of a few NumPy calls per image; only an
    image that fails is checked again alone, for its message. ``name_of(position)``: the
    object's name (called only for a message)."""
    from .ops import image_stats

    out: list = [None] * len(items)

    def one(pos: int):
        try:
            return check_image(items[pos], n_channels, min_side, lambda: name_of(pos))
        except Exception as exc:  # any failure to validate one object is that object's error
            return exc, getattr(exc, "stage", "validate")

    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, Exception):
            out[i] = (item, getattr(item, "stage", "load"))
            i += 1
            continue
        j = i + 1
        if (isinstance(item, np.ndarray) and item.ndim == 3 and item.size and item.dtype.kind in "uif"
                and item.shape[0] == n_channels and min(item.shape[1:]) >= min_side):
            j = adjacent_run_end(items, i, CHECK_RUN)
        if j - i == 1:  # (alone in memory, fails, or an array-like: checked alone)
            out[i] = one(i)
            i += 1
            continue
        hi, lo, bad = image_stats(block_view(item, j - i))  # (n, C) each, of the run found above
        alone = (hi.max(axis=1) == lo.min(axis=1)) | (bad > 0).any(axis=1)  # errors (or NaN): alone
        for k in range(j - i):
            if alone[k]:
                out[i + k] = one(i + k)
                continue
            if item.dtype.kind == "f":  # the float ranges the statistics represent
                try:
                    check_image_values(item.shape, hi[k], lo[k], min_side, "")
                except ObjectError:
                    out[i + k] = one(i + k)
                    continue
            out[i + k] = items[i + k]
        i = j
    return out


def check_image_type(shape: tuple, dtype, n_channels: int, name) -> None:
    """``check_image``'s checks of a (C, H, W) image's shape and pixel type."""
    c, h, w = shape
    if h == 0 or w == 0 or c == 0:
        raise ObjectError(f"{name}: empty image (shape {tuple(shape)})", "validate")
    if c != n_channels:
        raise ObjectError(f"{name}: has {c} channel(s), {n_channels} expected", "validate")
    if np.dtype(dtype).kind not in "uif":
        raise ObjectError(f"{name}: unsupported pixel type {dtype}", "validate")


def check_image_values(shape: tuple, hi: np.ndarray, lo: np.ndarray, min_side: int, name) -> None:
    """``check_image``'s checks of a (C, H, W) image of finite values from its largest and smallest
    value per channel (``hi``, ``lo``: (C,) host arrays of the image's type), so that images on a
    device are checked from these 2C numbers without copying their pixels to the host."""
    _, h, w = shape
    if hi.max() == lo.min():
        raise ObjectError(f"{name}: every pixel has the same value ({hi[0]}): nothing to measure", "validate")
    if hi.dtype.kind == "f":
        _check_value_range(hi.astype(np.float64), lo.astype(np.float64), h, w, name)
    if min(h, w) < min_side:
        raise ObjectError(
            f"{name}: image {h}x{w} is smaller than the {min_side}x{min_side} footprint of the "
            "configured mask filters", "validate")


def check_given_mask(mask, img: np.ndarray, name: str) -> None:
    """A mask given with an image (``source.load_masks``): (C, H, W) bool of the image's size."""
    if isinstance(mask, Exception):
        raise mask
    if mask.shape != img.shape:
        raise ObjectError(f"{name}: its mask has shape {mask.shape[-2:]}, the image {img.shape[1:]} (the masks "
                          "given must have the images' sizes)", "validate")


#: One device stage at a time per process and device. Partitions in flight in one process (the
#: threads of a Dask worker, ``cluster.threads_per_worker``; the in-process executor's
#: ``cluster.threads_per_worker``) overlap their host stages (reading, decoding, validating,
#: writing Parquet) with the one partition that holds the device.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """The lock that serialises the device stage of the partitions running in this process."""
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def worker_name() -> str:
    """This process as the run's summary names it: the Dask worker's address, else host:pid."""
    if "distributed" in sys.modules:  # (a Dask worker has imported it; never imported for this)
        try:
            return str(sys.modules["distributed"].get_worker().address)
        except Exception:  # noqa: BLE001 - not in a Dask worker (sync executor, recovery on the driver)
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


#: objects per load call when a partition is read by several threads
LOAD_CHUNK_MIN = 32


def loader_threads(cluster_cfg, device: str) -> int:
    """Threads that read and decode one partition's objects (``cluster.loader_threads``; null:
    on a GPU the process's cores per partition in flight, up to 8, as the other cores would
    wait for the device anyway; on a CPU one, as the CPU path's parallelism is one worker
    process per core)."""
    from .cluster import usable_cores

    n = getattr(cluster_cfg, "loader_threads", None)
    if n:
        return max(1, int(n))
    if device != "cuda":
        return 1
    in_flight = max(1, getattr(cluster_cfg, "threads_per_worker", None) or 1)
    return max(1, min(8, usable_cores() // in_flight))


def _load_checked(source, rows: pd.DataFrame, n_ch: int, min_side: int) -> list:
    """Loaded and validated images of ``rows`` (in order); (exception, stage) in place of a bad
    object (the stage: the exception's own, else "load" or "validate")."""
    try:
        loaded = source.load(rows)
    except Exception:  # a loader bug must not lose the objects: retried object by object
        loaded = []
        for pos in range(len(rows)):
            try:
                loaded += source.load(rows.iloc[pos:pos + 1])
            except Exception as exc:  # noqa: BLE001 - this object's error only
                loaded.append(exc)
    return check_images(loaded, n_ch, min_side, lambda pos: source.describe(rows.iloc[pos]))


def load_partition(source, rows: pd.DataFrame, n_ch: int, min_side: int, threads: int = 1) -> list:
    """``_load_checked`` for a partition, by ``threads`` threads over contiguous chunks of rows
    (decoders, file reads and NumPy release the GIL). Same images and errors as one call."""
    n = len(rows)
    threads = max(1, min(threads, n // LOAD_CHUNK_MIN))
    if threads <= 1:
        return _load_checked(source, rows, n_ch, min_side)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    with ThreadPoolExecutor(threads, thread_name_prefix="scip_gpu-load") as pool:
        chunks = pool.map(lambda ab: _load_checked(source, rows.iloc[ab[0]:ab[1]], n_ch, min_side),
                          zip(bounds[:-1], bounds[1:]))
        return [item for chunk in chunks for item in chunk]


def image_stats(stack) -> np.ndarray:
    """(3, N, C) host array of each image's largest value, smallest value and number of NaN or
    infinite values per channel (in the images' type) of an (N, C, H, W) stack on the device:
    what ``check_image`` needs, computed where the images are; 3C numbers per image come back."""
    from .ops import image_stats as stats

    out = stats(stack)
    return out.get() if array_module(out) is not np else out  # device -> host: 3C numbers per image


def load_partition_device(source, rows: pd.DataFrame, n_ch: int, min_side: int, xp) -> list:
    """``load_partition`` for a source that reads into device memory (``source.load_device``:
    dense zarr with kvikio): the images stay on the device and are validated there
    (``image_stats``: one small copy back per image shape); objects the source read through
    the host (its fallback) are validated on the host and copied to the device.

    Every copy and kernel here runs on the reading thread's stream; the batches run on the
    device stage's own non-blocking stream (``compute_stream``), which does not wait for it.
    The validation's copies back wait for the work before them; where objects were copied
    from the host, the stream is synchronised once at the end (CuPy's ``asarray`` of a host
    array only queues its copy), so that everything returned is on the device before a batch
    reads it."""
    try:
        loaded = source.load_device(rows, xp)
    except Exception:  # noqa: BLE001 - a loader bug must not lose the objects: the host path
        return load_partition(source, rows, n_ch, min_side)
    out: list = [None] * len(loaded)
    on_device: dict[tuple, list[int]] = {}
    copied = False  # (objects copied from the host: queued on this thread's stream)
    for pos, item in enumerate(loaded):
        name = lambda pos=pos: source.describe(rows.iloc[pos])  # noqa: E731 (only for a message)
        if isinstance(item, Exception):
            out[pos] = (item, getattr(item, "stage", "load"))
        elif not is_gpu(array_module(item)):  # read through the host
            try:
                out[pos] = xp.asarray(check_image(item, n_ch, min_side, name))
                copied = True
            except Exception as exc:  # noqa: BLE001 - this object's error only
                out[pos] = (exc, getattr(exc, "stage", "validate"))
        else:
            on_device.setdefault((tuple(item.shape), item.dtype.str), []).append(pos)
    for (shape, _), members in on_device.items():
        stats = image_stats(xp.stack([loaded[p] for p in members])) if len(shape) == 3 and min(shape) > 0 else None
        def check(img, k: int, name: str) -> None:
            if img.ndim != 3:
                raise ObjectError(f"{name}: expected a (C, H, W) image, got shape {img.shape}", "validate")
            check_image_type(img.shape, img.dtype, n_ch, name)  # (an empty image stops here)
            hi, lo, bad = stats[:, k]
            if bad.any():
                raise ObjectError(f"{name}: contains {int(bad.sum())} NaN or infinite pixel value(s)", "validate")
            check_image_values(img.shape, hi, lo, min_side, name)

        for k, pos in enumerate(members):
            img = loaded[pos]
            try:
                try:
                    check(img, k, "")  # (the object's name, a pandas row lookup, only for a message)
                except ObjectError:
                    check(img, k, source.describe(rows.iloc[pos]))
                out[pos] = img
            except Exception as exc:  # noqa: BLE001 - this object's error only
                out[pos] = (exc, getattr(exc, "stage", "validate"))
    if copied:
        xp.cuda.get_current_stream().synchronize()  # (the host objects' copies: see above)
    return out


def process_partition(task: tuple[int, pd.DataFrame], *, source, plan: Plan, folder: str, schema,
                      device: str) -> PartitionResult:
    """Load, mask and profile one partition of objects and write its Parquet file.

    Three stages: reading and validating the objects (host, ``loader_threads`` threads), the
    device stage (batches assembled, masked, profiled, copied back; one partition at a time per
    process: ``device_lock``), writing the part (host). Partitions in flight in the same process
    overlap their host stages with another's device stage.

    With ``folder=None`` nothing is written: returns (result, feature values) for the driver to
    write (``recover_partition``).
    """
    t0 = time.perf_counter()
    started = time.time()
    part, rows = task
    cfg = plan.cfg
    xp = device_module(device)
    n_ch = len(plan.channel_names)
    errors: dict[int, dict] = {}

    def fail(pos: int, exc: Exception, stage: str) -> None:
        row = rows.iloc[pos]
        # the one place an object's error is recorded: a transient failure of the storage or the
        # network (a load, a lazy read while validating) is never one, the partition fails
        raise_if_transient(exc, lambda: source.describe(row))
        msg = str(exc) if isinstance(exc, ObjectError) else f"{source.describe(row)}: {describe_exception(exc)}"
        errors[pos] = {"meta_index": int(row["meta_index"]), "object": source.describe(row),
                       "stage": getattr(exc, "stage", stage), "error": msg}

    given_name = cfg.masks.given  # masks given with the images (scip_gpu.profile(images, masks=...))
    given = source.load_masks(rows) if given_name else None
    good: list[tuple[int, np.ndarray]] = []
    phases: dict[str, float] = {}
    if is_gpu(xp) and getattr(source, "device_layouts", None) and not given_name:
        loaded = load_partition_device(source, rows, n_ch, plan.min_side, xp)  # kvikio: into device memory
    else:
        loaded = load_partition(source, rows, n_ch, plan.min_side, loader_threads(cfg.cluster, device))
    for pos, item in enumerate(loaded):
        if isinstance(item, tuple):
            fail(pos, *item)
            continue
        if given is not None:
            try:
                check_given_mask(given[pos], item, source.describe(rows.iloc[pos]))
            except Exception as exc:  # noqa: BLE001 - this object's error only
                fail(pos, exc, "validate")
                continue
        good.append((pos, item))

    def given_for(positions: list[int], shape, batch) -> dict:
        """``profile_batch``'s ``given``: the given masks of a batch, padded as its images ({}
        without given masks)."""
        if given is None:
            return {}
        from .masks import given_masks

        host = np.zeros((len(positions), n_ch, *shape), dtype=bool)
        for k, p in enumerate(positions):
            m = given[p]
            host[k, :, :m.shape[1], :m.shape[2]] = m
        return {"given": [given_masks(batch, xp.asarray(host), given_name, cfg.masks)]}

    # every row is either written by its batch or an error row, set to NaN after the device stage
    # (not NaN-filled first: a pass over the partition's whole table, and its page faults, saved)
    # on a GPU, the partition's large host arrays come from the process's pool (scratch.POOL)
    scratch = POOL if is_gpu(xp) else NO_POOL
    values = scratch.empty((len(rows), plan.n_features))
    filled = np.zeros(len(rows), dtype=bool)

    def put(positions: list[int], table) -> None:
        values[positions] = table
        filled[positions] = True

    index = rows["meta_index"].to_numpy()
    timer = StageTimer(enabled=cfg.profile_stages, xp=xp)
    notes: list[str] = []

    def run_group(positions: list[int], imgs: list, shape) -> None:
        try:
            with timer("transfer"):
                batch = assemble(imgs, index[positions], shape, xp)
            put(positions, profile_batch(batch, plan, timer, **given_for(positions, shape, batch)))
        except Exception as exc:
            del exc  # release device buffers held by the traceback before retrying
            free_device_memory(xp)
            if len(positions) == 1:
                try:  # once more alone, to report the actual cause
                    batch = assemble(imgs, index[positions], shape, xp)
                    put(positions, profile_batch(batch, plan, **given_for(positions, shape, batch)))
                except Exception as exc2:
                    fail(positions[0], exc2, "features")
                return
            # out of memory: split the batch and retry; any other failure: isolate the culprit(s)
            # by splitting too, so that good objects are still profiled in batches
            half = len(positions) // 2
            notes.append(f"partition {part}: a batch of {len(positions)} objects failed; retrying as "
                         f"{half} + {len(positions) - half}")
            run_group(positions[:half], imgs[:half], shape)
            run_group(positions[half:], imgs[half:], shape)

    shapes = [img.shape[1:] for _, img in good]
    device_seconds = 0.0
    phases["read"] = time.perf_counter() - t0
    t_stage = time.perf_counter()
    batch_size = cfg.batch_size or auto_batch_size(
        xp, n_ch, tuple(int(v) + plan.margin for v in np.max(shapes, axis=0)) if shapes else (1, 1),
        plan.n_features, max((profile_dtype(img.dtype).itemsize for _, img in good), default=2))
    if not cfg.batch_size and shapes and is_gpu(xp):
        log.info("partition %d: batch_size %d (automatic, from free device memory)", part, batch_size)
    groups = group_by_shape(shapes, margin=plan.margin, multiple=cfg.pad_multiple, batch_size=batch_size,
                            dtypes=[img.dtype for _, img in good])  # one pixel type per batch
    batches = [([good[m][0] for m in members], [good[m][1] for m in members], shape) for shape, members in groups]
    overlapped = is_gpu(xp) and not cfg.profile_stages
    first = None
    if overlapped and batches:  # the first batch's host half before taking the device: the device
        try:                    # runs another partition's batch meanwhile
            first = stage(batches[0][1], batches[0][2], xp)
        except Exception:  # noqa: BLE001 - (e.g. no pinned memory) assembled, and reported, in the loop
            first = None
    t_wait = time.perf_counter()
    phases["stage"] = t_wait - t_stage
    with device_lock(device), (compute_stream(xp) if is_gpu(xp) else contextlib.nullcontext()):
        t_dev = time.perf_counter()
        phases["wait"] = t_dev - t_wait
        if overlapped:
            _run_batches_overlapped(batches, xp, plan, index, put, run_group, given_for, first)
        else:
            for positions, imgs, shape in batches:
                run_group(positions, imgs, shape)
        device_seconds = time.perf_counter() - t_dev  # (profile_batch ends with the copy back: synchronised)
    phases["device"] = device_seconds
    t_write = time.perf_counter()
    del first
    del good, shapes, batches  # the images: no longer needed while the part is written
    values[~filled] = np.nan  # (the objects that failed before or in the device stage)
    for pos, cause in check_values(values, plan.columns).items():  # never an ok row with infinite features
        values[pos] = np.nan
        fail(pos, ObjectError(f"{source.describe(rows.iloc[pos])}: {cause}", "features"), "features")

    ok = np.ones(len(rows), dtype=bool)
    ok[list(errors)] = False
    nan_stats = nan_counts(values, plan.columns, ok)

    def result() -> PartitionResult:
        phases["write"] = time.perf_counter() - t_write
        return PartitionResult(part, len(rows), len(rows) - len(errors), list(errors.values()),
                               time.perf_counter() - t0, timer.seconds, notes, worker_name(), started,
                               device_seconds, nan_stats, {k: round(v, 4) for k, v in phases.items()})

    if folder is None:  # objects of a partition the driver recovers (recover_partition): it writes the part
        return result(), values
    if "anndata" in [getattr(f, "value", f) for f in cfg.export.formats]:  # its X rows, for the driver
        export.write_x_side(Path(folder).parent, part, values, plan.columns, scratch=scratch)
    _write_partition(Path(folder), part, rows, schema, values, errors.values(), cfg, scratch=scratch)
    # run_group refers to itself (it recurses): that cycle would keep put, and through it this
    # table, referenced after the return until the garbage collector runs; break it first
    put = run_group = None  # noqa: F841
    scratch.give(values)  # (for the next partition: written, nothing else refers to it)
    return result()


def _run_batches_overlapped(batches, xp, plan: Plan, index, put, run_group, given_for,
                            first=None) -> None:
    """The batches of a partition on a GPU, with the host's assembly of batch k+1 (and the
    launches of its kernels) while the device runs batch k, and each feature table copied back
    asynchronously into pinned host memory. The copies have streams of their own (pixels in on
    one, tables out on another), so that they overlap the kernels of the neighbouring batches
    instead of queueing between them; events order each batch's kernels after its pixels'
    copy and its table's copy after its kernels. Every batch (its device buffers) is held until
    its table's copy is complete. A batch that fails in any way (out of memory while it is set
    up, an error when its copy completes) runs again through ``run_group``, which splits it and
    reports each object's error as when batches run one after the other. ``first``: the first
    batch's host half (``batch.stage``), done before the partition took the device. ``put(positions,
    table)`` stores a batch's feature rows."""
    pending = None  # (positions, images, shape, event, pinned table, batch, device table)
    h2d, d2h = copy_streams(xp)

    def finish(p) -> None:
        if p is None:
            return
        positions, imgs, shape, done, host = p[:5]
        try:
            done.synchronize()  # the only wait for the device: batch k+1 is queued behind it
            put(positions, host)
        except Exception:  # noqa: BLE001 - run again, split, one error per object
            free_device_memory(xp)
            run_group(positions, imgs, shape)

    for k, (positions, imgs, shape) in enumerate(batches):
        try:
            batch = assemble(imgs, index[positions], shape, xp, copy_stream=h2d, staged=first if k == 0 else None)
            wait_for_copies(batch)  # (before any kernel reads the pixels, the segmentation's too)
            table = profile_batch(batch, plan, to_host=False, **given_for(positions, shape, batch))
            host = _host_buffer((batch.n, plan.n_features), np.float64, xp, zero=False)
            done = copy_back(table, host, d2h)
            current = (positions, imgs, shape, done, host, batch, table)
        except Exception:  # noqa: BLE001 - this batch again, synchronously (after the one before it)
            batch = table = None  # (its device buffers)
            finish(pending)
            pending = None
            free_device_memory(xp)
            run_group(positions, imgs, shape)
            continue
        finish(pending)
        pending = current
    finish(pending)


_COPY_STREAMS: dict = {}
_COPY_STREAMS_LOCK = threading.Lock()
_COMPUTE_STREAMS: dict = {}


def compute_stream(xp):
    """The CUDA stream of the device stage (``process_partition``'s batches, under
    ``device_lock``): one non-blocking stream per process and device, made once.

    On the default (legacy) stream, every operation waits for all the device work queued
    before it on that stream and on the blocking streams: the device work of the partitions
    being read meanwhile (kvikio reads into device memory, their copies and validation, each
    ending with a small copy back) would queue behind the batches of the partition holding the
    device, and the reading would wait for the profiling it is meant to overlap. The batches'
    kernels on a non-blocking stream of their own do not order against that work. What a
    partition reads is complete before its batches use it (its validation's copy back waits
    for it), and a partition's device arrays are released only after its last batch's table
    has come back."""
    key = (id(xp), xp.cuda.Device().id)
    with _COPY_STREAMS_LOCK:
        stream = _COMPUTE_STREAMS.get(key)
        if stream is None:
            stream = _COMPUTE_STREAMS[key] = xp.cuda.Stream(non_blocking=True)
    return stream


def copy_streams(xp):
    """Two non-blocking CUDA streams for the copies of a batch loop: host to device, device to
    host (each direction has its copy engine; one stream for both would queue the next batch's
    pixels behind the previous table, which waits for that batch's kernels).

    One pair per process and device, made once: CuPy's memory pool keeps the blocks freed on a
    stream for that stream, so new streams for every partition would leave the previous
    partitions' pixel buffers unused in the pool. One partition at a time holds the device
    (``device_lock``), so the pair is never used by two batch loops at once."""
    key = (id(xp), xp.cuda.Device().id)
    with _COPY_STREAMS_LOCK:
        pair = _COPY_STREAMS.get(key)
        if pair is None:
            pair = _COPY_STREAMS[key] = (xp.cuda.Stream(non_blocking=True), xp.cuda.Stream(non_blocking=True))
    return pair


def copy_back(table, host: np.ndarray, stream):
    """Copy the device ``table`` into the pinned ``host`` array on ``stream`` once the current
    stream's work so far (the kernels that fill it) is done; returns the copy's event. The
    caller holds ``table`` until the event is complete."""
    xp = array_module(table)
    filled = xp.cuda.Event()
    filled.record()
    stream.wait_event(filled)
    table.get(out=host, stream=stream, blocking=False)
    done = xp.cuda.Event()
    done.record(stream)
    return done


def worker_stats(results, since: float = 0.0) -> dict[str, dict]:
    """Per worker (process): partitions, objects, objects/s and the share of its time the device
    stage was busy, over the partitions it ran in this run (started at or after ``since``, epoch
    seconds). Its time is from its first partition's start to its last one's end."""
    by: dict[str, dict] = {}
    for r in results:
        if not r.worker or r.started < since:  # (recovered object by object; or an earlier run's)
            continue
        w = by.setdefault(r.worker, {"partitions": 0, "objects": 0, "device_seconds": 0.0,
                                     "first": r.started, "last": r.started, "phases": {}})
        for k, v in (r.phases or {}).items():
            w["phases"][k] = w["phases"].get(k, 0.0) + v
        w["partitions"] += 1
        w["objects"] += r.n
        w["device_seconds"] += r.device_seconds
        w["first"] = min(w["first"], r.started)
        w["last"] = max(w["last"], r.started + r.seconds)
    out = {}
    for name in sorted(by):
        w = by[name]
        span = max(w["last"] - w["first"], 1e-9)
        out[name] = {"partitions": w["partitions"], "objects": w["objects"], "seconds": round(span, 3),
                     "objects_per_s": round(w["objects"] / span, 2),
                     "device_seconds": round(w["device_seconds"], 3),
                     "device_busy": round(min(w["device_seconds"] / span, 1.0), 4),
                     # (summed over its partitions, which overlap: where a partition's time goes)
                     "phases_s": {k: round(v, 3) for k, v in w["phases"].items()}}
    return out


def parquet_codec(cfg) -> str:
    """The Parquet codec of the parts (``export.compression``, an enum member or its name)."""
    return str(getattr(cfg.export.compression, "value", cfg.export.compression))


def _write_partition(folder: Path, part: int, rows: pd.DataFrame, schema, values: np.ndarray, errors, cfg, *,
                     scratch=NO_POOL) -> None:
    have = set(rows.columns)  # (a pandas Index lookup per schema name: 5 ms for 5000 names, per partition)
    table = rows[[c for c in schema.names if c in have]].reset_index(drop=True)
    bad = {int(e["meta_index"]) for e in errors}
    table["meta_status"] = np.where(rows["meta_index"].isin(bad).to_numpy(), "error", "ok").astype(object)
    export.write_part(folder, part, table, schema, values, compression=parquet_codec(cfg), scratch=scratch)


#: A partition recovered object by object stops early when this many of its objects killed their
#: workers and none has come back: the workers die whatever they run (a broken node, a crashing
#: library), which no object is to blame for.
KILLED_WITHOUT_SURVIVOR = 3


def unrecoverable(part: int, exc: Exception, n: int, unit: str) -> str | None:
    """Why a partition (of ``n`` items, ``unit`` "object" or "field") whose task failed as a
    whole cannot be run again item by item in this run (the cause, logged), or None when its
    task killed its workers (``WorkerKilled``): only then is the failure blamed on its items, and
    they are run one per task. A full disk is raised."""
    from .cluster import WorkerKilled
    from .errors import disk_full

    if disk_full(exc):
        raise exc
    if isinstance(exc, WorkerKilled):
        log.warning("partition %d: %s; running its %d %s(s) one per task to find the one(s) to blame",
                    part, exc, n, unit)
        return None
    log.error("partition %d could not be run: %s", part, describe_exception(exc), exc_info=exc)
    return failure_cause(exc)


def failure_cause(exc: BaseException, what: str = "") -> str:
    """Why a task failed, for the run's last message: the exception, said to be the storage's or
    the network's when it is one (``transient_io``), or said to be likely again on
    ``resume=true`` when every try of the task (``cluster.retries``) raised the same error."""
    from .cluster import failed_tries

    text = f"{what}{describe_exception(exc)}"
    if transient_io(exc):
        return (f"{what}{exc} (resume=true reads it again)" if isinstance(exc, StorageUnavailable) else
                f"{text} (a failure of the storage or the network; resume=true reads it again)")
    tries = failed_tries(exc)
    if len(tries) > 1 and len(set(tries)) == 1:
        return (f"failed {len(tries)} times with the same error: {text}; resume=true will run it again, but the "
                "same error is likely: please report it")
    return text


def run_one_by_one(results, *, part: int, source, index: str, stage: str, unit: str, errors: list,
                   came_back) -> tuple[int, str | None]:
    """Drain the results of a partition run again one item (object or field) per task.

    ``came_back(row, result)`` takes each item that came back. An item whose task killed its
    workers is an error (``stage``, keyed by the row's ``index`` column) naming the cause,
    appended to ``errors``. Returns ``(items that killed their workers, cause)``; the cause is
    None when every item was accounted for, else why the partition cannot be finished in this
    run: ``KILLED_WITHOUT_SURVIVOR`` items killed their workers before any came back (the
    workers die whatever they run), or an item's task failed otherwise. A full disk is raised.
    """
    from .cluster import WorkerKilled
    from .errors import disk_full

    survived = killed = 0
    try:
        for single, res, err in results:
            row = single[1].iloc[0]
            what = source.describe(row)
            if err is None:
                came_back(row, res)
                survived += 1
            elif disk_full(err):
                raise err
            elif isinstance(err, WorkerKilled):
                killed += 1
                log.error("%s: %s", what, err)
                errors.append({"meta_index": int(row[index]), "object": what, "stage": stage,
                               "error": f"{what}: {err}"})
                if killed >= KILLED_WITHOUT_SURVIVOR and not survived:
                    cause = f"the workers died on {killed} of its {unit} and on none came back ({err})"
                    log.error("partition %d could not be run: %s", part, cause)
                    return killed, cause
            else:
                log.error("partition %d could not be run: %s: %s", part, what, describe_exception(err), exc_info=err)
                return killed, failure_cause(err, f"{what}: ")
    finally:
        getattr(results, "close", lambda: None)()
    return killed, None


def recover_partition(ex, task, exc: Exception, *, source, plan: Plan, folder: Path, schema, device: str,
                      name: str):
    """A partition whose task failed as a whole: its PartitionResult (part written), or the cause
    (a string) when it cannot be finished in this run.

    Only a task that killed its workers (``WorkerKilled``) is blamed on its objects: it is run
    again one object per task, the objects that kill their workers are recorded in the error
    report with the cause (out of memory: the nanny's reason and the memory limit) and the
    others are profiled. Any other failure (the cluster lost the task, the task raised) leaves
    the partition for ``resume=true``: it is never marked done with objects it did not profile.
    A full disk stops the run.
    """
    part, rows = task
    cause = unrecoverable(part, exc, len(rows), "object")
    if cause is not None:
        return cause
    t0 = time.perf_counter()
    position = {int(m): i for i, m in enumerate(rows["meta_index"])}
    values = np.full((len(rows), plan.n_features), np.nan)
    errors: list[dict] = []
    stage_seconds: dict = {}
    seconds = 0.0
    singles = [(part, rows.iloc[i:i + 1]) for i in range(len(rows))]
    names = [f"{name}-object-{int(m)}" for m in rows["meta_index"]]
    if len(rows) == 1:  # the partition was that object alone: it is to blame already
        results = iter([(singles[0], None, exc)])
    else:
        results = ex.map_unordered(process_partition, singles, names, priority=1, source=source, plan=plan,
                                   folder=None, schema=None, device=device)

    def came_back(row, res) -> None:
        nonlocal seconds
        one, vals = res
        values[position[int(row["meta_index"])]] = vals[0]
        errors.extend(one.errors)
        seconds += one.seconds
        for k, v in one.stage_seconds.items():
            stage_seconds[k] = stage_seconds.get(k, 0.0) + v

    killed, cause = run_one_by_one(results, part=part, source=source, index="meta_index", stage="worker",
                                   unit="objects", errors=errors, came_back=came_back)
    if cause is not None:
        return cause
    _write_partition(folder, part, rows, schema, values, errors, plan.cfg)
    n_bad = len({int(e["meta_index"]) for e in errors})
    note = (f"partition {part}: recovered object by object after {exc}" if not killed else
            f"partition {part}: {killed} object(s) killed their workers; the other {len(rows) - killed} were profiled")
    return PartitionResult(part, len(rows), len(rows) - n_bad, errors, seconds + time.perf_counter() - t0,
                           stage_seconds, [note])


# ---------------------------------------------------------------------------------------------
# The driver


class Progress:
    """Objects done, objects/s and ETA: a live line on a terminal, else a log line every 10 s.

    With the partitions' results (``update(n, result)``), the line also shows each worker's
    objects/s and the share of its time its device stage was busy (``worker_stats`` over the
    partitions it finished in this run; "GPU busy" with ``device="cuda"``), as the end of the
    run logs them and ``provenance.json`` records them.
    """

    #: workers shown on the line (the others are in the log at the end and in provenance.json)
    MAX_WORKERS = 4

    def __init__(self, total: int, enabled: bool = True, unit: str = "objects", device: str = "cpu"):
        self.total, self.done, self.enabled, self.unit = total, 0, enabled, unit
        self.device = device
        self.t0 = time.perf_counter()
        self.since = time.time()  # partitions started before (an earlier run's) do not count
        self.last = 0.0
        self.tty = sys.stderr.isatty()
        self.results: list = []

    def workers_text(self) -> str:
        """``worker: objects/s, GPU busy %`` per worker, from the results so far ("" without)."""
        stats = worker_stats(self.results, since=self.since)
        if not stats:
            return ""
        what = "GPU busy" if self.device == "cuda" else "profiling"
        items = [f"{_short_worker(name)} {w['objects_per_s']:.1f} objects/s, {what} {100 * w['device_busy']:.0f}%"
                 for name, w in list(stats.items())[:self.MAX_WORKERS]]
        more = len(stats) - self.MAX_WORKERS
        return "; ".join(items) + (f"; {more} more worker(s)" if more > 0 else "")

    def update(self, n: int, result: PartitionResult | None = None) -> None:
        self.done += n
        if result is not None:
            self.results.append(result)
        if not self.enabled:
            return
        now = time.perf_counter()
        el = now - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        msg = (f"{self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
               f"{rate:.1f} {self.unit}/s, ETA {eta:.0f} s")
        workers = self.workers_text()
        if workers:
            msg += f" | {workers}"
        if self.tty:
            sys.stderr.write("\r" + msg + " " * 8)
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif now - self.last > 10 or self.done >= self.total:
            log.info("progress: %s", msg)
            self.last = now


def _short_worker(name: str) -> str:
    """A worker's name on the progress line: its address without the protocol."""
    return name.split("://", 1)[-1]


def create_output_dir(cfg: Config):
    """A new, empty output folder, locked for this process: (folder, lock). An existing
    non-empty folder is never reused or cleared; a folder in use is refused naming its run."""
    from . import state

    if cfg.output:
        out = Path(cfg.output)
        _refuse_non_empty(out, state)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder {out} cannot be created or written: {exc}") from exc
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(cfg.output_root) / f"{cfg.dataset.name}-{stamp}"
        out, k = base, 1
        while True:
            try:
                out.mkdir(parents=True)  # fails if another run took the name meanwhile
                break
            except FileExistsError:
                out = base.with_name(f"{base.name}-{k}")
                k += 1
            except OSError as exc:
                raise OutputError(f"output folder {out} cannot be created or written: {exc}") from exc
    lock = state.acquire_lock(out, take_over_stale=False)  # also the write test
    try:
        # another run may have filled the folder (and ended) between our check and our lock
        _refuse_non_empty(out, state, ignore=state.LOCK_FILE)
    except BaseException:
        lock.release()
        raise
    return out, lock


def _refuse_non_empty(out: Path, state, ignore: str | None = None) -> None:
    """Refuse an output folder that holds anything (``ignore``: the lock file and its temporary
    files, when this process holds it)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder; choose another output=...")
    lock = out / state.LOCK_FILE
    if ignore is None and lock.exists():
        raise OutputError(state.lock_problem(out, lock, state.read_lock(lock), resume=False))
    if any(not (ignore and p.name.lstrip(".").startswith(ignore.lstrip("."))) for p in out.iterdir()):
        hint = ""
        if (out / state.STATE_FILE).exists():  # a run of scip_gpu, perhaps stopped before its end
            hint = (f"; it holds a scip_gpu run: if that run did not finish, add resume=true to the same "
                    f"command to finish it there")
        raise OutputError(
            f"output folder {out} already exists and is not empty; scip_gpu never overwrites "
            f"results: choose another output=... (or move that folder away yourself){hint}")


def _log_to_file(path: Path, level: str) -> logging.Handler:
    h = logging.FileHandler(path, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(level)
    logging.getLogger("scip_gpu").addHandler(h)
    return h


#: on a GPU: a partition holds at most this many automatic batches, and its pixels and feature
#: table in host memory take at most this many bytes per partition in flight
GPU_PARTITION_BATCHES = 4
GPU_PARTITION_HOST_BUDGET = 2 * 2**30


def auto_partition_size(cfg: Config, n: int, sample=None, device_free: int | None = None) -> int:
    """``partition_size`` when not set.

    On a CPU: about four tasks per worker, between 64 and 4096 objects. On a GPU
    (``device=cuda``): whole batches of the size ``auto_batch_size`` gives for the objects'
    size (``sample``: one loaded (C, H, W) object, or None) and the device's free memory
    (``device_free`` bytes, or None: the largest batch), about four partitions per GPU, at most
    ``GPU_PARTITION_BATCHES`` batches and ``GPU_PARTITION_HOST_BUDGET`` bytes of host memory per
    partition in flight (``cluster.threads_per_worker`` per worker).
    """
    if cfg.partition_size:
        return cfg.partition_size
    from .cluster import n_local_workers

    workers = n_local_workers(cfg.cluster)
    size = -(-n // (4 * workers))
    if getattr(cfg.device, "value", cfg.device) != "cuda":
        return int(min(max(size, 64), 4096))
    plan = build_plan(cfg, [f"c{i}" for i in range(sample.shape[0])]) if sample is not None else None
    n_features = plan.n_features if plan is not None else 0
    if cfg.batch_size:
        batch = cfg.batch_size
    elif sample is None or device_free is None:
        batch = GPU_BATCH_MAX
    else:
        batch = auto_batch_size(_FreeMemory(device_free), sample.shape[0],
                                tuple(int(v) + plan.margin for v in sample.shape[1:]), n_features,
                                profile_dtype(sample.dtype).itemsize)
    cap = GPU_PARTITION_BATCHES * batch
    if sample is not None:
        per_object = sample.nbytes + 8 * n_features  # its pixels and its row of the feature table
        in_flight = max(1, cfg.cluster.threads_per_worker)
        cap = min(cap, max(batch, GPU_PARTITION_HOST_BUDGET // (in_flight * per_object) // batch * batch))
    return int(max(64, min(max(size, batch), cap)))  # (cap >= batch)


class _FreeMemory:
    """A stand-in array module for ``auto_batch_size``: a device with ``free`` bytes free."""

    def __init__(self, free: int):
        self.free = int(free)
        self.cuda = self
        self.runtime = self
        self.__name__ = "cupy"

    def memGetInfo(self):  # noqa: N802 - CuPy's name
        return self.free, self.free


def device_free_memory(cluster_cfg) -> int | None:
    """Free memory of the first GPU the workers use, in bytes, from NVML (no CUDA context is
    created in the driver); None when NVML is not available."""
    from .cluster import visible_gpus

    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            first = (visible_gpus(cluster_cfg) or ["0"])[0]
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(first))
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, or a GPU it cannot name: the largest batch
        return None


def sample_object(source, table: pd.DataFrame, tries: int = 8):
    """One loaded object of the table (the first that loads), for sizes; None when none does."""
    for pos in range(min(tries, len(table))):
        try:
            img = source.load(table.iloc[pos:pos + 1])[0]
        except Exception:  # noqa: BLE001 - only a size estimate
            continue
        if not isinstance(img, Exception) and getattr(img, "ndim", 0) == 3:
            return np.asarray(img)
    return None


def n_measured(plan: Plan) -> int:
    """Columns per object that are measurements (feature and meta columns, not the flags)."""
    from .features.registry import FLAG_FAMILIES

    return sum(c.family not in FLAG_FAMILIES for c in plan.columns)


def partition_tasks(table: pd.DataFrame, size: int) -> list[tuple[int, pd.DataFrame]]:
    return [(i, table.iloc[s:s + size]) for i, s in enumerate(range(0, len(table), size))]


def _execute_objects(ex, table, *, cfg, source, plan, folder, schema, device, progress, out, done, on_part=None):
    """Profile single-object images: one task per partition of objects (finished ones skipped).
    ``on_part(result)``: called as each partition's part is complete (after its checkpoint)."""
    from .state import write_summary

    tasks = partition_tasks(table, cfg.partition_size)
    todo = [t for t in tasks if t[0] not in done]
    log.info("running %d partition(s) of up to %d objects on %s%s", len(todo), cfg.partition_size,
             ex.description, f" ({len(tasks) - len(todo)} already done)" if done else "")
    names = {i: f"scip_gpu-partition-{i}-{out.name}" for i, _ in todo}
    results = [PartitionResult(**d) for d in done.values()]
    unfinished: dict[int, str] = {}
    for task, res, exc in ex.map_unordered(process_partition, todo, list(names.values()), source=source, plan=plan,
                                           folder=str(folder), schema=schema, device=device):
        if exc is not None:
            res = recover_partition(ex, task, exc, source=source, plan=plan, folder=folder, schema=schema,
                                    device=device, name=names[task[0]])
            if not isinstance(res, PartitionResult):  # not marked done: resume=true runs it again
                unfinished[task[0]] = res
                continue
        write_summary(out, res)
        if on_part is not None:
            on_part(res)
        results.append(res)
        for note in res.notes:
            log.warning(note)
        progress.update(res.n, res)
    if unfinished:
        raise_unfinished(unfinished, len(tasks), sum(len(t[1]) for t in todo if t[0] in unfinished), "objects")
    return results, len(tasks)


def raise_unfinished(unfinished: dict[int, str], n_tasks: int, n_items: int, unit: str) -> None:
    """RunIncomplete naming the partitions that could not be run and why."""
    from .errors import RunIncomplete

    parts = sorted(unfinished)
    causes: dict[str, list[int]] = {}
    for p in parts:
        causes.setdefault(unfinished[p], []).append(p)
    shown = "; ".join(f"partition{'s' if len(ps) > 1 else ''} {_ranges(ps)}: {c}" for c, ps in list(causes.items())[:3])
    more = f"; and {len(causes) - 3} other cause(s), see run.log" if len(causes) > 3 else ""
    raise RunIncomplete(f"{len(parts)} of {n_tasks} partition(s) ({n_items} {unit}) could not be run, "
                        f"and were not marked done ({shown}{more})")


def _ranges(parts: list[int]) -> str:
    out, start = [], None
    for i, p in enumerate(parts):
        if start is None:
            start = p
        if i + 1 == len(parts) or parts[i + 1] != p + 1:
            out.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ", ".join(out[:20]) + (", ..." if len(out) > 20 else "")


def _resumed_partition_size(cfg: Config) -> int | None:
    """On resume, the partition size the interrupted run used (it may have been automatic)."""
    if cfg.resume and cfg.output:
        import json

        state = Path(cfg.output) / "run_state.json"
        if state.is_file():
            try:
                return json.loads(state.read_text()).get("partition_size")
            except (OSError, json.JSONDecodeError):
                return None
    return None


@dataclass
class OutputFolder:
    """The run folder this process holds: its lock, the partitions already done (resume) and
    the runs recorded on it (``run_state.json``'s ``runs``)."""

    path: Path
    lock: object
    done: dict
    runs: list


def _config_yaml(cfg: Config, resolved_yaml: str | None) -> str:
    if resolved_yaml is not None:
        return resolved_yaml
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _open_output(cfg: Config, table, n_partitions: int, resolved_yaml: str | None = None,
                 started: str | None = None, schema=None) -> OutputFolder:
    """The run folder, locked for this process: a new one (``config.yaml`` and ``run_state.json``
    written before anything else), or with ``resume=true`` the interrupted run's (checked; its
    configuration kept, this resume recorded, leftovers of dead processes removed; ``schema``: the
    parts' Arrow schema, a finished part with other columns is damaged and redone)."""
    from . import state
    from .errors import ConfigError

    folder_name = f"{cfg.export.filename}.parquet"
    if cfg.resume:
        if not cfg.output:
            raise ConfigError("resume=true needs output=<the folder of the run to resume>")
        out = Path(cfg.output)
        if out.is_dir() and any(out.iterdir()):
            lock = state.acquire_lock(out, take_over_stale=True)
            try:
                old = state.check_resumable(out, cfg, table, n_partitions)
                removed = state.remove_leftovers(out)  # under the lock: only dead processes' files
                done = state.finished_partitions(out, out / folder_name, export.part_name,
                                                 None if schema is None else schema.names)
                new = state.record_resume(out, cfg, old, partitions_done=len(done), started=started,
                                          took_over=lock.taken_over)
                if not (out / "config.yaml").is_file():  # the first run's is kept; it never got to write it
                    export.write_text(out / "config.yaml", _config_yaml(cfg, resolved_yaml))
            except BaseException:
                lock.release()
                raise
            log.info("resuming %s: %d of %d partition(s) already done%s", out, len(done), n_partitions,
                     f", {removed} temporary file(s) of the interrupted run removed" if removed else "")
            return OutputFolder(out, lock, done, new["runs"])
        # (a loop that runs or resumes one command wants this; a mistyped folder should be seen)
        log.warning("resume=true: %s %s: nothing to resume, a new run starts there", out,
                    "is empty" if out.is_dir() else "does not exist")
    out, lock = create_output_dir(cfg)
    try:
        export.write_text(out / "config.yaml", _config_yaml(cfg, resolved_yaml))
        new = state.write_state(out, cfg, table, n_partitions, started=started)
    except BaseException:
        lock.release()
        raise
    return OutputFolder(out, lock, {}, new["runs"])


def check_channels(cfg: Config, source, table: pd.DataFrame) -> None:
    """``dataset.channels`` and ``dataset.channel_names`` against the data, before anything is
    written (else every object would fail on its own, after a full pass): ``ConfigError``."""
    from .errors import ConfigError

    ds = cfg.dataset
    n = source.channel_count(table)
    if ds.channels is not None and n:
        bad = [c for c in ds.channels if str(c).lstrip("-").isdigit() and not -n <= int(c) < n]
        if bad:
            raise ConfigError(f"dataset.channels={list(ds.channels)}: channel {bad[0]} is not in the data: "
                              f"{'the' if len(table) == 1 else 'most'} objects of dataset {ds.name!r} have {n} "
                              f"channel(s) (indices 0..{n - 1})")
    if ds.channel_names is not None:
        selected = source.selected_channels(table)
        if len(ds.channel_names) != len(selected):
            raise ConfigError(f"dataset.channel_names has {len(ds.channel_names)} name(s) for the {len(selected)} "
                              f"channel(s) profiled ({selected}); give one name per channel (or set "
                              "dataset.channels to choose the channels)")


def _prepare(cfg: Config, source, table, plan: Plan, device: str, is_fields: bool, resolved_yaml, started):
    """``run``'s set-up once the objects and the plan are known (while the cluster starts): the
    device reads planned, the partition size chosen, the parts' schema checked, the run folder
    opened. Returns (cfg with its partition size, the opened folder, the reads, the meta columns,
    the schema, the partition size)."""
    from . import field_pipeline

    reads = None
    if device == "cuda" and hasattr(source, "plan_device_reads"):  # dense zarr: kvikio or the host (io.kvikio)
        from .config import kvikio_mode

        reads = source.plan_device_reads(table, kvikio_mode(cfg.io.kvikio), device)

    if not is_fields:
        size = _resumed_partition_size(cfg)
        if size is None and not cfg.partition_size and device == "cuda":  # from the objects' and the GPU's size
            size = auto_partition_size(replace(cfg, device="cuda"), len(table), sample_object(source, table),
                                       device_free_memory(cfg.cluster))
        cfg = replace(cfg, partition_size=size or auto_partition_size(cfg, len(table)))
    meta_cols = [c for c in table.columns if c.startswith("meta_")]
    meta = table[meta_cols]
    if is_fields:
        meta = field_pipeline.object_meta_frame(meta)
        meta_cols = list(meta.columns)
    schema = export.arrow_schema(meta, plan.columns, cfg.export.filename)
    export.check_column_names(schema, plan.columns, [getattr(f, "value", f) for f in cfg.export.formats]
                              + (["analysis_ready"] if cfg.export.analysis_ready else []))
    size = max(1, cfg.segmentation.fields_per_partition) if is_fields else cfg.partition_size
    opened = _open_output(cfg, table, -(-len(table) // size), resolved_yaml, started.isoformat(timespec="seconds"),
                          schema)
    return cfg, opened, reads, meta_cols, schema, size


def _wait_closed(cluster, failed: bool = False) -> None:
    """Wait for the cluster (``ExecutorInBackground``) to shut down. Once the run's outputs are
    written, or when the run failed (``failed``: the error that stopped it is the one said), a
    failure to shut it down is only logged."""
    try:
        cluster.wait_closed()
    except Exception as exc:  # noqa: BLE001 - nothing of the run depends on it any more
        if failed:
            log.debug("the cluster: %s", describe_exception(exc))
        else:
            log.warning("shutting the cluster down failed: %s", describe_exception(exc))


def process_started() -> float:
    """``time.time()`` when this process started (psutil, a dependency of Dask's), else when
    scip_gpu was imported."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001
        return _IMPORTED


_IMPORTED = time.time()


def run(cfg: Config, resolved_yaml: str | None = None, source=None, early: EarlyCluster | None = None) -> RunSummary:
    """Run the pipeline for a validated configuration object.

    ``source``: the object source (``scip_gpu.io.Source``); by default the one ``cfg.dataset``
    describes (``make_source``). ``scip_gpu.profile`` gives its in-memory arrays this way.
    ``early``: the cluster the command line started before importing this module
    (``cluster.EarlyCluster``); the run takes it, or shuts it down, however it ends.

    The host arrays this process kept for reuse meanwhile (``scratch.POOL``: on a GPU, up to
    2 GiB) are dropped when the run ends, however it ends.

    Raises
    ------
    ConfigError, InputError, OutputError
        Before any output is written when the configuration or the dataset is unusable.
    """
    try:
        return _run(cfg, resolved_yaml, source, early)
    finally:
        POOL.clear()


def _run(cfg: Config, resolved_yaml: str | None = None, source=None, started_early: EarlyCluster | None = None
         ) -> RunSummary:
    """``run``'s work."""
    import json

    from . import field_pipeline
    from .errors import InputError
    from .fields import join_metadata

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    t_started = time.time()
    try:  # (a cluster started early is shut down when the run stops before taking it)
        expand_user_paths(cfg)  # "output='~/runs'": the shell leaves the tilde to us
        validate(cfg)  # what needs no data first (the channel indices once the data is listed)
        given = source is not None
        source = make_source(cfg.dataset) if source is None else source
        table = source.objects()
        is_fields = getattr(source, "fields", False)
        unit = "fields" if is_fields else "objects"
        if len(table) == 0:
            where = (f"at {cfg.dataset.path!r}" if cfg.dataset.path is not None
                     else "in the images given" if given else "(dataset.n_objects=0?)")
            raise InputError(f"dataset {cfg.dataset.name!r}: no {unit} found {where}")
        table = join_metadata(table, cfg.dataset.metadata)
        table.insert(0, "meta_field_index" if is_fields else "meta_index", np.arange(len(table), dtype=np.int64))
        check_channels(cfg, source, table)
        channel_names = source.channel_names(table)
        validate(cfg, len(channel_names))
        if is_fields:
            field_pipeline.check_segmentation(cfg, channel_names)
        plan = build_plan(cfg, channel_names)
        if not any(c.kind == "feat" for c in plan.columns):
            raise ConfigError("the configuration measures nothing: no mask (masks=none), no segmentation and "
                              "features.raw=false; choose masks (e.g. masks=scip) or features.raw=true")
        check_dashboard(cfg.cluster)
        device = select_device(getattr(cfg.device, "value", cfg.device))
        cfg = replace(cfg, cluster=with_partitions_in_flight(cfg.cluster))  # (null: from the cores, local_cuda)
        cluster_cfg = cfg.cluster
        if is_fields and getattr(cluster_cfg.type, "value", cluster_cfg.type) == "sync":
            cluster_cfg = replace(cluster_cfg, threads_per_worker=1)  # fields: one after the other
    except BaseException:
        if started_early is not None:
            started_early.discard()
        raise
    # what is logged before run.log exists (the cluster starting, the folder opened), for run.log
    if started_early is not None:
        early = started_early.log  # (installed when that cluster started)
        cluster = started_early.take(cluster_cfg, device)
    else:
        early = buffer_log()
        cluster = None
    if cluster is None:  # the cluster starts now, in the background, while the folder is prepared
        cluster = ExecutorInBackground(cluster_cfg, device)
    try:
        cfg, opened, reads, meta_cols, schema, size = _prepare(cfg, source, table, plan, device, is_fields,
                                                               resolved_yaml, started)
        out, done = opened.path, opened.done
        try:
            handler = _log_to_file(out / "run.log", log_level(cfg.log_level) or "INFO")
            for record in early.buffer:
                if record.levelno >= handler.level:
                    handler.handle(record)
        except BaseException:
            opened.lock.release()
            raise
    except BaseException:
        _wait_closed(cluster, failed=True)
        raise
    finally:
        logging.getLogger("scip_gpu").removeHandler(early)
    t_process = process_started()
    # (s from the process's start; the cluster may have started before the run: EarlyCluster)
    timeline = {"run_started": t_started - t_process, "cluster_started": cluster.started_at - t_process}
    anndata_writer = None  # (export.AnnDataWriter: the .h5ad's X written while the partitions run)
    montage = None  # (report.MontageAhead: the report's example montage, drawn meanwhile)
    try:
        log.info("scip_gpu run started at %s; output folder %s", started.isoformat(timespec="seconds"), out)
        log.info("dataset %r (%s): %d %s, channels %s", cfg.dataset.name, source.kind, len(table), unit,
                 channel_names)
        n_feat = sum(c.kind == "feat" for c in plan.columns)
        log.info("%d columns per object: %d measurements (%d features, AnnData's X, and %d meta values such as "
                 "bounding boxes), the rest flags; device %s", plan.n_features, n_measured(plan), n_feat,
                 n_measured(plan) - n_feat, device)
        if device == "cpu":
            import importlib.util

            if importlib.util.find_spec("numba") is None:  # (not imported here: workers do)
                log.warning("numba is not installed: the CPU path runs without its compiled kernels (same "
                            "results, several times slower); pip install 'scip_gpu[fast]'")
        formats = [getattr(f, "value", f) for f in cfg.export.formats]
        if {"anndata", "anndata_zarr"} & set(formats):
            export.preload_anndata()  # imported while the partitions run, not after them
        if "parquet" in formats:  # the descriptions of the parts' columns, once for the run
            export.write_columns(out / export.columns_file(cfg.export.filename), plan.columns, schema)
        folder = out / f"{cfg.export.filename}.parquet"
        progress = Progress(len(table), cfg.progress, unit, device)
        if done and not is_fields:
            progress.update(sum(d["n"] for d in done.values()))
        extra: dict = {}
        if "anndata" in formats and not is_fields:  # X written as the partitions come back
            n_tasks = -(-len(table) // size)
            from .report import report_columns

            lead, keys = report_columns(schema.names, plan.columns)
            anndata_writer = export.AnnDataWriter(out / f"{cfg.export.filename}.h5ad", len(table), plan.columns,
                                                  meta_cols, {i: i * size for i in range(n_tasks)},
                                                  keep=lead + [c.name for c in keys] if cfg.export.report else ())
            for i in done:
                anndata_writer.add(i, folder / export.part_name(i))
        ex = cluster.get()  # (started in the background: up, and a worker connected)
        timeline["cluster_ready"] = cluster.ready_at - t_process
        kwargs = dict(cfg=cfg, source=source, plan=plan, folder=folder, schema=schema, device=device,
                      progress=progress, out=out, done=done)
        if cfg.export.report and not is_fields and cfg.masks.methods:  # drawn while the partitions run
            from .report import MontageAhead

            montage = MontageAhead(source, table, plan, size)
            for r in done.values():
                montage.partition_done(int(r["part"]), {e["meta_index"] for e in r.get("errors", [])})

        def part_done(res) -> None:  # (as each partition comes back)
            timeline.setdefault("first_partition", time.time() - t_process)
            if anndata_writer is not None:
                anndata_writer.add(res.part, folder / export.part_name(res.part))
            if montage is not None:
                montage.partition_done(res.part, {e["meta_index"] for e in res.errors})

        if is_fields:
            results, n_parts, extra = field_pipeline.execute(ex, table, **kwargs)
        else:
            results, n_parts = _execute_objects(ex, table, **kwargs, on_part=part_done)
        timeline["partitions_done"] = time.time() - t_process
        cluster.close()  # in the background, while the outputs are written

        # every partition is done: a temporary part left in the folder is one that a worker killed
        # mid-write left (its partition ran again elsewhere); polars refuses a folder holding it
        for p in folder.glob(".*.tmp") if folder.is_dir() else ():
            p.unlink(missing_ok=True)
        errors = sorted((e for r in results for e in r.errors), key=lambda e: e["meta_index"])
        export.write_errors(out / "errors.csv", errors)
        for e in errors[:20]:
            log.warning("%s failed (%s): %s", e["object"], e["stage"], e["error"])
        if len(errors) > 20:
            log.warning("... and %d more; see errors.csv", len(errors) - 20)

        parts = [folder / export.part_name(i) for i in range(n_parts)]
        n_objects = sum(r.n for r in results)
        n_ok = sum(r.n_ok for r in results)
        provenance = {
            "scip_gpu": export.package_versions().get("scip_gpu"),
            "git_revision": export.git_revision(),
            "packages": export.package_versions(),
            "python": sys.version.split()[0],
            "host": socket.gethostname(),
            "device": device,
            "cluster": ex.description,
            "started": started.isoformat(timespec="seconds"),
            "command": sys.argv,
            "dataset": {"name": cfg.dataset.name, "format": getattr(cfg.dataset.format, "value", cfg.dataset.format),
                        "path": cfg.dataset.path},
            "objects": n_objects,
            "objects_ok": n_ok,
            "objects_with_errors": sum(e["stage"] != "field" for e in errors) if is_fields else len(errors),
            "partitions": n_parts,
            "columns": plan.n_features,
            "features": sum(c.kind == "feat" for c in plan.columns),
            "channel_names": channel_names,
            "worker_seconds": round(sum(r.seconds for r in results), 3),
            **({"reads": reads} if reads else {}),  # per store: "kvikio", or "host: why"
            "runs": opened.runs,  # the first run on this folder and each resume
            "resumes": max(len(opened.runs) - 1, 0),
            **extra,
        }
        workers = worker_stats(results, since=started.timestamp())
        if workers:
            provenance["workers"] = workers
            what = "GPU" if device == "cuda" else "profile stage"
            for name, w in workers.items():
                log.info("worker %s: %d objects in %d partition(s), %.1f s, %.1f objects/s; %s busy %.0f%% of its "
                         "time", name, w["objects"], w["partitions"], w["seconds"], w["objects_per_s"], what,
                         100 * w["device_busy"])
                if w["phases_s"]:
                    log.info("worker %s: partition stages summed (s): %s", name,
                             ", ".join(f"{k} {v:.1f}" for k, v in w["phases_s"].items()))
        if cfg.profile_stages:
            stages: dict[str, float] = {}
            for r in results:
                for k, v in r.stage_seconds.items():
                    stages[k] = stages.get(k, 0.0) + v
            provenance["stage_seconds"] = {k: round(v, 4) for k, v in sorted(stages.items())}
            log.info("time per stage (summed over workers): %s", provenance["stage_seconds"])
        formats = [getattr(f, "value", f) for f in cfg.export.formats]
        uns = {"scip_gpu": {k: v for k, v in provenance.items() if isinstance(v, (str, int, float))}}
        output_seconds = provenance["output_seconds"] = {}  # each output written after the partitions

        def written(name: str, since: float) -> None:
            output_seconds[name] = round(time.perf_counter() - since, 3)
            log.info("%s written to %s (%.1f s)", name, out / name, output_seconds[name])

        report_frame = None  # (the report's columns of every part, read with X)
        if "anndata" in formats:
            t_out = time.perf_counter()
            if anndata_writer is not None:
                anndata_writer.finish(parts, uns=uns)  # (on failure: removed in ``finally``)
                report_frame = anndata_writer.kept_frame(len(parts))
                anndata_writer = None
            else:
                export.write_anndata(parts, out / f"{cfg.export.filename}.h5ad", plan.columns, meta_cols, uns=uns)
            written(f"{cfg.export.filename}.h5ad", t_out)
        if "anndata_zarr" in formats:
            t_out = time.perf_counter()
            export.write_anndata_zarr(parts, out / f"{cfg.export.filename}.zarr", plan.columns, meta_cols, uns=uns)
            written(f"{cfg.export.filename}.zarr", t_out)
        if cfg.export.analysis_ready:
            t_out = time.perf_counter()
            name = f"{cfg.export.filename}.analysis.h5ad"
            provenance["analysis_ready"] = export.write_analysis_ready(
                parts, out / name, plan.columns, meta_cols, max_nan_share=cfg.export.max_nan_share, uns=uns)
            log.info("%s: %s", name, provenance["analysis_ready"])
            written(name, t_out)
        if cfg.export.report:
            from .report import write_report

            t_out = time.perf_counter()
            nan_stats = {str(folder / export.part_name(r.part)): r.nan_stats for r in results if r.nan_stats}
            if write_report(out, source=source, plan=plan, table=table, parts=parts, provenance=provenance,
                            fields=is_fields, nan_stats=nan_stats, frame=report_frame, montage=montage) is not None:
                written("report.html", t_out)
        if "parquet" not in formats:  # the parts were this run's own intermediates
            for p in parts:
                p.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError as exc:  # the results are written: never fail the run for this
                log.warning("could not remove the intermediate folder %s: %s", folder, exc)
        timeline["outputs_written"] = time.time() - t_process
        _wait_closed(cluster)
        timeline["cluster_closed"] = (cluster.closed_at or time.time()) - t_process
        provenance["timeline"] = {k: round(v, 3) for k, v in timeline.items()}
        log.info("timeline (s from the process's start): %s",
                 ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in timeline.items()))
        seconds = time.perf_counter() - t0
        provenance["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        provenance["seconds"] = round(seconds, 3)
        export.write_text(out / "provenance.json", json.dumps(provenance, indent=2, default=str))
        n_fields_failed = sum(e["stage"] == "field" for e in errors) if is_fields else 0
        summary = RunSummary(out, n_objects, n_ok, len(errors) - n_fields_failed, n_measured(plan), seconds, errors,
                             n_fields_failed)
        handler.handle(logging.makeLogRecord({"name": "scip_gpu", "levelno": logging.INFO,
                                              "levelname": "INFO", "msg": summary.line()}))
        return summary
    except RunIncomplete as exc:  # what finished is kept; resume runs the rest
        raise _to_file(handler, RunIncomplete(f"{exc}. {_resume_hint(out)}")) from exc
    except (OSError, RuntimeError) as exc:  # (h5py: RuntimeError when HDF5 cannot flush a full disk)
        if disk_full(exc):
            raise _to_file(handler, OutputError(f"no space left on device ({' '.join(str(exc).split())}). "
                                                f"{_resume_hint(out)}")) from exc
        raise
    except KeyboardInterrupt:
        raise _to_file(handler, RunInterrupted(f"interrupted. {_resume_hint(out)}")) from None
    finally:
        try:
            if anndata_writer is not None:  # (the run stopped before the file was complete)
                anndata_writer.abort()
            # (no worker writes into the folder once it is unlocked: a run that stopped early
            # waits for its cluster's shut-down here, one that finished has waited above)
            _wait_closed(cluster, failed=True)
        finally:
            logging.getLogger("scip_gpu").removeHandler(handler)
            handler.close()
            opened.lock.release()  # on every way out: success, error, Ctrl-C (twice)


def _resume_hint(out: Path) -> str:
    return (f"The finished partitions are kept in {out}: run the same command again with output={out} "
            "resume=true to finish the run")


def _to_file(handler: logging.Handler, exc: BaseException) -> BaseException:
    """Record why the run stopped in run.log (the command line prints it once, on its own)."""
    handler.handle(logging.makeLogRecord({"name": "scip_gpu", "levelno": logging.ERROR, "levelname": "ERROR",
                                          "msg": f"run stopped: {exc}"}))
    return exc


__all__ = ["run", "process_partition", "RunSummary", "ScipGpuError"]
