"""scip_gpu: GPU-native morphological profiling of image-cytometry data.

Importing this package is cheap and never imports CuPy, cuCIM or torch; the GPU backend is
loaded only when a run selects it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scip_gpu")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
