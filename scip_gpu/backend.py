"""Array backend: one code path for NumPy (CPU) and CuPy (GPU).

Stage code is written once against the namespace of its inputs::

    xp = array_module(pixels)
    ndi = ndimage(xp)

``array_module`` never imports CuPy: an array can only be a CuPy array if CuPy was already
imported (``array_api_compat.is_cupy_array`` checks ``sys.modules``).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import is_cupy_array

from .errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def array_module(*arrays: Any) -> ModuleType:
    """Return ``numpy`` or ``cupy``, whichever the arrays belong to (NumPy for none)."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy

            return cupy
    return np


def all_true(xp: ModuleType, shape) -> Any:
    """A bool array of ``shape``, every value True: on a GPU a memset of 1 bytes, not CuPy's
    fill kernel (which, as every kernel CuPy generates, a fresh machine compiles with NVRTC at
    its first use)."""
    if not is_gpu(xp):
        return xp.ones(shape, dtype=bool)
    out = xp.empty(shape, dtype=bool)
    out.data.memset_async(1, out.nbytes)  # (True is the byte 1)
    return out


def is_gpu(xp: ModuleType) -> bool:
    return xp is not np


def ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for NumPy, ``cupyx.scipy.ndimage`` for CuPy."""
    if is_gpu(xp):
        return importlib.import_module("cupyx.scipy.ndimage")
    return importlib.import_module("scipy.ndimage")


def skimage_module(xp: ModuleType, name: str) -> ModuleType:
    """``skimage.<name>`` for NumPy, ``cucim.skimage.<name>`` (same API) for CuPy."""
    root = "cucim.skimage" if is_gpu(xp) else "skimage"
    return importlib.import_module(f"{root}.{name}")


def asnumpy(x: Any) -> np.ndarray:
    """Copy a device array to the host (no-op for NumPy arrays)."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def gpu_available() -> tuple[bool, str]:
    """Whether CuPy can really run on a GPU here, tested by allocating and computing.

    Returns
    -------
    ok : bool
    reason : str
        The device name when ``ok``, else why not.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA installation
        return False, f"CuPy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        x = cupy.arange(16, dtype=cupy.float32)
        float((x * 2).sum())  # forces a kernel launch and a device->host copy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return True, name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return False, f"CuPy cannot use a GPU ({type(exc).__name__}: {exc})"


def select_device(setting: str) -> str:
    """Resolve the ``device`` setting to ``"cpu"`` or ``"cuda"``.

    ``auto`` uses a GPU when CuPy can really run on one, else the CPU (logged); ``cuda`` fails
    with a clear message when no GPU works.
    """
    if setting not in DEVICES:
        raise ConfigError(f"device: unknown value {setting!r}; choose one of {', '.join(DEVICES)}")
    if setting == "cpu":
        return "cpu"
    ok, reason = gpu_available()
    if ok:
        log.info("device: using GPU %s", reason)
        return "cuda"
    if setting == "cuda":
        raise ConfigError(f"device=cuda was requested but no GPU can be used: {reason}")
    log.info("device: no usable GPU (%s); running on the CPU", reason)
    return "cpu"


def device_module(device: str) -> ModuleType:
    """Array module for a resolved device name."""
    if device == "cuda":
        import cupy

        return cupy
    return np
