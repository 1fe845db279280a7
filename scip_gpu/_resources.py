"""Where the configuration and kernel folders live.

In a checkout (editable install) ``conf/`` and ``kernels/`` sit next to the package; in a built
wheel they are shipped inside it as ``scip_gpu/conf`` and ``scip_gpu/kernels``. Every caller
asks here, so both layouts work.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def _resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"scip_gpu's '{name}' folder was found neither inside the package ({_PACKAGE / name}) "
        f"nor next to it ({_PACKAGE.parent / name}); the installation is incomplete."
    )


def conf_dir() -> Path:
    """Folder holding the Hydra configuration tree (``config.yaml`` and its groups)."""
    return _resource_dir("conf")


def kernels_dir() -> Path:
    """Folder holding the CUDA C++ kernel sources (``*.cu``)."""
    return _resource_dir("kernels")
