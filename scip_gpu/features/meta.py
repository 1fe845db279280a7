"""Families written as meta columns: regions and bbox (SCIP names them ``meta_*``)."""

from __future__ import annotations

from .registry import Column, Family, column_name, register

BBOX = ("bbox_minr", "bbox_minc", "bbox_maxr", "bbox_maxc")


def regions_columns(mask, channels):
    return [
        Column(column_name("meta", mask, f"regions_{ch}"), "meta", "regions", "regions", mask, None, ch)
        for ch in channels
    ]


def compute_regions(batch, mr, ctx):
    """Connected components per channel mask, after border-region removal."""
    return mr.regions.astype(batch.xp.float64)


def bbox_columns(mask, channels):
    return [Column(column_name("meta", mask, k), "meta", "bbox", k, mask) for k in BBOX]


def compute_bbox(batch, mr, ctx):
    """Bounding box of the union of the channel masks; NaN when the object has no mask."""
    return mr.bbox


register(Family("regions", regions_columns, compute_regions, True,
                "number of connected components per channel mask"))
register(Family("bbox", bbox_columns, compute_bbox, True,
                "bounding box (min_row, min_col, max_row, max_col) of the union of channel masks"))
