"""Check that napari-ome-zarr opens scip_gpu's label images (``labels/<field>.ome.zarr``) as
napari *label* layers, with the values written.

Needs ``napari-ome-zarr`` (0.10 or later; ``pip install napari-ome-zarr``). Without napari
itself (a headless machine) the two napari classes its reader imports (``Colormap``, ``Affine``)
are replaced by minimal stand-ins, which only the layer metadata passes through; with napari
installed the real ones are used.

    python benchmarks/check_napari_labels.py outputs/run/labels/*.ome.zarr

Prints one line per layer; exits 1 when a layer is not of type ``labels`` or its data differ
from what zarr reads.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def _stub_napari() -> None:
    class Affine:  # napari.utils.transforms.Affine, only what the reader uses
        def __init__(self, scale=None, translate=None, affine_matrix=None, **_):
            if affine_matrix is None:
                n = len(scale if scale is not None else translate)
                affine_matrix = np.eye(n + 1)
                if scale is not None:
                    affine_matrix[:n, :n] = np.diag(scale)
                if translate is not None:
                    affine_matrix[:n, n] = translate
            self.affine_matrix = np.asarray(affine_matrix, float)

        @property
        def scale(self):
            return np.diag(self.affine_matrix)[:-1]

        @scale.setter
        def scale(self, v):
            n = len(v)
            self.affine_matrix[np.arange(n), np.arange(n)] = v

        def compose(self, other):
            return Affine(affine_matrix=self.affine_matrix @ other.affine_matrix)

    mods = {n: types.ModuleType(n) for n in ("napari", "napari.utils", "napari.utils.colormaps",
                                             "napari.utils.transforms")}
    mods["napari.utils.colormaps"].AVAILABLE_COLORMAPS = {}
    mods["napari.utils.colormaps"].Colormap = object
    mods["napari.utils.transforms"].Affine = Affine
    sys.modules.update(mods)


def main(paths: list[str]) -> int:
    import zarr

    try:
        import napari  # noqa: F401
    except ImportError:
        _stub_napari()
    from napari_ome_zarr.ome_zarr_reader import read_ome_zarr

    bad = 0
    for path in paths:
        root = zarr.open_group(path, mode="r")
        layers = read_ome_zarr(root)()
        for data, meta, kind in layers:
            name = meta.get("name", "?")
            same = np.array_equal(np.asarray(data[0]), np.asarray(root[name.split("/")[-1]]["0"]))
            ok = kind == "labels" and same
            bad += not ok
            print(f"{path}: layer {name!r} type {kind} shape {data[0].shape} dtype {data[0].dtype} "
                  f"values {'as written' if same else 'DIFFER'}{'' if ok else '  <- FAIL'}")
        if not layers:
            bad += 1
            print(f"{path}: no layer")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
