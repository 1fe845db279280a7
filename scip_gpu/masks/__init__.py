"""Masks: per-channel foreground masks of every object, SCIP's way.

``compute_masks`` runs one configured mask method on a batch: pre-mask filters, the method on
every channel, removal of regions touching the image border, the main-channel rule, the union
("combined") mask, bounding boxes and background levels.

It is two stages of ``scip_gpu.dispatch``: ``masks.channel_masks`` (the method on every
channel, the filter and border rules) and ``masks.combine`` (the main-channel rule, combined
mask, bounding boxes, background levels), whose references are the array code here (calling
the fine-grained stages, which dispatch to numba on the CPU); a fused kernel may be registered
for either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ..backend import all_true, array_module
from ..batch import Batch, planes, valid_mask
from ..dispatch import stage
from ..errors import ConfigError
from .filters import FILTERS
from .methods import METHODS, margin


@dataclass
class MaskResult:
    """Masks of one method for one batch.

    Attributes
    ----------
    name : str
        Column prefix of the method.
    mask : (N, C, H, W) bool
        Channel masks after post-processing (all False where ``usable`` is False).
    combined : (N, H, W) bool
        Union of the channel masks of ``combined_indices``.
    regions : (N, C) int64
        Connected components left per channel.
    bbox : (N, 4) float64
        (min_row, min_col, max_row, max_col) of the union of all channel masks; NaN if none.
    background, combined_background : (N, C) float64
        Mean of each channel outside its own mask (0 when the mask covers the image) and
        outside the combined mask (NaN when it covers the image).
    usable : (N,) bool
        False when the main channel failed a filter or has no region left: every feature of
        this mask is then NaN.
    """

    name: str
    mask: object
    combined: object
    regions: object
    bbox: object
    background: object
    combined_background: object
    usable: object


def check_method_kwargs(method: str, kwargs: dict, where: str) -> None:
    """Raise ConfigError for an unknown method or option."""
    if method not in METHODS:
        raise ConfigError(f"{where}.method: unknown mask method {method!r} (choose from {sorted(METHODS)})")
    allowed = METHODS[method][1]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}.kwargs: unknown option(s) {unknown} for mask method {method!r} "
            f"(it accepts: {sorted(allowed) or 'no options'})"
        )
    if method == "li" and "smooth" in kwargs:
        s = kwargs["smooth"]
        vals = s if isinstance(s, (list, tuple)) else [s]
        if not vals or not all(isinstance(v, (int, float)) and v >= 0 for v in vals):
            raise ConfigError(f"{where}.kwargs.smooth: needs non-negative numbers, got {s!r}")
    if method == "spot":
        v = kwargs.get("spotsize", 5)
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}.kwargs.spotsize: needs a positive integer, got {v!r}")


def check_filter(method: str, settings: dict, where: str) -> dict:
    fn, opts = FILTERS[method]
    unknown = sorted(set(settings) - set(opts))
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(opts), n=1)
        raise ConfigError(f"{where}.settings: unknown option(s) {unknown} for filter {method!r} (it accepts: "
                          f"{sorted(opts) or 'no options'}){f'; did you mean {near[0]!r}?' if near else ''}")
    out = {k: settings.get(k, v) for k, v in opts.items()}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ConfigError(f"{where}.settings: filter {method!r} needs {missing}")
    return out


def method_margin(method: str, kwargs: dict) -> int:
    return margin(method, kwargs)


def min_side(method: str, kwargs: dict) -> int:
    """Smallest image side a method accepts (the diameter of its largest footprint)."""
    if method == "spot":
        return 2 * int(kwargs.get("spotsize", 5)) + 1
    return METHODS[method][2]


def filter_channels(batch: Batch, filters) -> object:
    """(N, C) bool: True where a channel passes every configured pre-mask filter."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    ok = all_true(xp, (n, c))  # (on a GPU a memset: no kernel for CuPy to compile on a fresh machine)
    if not filters:
        return ok
    valid = batch.valid().reshape(n, -1)
    for j, f in enumerate(filters):
        fn, _ = FILTERS[f.method.value]
        settings = check_filter(f.method.value, dict(f.settings), f"masks.filters[{j}]")
        chans = range(c) if f.channel_indices is None else f.channel_indices
        for ch in chans:
            ok[:, ch] &= fn(batch.pixels[:, ch].reshape(n, -1), valid, **settings)
    return ok


def compute_masks(batch: Batch, method_cfg, masks_cfg, passed=None) -> MaskResult:
    """Run one mask method on a batch (see the module docstring).

    Parameters
    ----------
    batch : Batch
    method_cfg : MaskMethodConfig
    masks_cfg : MasksConfig
    passed : (N, C) bool, optional
        Result of ``filter_channels`` (computed here when not given).
    """
    name = method_cfg.name or method_cfg.method.value
    method = method_cfg.method.value
    kwargs = {**METHODS[method][1], **dict(method_cfg.kwargs)}
    if passed is None:
        passed = filter_channels(batch, masks_cfg.filters)
    mask, regions = channel_masks(batch, method, kwargs, passed, masks_cfg.remove_border_regions)
    mask, combined, bbox, background, combined_background, usable = combine(
        batch, mask, regions, passed, masks_cfg.main_channel_index, masks_cfg.combined_indices)
    return MaskResult(name, mask, combined, regions, bbox, background, combined_background, usable)


def _channel_masks_examples(rng):
    from ..stage_examples import example_batches

    for k, (batch, passed) in enumerate(example_batches(rng)):
        yield (batch, "li", {"smooth": 1.0}, passed, True), {}
        yield (batch, "otsu", {}, passed, k % 2 == 0), {}
        yield (batch, "spot", {"spotsize": 2}, passed, k % 2 == 1), {}
        yield (batch, "circle", {}, passed, False), {}


@stage("masks.channel_masks", examples=_channel_masks_examples)
def channel_masks(batch: Batch, method: str, kwargs: dict, passed, remove_border: bool):
    """Masks of one method on every channel of a batch, after the filter and border rules.

    Parameters
    ----------
    batch : Batch
    method : str
        Key of ``METHODS``.
    kwargs : dict
        The method's options (its defaults merged with the configured ones).
    passed : (N, C) bool ndarray
        Channels that passed the pre-mask filters (``filter_channels``): the others get an
        empty mask.
    remove_border : bool
        Apply SCIP's border rule (``ops.regions_touching_border``).

    Returns
    -------
    mask : (N, C, H, W) bool ndarray
    regions : (N, C) int64 ndarray
        Connected components (8-connected) left in each channel mask.
    """
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    fn = METHODS[method][0]
    mask = xp.zeros((n, c, h, w), dtype=bool)
    for ch in range(c):  # channels, not objects: each call covers the whole batch
        mask[:, ch] = fn(batch.pixels[:, ch], batch.extents, channel=ch, **kwargs)
    mask &= passed[:, :, None, None]

    flat, ext = planes(mask, batch.extents)
    if remove_border:
        flat, regions = ops.regions_touching_border(flat, ext)
    else:
        labels, nl = ops.label(flat, 2)
        regions = ops.count_per_plane(labels, nl)
    return flat.reshape(n, c, h, w), regions.reshape(n, c)


def given_masks(batch: Batch, masks, name: str, masks_cfg) -> MaskResult:
    """The MaskResult of masks given with the images (``scip_gpu.profile(images, masks=...)``).

    ``masks``: (N, C, H, W) bool, padded as the batch. Regions are the 8-connected components of
    each channel's mask (no border rule: the masks are the user's); the main-channel rule, the
    combined mask, bounding box and background levels are those of the mask methods (``combine``).
    """
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    mask = xp.asarray(masks, dtype=bool) & batch.valid()[:, None]
    flat, _ = planes(mask, batch.extents)
    labels, nl = ops.label(flat, 2)
    regions = ops.count_per_plane(labels, nl).reshape(n, c)
    passed = xp.ones((n, c), dtype=bool)
    mask, combined, bbox, background, combined_background, usable = combine(
        batch, mask, regions, passed, masks_cfg.main_channel_index, masks_cfg.combined_indices)
    return MaskResult(name, mask, combined, regions, bbox, background, combined_background, usable)


def _combine_examples(rng):
    from ..stage_examples import example_batches, masks

    for k, (batch, passed) in enumerate(example_batches(rng)):
        mask, regions = channel_masks(batch, "li", {"smooth": 1.0}, passed, True)
        yield (batch, mask, regions, passed, 0, None), {}
        yield (batch, mask, regions, passed, 1, (0, 2)), {}
        # random masks with every edge case (empty, one pixel, full, ...)
        n, c, h, w = batch.pixels.shape
        mk, _ = masks(rng, m=n * c, shape=(h, w))
        mk = mk.reshape(n, c, h, w) & batch.valid()[:, None]
        regions = rng.integers(0, 3, (n, c))
        yield (batch, mk, regions, passed, k % c, [c - 1]), {}


@stage("masks.combine", examples=_combine_examples)
def combine(batch: Batch, mask, regions, passed, main_channel_index: int, combined_indices):
    """The main-channel rule, the combined mask, bounding boxes and background levels.

    Parameters
    ----------
    batch : Batch
    mask : (N, C, H, W) bool ndarray
        Channel masks (``channel_masks``).
    regions : (N, C) int ndarray
        Components left per channel mask.
    passed : (N, C) bool ndarray
        Channels that passed the pre-mask filters.
    main_channel_index : int
    combined_indices : sequence of int, or None (all channels)

    Returns
    -------
    tuple
        ``mask, combined, bbox, background, combined_background, usable`` as the fields of
        ``MaskResult`` (``mask``: a new array, all False where ``usable`` is False).
    """
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    main = main_channel_index
    usable = passed[:, main] & (regions[:, main] > 0)
    mask = mask & usable[:, None, None, None]

    idx = combined_indices
    combined = (mask if idx is None else mask[:, xp.asarray(list(idx))]).any(axis=1)

    # bounding box of the union of all channel masks
    anym = mask.any(axis=1)
    rows = anym.any(axis=2)
    cols = anym.any(axis=1)
    has = rows.any(axis=1)
    ar_h = xp.arange(h)
    ar_w = xp.arange(w)
    minr = xp.where(rows, ar_h, h).min(axis=1)
    maxr = xp.where(rows, ar_h, -1).max(axis=1) + 1
    minc = xp.where(cols, ar_w, w).min(axis=1)
    maxc = xp.where(cols, ar_w, -1).max(axis=1) + 1
    bbox = xp.stack([minr, minc, maxr, maxc], axis=1).astype(xp.float64)
    bbox = xp.where(has[:, None], bbox, xp.nan)

    # background levels
    bg_sum, n_out, cbg_sum, n_cout = outside_sums(batch.pixels, mask, combined, batch.extents)
    with np.errstate(invalid="ignore", divide="ignore"):
        background = xp.where(n_out > 0, bg_sum / n_out, 0.0)
        combined_background = cbg_sum / n_cout
    return mask, combined, bbox, background, combined_background, usable


def _outside_sums_examples(rng):
    from ..stage_examples import images, masks

    for dtype in (np.uint16, np.float64):
        px, e = images(rng, dtype, m=20)
        mk, _ = masks(rng, m=20)
        px = px.reshape(5, 4, *px.shape[1:])
        mk = mk.reshape(5, 4, *mk.shape[1:])
        e = e[::4]
        mk &= valid_mask(e, mk.shape[2:])[:, None]
        yield (px, mk, mk[:, 1:3].any(axis=1), e), {}
        yield (px, mk, np.zeros_like(mk[:, 0]), e), {}


@stage("masks.outside_sums", examples=_outside_sums_examples)
def outside_sums(px, mask, combined, extents):
    """Background sums of ``compute_masks``: per (object, channel), the sum and the number of
    the pixels inside the object's extent but outside the channel's mask, and outside the
    combined mask.

    Parameters
    ----------
    px : (N, C, H, W) ndarray
    mask : (N, C, H, W) bool ndarray
    combined : (N, H, W) bool ndarray
    extents : (N, 2) int ndarray

    Returns
    -------
    bg_sum : (N, C) float64 ndarray
    n_out : (N, C) int ndarray
    cbg_sum : (N, C) float64 ndarray
    n_cout : (N, C) int ndarray
    """
    xp = array_module(px)
    valid = valid_mask(extents, px.shape[2:])
    px = px.astype(xp.float64)
    outside = valid[:, None] & ~mask
    n_out = outside.sum(axis=(2, 3))
    bg_sum = xp.where(outside, px, 0).sum(axis=(2, 3))
    out_c = (valid & ~combined)[:, None]
    cbg_sum = xp.where(out_c, px, 0).sum(axis=(2, 3))
    n_cout = xp.broadcast_to(out_c.sum(axis=(2, 3)), cbg_sum.shape)  # the same for every channel
    return bg_sum, n_out, cbg_sum, n_cout


__all__ = [
    "MaskResult",
    "METHODS",
    "FILTERS",
    "check_method_kwargs",
    "compute_masks",
    "filter_channels",
    "method_margin",
    "min_side",
]
