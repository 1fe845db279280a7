"""Families written as meta columns: regions and bbox (SCIP names them ``meta_*``), and the
``empty`` flags that say why a mask's features are NaN."""

from __future__ import annotations

from ..dispatch import stage
from ..stage_examples import family_examples
from .registry import Column, Family, column_name, register

BBOX = ("bbox_minr", "bbox_minc", "bbox_maxr", "bbox_maxc")


def regions_columns(mask, channels):
    return [
        Column(column_name("meta", mask, f"regions_{ch}"), "meta", "regions", "regions", mask, None, ch)
        for ch in channels
    ]


@stage("meta.regions", examples=family_examples)
def compute_regions(batch, mr, ctx):
    """Connected components per channel mask, after border-region removal (written into the
    batch table's columns, ``ctx.out``, where given: one converting copy)."""
    out = getattr(ctx, "out", None)
    if out is not None and out.shape == mr.regions.shape:
        out[...] = mr.regions
        return out
    return mr.regions.astype(batch.xp.float64)


def bbox_columns(mask, channels):
    return [Column(column_name("meta", mask, k), "meta", "bbox", k, mask) for k in BBOX]


@stage("meta.bbox", examples=family_examples)
def compute_bbox(batch, mr, ctx):
    """Bounding box of the union of the channel masks; NaN when the object has no mask."""
    return mr.bbox


def empty_columns(mask, channels):
    """``meta_{mask}_empty_{channel}`` per channel, then ``meta_{mask}_empty_combined``."""
    cols = [Column(column_name("meta", mask, f"empty_{ch}"), "meta", "empty", "empty", mask, "mask", ch,
                   dtype="bool") for ch in channels]
    cols.append(Column(column_name("meta", mask, "empty_combined"), "meta", "empty", "empty", mask, "combined",
                       dtype="bool"))
    return cols


@stage("meta.empty", examples=family_examples)
def compute_empty(batch, mr, ctx):
    """1.0 where a channel's mask (after the filters, the border rule and the main-channel rule)
    holds no pixel, so that every feature of that channel and mask is NaN; last column: the same
    for the combined mask (the ``combined`` views and shape)."""
    xp = batch.xp
    n, c = mr.mask.shape[:2]
    per_channel = ~mr.mask.reshape(n, c, -1).any(axis=2)
    combined = ~mr.combined.reshape(n, -1).any(axis=1)
    out = getattr(ctx, "out", None)
    if out is None or out.shape != (n, c + 1):
        out = xp.empty((n, c + 1), dtype=xp.float64)
    out[:, :c] = per_channel  # (converting copies straight into the table's columns: on a GPU,
    out[:, c] = combined      # no concatenation and no cast kernels of their own)
    return out


register(Family("empty", empty_columns, compute_empty, True,
                "flags: the mask of a channel (or the combined mask) holds no pixel, so its features are NaN"))
register(Family("regions", regions_columns, compute_regions, True,
                "number of connected components per channel mask"))
register(Family("bbox", bbox_columns, compute_bbox, True,
                "bounding box (min_row, min_col, max_row, max_col) of the union of channel masks"))
