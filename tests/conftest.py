"""Shared fixtures and helpers for the test suite."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from scip_gpu.batch import assemble


def pytest_configure(config):
    """With several test processes (pytest-xdist's ``-n``), compile the numba kernels once in
    the controlling process before they start (``python -m scip_gpu warmup``, numba's on-disk
    cache): otherwise each process compiles the same kernels at once on a fresh installation
    (about 90 s each on 2 cores); with a warm cache this takes a few seconds."""
    n = getattr(config.option, "numprocesses", None)  # an int, "auto", "logical" or None
    if hasattr(config, "workerinput") or n is None or (isinstance(n, int) and n <= 1):
        return
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        return
    from scip_gpu.warmup import warmup

    warmup()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(params=["compiled", "numpy"])
def kernel_path(request, monkeypatch):
    """Run a test once with the compiled CPU kernels (numba) and once with the array-namespace
    path they replace (skipping the first when numba is not installed)."""
    from scip_gpu import cpu_kernels

    if request.param == "compiled" and not cpu_kernels.available():
        pytest.skip("numba is not installed")
    if request.param == "numpy":
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    return request.param


def cuda_backend(kind: str, monkeypatch):
    """How ``tests/test_dispatch.py`` runs a stage's ``cuda`` implementation: a callable
    ``run(stage_name, fn, args, kwargs)`` that moves the NumPy example inputs (arrays, batches,
    mask results, nested in tuples) to the device, calls ``fn`` and returns its result.
    ``kind`` "gpu": a real GPU (None without one); "sim": the CPU emulation of CUDA
    (tests/cuda_sim: the kernel sources compiled with g++, driven through the real wrappers on
    fake CuPy arrays; None without g++)."""
    import dataclasses

    from scip_gpu import gpu_kernels
    from scip_gpu.backend import gpu_available
    from scip_gpu.batch import Batch

    from . import fake_cupy
    from .cuda_sim import sim

    if kind == "gpu":
        if not gpu_available()[0]:
            return None
        import cupy
    elif sim.compiler() is not None:
        import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

        cupy = fake_cupy.install(monkeypatch)
        monkeypatch.setattr(gpu_kernels, "_module_override", sim.shared_module())
    else:
        return None

    def to_device(x):
        if isinstance(x, np.ndarray):
            return cupy.asarray(x)
        if isinstance(x, Batch):
            return Batch(to_device(x.pixels), to_device(x.extents), x.index)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name)) for f in dataclasses.fields(x)
                                             if f.init and isinstance(getattr(x, f.name), np.ndarray)})
        if isinstance(x, (tuple, list)):
            return type(x)(to_device(v) for v in x)
        if isinstance(x, dict):
            return {k: to_device(v) for k, v in x.items()}
        return x

    def run(name, fn, args, kwargs):
        return fn(*to_device(args), **to_device(kwargs))

    return run


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (skips the test when a fresh clone has no such folder)."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED


def random_images(n=12, channels=3, lo=20, hi=40, seed=0, dtype=np.uint16, scale=1000):
    """Random-sized (C, h, w) images with smooth blobs plus noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        base = ndi.gaussian_filter(rng.random((channels, h, w)), (0, 3, 3))
        base = (base - base.min()) / (np.ptp(base) + 1e-12)
        img = base * scale + rng.random((channels, h, w)) * scale * 0.1
        out.append(img.astype(dtype) if np.dtype(dtype).kind != "f" else img.astype(dtype))
    return out


def stack(images, margin=10, multiple=8):
    """Assemble images of any sizes into one padded Batch."""
    hs = max(i.shape[-2] for i in images) + margin
    ws = max(i.shape[-1] for i in images) + margin
    shape = (-(-hs // multiple) * multiple, -(-ws // multiple) * multiple)
    imgs = [i if i.ndim == 3 else i[None] for i in images]
    return assemble(imgs, np.arange(len(imgs)), shape)


def sk_remove_small_objects(ar, min_size):
    """scikit-image's remove_small_objects with SCIP's (0.20) exclusive ``min_size`` meaning,
    on any scikit-image version (0.26 renamed it ``max_size`` with an inclusive bound)."""
    from skimage.morphology import remove_small_objects

    if "max_size" in inspect.signature(remove_small_objects).parameters:
        return remove_small_objects(ar, max_size=math.ceil(min_size) - 1)
    return remove_small_objects(ar, min_size=min_size)


def sk_remove_small_holes(ar, area_threshold):
    from skimage.morphology import remove_small_holes

    if "max_size" in inspect.signature(remove_small_holes).parameters:
        return remove_small_holes(ar, max_size=math.ceil(area_threshold) - 1)
    return remove_small_holes(ar, area_threshold=area_threshold)


def sk_binary_erosion(mask, footprint):
    from scipy import ndimage as ndi

    # skimage.morphology.binary_erosion == ndi.binary_erosion(border_value=True) (deprecated in 0.26)
    return ndi.binary_erosion(mask, structure=footprint.astype(bool), border_value=1)
