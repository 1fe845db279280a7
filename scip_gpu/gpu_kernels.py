"""The CUDA kernels of ``kernels/`` and their registration as stage implementations.

All kernel sources are compiled together, once per process and device, as one
``cupy.RawModule``. For Hopper GPUs (sm_90: H100, H200) a binary built with nvcc ships in
``kernels/prebuilt/`` and is loaded directly when it matches the sources (its SHA-256 is
recorded beside it; ``python -m scip_gpu.gpu_kernels build`` rebuilds it;
``SCIP_GPU_PREBUILT=0`` ignores it); other devices, or edited sources, compile with NVRTC at
first use (CuPy then caches the binary on disk). The
module is compiled with ``--fmad=false``: the kernels repeat the arithmetic of the numba
kernels operation for operation, and fused multiply-adds would change the last bits.

Each public function here is the ``cuda`` implementation of a stage (``scip_gpu.dispatch``),
registered beside the stage's array-namespace reference and numba kernel; the stage's
``accepts`` rule says which inputs it covers (the others run the reference on the GPU). The
test suite runs every one of them on the CPU through ``tests/cuda_sim`` (the same sources
compiled with g++ against a small CUDA emulation) and compares them with the CPU path, and on a
GPU with ``pytest -m gpu``.

Kernels work one thread block per plane, the plane held in a per-block workspace: dynamic
shared memory when it fits (``workspace_bytes``), else a slice of a global scratch buffer
(the same kernel code). Nothing here synchronises with the host; launches are asynchronous on
the current stream. Nothing is imported from CuPy unless a GPU backend runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._resources import kernels_dir
from .dispatch import register

#: kernel sources, compiled together in this order (common.cuh first)
SOURCES = ("common.cuh", "masked_stats.cu", "glcm.cu", "masks.cu", "intensity.cu", "texture.cu", "shape.cu",
           "granularity.cu", "cp_edt.cuh", "cp_sizeshape.cu", "cp_radial.cu", "zernike.cu")
#: NVRTC options: no contraction into fused multiply-adds (bit-identical to the CPU kernels)
OPTIONS = ("--std=c++17", "--fmad=false")
#: threads per block of every plane kernel (SG_THREADS in common.cuh)
THREADS = 256
#: masked_statistics / glcm_props launch with their own block size
BLOCK = 256


def module_source() -> str:
    """The concatenated CUDA source of every kernel (what NVRTC and tests/cuda_sim compile)."""
    parts = []
    for name in SOURCES:
        text = (kernels_dir() / name).read_text()
        parts.append(f"// ---- {name} ----\n{text}\n")
    return "".join(parts)


def kernel_names() -> list[str]:
    """Names of the ``extern "C" __global__`` entry points of the module."""
    return re.findall(r'extern "C" __global__ void\s+(\w+)\s*\(', module_source())


#: a stand-in for the compiled module (tests install tests/cuda_sim's emulation here)
_module_override = None


#: architectures with a prebuilt binary in kernels/prebuilt/
PREBUILT_ARCHS = ("sm_90",)


def source_digest() -> str:
    """SHA-256 of the module source and the compiler options."""
    return hashlib.sha256((module_source() + "\n".join(OPTIONS)).encode()).hexdigest()


def prebuilt_path(arch: str) -> Path:
    return kernels_dir() / "prebuilt" / f"module.{arch}.cubin"


def prebuilt_current(arch: str) -> bool:
    """Whether the prebuilt binary for ``arch`` exists and was built from the current sources."""
    path = prebuilt_path(arch)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("source_sha256") == source_digest()
    except ValueError:
        return False


def build_prebuilt(archs=PREBUILT_ARCHS, nvcc: str | None = None) -> list[Path]:
    """Compile the module with nvcc into ``kernels/prebuilt/module.<arch>.cubin`` (and record
    the source digest beside it)."""
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc is not on PATH")
    folder = prebuilt_path(archs[0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "module.cu"
    src.write_text(module_source())
    out = []
    try:
        for arch in archs:
            path = prebuilt_path(arch)
            res = subprocess.run([nvcc, f"-arch={arch}", "-cubin", *OPTIONS, str(src), "-o", str(path)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"nvcc failed for {arch}:\n{res.stderr}")
            version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
            path.with_suffix(".json").write_text(json.dumps(
                {"source_sha256": source_digest(), "arch": arch, "options": list(OPTIONS),
                 "nvcc": version[-1] if version else ""}, indent=2) + "\n")
            out.append(path)
    finally:
        src.unlink(missing_ok=True)
    return out


#: compile-time variants kept for A/B timing on a GPU (SCIP_GPU_DEFINES="SG_LEGACY_MEDIAN
#: SG_LEGACY_SORT SG_LEGACY_LABEL" compiles the previous implementations; the host sizes
#: workspaces to match)
LEGACY_DEFINES = ("SG_LEGACY_MEDIAN", "SG_LEGACY_SORT", "SG_LEGACY_LABEL")


def defines() -> tuple[str, ...]:
    """Extra preprocessor names the module is compiled with (``SCIP_GPU_DEFINES``, spaces
    between names: ``SG_PROFILE``, ``SG_LEGACY_MEDIAN``, ``SG_LEGACY_SORT``); any of them
    compiles the module with NVRTC instead of loading the prebuilt binary."""
    import os

    return tuple(d for d in os.environ.get("SCIP_GPU_DEFINES", "").split() if d)


def defined(name: str) -> bool:
    """Whether the module is compiled with ``-D<name>`` (workspace sizes depend on it)."""
    return name in defines()


@functools.cache
def _compiled(device_id: int, defs: tuple = ()):
    import cupy

    import os

    arch = f"sm_{cupy.cuda.Device(device_id).compute_capability}"
    defines = tuple(f"-D{d}" for d in defs)  # e.g. SG_PROFILE
    if not defines and os.environ.get("SCIP_GPU_PREBUILT", "1") != "0" and prebuilt_current(arch):
        return cupy.RawModule(path=str(prebuilt_path(arch)))
    return cupy.RawModule(code=module_source(), options=OPTIONS + defines)


def module():
    """The compiled kernel module of the current device (or the installed stand-in)."""
    if _module_override is not None:
        return _module_override
    import cupy

    return _compiled(cupy.cuda.Device().id, defines())


def kernel(source: str, name: str | None = None):
    """A compiled kernel function (``kernel(name)``; the two-argument form names its source
    file, kept for older callers)."""
    return module().get_function(name or source)


@dataclass(frozen=True)
class Limits:
    """What a launch needs to know of the device."""

    max_shared: int  # dynamic shared memory a block may opt in to (bytes), at most
    sm_count: int
    #: shared memory a block may opt in to in all, static and dynamic (the device's
    #: ``MaxSharedMemoryPerBlockOptin``); a kernel's dynamic share is this minus its static
    #: shared memory (``shared_capacity``)
    optin: int | None = None


@functools.cache
def _device_limits(device_id: int) -> Limits:
    import cupy

    attrs = cupy.cuda.Device(device_id).attributes
    optin = int(attrs["MaxSharedMemoryPerBlockOptin"])
    # most kernels' static shared memory (reduction buffers) is a few KiB: 8 KiB is kept for it
    # in ``max_shared``; ``shared_capacity`` subtracts each kernel's actual static size
    return Limits(optin - 8192, int(attrs["MultiProcessorCount"]), optin)


def shared_capacity(name: str) -> int:
    """Bytes of dynamic shared memory kernel ``name`` can be launched with: the device's opt-in
    limit less the kernel's static shared memory (CUDA refuses more: the sum may not exceed
    ``MaxSharedMemoryPerBlockOptin``), and at most ``Limits.max_shared``."""
    lim = limits()
    if lim.optin is None:
        return lim.max_shared
    static = int(getattr(module().get_function(name), "shared_size_bytes", 0) or 0)
    return max(0, min(lim.max_shared, lim.optin - static))


def limits() -> Limits:
    mod = module()
    if hasattr(mod, "limits"):
        return mod.limits
    import cupy

    return _device_limits(cupy.cuda.Device().id)


def _round16(n: int) -> int:
    return -(-n // 16) * 16


#: kernel name -> function (h, w) -> bytes of its per-block workspace
WORKSPACE: dict = {}


def workspace(kernel_name: str):
    """Register the workspace size of a plane kernel: the host's mirror of the
    ``SgArena::take`` calls at the top of that kernel."""

    def deco(fn):
        WORKSPACE[kernel_name] = fn
        return fn

    return deco


def workspace_bytes(kernel_name: str, h: int, w: int) -> int:
    """Bytes of per-block workspace the plane kernel takes for (h, w) planes."""
    return int(WORKSPACE[kernel_name](h, w))


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@workspace("mask_li")
def _ws_mask_li(h: int, w: int) -> int:
    cap = h * w
    return 2 * _round16(8 * (next_pow2(cap) + 1)) + _round16(cap)


@workspace("mask_otsu")
def _ws_mask_otsu(h: int, w: int) -> int:
    cap = h * w
    # the median's histograms (SG_MEDIAN_HIST_BYTES): one 514-byte histogram per row for the
    # legacy sliding histogram, 9 words per thread for the default two-level search
    rcap = max(cap, 2 * 514 + 3 * THREADS + 2, -(-_median_hist_bytes(h) // 8))  # see mask_otsu
    return 2 * _round16(8 * rcap) + _round16(cap)


#: bytes of global scratch a launch of a global-memory variant takes at most (fewer blocks for
#: large planes: 4 per multiprocessor of 16 MiB workspaces, a 1000 x 1000 plane's Sobel, would
#: be 8 GiB), unless one block's workspace alone is larger
SCRATCH_BYTES = 256 * 2**20


def launch(name: str, n_items: int, args: tuple, *, workspace: int = 0) -> None:
    """Launch a plane kernel over ``n_items`` planes (grid-stride loop inside).

    ``args`` are the kernel's arguments up to, not including, its trailing
    ``(scratch, ws_bytes)`` pair when ``workspace`` > 0: the workspace then lives in dynamic
    shared memory when it fits (``shared_capacity``), else in a global scratch buffer of one
    slice per block (the grid is capped so that it stays small).
    """
    import cupy

    if n_items == 0:
        return
    fn = module().get_function(name)
    lim = limits()
    shared = 0
    if workspace:
        if workspace <= shared_capacity(name):
            grid = min(n_items, 1 << 20)
            shared = workspace
            scratch, ws = cupy.empty(1, dtype=cupy.uint8), 0
        else:  # global-memory variant: one workspace slice per block, SCRATCH_BYTES at most
            grid = max(1, min(n_items, 4 * lim.sm_count, SCRATCH_BYTES // workspace))
            scratch, ws = cupy.empty(grid * workspace, dtype=cupy.uint8), workspace
        args = (*args, scratch, np.int64(ws))
    else:
        grid = min(n_items, 1 << 20)
    # the default limit is 48 KiB minus the kernel's static shared memory: opt in to more
    # whenever the workspace exceeds the current limit (not only beyond 48 KiB)
    if shared and fn.max_dynamic_shared_size_bytes < shared:
        fn.max_dynamic_shared_size_bytes = shared
    fn((grid,), (THREADS,), args, shared_mem=shared)


_constants: dict = {}


def device_constant(key, build):
    """A small constant table on the device, built once per device (``build() -> ndarray``):
    copying it from the host at every batch would synchronise the host with the device."""
    import cupy

    k = (cupy.ndarray, cupy.cuda.Device().id, key)
    if k not in _constants:
        _constants[k] = cupy.asarray(build())
    return _constants[k]


def _dtype_code(dtype) -> int | None:
    return {np.dtype(np.uint8): 0, np.dtype(np.uint16): 1}.get(np.dtype(dtype))


def _mask_dtype_code(dtype) -> int | None:
    """The pixel types of the li and otsu mask kernels and of ``mask_combine``: uint8, uint16
    (0, 1), float32, float64 (2, 3: with the float path's arithmetic, float32 filters rounded
    to float32 at every pass as SciPy stores them)."""
    return {np.dtype(np.float32): 2, np.dtype(np.float64): 3}.get(np.dtype(dtype), _dtype_code(dtype))


# ---------------------------------------------------------------------------------------------
# Masks (kernels/masks.cu)


@workspace("mask_spot")
def _ws_mask_spot(h: int, w: int) -> int:
    cap = h * w
    return 3 * _round16(2 * cap) + _round16(4 * next_pow2(cap)) + _round16(cap) + _round16(4 * cap)


def _accepts_channel_masks(batch, method, kwargs, passed, remove_border) -> bool:
    if method == "spot":  # (integer pixels only: its top-hat and quantile are integer arithmetic)
        return _dtype_code(batch.pixels.dtype) is not None and 2 * int(kwargs.get("spotsize", 5)) + 1 <= 64
    return method in ("li", "otsu") and _mask_dtype_code(batch.pixels.dtype) is not None


@register("masks.channel_masks", "cuda", accepts=_accepts_channel_masks)
def channel_masks(batch, method: str, kwargs: dict, passed, remove_border: bool):
    """Fused ``li`` / ``otsu`` / ``spot`` mask kernels for every (object, channel) plane, with
    the filter verdict and SCIP's border rule (``mask_li`` / ``mask_otsu`` / ``mask_spot``)."""
    import cupy

    from . import cpu_kernels, ops

    px = cupy.ascontiguousarray(batch.pixels)
    n, c, h, w = px.shape
    ext = cupy.ascontiguousarray(batch.extents, dtype=cupy.int64)
    ok = cupy.ascontiguousarray(passed, dtype=cupy.bool_).view(cupy.uint8)
    mask = cupy.empty((n, c, h, w), dtype=cupy.uint8)
    regions = cupy.empty((n, c), dtype=cupy.int64)
    head = (px, np.int32(_mask_dtype_code(px.dtype)), np.int32(c), np.int32(h), np.int32(w), ext, np.int32(n * c))
    tail = (ok, np.int32(bool(remove_border)))
    if method == "li":
        smooth = kwargs.get("smooth", 1.0)
        sig = tuple(float(smooth[ch] if isinstance(smooth, (list, tuple)) else smooth) for ch in range(c))
        table, radii = _li_weights(sig)
        args = (*head, table, radii, np.int32(table.shape[2]), *tail, np.int32(10_000), mask, regions)
        launch("mask_li", n * c, args, workspace=workspace_bytes("mask_li", h, w))
    elif method == "otsu":
        g05 = device_constant("gaussian-0.5", lambda: cpu_kernels.gaussian_weights(0.5, ops.gaussian_radius(0.5)))
        args = (*head, g05, *tail, mask, regions)
        launch("mask_otsu", n * c, args, workspace=workspace_bytes("mask_otsu", h, w))
    else:
        args = (*head, np.int32(int(kwargs.get("spotsize", 5))), *tail, mask, regions)
        launch("mask_spot", n * c, args, workspace=workspace_bytes("mask_spot", h, w))
    return mask.view(cupy.bool_), regions


def _li_weights(sigmas: tuple):
    """(C, 2, L) Gaussian weights (sigma and 2 sigma of every channel, SciPy's kernels) and
    their (C, 2) radii, on the device."""
    from . import cpu_kernels, ops

    def build():
        radii = np.array([[ops.gaussian_radius(s), ops.gaussian_radius(2 * s)] for s in sigmas], dtype=np.int32)
        table = np.zeros((len(sigmas), 2, 2 * int(radii.max()) + 1))
        for ch, s in enumerate(sigmas):
            for k, (sigma, r) in enumerate(((s, radii[ch, 0]), (2 * s, radii[ch, 1]))):
                table[ch, k, : 2 * r + 1] = cpu_kernels.gaussian_weights(sigma, r) if sigma > 0 else [1.0]
        return table, radii

    return (device_constant(("li-weights", sigmas), lambda: build()[0]),
            device_constant(("li-radii", sigmas), lambda: build()[1]))


def _median_hist_bytes(h: int) -> int:
    """SG_MEDIAN_HIST_BYTES(h) of kernels/masks.cu."""
    return 514 * min(h, THREADS) if defined("SG_LEGACY_MEDIAN") else 9 * 4 * THREADS


@workspace("median_disk_planes")
def _ws_median_disk(h: int, w: int) -> int:
    return 2 * _round16(2 * h * w) + _round16(_median_hist_bytes(h))


@register("ops.median_disk", "cuda", accepts=lambda x, extents, radius: x.dtype == np.uint8 and 0 <= radius <= 7)
def median_disk(x, extents, radius: int):
    """``ops.median_disk`` of uint8 planes (``median_disk_planes``: the otsu kernel's median,
    which needs values below 514 and radius <= 7: a uint16 plane's maximum is not known on the
    host without a synchronisation, so uint16 planes take the reference)."""
    import cupy

    px = cupy.ascontiguousarray(x)
    m, h, w = px.shape
    out = cupy.empty((m, h, w), dtype=cupy.uint16)
    args = (px, np.int32(_dtype_code(px.dtype)), np.int32(h), np.int32(w),
            cupy.ascontiguousarray(extents, dtype=cupy.int64), np.int32(m), np.int32(radius), out)
    launch("median_disk_planes", m, args, workspace=workspace_bytes("median_disk_planes", h, w))
    return out.astype(x.dtype)


@workspace("label_planes")
def _ws_label_planes(h: int, w: int) -> int:
    return _round16(h * w) + _round16(4 * h * w)


def _accepts_combine(batch, mask, regions, passed, main_channel_index, combined_indices) -> bool:
    return _mask_dtype_code(batch.pixels.dtype) is not None


@register("masks.combine", "cuda", accepts=_accepts_combine)
def combine(batch, mask, regions, passed, main_channel_index: int, combined_indices):
    """Main-channel rule, combined mask, bounding box and background levels per object
    (``mask_combine``; ``mask_combine_float`` for float pixels)."""
    import cupy

    px = cupy.ascontiguousarray(batch.pixels)
    n, c, h, w = px.shape
    mk = cupy.ascontiguousarray(mask).view(cupy.uint8)
    chosen = tuple(range(c)) if combined_indices is None else tuple(int(i) for i in combined_indices)

    def flags():
        sel = np.zeros(c, dtype=np.uint8)
        sel[list(chosen)] = 1
        return sel

    combined = cupy.empty((n, h, w), dtype=cupy.uint8)
    bbox = cupy.empty((n, 4), dtype=cupy.float64)
    background = cupy.empty((n, c), dtype=cupy.float64)
    cbackground = cupy.empty((n, c), dtype=cupy.float64)
    usable = cupy.empty(n, dtype=cupy.uint8)
    args = (px, np.int32(_mask_dtype_code(px.dtype)), np.int32(c), np.int32(h), np.int32(w),
            cupy.ascontiguousarray(batch.extents, dtype=cupy.int64), np.int32(n), mk,
            cupy.ascontiguousarray(regions, dtype=cupy.int64), cupy.ascontiguousarray(passed, dtype=cupy.bool_).view(cupy.uint8),
            np.int32(main_channel_index), device_constant(("combined", c, chosen), flags), combined, bbox,
            background, cbackground, usable)
    launch("mask_combine_float" if px.dtype.kind == "f" else "mask_combine", n, args)
    return (mk.view(cupy.bool_), combined.view(cupy.bool_), bbox, background, cbackground,
            usable.view(cupy.bool_))


# ---------------------------------------------------------------------------------------------
# Older kernels: masked statistics and GLCM properties


@register("stats.compact_statistics", "cuda")
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
        kernel("masked_statistics")((r,), (BLOCK,), (vals, starts, counts, np.int32(r), out))
    return out


@register("texture.glcm_props", "cuda", accepts=lambda values, view, extents, edges, offsets:
          len(offsets) <= 8 and edges.shape[1] == 16)
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

    m, h, w = values.shape
    k = len(offsets)
    if k > 8:
        raise ValueError("glcm_props takes at most 8 offsets per call")
    out = cupy.empty((m, k, 6), dtype=cupy.float64)
    if m:
        kernel("glcm_props")(
            (m,), (BLOCK,),
            (cupy.ascontiguousarray(values, dtype=cupy.float64),
             cupy.ascontiguousarray(view).view(cupy.uint8) if view.dtype == np.bool_
             else cupy.ascontiguousarray(view, dtype=cupy.uint8),
             cupy.ascontiguousarray(extents, dtype=cupy.int64),
             cupy.ascontiguousarray(edges, dtype=cupy.float64),
             device_constant(("glcm-offsets", tuple(tuple(int(v) for v in o) for o in offsets)),
                             lambda: np.asarray(offsets, dtype=np.int32).ravel()),  # (copied once)
             np.int32(k), np.int32(h), np.int32(w), np.int32(m), out))
    return out


# the family kernels register themselves as they are imported
from . import _gpu_granularity, _gpu_intensity, _gpu_shape, _gpu_texture, _gpu_zernike  # noqa: E402,F401



# ---------------------------------------------------------------------------------------------
# CellProfiler families built on the exact distance transform (kernels/cp_edt.cuh,
# kernels/cp_sizeshape.cu, kernels/cp_radial.cu)


def _ws_edt(h: int, w: int) -> int:
    """cpe_edt_sq's g and v (ints)."""
    return 2 * _round16(4 * h * w)


@workspace("cp_radii")
def _ws_cp_radii(h: int, w: int) -> int:
    return _ws_edt(h, w) + _round16(4 * h * w)


@workspace("cp_radial")
def _ws_cp_radial(h: int, w: int) -> int:
    # object, foreground / bin keys, squared distances; the transform's g and v, then the
    # geodesic distance's two buffers of doubles in the same place
    return 2 * _round16(h * w) + _round16(4 * h * w) + _round16(16 * h * w)


#: planes up to this many pixels (as shape_props; larger ones take the reference, whose
#: global-memory workspaces would otherwise be one plane's worth per resident block)
CP_MAX_PIXELS = 1 << 16


def _edt_fits(h: int, w: int) -> bool:
    """Squared distances and the transform's cap, (h + w) ** 2 + 1, fit in 32-bit ints, and the
    plane is not larger than ``CP_MAX_PIXELS``."""
    return h + w <= 46340 and h * w <= CP_MAX_PIXELS


def _accepts_radii(padded, labels, nl) -> bool:
    return (getattr(padded, "ndim", 0) == 3 and labels.shape == padded.shape and labels.dtype == np.int32
            and _edt_fits(*padded.shape[1:]))


@register("cp_sizeshape.radii", "cuda", accepts=_accepts_radii)
def cp_radii(padded, labels, nl: int):
    """(3, nl + 1) maximum, mean and median distance to the background over each label's
    pixels (``cp_radii``: one block per plane, the numba kernel's values bit for bit)."""
    import cupy

    fg = cupy.ascontiguousarray(padded, dtype=cupy.bool_).view(cupy.uint8)
    lab = cupy.ascontiguousarray(labels, dtype=cupy.int32)
    m, h, w = fg.shape
    out = cupy.zeros((3, int(nl) + 1), dtype=cupy.float64)
    args = (fg, lab, np.int32(0), np.int32(m), np.int32(h), np.int32(w), np.int32(nl), out)
    launch("cp_radii", m, args, workspace=workspace_bytes("cp_radii", h, w))
    return out


#: bins the radial kernel's shared sums hold (kernels/cp_radial.cu: CPR_MAX_BINS)
CP_RADIAL_MAX_BINS = 16


def _accepts_radial(x, view, valid) -> bool:
    from .features.cp_radial import BINS

    return (getattr(x, "ndim", 0) == 3 and view.shape == x.shape and valid.shape == x.shape
            and BINS <= CP_RADIAL_MAX_BINS and _edt_fits(*x.shape[1:]))


@register("cp_radial.planes", "cuda", accepts=_accepts_radial)
def cp_radial_planes(x, view, valid):
    """FracAtD, MeanFrac and RadialCV of every plane (``cp_radial``: one block per plane; the
    geodesic distance by relaxation to the fixed point Dijkstra's algorithm finds, so the
    numba kernel's values bit for bit)."""
    import cupy

    from .features.cp_radial import BINS

    xs = cupy.ascontiguousarray(x, dtype=cupy.float64)
    vw = cupy.ascontiguousarray(view, dtype=cupy.bool_).view(cupy.uint8)
    vl = cupy.ascontiguousarray(valid, dtype=cupy.bool_).view(cupy.uint8)
    m, h, w = xs.shape
    out = cupy.empty((m, 3 * BINS), dtype=cupy.float64)
    args = (xs, vw, vl, np.int32(m), np.int32(h), np.int32(w), np.int32(BINS), out)
    launch("cp_radial", m, args, workspace=workspace_bytes("cp_radial", h, w))
    return out


# CellProfiler families: intensity, Haralick texture and colocalisation kernels
SOURCES += ("cp_intensity.cu", "cp_texture.cu", "cp_colocalization.cu", "cp_costes.cu")
from . import _gpu_cp_measure  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------
# AreaShape stages without a plane kernel of their own (kernels/cp_shape_extra.cu)

SOURCES += ("cp_shape_extra.cu",)


def _accepts_feret(vr, vc, nv, budget: int = 1 << 22) -> bool:
    return getattr(vr, "ndim", 0) == 2 and vc.shape == vr.shape and nv.shape == vr.shape[:1]


@register("cp_sizeshape.feret", "cuda", accepts=_accepts_feret)
def cp_feret(vr, vc, nv, budget: int = 1 << 22):
    """(min, max) Feret diameter of every polygon of the (L, V) vertex tables (``cp_feret``:
    32 threads per polygon, the numba kernel's values bit for bit; ``budget`` is the
    reference's memory bound, not needed here)."""
    import cupy

    r = cupy.ascontiguousarray(vr, dtype=cupy.float64)
    c = cupy.ascontiguousarray(vc, dtype=cupy.float64)
    k = cupy.ascontiguousarray(nv, dtype=cupy.int64)
    nl1, v_max = r.shape
    fmin = cupy.zeros(nl1, dtype=cupy.float64)
    fmax = cupy.zeros(nl1, dtype=cupy.float64)
    groups = -(-nl1 // (THREADS // 32))
    launch("cp_feret", groups, (r, c, k, np.int32(nl1), np.int32(v_max), fmin, fmax))
    return fmin, fmax


@workspace("cp_filled_area")
def _ws_cp_filled_area(h: int, w: int) -> int:
    return 2 * _round16(h * w) + _round16(4 * h * w)


def _accepts_filled(padded, labels, owner, area, holed) -> bool:
    return (getattr(labels, "ndim", 0) == 3 and labels.dtype == np.int32
            and labels.shape[1] * labels.shape[2] <= CP_MAX_PIXELS)


@register("shape.filled_area", "cuda", accepts=_accepts_filled)
def cp_filled_area(padded, labels, owner, area, holed):
    """Area of each label with its holes filled (``cp_filled_area``: one block per holed label,
    the other pixels of its bounding box labelled 8-connected, those joined to the box's border
    not counted: the numba kernel's flood, the same integers)."""
    import cupy

    lab = cupy.ascontiguousarray(labels, dtype=cupy.int32)
    m, h, w = lab.shape
    out = cupy.array(area, dtype=cupy.float64, copy=True)
    nl = int(out.shape[0]) - 1
    args = (lab, cupy.ascontiguousarray(owner, dtype=cupy.int64),
            cupy.ascontiguousarray(holed, dtype=cupy.bool_).view(cupy.uint8),
            np.int32(m), np.int32(h), np.int32(w), np.int32(nl), out)
    launch("cp_filled_area", nl, args, workspace=workspace_bytes("cp_filled_area", h, w))
    return out


@workspace("cp_pattern_sums")
def _ws_cp_pattern_sums(h: int, w: int) -> int:
    return 3 * _round16(h * w) + _round16(4 * h * w)


def _accepts_pattern(padded, labels, nl) -> bool:
    return (getattr(padded, "ndim", 0) == 3 and labels.shape == padded.shape and labels.dtype == np.int32
            and padded.shape[1] * padded.shape[2] <= CP_MAX_PIXELS)


@register("shape.pattern_props", "cuda", accepts=_accepts_pattern)
def cp_pattern_props(padded, labels, nl: int):
    """(3, nl + 1) Euler number, Crofton perimeter and perimeter of every label
    (``cp_pattern_sums``: one block per plane, each label's sums in the numba kernel's raster
    order, so the same doubles)."""
    import cupy

    from .features.shape import CROFTON_COEFS_4, EULER_COEFS_8, PERIMETER_WEIGHTS

    fg = cupy.ascontiguousarray(padded, dtype=cupy.bool_).view(cupy.uint8)
    lab = cupy.ascontiguousarray(labels, dtype=cupy.int32)
    m, h, w = fg.shape
    out = cupy.zeros((3, int(nl) + 1), dtype=cupy.float64)
    args = (fg, lab, np.int32(m), np.int32(h), np.int32(w), np.int32(nl),
            device_constant("euler-coefs-8", lambda: EULER_COEFS_8),
            device_constant("crofton-coefs-4", lambda: CROFTON_COEFS_4),
            device_constant("perimeter-weights", lambda: PERIMETER_WEIGHTS), out)
    launch("cp_pattern_sums", m, args, workspace=workspace_bytes("cp_pattern_sums", h, w))
    return out



# ---------------------------------------------------------------------------------------------
# The AreaShape block: every plane one object (kernels/cp_sizeshape_block.cu)

SOURCES += ("cp_sizeshape_block.cu",)

#: planes (padded) up to this many pixels a side: the row ends and hull stacks of shape.cu's
#: device functions are shorts (and the row ends of empty rows, 4 (side + 4), doubled, must
#: stay below 2 ** 15): the limit of SCIP's shape kernel
from ._gpu_shape import MAX_SIDE as CP_SIZESHAPE_MAX_SIDE  # noqa: E402
#: values per plane (CPS_NF of the kernel: ``len(features.cp_sizeshape.FEATURES)``)
CP_SIZESHAPE_NF = 80


@workspace("cp_sizeshape_planes")
def _ws_cp_sizeshape_planes(h: int, w: int) -> int:
    from ._gpu_shape import _chunk_bytes

    n, words = h * w, (w + 63) // 64
    return (_round16(4 * n) + _round16(n) + 2 * _round16(8 * h * words) + _round16(_chunk_bytes(h))
            + _round16(2 * 4 * h) + _round16(2 * 2 * (2 * h + 2)) + _round16(8 * CP_SIZESHAPE_NF))


def _accepts_sizeshape(batch, mr, ctx) -> bool:
    shape = getattr(mr.mask, "shape", ())
    if len(shape) != 4:
        return False
    hp, wp = shape[2] + 2, shape[3] + 2
    return _edt_fits(hp, wp) and max(hp, wp) <= CP_SIZESHAPE_MAX_SIDE


@register("cp_sizeshape.block", "cuda", accepts=_accepts_sizeshape)
def cp_sizeshape_block(batch, mr, ctx):
    """(N, (C + 1) * 80) ``AreaShape`` values of one mask, each plane one object, columns as
    ``sizeshape_columns`` (written into ``ctx.out`` when it is given): ``cp_sizeshape_pad``
    (padded planes), ``cp_radii`` (Maximum/Mean/MedianRadius, label m + 1 for plane m),
    then ``cp_sizeshape_planes`` (everything else, with the device functions of ``shape_props``);
    three launches, no host synchronisation. NaN rows for empty planes and objects not
    ``usable``. Planes above ``CP_MAX_PIXELS`` (padded) or ``CP_SIZESHAPE_MAX_SIDE`` a side take
    the reference; those whose workspace exceeds the shared memory run on global memory."""
    import cupy

    from ._gpu_shape import _device_tables
    from .features.cp_sizeshape import FEATURES

    mask = cupy.ascontiguousarray(mr.mask).view(cupy.uint8)
    n, c, h, w = mask.shape
    combined = cupy.ascontiguousarray(mr.combined).view(cupy.uint8)
    usable = cupy.ascontiguousarray(cupy.asarray(mr.usable, dtype=cupy.bool_)).view(cupy.uint8)  # (no cast kernel)
    extents = cupy.ascontiguousarray(batch.extents, dtype=cupy.int64)
    m, hp, wp = n * (c + 1), h + 2, w + 2
    nf = len(FEATURES)
    out = getattr(ctx, "out", None)  # the batch table's columns, when given
    if out is None or out.shape != (n, (c + 1) * nf) or out.dtype != np.float64 or out.strides[1] != 8:
        out = cupy.empty((n, (c + 1) * nf), dtype=cupy.float64)
    padded = cupy.empty((m, hp, wp), dtype=cupy.uint8)
    launch("cp_sizeshape_pad", m, (mask, combined, extents, np.int32(n), np.int32(c), np.int32(h), np.int32(w),
                                   padded))
    # radii of every plane's foreground, label m + 1 (no label image: plane_labels = 1)
    radii = cupy.zeros((3, m + 1), dtype=cupy.float64)
    no_labels = device_constant("int32-zero", lambda: np.zeros(1, dtype=np.int32))
    launch("cp_radii", m, (padded, no_labels, np.int32(1), np.int32(m), np.int32(hp),
                           np.int32(wp), np.int32(m), radii), workspace=workspace_bytes("cp_radii", hp, wp))
    coefs, pow25, pow4 = _device_tables(cupy, h * w)
    args = (padded, usable, np.int32(n), np.int32(c + 1), np.int32(hp), np.int32(wp), coefs, pow25, pow4, radii,
            out, np.int64(out.strides[0] // 8))
    launch("cp_sizeshape_planes", m, args, workspace=workspace_bytes("cp_sizeshape_planes", hp, wp))
    return out


# ---------------------------------------------------------------------------------------------
# Marker-controlled watershed of a field of view (kernels/watershed.cu)

SOURCES += ("watershed.cu",)
#: relaxation launches between two reads of the `changed` flag (one host sync per round)
WATERSHED_LAUNCHES_PER_CHECK = 2


def _accepts_watershed(surface, markers, mask=None) -> bool:
    return surface.ndim == 2 and 0 < surface.size < (1 << 31)  # keys hold ranks and steps in 32 bits


@register("ops.watershed", "cuda", accepts=_accepts_watershed)
def watershed(surface, markers, mask=None):
    """``ops.watershed`` on the device: the image never leaves it; the host reads one flag per
    round of relaxation (a handful of rounds per field: keys cross a 32x32 tile per launch)."""
    import cupy

    from .ops import watershed_prepare

    rank, flags, lab = watershed_prepare(surface, markers, mask)
    h, w = surface.shape
    n = h * w
    inf = np.uint64(0xFFFFFFFFFFFFFFFF)
    key = cupy.where((flags & 2) != 0, rank << np.uint64(32), inf).astype(cupy.uint64, copy=False)
    mod = module()
    relax, parent_fn = mod.get_function("ws_relax"), mod.get_function("ws_parent")
    jump, labels = mod.get_function("ws_jump"), mod.get_function("ws_labels")
    tiles = -(-h // 32) * -(-w // 32)
    changed = cupy.zeros(1, dtype=cupy.int32)
    args = (key, rank, flags, np.int64(h), np.int64(w), changed)
    while True:
        changed.fill(0)
        for _ in range(WATERSHED_LAUNCHES_PER_CHECK):
            relax((min(tiles, 1 << 16),), (THREADS,), args)
        if not int(changed.get()[0]):  # host sync: one flag
            break
    grid = (min(-(-n // THREADS), 1 << 16),)
    parent = cupy.empty(n, dtype=cupy.int64)
    parent_fn(grid, (THREADS,), (key, rank, flags, np.int64(h), np.int64(w), parent))
    for _ in range(3):  # chains 8x shorter before they are followed
        jump(grid, (THREADS,), (parent, np.int64(n)))
    out = cupy.empty(n, dtype=cupy.int32)
    labels(grid, (THREADS,), (parent, lab, np.int64(n), out))  # (lab: int32, contiguous)
    return out.reshape(h, w)


# ---------------------------------------------------------------------------------------------
# Meta columns: empty flags, regions, bounding box into the table (kernels/meta.cu)

SOURCES += ("meta.cu",)
from . import _gpu_meta  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------
# Binary erosion by a disk (kernels/morphology.cu)

SOURCES += ("morphology.cu",)


@workspace("erosion_disk_planes")
def _ws_erosion_disk(h: int, w: int) -> int:
    cap = h * w
    return _round16(cap) + _round16(4 * cap) + _round16(cap)


def _accepts_erosion_disk(mask, extents, radius: int) -> bool:
    return (0 < radius and 2 * radius + 1 <= 64 and mask.ndim == 3 and mask.dtype == np.bool_
            and 0 < mask.shape[1] * mask.shape[2] < 2**31 // 8)  # (no workspace for empty planes)


@register("ops.binary_erosion_disk", "cuda", accepts=_accepts_erosion_disk)
def binary_erosion_disk(mask, extents, radius: int):
    """``ops.binary_erosion_disk`` of every plane (``erosion_disk_planes``: one block per plane,
    the intensity kernel's row-run erosion)."""
    import cupy

    mk = cupy.ascontiguousarray(mask).view(cupy.uint8)
    m, h, w = mk.shape
    out = cupy.empty((m, h, w), dtype=cupy.uint8)
    args = (mk, cupy.ascontiguousarray(extents, dtype=cupy.int64), np.int32(m), np.int32(h), np.int32(w),
            np.int32(radius), out)
    launch("erosion_disk_planes", m, args, workspace=workspace_bytes("erosion_disk_planes", h, w))
    return out.view(cupy.bool_)


# ---------------------------------------------------------------------------------------------
# Sobel filter of float (and 8/16-bit) planes (kernels/filters.cu)

SOURCES += ("filters.cu",)
_SOBEL_CODES = {np.dtype(np.uint8): 0, np.dtype(np.uint16): 1, np.dtype(np.float32): 2, np.dtype(np.float64): 3}


@workspace("sobel_planes")
def _ws_sobel(h: int, w: int) -> int:
    return 2 * _round16(8 * h * w)


def _accepts_sobel(x, extents) -> bool:
    return x.ndim == 3 and np.dtype(x.dtype) in _SOBEL_CODES and 0 < x.shape[1] * x.shape[2] < 2**31 // 16


def _filter_planes(kernel: str, x, extents, *params):
    """Launch ``sobel_planes`` or ``gaussian_planes`` (kernels/filters.cu) over every plane of x:
    float32 planes give float32, the others float64 (``ops.as_float``'s type)."""
    import cupy

    px = cupy.ascontiguousarray(x)
    m, h, w = px.shape
    dtype = np.dtype(px.dtype)
    out_f32 = dtype == np.float32
    out = cupy.empty((m, h, w), dtype=cupy.float32 if out_f32 else cupy.float64)
    scale = 1.0 / np.iinfo(dtype).max if dtype.kind == "u" else 1.0
    args = (px, np.int32(_SOBEL_CODES[dtype]), np.float64(scale), cupy.ascontiguousarray(extents, dtype=cupy.int64),
            np.int32(m), np.int32(h), np.int32(w), *params, out, np.int32(out_f32))
    launch(kernel, m, args, workspace=workspace_bytes(kernel, h, w))
    return out


@register("ops.sobel", "cuda", accepts=_accepts_sobel)
def sobel(x, extents):
    """``ops.sobel`` of every plane (``sobel_planes``: one block per plane, the numba
    sobel_planes' arithmetic; float32 planes give float32, the others float64)."""
    return _filter_planes("sobel_planes", x, extents)


@workspace("gaussian_planes")
def _ws_gaussian(h: int, w: int) -> int:
    return 2 * _round16(8 * h * w)


def _accepts_gaussian(x, extents, sigma, *, truncate=4.0) -> bool:
    return sigma > 0 and _accepts_sobel(x, extents)


@register("ops.gaussian", "cuda", accepts=_accepts_gaussian)
def gaussian(x, extents, sigma: float, *, truncate: float = 4.0):
    """``ops.gaussian`` of every plane (``gaussian_planes``: one block per plane, the numba
    gaussian_planes' arithmetic, float32 planes rounded at each pass as SciPy's; 0 outside
    each extent)."""
    from . import cpu_kernels, ops

    r = ops.gaussian_radius(sigma, truncate)
    wt = device_constant(("gaussian", float(sigma), r), lambda: cpu_kernels.gaussian_weights(float(sigma), r))
    return _filter_planes("gaussian_planes", x, extents, wt, np.int32(r))


@workspace("sobel_view_stats")
def _ws_sobel_view_stats(h: int, w: int) -> int:
    return _round16(8 * h * w)


def _accepts_sobel_view_stats(sob, view, extents) -> bool:
    return (sob.ndim == 3 and sob.dtype == np.float64 and view.shape == sob.shape and view.dtype == np.bool_
            and 0 < sob.shape[1] * sob.shape[2] < 2**31 // 8)


@register("texture.sobel_view_statistics", "cuda", accepts=_accepts_sobel_view_stats)
def sobel_view_statistics(sob, view, extents):
    """``texture.sobel_view_statistics`` (``sobel_view_stats``: one block per plane, the numba
    twin's order of summation)."""
    import cupy

    s = cupy.ascontiguousarray(sob)
    m, h, w = s.shape
    out = cupy.empty((m, 4), dtype=cupy.float64)
    args = (s, cupy.ascontiguousarray(view).view(cupy.uint8), cupy.ascontiguousarray(extents, dtype=cupy.int64),
            np.int32(m), np.int32(h), np.int32(w), out)
    launch("sobel_view_stats", m, args, workspace=workspace_bytes("sobel_view_stats", h, w))
    return out


if __name__ == "__main__":  # python -m scip_gpu.gpu_kernels build
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m scip_gpu.gpu_kernels build   (needs nvcc)")
    for p in build_prebuilt():
        print(p)

