"""Run the CUDA kernel module on the CPU: the sources of ``kernels/`` compiled with g++ against
``cuda_sim.h`` into a shared library, launched through ctypes with CuPy's calling convention.

``SimModule`` stands in for the ``cupy.RawModule`` of ``scip_gpu.gpu_kernels``: its
``get_function(name)`` returns a callable ``kernel(grid, block, args, shared_mem=0)`` that takes
NumPy arrays (or the NumPy-backed fake CuPy arrays of ``tests/fake_cupy.py``) for pointers and
NumPy scalars for values, exactly as the wrappers pass them to CuPy. Installed as
``gpu_kernels._module_override`` (fixture ``sim_kernels``), the real wrappers and their launch
logic run unchanged on the CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def compiler() -> str | None:
    return shutil.which("g++")


def _driver_source(source: str, names: list[str]) -> str:
    cases = "\n".join(
        f'    if (!std::strcmp(name, "{n}")) {{ sim_run(grid, block, shared, [&] {{ sim_call({n}, params); }}); return 0; }}'
        for n in names
    )
    sigs = "\n".join(f'    if (!std::strcmp(name, "{n}")) return sim_signature_of({n}, out, cap);' for n in names)
    # SCIP_GPU_SIM_THREADS=os: one OS thread per CUDA thread (cuda_sim.h); default: fibers
    head = "#define CUDA_SIM_OS_THREADS 1\n" if os.environ.get("SCIP_GPU_SIM_THREADS") == "os" else ""
    return (f'{head}#include "{HERE / "cuda_sim.h"}"\n{source}\n'
            'extern "C" int sim_launch(const char* name, unsigned grid, unsigned block, size_t shared, void** params) {\n'
            f"{cases}\n    return -1;\n}}\n"
            'extern "C" int sim_signature(const char* name, char* out, int cap) {\n'
            f"{sigs}\n    return -1;\n}}\n")


@cache
def build(source: str, names: tuple[str, ...]) -> Path:
    """Compile the module source into a shared library (cached by content)."""
    gxx = compiler()
    if gxx is None:
        raise RuntimeError("g++ is not installed")
    text = _driver_source(source, list(names))
    digest = hashlib.sha256((text + (HERE / "cuda_sim.h").read_text()).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("SCIP_GPU_SIM_CACHE", Path(tempfile.gettempdir()) / "scip_gpu_cuda_sim"))
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"kernels-{digest}.so"
    if not lib.exists():
        import fcntl

        with open(folder / f"kernels-{digest}.lock", "w") as lock:  # test processes compile it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not lib.exists():
                _compile(gxx, text, folder, digest, lib)
    return lib


def _compile(gxx: str, text: str, folder: Path, digest: str, lib: Path) -> None:
    """g++ the driver source into ``lib`` (a temporary name of this process, then renamed)."""
    src = folder / f"kernels-{digest}.cpp"
    src.write_text(text)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    res = subprocess.run([gxx, "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-pthread",
                          "-Wno-unused-result", str(src), "-o", str(tmp)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuda_sim: g++ failed:\n{res.stderr[-6000:]}")
    tmp.replace(lib)


class SimLimits:
    def __init__(self, max_shared: int, sm_count: int, optin: int | None = None):
        self.max_shared = max_shared
        self.sm_count = sm_count
        self.optin = optin


def _static_shared() -> dict:
    """Each kernel's static shared memory as nvcc reports it for sm_90
    (benchmarks/results/kernel-resources-sm_90.json; absent kernels: 8 KiB)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "kernel-resources-sm_90.json"
    try:
        return {k: int(v["static_smem"]) for k, v in json.loads(path.read_text())["kernels"].items()}
    except (OSError, ValueError, KeyError):
        return {}


class SimModule:
    """CPU stand-in for the compiled kernel module.

    Parameters
    ----------
    max_shared : int
        Dynamic shared memory a block may use; smaller than a GPU's to exercise the
        global-memory workspace variant.
    sm_count : int
        Multiprocessors reported to the launch logic (caps the grid of the global variant).
    optin : int
        Shared memory a block may opt in to, static and dynamic together (a Hopper GPU's
        ``MaxSharedMemoryPerBlockOptin`` by default; ``max_shared`` + 8 KiB when ``max_shared``
        is given): a launch whose dynamic shared memory plus the kernel's static shared memory
        (nvcc's sm_90 figure) exceeds it fails, as on a GPU.
    """

    def __init__(self, source: str, names, *, max_shared: int = 227 * 1024 - 8192, sm_count: int = 2,
                 optin: int | None = None):
        self.lib = ctypes.CDLL(str(build(source, tuple(names))))
        self.lib.sim_launch.restype = ctypes.c_int
        self.lib.sim_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t,
                                        ctypes.POINTER(ctypes.c_void_p)]
        self.lib.sim_signature.restype = ctypes.c_int
        self.lib.sim_signature.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        self.names = set(names)
        self.limits = SimLimits(max_shared, sm_count, max_shared + 8192 if optin is None else optin)
        self.static_shared = _static_shared()
        self.launches: list[tuple[str, int, int, int]] = []

    def get_function(self, name: str) -> "SimKernel":
        if name not in self.names:
            raise KeyError(f"no kernel {name!r} in the module")
        return SimKernel(self, name)

    @functools.cache
    def signature(self, name: str) -> tuple[tuple[str, int], ...]:
        """The kernel's parameters: (kind, bytes) each, kind 'p' (pointer; bytes: the alignment
        of its pointee), 'f' or 'i'."""
        buf = ctypes.create_string_buffer(512)
        if self.lib.sim_signature(name.encode(), buf, 512) < 0:
            raise KeyError(f"no kernel {name!r} in the module")
        code = buf.value.decode()
        return tuple((code[k], int(code[k + 1])) for k in range(0, len(code), 2))


class SimKernel:
    def __init__(self, module: SimModule, name: str):
        self.module = module
        self.name = name
        #: static shared memory (as CuPy's ``Function.shared_size_bytes``)
        self.shared_size_bytes = module.static_shared.get(name, 8192)
        # as on a GPU: 48 KiB minus the kernel's static shared memory until the launcher opts in
        # to more, and never beyond the opt-in limit less the static shared memory
        self._max_dynamic = 48 * 1024 - self.shared_size_bytes

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        if value + self.shared_size_bytes > self.module.limits.optin:
            raise RuntimeError(f"{self.name}: {value} bytes of dynamic shared memory with {self.shared_size_bytes} "
                               f"static exceed the opt-in limit {self.module.limits.optin}: CUDA_ERROR_INVALID_VALUE")
        self._max_dynamic = value

    def __call__(self, grid, block, args, shared_mem: int = 0):
        (gx,) = tuple(grid)
        (bx,) = tuple(block)
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(f"{self.name}: {shared_mem} bytes of dynamic shared memory without opting in "
                               f"(limit {self.max_dynamic_shared_size_bytes}): CUDA_ERROR_INVALID_VALUE")
        if shared_mem > self.module.limits.max_shared:
            raise RuntimeError(f"{self.name}: {shared_mem} bytes of shared memory exceed the device's limit")
        self._check_arguments(args)
        keep = []
        params = (ctypes.c_void_p * max(len(args), 1))()
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):  # a pointer to its first element, as CuPy passes it
                holder = ctypes.c_void_p(a.__array_interface__["data"][0])
            elif isinstance(a, np.generic):
                holder = ctypes.create_string_buffer(a.tobytes(), max(a.itemsize, 8))
            else:
                raise TypeError(f"{self.name}: argument {i} must be an array or a NumPy scalar, got {type(a)}")
            keep.append(holder)
            params[i] = ctypes.addressof(holder)
        self.module.launches.append((self.name, gx, bx, shared_mem))
        rc = self.module.lib.sim_launch(self.name.encode(), gx, bx, shared_mem, params)
        if rc != 0:
            raise RuntimeError(f"cuda_sim: kernel {self.name} not found")


    def _check_arguments(self, args) -> None:
        """Arguments as CuPy would pass them to this kernel's parameters: as many; an array for
        each pointer; a NumPy scalar of the parameter's kind and size for each value (CuPy packs
        a scalar by its own size, so a mismatch shifts the later parameters on a GPU)."""
        sig = self.module.signature(self.name)
        if len(args) != len(sig):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(sig)} parameters")
        for i, (a, (kind, size)) in enumerate(zip(args, sig)):
            if kind == "p":
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} must be an array (pointer parameter), got {type(a)}")
                if a.__array_interface__["data"][0] % size:
                    raise TypeError(f"{self.name}: argument {i} is not aligned to the {size} bytes its pointee needs "
                                    "(a misaligned address on a GPU)")
                continue
            if not isinstance(a, np.generic):
                raise TypeError(f"{self.name}: argument {i} must be a NumPy scalar, got {type(a)}")
            got = "f" if a.dtype.kind == "f" else "i"
            if got != kind or a.dtype.itemsize != size:
                raise TypeError(f"{self.name}: argument {i} is {a.dtype} ({a.dtype.itemsize} bytes), the parameter "
                                f"is a{'' if kind == 'i' else ' floating-point'} {size}-byte "
                                f"{'integer' if kind == 'i' else 'value'}")


def sim_module(defines=(), **kwargs) -> SimModule:
    """The emulated module of ``scip_gpu.gpu_kernels.module_source()``, compiled with
    ``#define NAME 1`` for every name in ``defines`` (as ``SCIP_GPU_DEFINES`` on a GPU)."""
    from scip_gpu import gpu_kernels

    head = "".join(f"#define {d} 1\n" for d in defines)
    return SimModule(head + gpu_kernels.module_source(), gpu_kernels.kernel_names(), **kwargs)


_shared: dict = {}


def shared_module() -> SimModule:
    """One emulated module per test session (default limits)."""
    if "module" not in _shared:
        _shared["module"] = sim_module()
    return _shared["module"]
