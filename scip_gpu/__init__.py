"""scip_gpu: GPU-native morphological profiling of image-cytometry data.

Importing this package is cheap and never imports CuPy, cuCIM or torch; the GPU backend is
loaded only when a run selects it.
"""

import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scip_gpu")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+unknown"





def profile(source, *overrides, **options):
    """Profile objects and return their features as an ``anndata.AnnData``: the same run as
    ``python -m scip_gpu`` with its defaults, in this process by default. Parameters, return
    value and examples: ``scip_gpu.api.profile`` (imported on first call)."""
    from .api import profile as _profile

    return _profile(source, *overrides, **options)


class _Package(types.ModuleType):
    """``scip_gpu.profile`` stays the function above when the submodule of the same name
    (``scip_gpu/profile.py``, the profiling stages) is imported: the import system would set it
    as the package's attribute. The submodule is ``sys.modules["scip_gpu.profile"]``, and
    ``from scip_gpu.profile import ...`` finds it there as usual."""

    def __setattr__(self, name, value):
        if name == "profile" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["__version__", "profile"]
