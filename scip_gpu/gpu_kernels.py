"""CuPy wrappers of the CUDA kernels in ``kernels/``.

Each kernel source is compiled once per device with ``cupy.RawModule`` (NVRTC) and cached;
CuPy also caches the binary on disk. Every wrapper has a NumPy reference function with the same
semantics (named in its docstring) and the tests compare the two on a GPU (``pytest -m gpu``).
Nothing here is imported unless the GPU backend runs.
"""

from __future__ import annotations

import functools

from ._resources import kernels_dir

#: kernel source file -> exported function names
SOURCES = {"masked_stats.cu": ("masked_statistics",), "glcm.cu": ("glcm_props",)}
BLOCK = 256


@functools.cache
def _module(source: str, device_id: int):
    import cupy

    code = (kernels_dir() / source).read_text()
    return cupy.RawModule(code=code, options=("--std=c++17",))


def kernel(source: str, name: str):
    """A compiled kernel function for the current device."""
    import cupy

    return _module(source, cupy.cuda.Device().id).get_function(name)


def masked_statistics(values, counts):
    """GPU version of ``scip_gpu.stats.compact_statistics`` (same arguments and result).

    Parameters
    ----------
    values : (M,) float64 cupy array
        Compact members, ascending within each segment.
    counts : (R,) int cupy array
        Segment lengths.
    """
    import cupy

    counts = cupy.ascontiguousarray(counts, dtype=cupy.int64)
    starts = cupy.cumsum(counts) - counts
    r = int(counts.shape[0])
    out = cupy.empty((r, 11), dtype=cupy.float64)
    if r:
        vals = cupy.ascontiguousarray(values, dtype=cupy.float64)
        if vals.size == 0:
            vals = cupy.zeros(1, dtype=cupy.float64)
        kernel("masked_stats.cu", "masked_statistics")(
            (r,), (BLOCK,), (vals, starts, counts, cupy.int32(r), out))
    return out


def glcm_props(values, view, extents, edges, offsets):
    """GPU version of ``graycoprops_batched(glcm_batched(quantise_scip(...)))`` for the
    symmetric matrices of the given offsets.

    Parameters
    ----------
    values : (M, H, W) float64 cupy array
    view : (M, H, W) bool cupy array
        Pixels of the view (already restricted to each plane's extent).
    extents : (M, 2) int cupy array
    edges : (M, 16) float64 cupy array
        Each plane's 16 quantisation edges (``texture.quantisation_edges``).
    offsets : sequence of (row, col)
        At most 8 distinct pixel offsets.

    Returns
    -------
    (M, K, 6) float64 cupy array: contrast, dissimilarity, homogeneity, energy, correlation, ASM.
    """
    import cupy
    import numpy as np

    m, h, w = values.shape
    k = len(offsets)
    if k > 8:
        raise ValueError("glcm_props takes at most 8 offsets per call")
    out = cupy.empty((m, k, 6), dtype=cupy.float64)
    if m:
        kernel("glcm.cu", "glcm_props")(
            (m,), (BLOCK,),
            (cupy.ascontiguousarray(values, dtype=cupy.float64),
             cupy.ascontiguousarray(view, dtype=cupy.uint8),
             cupy.ascontiguousarray(extents, dtype=cupy.int64),
             cupy.ascontiguousarray(edges, dtype=cupy.float64),
             cupy.asarray(np.asarray(offsets, dtype=np.int32).ravel()),
             cupy.int32(k), cupy.int32(h), cupy.int32(w), cupy.int32(m), out))
    return out
