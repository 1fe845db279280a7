"""Intensity family: 11 statistics x 8 views per channel, and the raw (unmasked) set.

Views (SCIP's, scip-behaviour.md 2.2 B), for channel ``c``:

========================  =====================================================================
view                      pixels
========================  =====================================================================
``mask``                  inside channel ``c``'s mask
``bgcorr``                the same, minus the background (mean outside that mask)
``edge``                  the mask's inner rim: ``mask XOR binary_erosion(mask, disk(6))``
``bgcorr_edge``           the rim, minus the background
``combined``              inside the combined (union) mask
``combined_bgcorr``       minus the combined background (mean outside the combined mask)
``combined_edge``         rim of the combined mask
``combined_bgcorr_edge``  that rim minus the combined background
========================  =====================================================================

An empty view gives NaN for all 11 statistics (SCIP gives 0 for some; NaN is consistent with the
other families). Background-corrected views are derived from the uncorrected ones: a shift moves
the location statistics and the sum and leaves the spread and shape statistics unchanged.

Dispatch: the family and the raw set are the stages ``intensity.block`` and ``intensity.raw``;
both read their statistics through ``intensity.view_statistics``, whose reference sorts every
plane once per batch (``sorted_planes``) and whose ``cpu`` implementation reads every view off
one compiled radix sort per plane (``plane_order``); either sort is cached on the batch and
shared by the views of all masks and the raw set.
"""

from __future__ import annotations

import numpy as np

from .. import cpu_kernels, ops
from ..batch import planes
from ..dispatch import stage
from ..stats import STATISTICS, compact_statistics, sort_planes, view_members
from ..stage_examples import family_examples as _block_examples
from .registry import Column, Family, column_name, register

VIEWS = (
    "mask",
    "bgcorr",
    "edge",
    "bgcorr_edge",
    "combined",
    "combined_bgcorr",
    "combined_edge",
    "combined_bgcorr_edge",
)
_SHIFTED = [STATISTICS.index(s) for s in
            ("mean", "median", "max", "min", "lower_quartile", "upper_quartile")]
_SUM = STATISTICS.index("sum")


def _key(view: str, stat: str, channel: str) -> str:
    return f"{stat}_{channel}" if view == "mask" else f"{view}_{stat}_{channel}"


def intensity_columns(mask: str | None, channels) -> list[Column]:
    return [
        Column(column_name("feat", mask, _key(v, s, ch)), "feat", "intensity", s, mask, v, ch)
        for ch in channels
        for v in VIEWS
        for s in STATISTICS
    ]


def raw_columns(mask: str | None, channels) -> list[Column]:
    return [
        Column(column_name("feat", "raw", f"{s}_{ch}"), "feat", "raw", s, None, "raw", ch)
        for ch in channels
        for s in STATISTICS
    ]


def _shift(stats, count, shift):
    """Statistics of (x - shift) from those of x."""
    out = stats.copy()
    out[:, _SHIFTED] -= shift[:, None]
    out[:, _SUM] -= count * shift
    return out


def sorted_planes(batch):
    """Every (object, channel) plane's valid pixels sorted once per batch, shared by the views
    of all masks and the raw set."""
    if "sorted_planes" not in batch.cache:
        xp = batch.xp
        n, c, h, w = batch.pixels.shape
        valid = xp.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(n * c, h * w)
        batch.cache["sorted_planes"] = sort_planes(batch.pixels.reshape(n * c, h * w), valid)
    return batch.cache["sorted_planes"]


def plane_order(batch):
    """Every (object, channel) plane's pixels sorted once per batch (compiled CPU path), shared
    by the views of all masks and the raw set."""
    if "plane_order" not in batch.cache:
        n, c, h, w = batch.pixels.shape
        batch.cache["plane_order"] = cpu_kernels.sort_order(batch.pixels.reshape(n * c, h * w))
    return batch.cache["plane_order"]


def _view_statistics_examples(rng):
    from ..stage_examples import example_batches

    for batch, _ in example_batches(rng):
        n, c, h, w = batch.pixels.shape
        inside = np.broadcast_to(batch.valid()[:, None], (n, c, h, w)).reshape(n * c, h * w)
        views = (rng.random((3, n * c, h * w)) < [[[0.5]], [[0.02]], [[1.0]]]) & inside
        views[0, 1] = False  # an empty view
        views[1, 2] = False
        views[1, 2, 0] = True  # a one-pixel view
        yield (batch, views), {}
        yield (batch, None), {}
        yield (batch,), {}


@stage("intensity.view_statistics", examples=_view_statistics_examples)
def view_statistics(batch, views=None):
    """The 11 statistics (``STATISTICS``) of every (object, channel) plane of a batch under
    each view.

    Parameters
    ----------
    batch : Batch
    views : (V, N*C, H*W) bool ndarray, optional
        Pixel sets of each plane (inside its extent). None: each plane's whole extent (the raw
        set, V = 1).

    Returns
    -------
    (N*C, V, 11) float64 ndarray
        NaN for empty views.
    """
    xp = batch.xp
    order, sv = sorted_planes(batch)
    if views is None:
        valid = xp.isfinite(sv)  # sorted: the valid pixels come first
        return compact_statistics(sv[valid], valid.sum(axis=1))[:, None]
    out = [compact_statistics(*view_members(order, sv, view)) for view in views]
    return xp.stack(out, axis=1)



@stage("intensity.block", examples=_block_examples)
def compute_intensity(batch, mr, ctx):
    """(N, C*88) intensity features of one mask, columns as ``intensity_columns`` (the stage
    ``intensity.block``)."""
    xp = batch.xp
    n, c, h, w = batch.pixels.shape
    p = h * w
    flat_mask, ext = planes(mr.mask, batch.extents)
    edge = flat_mask ^ ops.binary_erosion_disk(flat_mask, ext, ctx.edge_width)
    comb = mr.combined
    comb_edge = comb ^ ops.binary_erosion_disk(comb, batch.extents, ctx.edge_width)
    comb_c = xp.broadcast_to(comb[:, None], (n, c, h, w)).reshape(n * c, p)
    comb_edge_c = xp.broadcast_to(comb_edge[:, None], (n, c, h, w)).reshape(n * c, p)
    bg = mr.background.reshape(n * c)
    cbg = mr.combined_background.reshape(n * c)
    views = xp.stack([flat_mask.reshape(n * c, p), edge.reshape(n * c, p), comb_c, comb_edge_c])
    shifts = [bg, bg, cbg, cbg]
    stats = view_statistics(batch, views)  # (n*c, 4, 11)
    out = []
    for k, shift in enumerate(shifts):
        s = stats[:, k]
        out += [s, _shift(s, views[k].sum(axis=1).astype(xp.float64), shift)]
    # order per channel: mask, bgcorr, edge, bgcorr_edge, combined, ... (see VIEWS)
    res = xp.stack(out, axis=1).reshape(n, c * len(VIEWS) * len(STATISTICS))
    return xp.where(mr.usable[:, None], res, xp.nan)


def _raw_examples(rng):
    from ..stage_examples import family_examples

    yield from family_examples(rng, masked=False)


@stage("intensity.raw", examples=_raw_examples)
def compute_raw(batch, mr, ctx):
    """(N, C*11) statistics of each whole (unmasked) channel image (the stage
    ``intensity.raw``; ``mr`` and ``ctx`` are unused)."""
    n = batch.pixels.shape[0]
    return view_statistics(batch)[:, 0].reshape(n, -1)


register(Family("intensity", intensity_columns, compute_intensity, True,
                "11 statistics x 8 views (mask, background-corrected, edge, combined) per channel"))
register(Family("raw", raw_columns, compute_raw, False,
                "11 statistics of each unmasked channel image"))
