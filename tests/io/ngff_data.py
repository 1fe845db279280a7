"""Tiny OME-Zarr stores written from the NGFF spec (0.4: zarr v2, 0.5: zarr v3) for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _ome(version: str, **keys) -> dict:
    """Group attributes: the OME keys at the top level (0.4) or under ``ome`` (0.5)."""
    if version == "0.4":
        for k in ("multiscales",):
            if k in keys:
                keys[k] = [{**m, "version": "0.4"} for m in keys[k]]
        for k in ("plate", "well"):
            if k in keys:
                keys[k] = {**keys[k], "version": "0.4"}
        return keys
    return {"ome": {"version": "0.5", **keys}}


def write_image(path, data: np.ndarray, axes: list[dict], version: str, labels: list[str] | None = None,
                levels: int = 1, omit: tuple = ()) -> Path:
    """An OME-Zarr image of ``data`` with ``levels`` resolution levels (level i: y and x taken
    every 2**i pixels). ``omit``: metadata keys left out (to write broken stores)."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    ndim = data.ndim
    ms = {"name": Path(path).name, "axes": axes,
          "datasets": [{"path": str(i), "coordinateTransformations": [
              {"type": "scale", "scale": [1.0] * (ndim - 2) + [2.0 ** i] * 2}]} for i in range(levels)]}
    keys = {"multiscales": [ms]}
    if labels is not None:
        keys["omero"] = {"channels": [{"label": lab, "color": "FFFFFF", "active": True,
                                       "window": {"start": 0, "end": 1000, "min": 0, "max": 65535}}
                                      for lab in labels]}
    for k in omit:
        keys.pop(k, None)
    g.attrs.update(_ome(version, **keys))
    for i in range(levels):
        d = np.ascontiguousarray(data[..., :: 2**i, :: 2**i])
        kw = {"dimension_names": [a["name"] for a in axes]} if version == "0.5" else {}
        a = g.create_array(str(i), shape=d.shape, dtype=d.dtype, chunks=d.shape[:-2] + (8, 8), **kw)
        a[...] = d
    return Path(path)


def write_plate(path, fields: dict, axes: list[dict], version: str, labels: list[str], name: str = "P1") -> Path:
    """A plate: ``fields`` maps (row, column) to the (C, ...) arrays of its fields."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    rows = sorted({r for r, _ in fields})
    cols = sorted({c for _, c in fields})
    wells = [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": cols.index(c)} for r, c in fields]
    g.attrs.update(_ome(version, plate={"name": name, "rows": [{"name": r} for r in rows],
                                        "columns": [{"name": c} for c in cols], "wells": wells,
                                        "field_count": max(len(v) for v in fields.values())}))
    for (r, c), images in fields.items():
        w = g.require_group(r).require_group(c)
        w.attrs.update(_ome(version, well={"images": [{"path": str(i)} for i in range(len(images))]}))
        for i, img in enumerate(images):
            write_image(Path(path) / r / c / str(i), img, axes, version, labels)
    return Path(path)


AXES_CYX = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
AXES_CZYX = [AXES_CYX[0], {"name": "z", "type": "space", "unit": "micrometer"}, *AXES_CYX[1:]]
AXES_NCYX = [{"name": "n", "type": "object"}, *AXES_CYX]  # a custom axis indexing the objects
