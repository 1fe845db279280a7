"""A NumPy-backed stand-in for CuPy, cupyx and cuCIM, to run the ``device=cuda`` code path on a
machine without a GPU.

Arrays are a NumPy subclass that, like CuPy arrays, refuses implicit conversion to NumPy
(``numpy.asarray(x)`` raises; ``x.get()`` copies to the host), and every function of the fake
``cupy`` / ``cupyx.scipy.ndimage`` / ``cucim.skimage.*`` modules returns such arrays. It checks
the GPU path's control flow (dispatch on the array type, host<->device copies, pinned buffers,
kernel wrappers, memory pools), not CuPy's numerics: that needs a GPU (``pytest -m gpu``).
Only what the real CuPy (the GPU machines' version) has is there: the public names of ``cupy``
and ``cupyx.scipy.ndimage``, the keywords of CuPy's Python-defined functions and the methods of
``cupy.ndarray`` (``tests/data/cupy_api.json``, written by ``tests/cupy_api_dump.py``), and
the functions and keywords of cuCIM's ``skimage`` (``tests/data/cucim_api.json``).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import types
from pathlib import Path

import collections

import numpy as np

#: what would synchronise the host with a real device, counted by kind: "get" (a blocking copy
#: to the host), "scalar" (bool/int/float/item of a device array), "pageable" (a copy from
#: pageable host memory to the device, which synchronises the stream first)
SYNCS: collections.Counter = collections.Counter()

#: what would launch a kernel that CuPy generates (and on a fresh machine compiles with NVRTC,
#: once per kind, name and types), counted by (kind, name, argument types): ufuncs and their
#: reductions, array functions, CuPy functions that compute, dtype conversions, fills, copies
#: into views and fancy indexing. The kernels of scip_gpu's own module are not counted.
LAUNCHES: collections.Counter = collections.Counter()

#: CuPy functions that launch no generated kernel (allocations, host<->device copies, memsets,
#: type queries)
_NO_KERNEL = {"empty", "empty_like", "zeros", "zeros_like", "array", "asanyarray", "asnumpy",
              "get_array_module", "isscalar", "ndim", "shape", "size", "result_type", "can_cast", "dtype", "iinfo",
              "finfo", "issubdtype", "from_dlpack"}  # (asarray, ascontiguousarray: the stand-ins below)


def _types(args) -> str:
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            out.append(str(a.dtype))
        elif isinstance(a, (list, tuple)) and a and all(isinstance(v, np.ndarray) for v in a):
            out.append("[" + ",".join(sorted({str(v.dtype) for v in a})) + "]")
        elif isinstance(a, (bool, int, float, np.generic)):
            out.append(type(a).__name__)
    return ",".join(out)


def _fancy(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


class PinnedBuffer(bytearray):
    """What ``cupy.cuda.alloc_pinned_memory`` returns here (marks host buffers as pinned)."""


def _pinned(a) -> bool:
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return isinstance(base, (PinnedBuffer, memoryview)) and (
        not isinstance(base, memoryview) or isinstance(base.obj, PinnedBuffer))


class _MemoryPointer:
    """What ``ndarray.data`` is in CuPy, as far as scip_gpu uses it."""

    def __init__(self, array):
        self.array = array

    def memset_async(self, value, size, stream=None):
        base = self.array.view(np.ndarray)
        if not base.flags.c_contiguous or size > base.nbytes:
            raise ValueError("memset_async beyond the array's contiguous memory (fake CuPy)")
        base.reshape(-1).view(np.uint8)[:size] = value


class ndarray(np.ndarray):
    """Fake device array."""

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (fake CuPy); use .get()")

    def get(self, stream=None, order="C", out=None, blocking=True):
        if blocking:
            SYNCS["get"] += 1
        if out is not None:
            out[...] = self.view(np.ndarray)
            return out
        return self.view(np.ndarray).copy()

    def set(self, arr, stream=None):
        if not _pinned(arr):
            SYNCS["pageable"] += 1
        self.view(np.ndarray)[...] = arr

    def __bool__(self):
        SYNCS["scalar"] += 1
        return bool(self.view(np.ndarray))

    def __int__(self):
        SYNCS["scalar"] += 1
        return int(self.view(np.ndarray))

    def __float__(self):
        SYNCS["scalar"] += 1
        return float(self.view(np.ndarray))

    @property
    def data(self):
        """CuPy's ``MemoryPointer`` of the array's memory: its memsets."""
        return _MemoryPointer(self)

    def item(self, *args):
        SYNCS["scalar"] += 1
        return self.view(np.ndarray).item(*args)

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if copy or np.dtype(dtype) != self.dtype:
            LAUNCHES[("astype", f"{self.dtype}->{np.dtype(dtype)}", "")] += 1
        return _wrap(self.view(np.ndarray).astype(dtype, order=order, copy=copy))

    def fill(self, value):
        LAUNCHES[("fill", str(self.dtype), type(value).__name__)] += 1
        self.view(np.ndarray).fill(value)

    def __setitem__(self, key, value):
        kind = "fancy" if _fancy(key) else "view"
        LAUNCHES[("setitem", kind, f"{_types([value]) or type(value).__name__}->{self.dtype}")] += 1
        np.ndarray.__setitem__(self, _unwrap(key), _unwrap(value))

    def __getitem__(self, key):
        if _fancy(key):
            LAUNCHES[("getitem", "fancy", str(self.dtype))] += 1
        return np.ndarray.__getitem__(self, _unwrap(key))

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(func.__name__, args)
        LAUNCHES[("function", func.__name__, _types(args))] += 1
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host(ufunc.__name__, inputs)
        LAUNCHES[("ufunc", f"{ufunc.__name__}.{method}", _types(inputs))] += 1
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o for o in kwargs["out"])
        res = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        return _wrap(res)


def _unwrap(x):
    if isinstance(x, ndarray):
        return x.view(np.ndarray)
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, np.generic):  # (CuPy's reductions give 0-d device arrays, never host scalars)
        return np.asarray(x).view(ndarray)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a named tuple (e.g. unique_counts')
        return type(x)(*(_wrap(v) for v in x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _host_arrays(x) -> bool:
    """Whether ``x`` holds a NumPy (host) array of one or more dimensions."""
    if isinstance(x, np.ndarray):
        return not isinstance(x, ndarray) and x.ndim > 0
    if isinstance(x, (tuple, list)):
        return any(_host_arrays(v) for v in x)
    return False


def _refuse_host(name: str, args) -> None:
    """CuPy's functions and operators refuse NumPy arrays (no implicit host-to-device copy:
    ``TypeError: Unsupported type <class 'numpy.ndarray'>``); so does the stand-in."""
    if any(_host_arrays(a) for a in args):
        raise TypeError(f"fake CuPy: {name}() got a NumPy array among CuPy arrays (CuPy: Unsupported type "
                        "<class 'numpy.ndarray'>); copy it to the device first")


def _wrapped(f, check_host: bool = False, first_only: bool = False, launch: tuple | None = None):
    """``f`` on fake arrays; ``check_host``: refusing NumPy arrays among its positional
    arguments as CuPy does (``first_only``: only the first, the image of an ndimage/cuCIM
    function, whose other arguments such as footprints may be host arrays); ``launch``:
    (module, name) counted in ``LAUNCHES`` at each call."""
    def call(*args, **kwargs):
        if check_host:
            _refuse_host(getattr(f, "__name__", "f"), args[:1] if first_only else args)
        if launch is not None:
            LAUNCHES[(launch[0], launch[1], _types(args))] += 1
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = getattr(f, "__name__", "f")
    return call


@functools.cache
def cupy_api() -> dict:
    """The real CuPy's public names and keyword parameters (tests/data/cupy_api.json, written by
    tests/cupy_api_dump.py from the CuPy version of the GPU machines)."""
    return json.loads((Path(__file__).resolve().parent / "data" / "cupy_api.json").read_text())


@functools.cache
def cucim_api() -> dict:
    """The real cuCIM's ``skimage`` functions and keyword parameters (tests/data/cucim_api.json,
    written by tests/cucim_api_dump.py from the wheel the GPU machines get)."""
    return json.loads((Path(__file__).resolve().parent / "data" / "cucim_api.json").read_text())


def _checked(f, qualname: str, keywords: dict, lib: str):
    """``f`` refusing keywords that the real function of that name does not take."""
    allowed = keywords.get(qualname)
    if allowed is None:
        return f

    def call(*args, **kwargs):
        bad = sorted(set(kwargs) - set(allowed))
        if bad:
            raise TypeError(f"fake CuPy: {qualname}() of {lib} takes no keyword {', '.join(bad)}")
        return f(*args, **kwargs)

    call.__name__ = getattr(f, "__name__", "f")
    return call


#: CuPy functions that take host data
_FROM_HOST = {"array", "asarray", "asanyarray", "asnumpy", "get_array_module", "copyto", "isscalar", "ndim", "shape",
              "size", "result_type", "can_cast", "dtype", "iinfo", "finfo", "issubdtype", "from_dlpack"}


def _module(name: str, target, names=None, keywords=None, lib: str = "") -> types.ModuleType:
    """A module whose functions are ``target``'s on fake arrays; with ``names`` (and
    ``keywords``: qualified name -> parameter names), only the names and keywords the real
    module (``lib``) has."""
    mod = types.ModuleType(name)
    names = None if names is None else set(names)
    keywords = keywords or {}

    def __getattr__(attr):
        if names is not None and attr not in names and not attr.startswith("_"):
            raise AttributeError(f"fake CuPy: {name}.{attr} does not exist in {lib}")
        obj = getattr(target, attr)
        if callable(obj) and not isinstance(obj, type):
            check = names is not None and attr not in _FROM_HOST
            fn = _checked(_wrapped(obj, check, first_only=name != "cupy",
                                   launch=(name, attr) if attr not in _NO_KERNEL else None),
                          f"{name}.{attr}", keywords, lib)
            if isinstance(obj, np.ufunc) and attr in _UFUNC_AT:
                def at(out, idx, values=None, _u=obj):  # in place on the device array, as CuPy's ufunc.at
                    _u.at(out.view(np.ndarray), _unwrap(idx), *(() if values is None else (_unwrap(values),)))
                fn.at = at
            return fn
        return obj

    mod.__getattr__ = __getattr__
    return mod


#: ufuncs whose ``at`` CuPy implements (by its scatter kernels)
_UFUNC_AT = {"add", "subtract", "minimum", "maximum"}


def _missing_method(name: str):
    def fail(self):
        raise AttributeError(f"fake CuPy: cupy.ndarray has no attribute {name!r} in CuPy "
                             f"{cupy_api()['cupy_version']}")

    return property(fail)


class _Pool:
    def free_all_blocks(self):
        pass

    def total_bytes(self):
        return 0

    def used_bytes(self):
        return 0


class _Device:
    attributes = {"MultiProcessorCount": 2, "MaxSharedMemoryPerBlockOptin": 227 * 1024}

    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        pass


class _Event:
    """Work is synchronous here: an event is always complete."""

    def record(self, stream=None):
        self.t = __import__("time").perf_counter()

    def synchronize(self):
        pass


_CURRENT = __import__("threading").local()  # the streams made current by ``with stream:``, per thread


def _current_stream():
    stack = getattr(_CURRENT, "stack", None)
    return stack[-1] if stack else _NULL_STREAM


class _Stream:
    """Work is synchronous here: a stream orders nothing; what it is asked is recorded. As
    CuPy's, ``with stream:`` makes it the thread's current stream."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.non_blocking = non_blocking
        self.null = null
        self.waited = []
        self.synchronized = 0  # (how often the host waited for it)

    def __enter__(self):
        if not hasattr(_CURRENT, "stack"):
            _CURRENT.stack = []
        _CURRENT.stack.append(self)
        return self

    def __exit__(self, *exc):
        _CURRENT.stack.pop()
        return False

    def wait_event(self, event):
        self.waited.append(event)

    def synchronize(self):
        self.synchronized += 1


_NULL_STREAM = _Stream(null=True)


def install(monkeypatch) -> types.ModuleType:
    """Put the fake modules in ``sys.modules`` (undone by ``monkeypatch``)."""
    api = cupy_api()
    lib = f"CuPy {api['cupy_version']}"
    cupy = _module("cupy", np, api["cupy"], api["keywords"], lib)
    cupy.ndarray = ndarray
    for attr in sorted(n for n in dir(np.ndarray) if not n.startswith("_")):
        if attr not in cupy_api()["ndarray"] and attr not in ndarray.__dict__:
            monkeypatch.setattr(ndarray, attr, _missing_method(attr), raising=False)
    def asarray(a, dtype=None):
        if not isinstance(a, ndarray) and isinstance(a, np.ndarray) and not _pinned(a):
            SYNCS["pageable"] += 1
        return np.array(_unwrap(a), dtype=dtype).view(ndarray)

    cupy.asarray = asarray
    def ascontiguousarray(a, dtype=None):  # CuPy's takes a cupy.ndarray only
        if not isinstance(a, ndarray):
            raise TypeError(f"fake CuPy: ascontiguousarray() takes a CuPy array, got {type(a).__name__}")
        if not a.flags.c_contiguous or (dtype is not None and np.dtype(dtype) != a.dtype):  # (a copy kernel)
            LAUNCHES[("cupy", "ascontiguousarray", f"{a.dtype}->{np.dtype(dtype or a.dtype)}")] += 1
        return np.ascontiguousarray(_unwrap(a), dtype=dtype).view(ndarray)

    cupy.ascontiguousarray = ascontiguousarray
    cupy.get_default_memory_pool = lambda: _Pool()
    cupy.get_default_pinned_memory_pool = lambda: _Pool()
    cupy.cuda = types.SimpleNamespace(
        Device=_Device,
        Event=_Event,
        get_elapsed_time=lambda a, b: max((b.t - a.t) * 1e3, 1e-3),
        get_current_stream=_current_stream,
        Stream=_Stream,
        alloc_pinned_memory=lambda n: PinnedBuffer(n),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 2**34},
                                      memGetInfo=lambda: (2**33, 2**34)),
    )
    cupy.int32 = np.int32
    cupyx = _module("cupyx", types.SimpleNamespace())
    def empty_pinned(shape, dtype=np.float64):
        n = int(np.prod(shape))
        return np.frombuffer(PinnedBuffer(max(n, 1) * np.dtype(dtype).itemsize), dtype=dtype, count=n).reshape(shape)

    cupyx.empty_pinned = empty_pinned

    def scatter(op):
        def f(out, idx, values):
            getattr(np, op).at(out.view(np.ndarray), _unwrap(idx), _unwrap(values))
        return f

    cupyx.scatter_min = scatter("minimum")
    cupyx.scatter_max = scatter("maximum")
    cupyx.scatter_add = scatter("add")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    ndi = _module("cupyx.scipy.ndimage", importlib.import_module("scipy.ndimage"), api["cupyx.scipy.ndimage"],
                  api["keywords"], lib)
    cupyx.scipy = cupyx_scipy
    cupyx_scipy.ndimage = ndi
    mods = {"cupy": cupy, "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.ndimage": ndi}
    cucim = types.ModuleType("cucim")
    cucim_sk = types.ModuleType("cucim.skimage")
    cucim.skimage = cucim_sk
    mods.update({"cucim": cucim, "cucim.skimage": cucim_sk})
    for sub in ("filters", "feature", "segmentation", "transform", "measure", "morphology", "util"):
        m = _module(f"cucim.skimage.{sub}", importlib.import_module(f"skimage.{sub}"), cucim_api()["modules"][sub],
                    cucim_api()["keywords"], f"cuCIM {cucim_api()['cucim_version']}")
        setattr(cucim_sk, sub, m)
        mods[f"cucim.skimage.{sub}"] = m
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    _compat_namespace(monkeypatch)
    return cupy


def _compat_namespace(monkeypatch) -> None:
    """``array_api_compat.array_namespace`` of a fake array: array_api_compat's NumPy functions
    on fake arrays, refusing host arrays among them as CuPy's namespace does (by default it
    would take the fake array, a NumPy subclass, for a NumPy array, and code built on it would
    mix host and device arrays unnoticed)."""
    from array_api_compat import numpy as compat_numpy
    from array_api_compat.common import _helpers

    ns = types.ModuleType("array_api_compat.cupy (fake)")

    def __getattr__(attr):
        obj = getattr(compat_numpy, attr)
        if callable(obj) and not isinstance(obj, type):
            return _wrapped(obj, check_host=attr not in _FROM_HOST)
        return obj

    ns.__getattr__ = __getattr__
    original = _helpers._cls_to_namespace

    def cls_to_namespace(cls, api_version, use_compat):
        if isinstance(cls, type) and issubclass(cls, ndarray):
            return ns, None
        return original(cls, api_version, use_compat)

    monkeypatch.setattr(_helpers, "_cls_to_namespace", cls_to_namespace)
