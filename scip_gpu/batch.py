"""The batch data model.

Objects are processed in batches: a zero-padded stack ``pixels`` of shape (N, C, H, W) holding
each object's image in its top-left corner, each object's real extent ``extents`` (N, 2) as
(height, width), and the objects' global indices. Objects of different sizes are grouped by
padded shape so that padding stays small.

Filters with a finite footprint are applied to the whole stack at once. To give, inside each
object's real extent, exactly the values a per-object call would give, the padding is first
refilled the way the filter's boundary mode extends that object's own image (``refill``), and
every padded shape keeps a margin of at least the largest footprint radius beyond each extent.

Objects that share one exact size in large numbers (fixed-size crops, as most imaging flow
cytometers write) are batched at that size without padding: every filter then handles the
image border itself with the same boundary mode, so results are the same and no work is spent
on padding (``group_by_shape``).

Pixel types: every image is profiled in its own type, whatever its neighbours. ``profile_dtype``
gives the type an image is profiled in from its own type alone (float16 becomes float32, exactly,
as scikit-image does; every other supported type is kept), ``group_by_shape`` never puts two
types in one batch, and ``assemble`` refuses a batch that mixes them instead of promoting (a
uint8 image promoted to float32 by a float neighbour was masked as a float image: another Otsu
threshold, other features; a float16 image got float32 or float64 arithmetic by its neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Sequence

import numpy as np
from array_api_compat import is_cupy_array

from .backend import array_module


@dataclass
class Batch:
    """A padded stack of objects.

    Attributes
    ----------
    pixels : (N, C, H, W) ndarray
        Images in their ``profile_dtype`` (one per batch), zero beyond each object's extent.
    extents : (N, 2) int64 ndarray
        (height, width) of each object's real image.
    index : (N,) int64 ndarray (host)
        Global index of each object (its row in the run's object table).
    """

    pixels: object
    extents: object
    index: np.ndarray
    #: intermediates shared by several stages (e.g. each channel plane sorted once)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def xp(self) -> ModuleType:
        return array_module(self.pixels)

    @property
    def n(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[2]), int(self.pixels.shape[3])

    def valid(self):
        """(N, H, W) bool: True inside each object's real extent; made once per batch (a dozen
        families ask for it: on a GPU three kernel launches each), read-only on the CPU."""
        v = self.cache.get("valid")
        if v is None:
            v = valid_mask(self.extents, self.shape)
            if isinstance(v, np.ndarray) and type(v) is np.ndarray:
                v.flags.writeable = False
            self.cache["valid"] = v
        return v

    def take(self, rows) -> "Batch":
        """Sub-batch of the given row positions."""
        xp = self.xp
        rows_d = xp.asarray(rows)
        return Batch(self.pixels[rows_d], self.extents[rows_d], self.index[np.asarray(rows)])


def float_planes(batch: Batch):
    """The batch's pixels as float64 (N*C, H, W) planes, converted once and shared."""
    if "float_planes" not in batch.cache:
        xp = batch.xp
        n, c, h, w = batch.pixels.shape
        batch.cache["float_planes"] = batch.pixels.astype(xp.float64).reshape(n * c, h, w)
    return batch.cache["float_planes"]


def valid_mask(extents, shape: tuple[int, int]):
    """(M, H, W) bool mask of the real extent of each of M objects."""
    xp = array_module(extents)
    h, w = shape
    rows = xp.arange(h)[None, :, None] < extents[:, 0, None, None]
    cols = xp.arange(w)[None, None, :] < extents[:, 1, None, None]
    return rows & cols


def padded_shape(h: int, w: int, *, margin: int, multiple: int) -> tuple[int, int]:
    """Padded (H, W) for an object of extent (h, w): extent + margin, rounded up."""
    return (-(-(h + margin) // multiple) * multiple, -(-(w + margin) // multiple) * multiple)


#: objects of one exact size are batched unpadded when at least this many share it
EXACT_GROUP_MIN = 16

#: pixel types an image may have (``check_image`` refuses the others)
SUPPORTED_KINDS = "uif"


def profile_dtype(dtype) -> np.dtype:
    """The type an image of pixel type ``dtype`` is profiled in, from that type alone.

    float16 becomes float32 (exact; scikit-image computes float16 images in float32 too, and the
    compiled kernels have no float16 arithmetic); every other integer or float type is kept, so
    that uint8/uint16 images keep their integer semantics (SCIP's Otsu histogram, rank median,
    ``img_as_float`` scaling).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise TypeError(f"unsupported pixel type {dtype}")
    if dtype.kind == "f" and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def group_by_shape(
    shapes: Sequence[tuple[int, int]], *, margin: int, multiple: int, batch_size: int,
    exact_min: int = EXACT_GROUP_MIN, dtypes: Sequence | None = None,
) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Group objects into batches of one padded shape (and one pixel type) each.

    Objects whose exact (h, w) is shared by at least ``exact_min`` of them are batched at that
    shape, without padding; the others by padded shape (extent + ``margin``, rounded up to a
    multiple of ``multiple``). With ``dtypes`` (each object's pixel type), objects whose
    ``profile_dtype`` differs are never in one batch.

    Returns
    -------
    list of ((H, W), positions)
        ``positions`` index into ``shapes``; each group holds at most ``batch_size`` objects.
    """
    shapes = [(int(h), int(w)) for h, w in shapes]
    types = [""] * len(shapes) if dtypes is None else [profile_dtype(d).str for d in dtypes]
    if len(types) != len(shapes):
        raise ValueError(f"{len(shapes)} shapes but {len(types)} dtypes")
    count: dict[tuple[int, int], int] = {}
    for hw in shapes:
        count[hw] = count.get(hw, 0) + 1
    keys: dict[tuple, list[int]] = {}
    for pos, (h, w) in enumerate(shapes):
        exact = count[(h, w)] >= exact_min
        key = (h, w) if exact else padded_shape(h, w, margin=margin, multiple=multiple)
        keys.setdefault((key, exact, types[pos]), []).append(pos)
    groups = []
    for key, exact, t in sorted(keys):
        pos = np.asarray(keys[(key, exact, t)], dtype=np.int64)
        for start in range(0, len(pos), batch_size):
            groups.append((key, pos[start : start + batch_size]))
    return groups


def adjacent_run_end(images: Sequence, i: int, limit: int) -> int:
    """The end j of the run images[i:j] (at most ``limit`` long) of host images of images[i]'s
    shape and type that lie one after the other in one buffer (the objects of one read block);
    i + 1 where images[i] starts none. Each image's address is read once."""
    first = images[i]
    if not (isinstance(first, np.ndarray) and first.flags.c_contiguous):
        return i + 1
    base = first.base if first.base is not None else first
    size = first.nbytes
    nxt = first.__array_interface__["data"][0] + size
    j = i + 1
    while j < len(images) and j - i < limit:
        im = images[j]
        if not (isinstance(im, np.ndarray) and im.base is base and im.shape == first.shape
                and im.dtype == first.dtype and im.flags.c_contiguous
                and im.__array_interface__["data"][0] == nxt):
            break
        nxt += size
        j += 1
    return j


def block_view(first: np.ndarray, n: int) -> np.ndarray:
    """The (n, C, H, W) read-only view of the run of ``n`` adjacent images that starts with
    ``first`` (as ``adjacent_run_end`` found it)."""
    return np.lib.stride_tricks.as_strided(first, shape=(n, *first.shape), strides=(first.nbytes, *first.strides),
                                           writeable=False)


def adjacent_view(images: Sequence[np.ndarray]) -> np.ndarray | None:
    """The (N, C, H, W) read-only view of host images of one shape and type that lie one after
    the other in one buffer (as the objects of one read block do), or None."""
    n = len(images)
    return block_view(images[0], n) if n and adjacent_run_end(images, 0, n) == n else None


def _host_buffer(shape, dtype, xp, *, zero: bool = True):
    """Host staging array (zeroed unless ``zero`` is False); page-locked (pinned) when the batch
    goes to a GPU, so the copy to the device is a single asynchronous DMA transfer."""
    if xp is np:
        return np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    mem = xp.cuda.alloc_pinned_memory(max(size, 1))
    buf = np.frombuffer(mem, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
    if zero:
        buf[...] = 0
    return buf


class Staged:
    """A batch's pixels and extents assembled in (pinned) host memory, not yet on the device
    (``stage``): what ``assemble(..., staged=...)`` copies."""

    def __init__(self, host: np.ndarray, extents: np.ndarray, key: tuple):
        self.host, self.extents, self.key = host, extents, key


def _batch_dtype(images: Sequence[np.ndarray]):
    types = {profile_dtype(im.dtype) for im in images}
    if len(types) > 1:  # promoting would change the others' results (see the module docstring)
        raise TypeError(f"a batch must hold one pixel type, got {sorted(str(t) for t in types)}; group the "
                        "objects with group_by_shape(..., dtypes=...)")
    return types.pop()


def stage(images: Sequence[np.ndarray], shape: tuple[int, int], xp=np) -> Staged | None:
    """The host half of ``assemble``: the zero-padded stack and the extents in host memory
    (pinned for a GPU), so that a caller can do it before it takes the device (the pipeline:
    a partition's first batch, while another partition's batch runs). None where there is
    nothing to stage on the host (images already on the device)."""
    if xp is not np and is_cupy_array(images[0]):
        return None
    dtype = _batch_dtype(images)
    n, c = len(images), images[0].shape[0]
    exact = all(im.shape[1:] == tuple(shape) for im in images)  # no padding to clear
    host = _host_buffer((n, c, *shape), dtype, xp, zero=not exact)
    extents = _host_buffer((n, 2), np.int64, xp, zero=False)
    block = adjacent_view(images) if exact else None
    if block is not None:  # the objects of one read block: one copy
        host[...] = block
        extents[...] = shape
    else:
        for i, im in enumerate(images):  # ragged inputs: one copy per object is unavoidable here
            _, h, w = im.shape
            host[i, :, :h, :w] = im
            extents[i] = h, w
    return Staged(host, extents, (id(xp), n, tuple(shape)))


def assemble(images: Sequence[np.ndarray], index: np.ndarray, shape: tuple[int, int], xp=np, *,
             copy_stream=None, staged: Staged | None = None):
    """Stack (C, h, w) host images into a zero-padded Batch of padded shape ``shape``.

    Every image must have the same ``profile_dtype``; the stack has that type (float16 images
    are converted to float32, the only conversion).

    The stack and the extents are built on the host (in pinned memory for a GPU) and moved to
    the device by asynchronous copies on the current stream: assembling the next batch never
    waits for the device (a copy from pageable memory would synchronise the stream).
    ``copy_stream`` (a CUDA stream): the copies go on that stream instead, so that they overlap
    the current stream's kernels (of the batch before); the batch then carries the copies'
    event (``copied``), which ``profile_batch`` makes the current stream wait for before its
    first kernel. The caller keeps the batch alive until its work is complete (the device
    buffers belong to the copy stream's memory pool).
    """
    if xp is not np and is_cupy_array(images[0]):  # images already on the device (kvikio reads)
        return _assemble_on_device(images, index, shape, _batch_dtype(images), xp)
    if staged is None or staged.key != (id(xp), len(images), tuple(shape)):
        staged = stage(images, shape, xp)
    host, extents = staged.host, staged.extents
    if xp is np:
        return Batch(host, extents, np.asarray(index, dtype=np.int64))
    stream = copy_stream if copy_stream is not None else xp.cuda.get_current_stream()
    with stream:  # (the device buffers come from that stream's pool)
        pixels = xp.empty(host.shape, dtype=host.dtype)
        pixels.set(host, stream=stream)  # asynchronous: pinned source
        ext = xp.empty(extents.shape, dtype=np.int64)
        ext.set(extents, stream=stream)
    batch = Batch(pixels, ext, np.asarray(index, dtype=np.int64))
    batch.cache["_pinned_host"] = (host, extents)  # keep the staging buffers alive while the copies run
    if copy_stream is not None:
        copied = xp.cuda.Event()
        copied.record(copy_stream)
        batch.cache["_copied"] = copied
    return batch


def wait_for_copies(batch: Batch) -> None:
    """Make the current stream wait for the batch's copies to the device when they went on a
    copy stream (``assemble(copy_stream=...)``); nothing otherwise. No host synchronisation."""
    copied = batch.cache.pop("_copied", None)
    if copied is not None:
        batch.xp.cuda.get_current_stream().wait_event(copied)


def _assemble_on_device(images, index, shape, dtype, xp) -> Batch:
    """``assemble`` of (C, h, w) images that are on the device: stacked and padded there (one
    copy per distinct image size), nothing goes through the host but the extents."""
    n, c = len(images), images[0].shape[0]
    sizes = {im.shape[1:] for im in images}
    if sizes == {tuple(shape)}:
        pixels = xp.stack(images).astype(dtype, copy=False)
    else:
        pixels = xp.zeros((n, c, *shape), dtype=dtype)
        for h, w in sizes:  # objects of one store share their size: one copy per size
            rows = [i for i, im in enumerate(images) if im.shape[1:] == (h, w)]
            block = xp.stack([images[i] for i in rows]).astype(dtype, copy=False)
            if len(rows) == n:
                pixels[:, :, :h, :w] = block
            else:
                pixels[xp.asarray(np.asarray(rows)), :, :h, :w] = block
    extents = _host_buffer((n, 2), np.int64, xp, zero=False)
    extents[:] = [im.shape[1:] for im in images]
    ext = xp.empty(extents.shape, dtype=np.int64)
    ext.set(extents, stream=xp.cuda.get_current_stream())  # asynchronous: pinned source
    batch = Batch(pixels, ext, np.asarray(index, dtype=np.int64))
    batch.cache["_pinned_host"] = (extents,)
    return batch


# ---------------------------------------------------------------------------------------------
# Padding refill


def _source_index(xp, i, n, mode: str):
    """Index into an extent of length ``n`` that position ``i`` maps to under ``mode``.

    ``i``: (1, L) positions; ``n``: (M, 1) extents. Modes follow scipy.ndimage.
    """
    if mode == "nearest":
        return xp.minimum(i, n - 1)
    if mode == "reflect":  # d c b a | a b c d | d c b a
        k = i % (2 * n)
        return xp.where(k < n, k, 2 * n - 1 - k)
    if mode == "mirror":  # d c b | a b c d | c b a
        period = xp.maximum(2 * n - 2, 1)
        k = i % period
        return xp.where(k < n, k, 2 * n - 2 - k)
    if mode == "wrap":
        return i % n
    raise ValueError(f"unsupported padding mode {mode!r}")


def refill(x, extents, mode: str, cval=0, reach: int | None = None):
    """Refill the padding of each object as ``mode`` extends that object's own image.

    Parameters
    ----------
    x : (M, H, W) ndarray
        One plane per object, object anchored at the top-left corner.
    extents : (M, 2) int ndarray
        (height, width) of each plane's real extent.
    mode : {'nearest', 'reflect', 'mirror', 'wrap', 'constant'}
        scipy.ndimage boundary mode of the filter that follows.
    cval : scalar
        Fill value for ``mode='constant'``.
    reach : int, optional
        Footprint radius of the filter that follows: only the ``reach`` rows and columns
        beyond each extent are refilled (what the filter can see), which is much cheaper than
        refilling the whole padding. Every padded shape keeps at least that margin.

    Returns
    -------
    (M, H, W) ndarray
        A copy; inside each extent identical to ``x``.
    """
    xp = array_module(x)
    m, h, w = x.shape
    if mode == "constant":
        return xp.where(valid_mask(extents, (h, w)), x, xp.asarray(cval, dtype=x.dtype))
    if reach is None:
        rows = _source_index(xp, xp.arange(h)[None, :], extents[:, 0:1], mode)  # (M, H)
        cols = _source_index(xp, xp.arange(w)[None, :], extents[:, 1:2], mode)  # (M, W)
        obj = xp.arange(m)[:, None, None]
        return x[obj, rows[:, :, None], cols[:, None, :]]
    out = x.copy()
    obj = xp.arange(m)
    eh, ew = extents[:, 0], extents[:, 1]
    # rows first (all columns), then columns: corners get x[src(i), src(j)] as ndimage extends
    for k in range(reach):
        dst = xp.minimum(eh + k, h - 1)
        src = _source_index(xp, (eh + k)[:, None], eh[:, None], mode)[:, 0]
        src = xp.where(eh + k < h, src, dst)  # no margin left: leave the row alone
        out[obj, dst, :] = out[obj, src, :]
    for k in range(reach):
        dst = xp.minimum(ew + k, w - 1)
        src = _source_index(xp, (ew + k)[:, None], ew[:, None], mode)[:, 0]
        src = xp.where(ew + k < w, src, dst)
        out[obj, :, dst] = out[obj, :, src]
    return out


def planes(x, extents):
    """Flatten (N, C, H, W) to (N*C, H, W) with the matching (N*C, 2) extents."""
    xp = array_module(x)
    n, c, h, w = x.shape
    return x.reshape(n * c, h, w), xp.repeat(extents, c, axis=0)
