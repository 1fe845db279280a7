"""``python -m scip_gpu warmup``: compile the numba CPU kernels ahead of the first run.

The CPU path's kernels (``scip_gpu/_numba_kernels.py``) are compiled by numba on first use,
once per argument type, and kept in numba's on-disk cache (``cache=True``): the first run on an
installation spends about 15 s compiling (on 2 cores), every later run only loads them. This
command pays that cost ahead, e.g. in a Docker image's build (``docker/Dockerfile``): it profiles
a few synthetic cells of every common pixel type (uint8, uint16, float32; fixed-size and
ragged batches), with every mask method and feature family of the default ``scip`` preset and
of the ``cellprofiler`` preset (its optional Zernike intensity moments included), and the
fields' watershed flood, in this process, writing nothing but numba's cache.

numba's cache is specific to the CPU it was compiled on: on another type of CPU the kernels are
compiled again on first use (and cached there when the installation is writable).
"""

from __future__ import annotations

import sys
import time

import numpy as np

#: pixel types whose kernels are compiled ahead
DTYPES = ("uint16", "uint8", "float32")


def _cells(dtype: str) -> list[np.ndarray]:
    """16 cells of one size (the unpadded batch path) and 4 of other sizes (the padded one)."""
    from .demo import make_cell

    cells = [make_cell(i, min_size=40, max_size=40)[0] for i in range(16)]
    cells += [make_cell(i, min_size=32, max_size=56)[0] for i in range(16, 20)]
    if dtype == "uint8":
        return [(c >> 8).astype(np.uint8) for c in cells]
    return [c.astype(dtype) for c in cells]


def warmup(dtypes=DTYPES) -> dict[str, float]:
    """Compile (or load from numba's cache) the kernels for the default configuration with
    every mask method; returns the seconds spent per pixel type."""
    from .config import (CellProfilerConfig, Config, DatasetConfig, DatasetFormat, FeatureFamily, FeaturesConfig,
                         MaskMethod, MaskMethodConfig, MasksConfig)
    from .profile import build_plan
    from .batch import assemble, group_by_shape
    from .profile import profile_batch

    masks = MasksConfig(methods=[MaskMethodConfig(MaskMethod.li, "li", {"smooth": 1.0}),
                                 MaskMethodConfig(MaskMethod.otsu, "otsu"),
                                 MaskMethodConfig(MaskMethod.spot, "spot", {"spotsize": 3}),
                                 MaskMethodConfig(MaskMethod.circle, "circle")])
    cfg = Config(dataset=DatasetConfig(name="warmup", format=DatasetFormat.demo), masks=masks)
    # the cellprofiler preset on li masks (its families do not depend on the mask method)
    cp_families = [FeatureFamily(f) for f in ("bbox", "regions", "cp_sizeshape", "cp_zernike", "cp_intensity",
                                              "cp_texture", "cp_granularity", "cp_radial", "cp_radial_zernike",
                                              "cp_colocalization")]
    cp_cfg = Config(dataset=DatasetConfig(name="warmup", format=DatasetFormat.demo),
                    masks=MasksConfig(methods=[masks.methods[0]]),
                    features=FeaturesConfig(preset="cellprofiler", families=cp_families, raw=False,
                                            cellprofiler=CellProfilerConfig(radial_zernikes=True)))
    plans = [build_plan(c, ["BF", "DNA", "SPOT"]) for c in (cfg, cp_cfg)]
    seconds = {}
    for dtype in dtypes:
        t0 = time.perf_counter()
        imgs = _cells(dtype)
        groups = group_by_shape([im.shape[1:] for im in imgs], margin=max(p.margin for p in plans),
                                multiple=cfg.pad_multiple, batch_size=256, dtypes=[im.dtype for im in imgs])
        for plan in plans:
            for shape, members in groups:
                batch = assemble([imgs[m] for m in members], np.asarray(members), shape, np)
                values = profile_batch(batch, plan)
                assert values.shape == (len(members), plan.n_features)
        seconds[dtype] = time.perf_counter() - t0
    t0 = time.perf_counter()  # the fields' watershed flood (segmentation=watershed)
    from .ops import watershed

    f = np.add.outer(np.arange(12.0), np.arange(9.0) % 4)
    markers = np.zeros(f.shape, dtype=np.int32)
    markers[0, 0], markers[11, 8] = 1, 2
    assert set(np.unique(watershed(f, markers, f < 13))) == {0, 1, 2}
    seconds["watershed"] = time.perf_counter() - t0
    return seconds


def main(args: list[str]) -> int:
    """The ``warmup`` command; returns the exit status."""
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m scip_gpu warmup\n\n" + (__doc__ or "").split("\n\n", 1)[1], end="")
        return 0
    if args:
        print(f"scip_gpu: error: warmup takes no arguments (got {' '.join(args)})", file=sys.stderr)
        return 2
    from .cpu_kernels import available

    if not available():
        print("scip_gpu warmup: numba is not installed, nothing to compile (the CPU path runs without compiled "
              "kernels; pip install 'scip_gpu[fast]' for them)")
        return 0
    t0 = time.perf_counter()
    seconds = warmup()
    from . import _numba_kernels

    print(f"scip_gpu warmup: numba kernels ready for {', '.join(seconds)} in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())}); cache: "
          f"{_cache_dir(_numba_kernels)}")
    return 0


def _cache_dir(module) -> str:
    """Where numba keeps the module's compiled kernels."""
    try:
        fn = next(v for v in vars(module).values() if hasattr(v, "_cache") and hasattr(v._cache, "cache_path"))
        return str(fn._cache.cache_path)
    except StopIteration:
        return "unknown"
