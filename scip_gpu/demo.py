"""Bundled demo data: deterministic synthetic imaging-flow-style cells.

Each cell is generated from its own random stream (``numpy.random.default_rng([seed, index])``),
so any partition of the dataset produces the same images. Three phenotypes (``meta_label``):

- ``small_round``: small round cell, dim nucleus, few spots;
- ``large_oval``: larger elongated cell, bright nucleus;
- ``spotty``: medium cell with many bright spots.

Channels: 0 a brightfield-like image (bright background, darker cell body with a bright halo),
1 a nuclear stain, 2 bright spots; further channels mix body and nucleus with their own gains
(for benchmarks with many channels). Pixels are uint16 with shot-like noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io.base import Source

LABELS = ("small_round", "large_oval", "spotty")


def cell_params(index: int, seed: int, min_size: int, max_size: int) -> dict:
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(0, 3))
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    return {"rng": rng, "label": label, "h": h, "w": w}


def make_cell(index: int, *, seed: int = 0, n_channels: int = 3, min_size: int = 48,
              max_size: int = 72) -> tuple[np.ndarray, str]:
    """One synthetic cell: a (n_channels, H, W) uint16 image and its phenotype label."""
    p = cell_params(index, seed, min_size, max_size)
    rng, label, h, w = p["rng"], p["label"], p["h"], p["w"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h / 2 + rng.normal(0, 1.5)
    cx = w / 2 + rng.normal(0, 1.5)
    s = min(h, w)
    scale = {0: (0.24, 0.24), 1: (0.40, 0.27), 2: (0.31, 0.29)}[label]
    a = s * scale[0] * rng.uniform(0.9, 1.1)
    b = s * scale[1] * rng.uniform(0.9, 1.1)
    theta = rng.uniform(0, np.pi)
    ct, st = np.cos(theta), np.sin(theta)
    u = ((xx - cx) * ct + (yy - cy) * st) / a
    v = (-(xx - cx) * st + (yy - cy) * ct) / b
    r = np.sqrt(u * u + v * v)  # 1 on the cell boundary
    body = 1 / (1 + np.exp((r - 1) * 12))
    halo = np.exp(-((r - 1.05) ** 2) / 0.004)

    # nucleus: smaller ellipse, offset inside the body
    na, nb = a * rng.uniform(0.4, 0.55), b * rng.uniform(0.4, 0.55)
    ny, nx = cy + rng.normal(0, 1.0), cx + rng.normal(0, 1.0)
    nr = np.sqrt(((xx - nx) / na) ** 2 + ((yy - ny) / nb) ** 2)
    nucleus = 1 / (1 + np.exp((nr - 1) * 8))
    texture = rng.normal(0, 1, (h, w))

    bf = 2000 - 450 * body + 900 * halo + 60 * texture * body
    nuc_level = {0: 1500, 1: 4200, 2: 2600}[label]
    nuc = 150 + nuc_level * nucleus * (1 + 0.15 * texture)

    n_spots = int(rng.integers(6, 12)) if label == 2 else int(rng.integers(0, 3))
    spots = np.full((h, w), 120.0)
    for _ in range(n_spots):
        rr = np.sqrt(rng.uniform(0, 0.7))
        ang = rng.uniform(0, 2 * np.pi)
        su, sv = rr * np.cos(ang), rr * np.sin(ang)  # a point of the unit disk, mapped into the body
        sx = cx + a * su * ct - b * sv * st
        sy = cy + a * su * st + b * sv * ct
        sig = rng.uniform(0.9, 1.6)
        spots += rng.uniform(2000, 5000) * np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * sig * sig))

    chans = [bf, nuc, spots]
    for c in range(3, n_channels):
        g1, g2 = rng.uniform(100, 1500), rng.uniform(0, 2500)
        chans.append(100 + g1 * body + g2 * nucleus + 40 * rng.normal(0, 1, (h, w)))
    img = np.stack(chans[:n_channels])
    img = img + rng.normal(0, 1, img.shape) * np.sqrt(np.maximum(img, 1)) * 0.8
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16), LABELS[label]


class DemoSource(Source):
    """The bundled demo as an object source (``dataset.format=demo``)."""

    kind = "demo"

    def objects(self) -> pd.DataFrame:
        c = self.cfg
        labels = [LABELS[cell_params(i, c.seed, c.min_size, c.max_size)["label"]]
                  for i in range(c.n_objects)]
        return pd.DataFrame({"meta_id": np.arange(c.n_objects), "meta_label": labels})

    def selected_channels(self, objects):
        if self.cfg.channels is not None:
            return [int(i) for i in self.cfg.channels]
        return list(range(self.cfg.n_channels))

    def channel_count(self, objects):
        return self.cfg.n_channels

    def channel_names(self, objects):
        if self.cfg.channel_names is not None:
            return list(self.cfg.channel_names)
        default = ["BF", "DNA", "SPOT"] + [f"ch{i}" for i in range(3, self.cfg.n_channels)]
        return [default[i] for i in self.selected_channels(objects)]

    def describe(self, row) -> str:
        return f"demo cell {row['meta_id']}"

    def load(self, rows: pd.DataFrame) -> list:
        from .io.base import select_channels

        c = self.cfg
        out = []
        for i in rows["meta_id"]:  # data generation, one stream per object by design
            img, _ = make_cell(int(i), seed=c.seed, n_channels=c.n_channels,
                               min_size=c.min_size, max_size=c.max_size)
            out.append(select_channels(img, c.channels, f"demo cell {i}"))
        return out
