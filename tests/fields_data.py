"""A tiny synthetic replica of BBBC021's layout, with known cells, for the field tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile

PLATES = {"Week1_22123": ("Week1", "150607"), "Week2_24121": ("Week2", "150820")}
WELLS = ("B02", "C03")
SITES = (1, 2)
COMPOUNDS = {("Week1_22123", "B02"): ("taxol", "0.3"), ("Week1_22123", "C03"): ("DMSO", "0.0"),
             ("Week2_24121", "B02"): ("colchicine", "0.03"), ("Week2_24121", "C03"): ("DMSO", "0.0")}
MOA = {("taxol", "0.3"): "Microtubule stabilizers", ("colchicine", "0.03"): "Microtubule destabilizers",
       ("DMSO", "0.0"): "DMSO"}


def make_field(seed: int, shape=(160, 192), n_cells=8, gain=None):
    """(3, H, W) uint16 field (DAPI, tubulin, actin) and the nucleus centres."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    centres = []
    while len(centres) < n_cells:  # well separated nuclei, away from the border
        c = rng.uniform([20, 20], [h - 20, w - 20])
        if all(np.hypot(*(c - d)) > 34 for d in centres):
            centres.append(c)
    dapi = np.full(shape, 120.0)
    cyto = np.full(shape, 150.0)
    actin = np.full(shape, 130.0)
    for cy, cx in centres:
        r = np.hypot(yy - cy, xx - cx)
        rad = rng.uniform(6, 8)
        dapi += 3000 / (1 + np.exp((r - rad) * 1.5))
        cyto += 1200 / (1 + np.exp((r - rad * 2.0) * 0.8))
        actin += 900 / (1 + np.exp((r - rad * 2.2) * 0.8))
    img = np.stack([dapi, cyto, actin])
    if gain is not None:
        img = img * gain
    img += rng.normal(0, 15, img.shape)
    return np.clip(img, 0, 65535).astype(np.uint16), np.array(centres)


def vignetting(shape, strength):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return 1.0 - strength * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2)


def write_bbbc021_replica(root: Path, shape=(160, 192), n_cells: int = 8, wells=WELLS, sites=SITES):
    """Write plates/wells/sites in BBBC021's naming and the two metadata CSVs.

    Returns the number of cells per field (all fields have the same).
    """
    root.mkdir(parents=True, exist_ok=True)
    image_rows = ["TableNumber,ImageNumber,Image_FileName_DAPI,Image_PathName_DAPI,Image_Metadata_Plate_DAPI,"
                  "Image_Metadata_Well_DAPI,Replicate,Image_Metadata_Compound,Image_Metadata_Concentration"]
    seed = 0
    for p, (plate, (week, date)) in enumerate(PLATES.items()):
        folder = root / plate
        folder.mkdir(exist_ok=True)
        gain = vignetting(shape, 0.6 + 0.2 * p)  # each plate its own illumination
        for well in wells:
            for site in sites:
                img, _ = make_field(seed, shape, n_cells=n_cells, gain=gain)
                seed += 1
                names = {}
                for ch, plane in zip((1, 2, 4), img):
                    name = f"{week}_{date}_{well}_s{site}_w{ch}{uuid.UUID(int=seed * 10 + ch).hex.upper()}.tif"
                    tifffile.imwrite(folder / name, plane)
                    names[ch] = name
                comp, conc = COMPOUNDS[(plate, well)]
                image_rows.append(f"1,{seed},{names[1]},{plate},{plate},{well},1,{comp},{conc}")
        (folder / "notes.txt").write_text("not an image")
    (root / "BBBC021_v1_image.csv").write_text("\n".join(image_rows) + "\n")
    moa = ["compound,concentration,moa"] + [f"{c},{k},{m}" for (c, k), m in MOA.items()]
    (root / "BBBC021_v1_moa.csv").write_text("\n".join(moa) + "\n")
    return n_cells


def write_fields(root: Path, n_fields: int = 2, shape=(72, 96), n_cells: int = 2) -> list[np.ndarray]:
    """Tiny fields in ``conf/dataset/fields_tiff.yaml``'s default naming (``B02_s<site>_w<channel>.tif``,
    channels 1, 2, 4: DAPI, tubulin, actin). Returns the (3, H, W) fields in site order."""
    root.mkdir(parents=True, exist_ok=True)
    fields = []
    for site in range(1, n_fields + 1):
        img, _ = make_field(100 + site, shape, n_cells=n_cells)
        for ch, plane in zip((1, 2, 4), img):
            tifffile.imwrite(root / f"B02_s{site}_w{ch}.tif", plane)
        fields.append(img)
    return fields
