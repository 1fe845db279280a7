"""One dispatch point per stage.

A *stage* is a named step of the pipeline: a filter (``ops.gaussian``), a threshold, a mask
method's whole chain, a feature family's kernel. Its implementations are registered side by
side under that name:

``reference``
    The array-namespace code (NumPy on the CPU, CuPy on a GPU): the definition of the stage,
    always available, and what every other implementation is tested against.
``cpu``
    A numba kernel (``scip_gpu.cpu_kernels``), for NumPy inputs when numba is installed.
``cuda``
    A CUDA kernel of ``kernels/`` (``scip_gpu.gpu_kernels``), for CuPy inputs unless the
    environment sets ``SCIP_GPU_KERNELS=0``.

``call`` (or calling the function returned by ``@stage``) chooses in one place: GPU inputs
run the ``cuda`` implementation, CPU inputs the ``cpu`` one, when it is registered, available
and accepts the arguments (an implementation may decline inputs it does not cover, e.g. a
float image or a plane too large for its kernel); otherwise the reference runs. Algorithms
never branch on the backend themselves.

Every stage may register example inputs (``examples``) and a comparison (``compare``); the
test suite enumerates ``STAGES`` and checks every registered implementation against the
reference on those inputs (``tests/test_dispatch.py``): CUDA implementations run there through
the CPU emulation of ``tests/cuda_sim``, and on a real GPU with ``pytest -m gpu``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from array_api_compat import is_cupy_array

BACKENDS = ("reference", "cpu", "cuda")


@dataclass
class Implementation:
    stage: str
    backend: str
    fn: Callable
    #: ``accepts(*args, **kwargs) -> bool``: whether this implementation covers the inputs
    accepts: Callable | None = None

    def covers(self, args, kwargs) -> bool:
        return self.accepts is None or bool(self.accepts(*args, **kwargs))


@dataclass
class Stage:
    name: str
    impls: dict[str, Implementation] = field(default_factory=dict)
    #: ``examples(rng) -> iterable of (args, kwargs)`` on NumPy arrays, for the tests
    examples: Callable[[np.random.Generator], Iterable[tuple[tuple, dict]]] | None = None
    #: ``compare(reference_result, result, args, kwargs)``: raises AssertionError on a mismatch
    #: (default: ``assert_equivalent``, exact for integers and booleans, 1e-12 for floats)
    compare: Callable | None = None
    doc: str = ""


#: stage name -> Stage (filled at import time of the modules that define stages)
STAGES: dict[str, Stage] = {}


def _stage(name: str) -> Stage:
    if name not in STAGES:
        STAGES[name] = Stage(name)
    return STAGES[name]


def stage(name: str, *, examples=None, compare=None):
    """Declare a stage with the decorated function as its reference implementation.

    Returns the dispatching function (same signature): it runs the implementation that
    ``select`` picks for its arguments.
    """

    def deco(fn):
        st = _stage(name)
        st.impls["reference"] = Implementation(name, "reference", fn)
        st.examples = examples or st.examples
        st.compare = compare or st.compare
        st.doc = (fn.__doc__ or "").strip().split("\n")[0]

        @functools.wraps(fn)
        def dispatcher(*args, **kwargs):
            return select(name, args, kwargs).fn(*args, **kwargs)

        dispatcher.stage = name
        dispatcher.reference = fn
        return dispatcher

    return deco


def register(name: str, backend: str, *, accepts=None):
    """Register the decorated function as the ``backend`` implementation of stage ``name``."""
    if backend not in BACKENDS or backend == "reference":
        raise ValueError(f"register: backend must be 'cpu' or 'cuda', not {backend!r}")

    def deco(fn):
        _stage(name).impls[backend] = Implementation(name, backend, fn, accepts)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# Selection


def _load_implementations() -> None:
    """Import the modules that register cpu and cuda implementations (cheap: neither imports
    numba nor CuPy at import time)."""
    from . import cp_cpu_kernels, cpu_kernels, gpu_kernels  # noqa: F401


def kernels_enabled() -> bool:
    """CUDA kernels are used unless ``SCIP_GPU_KERNELS=0`` (the array-namespace reference then
    runs on the GPU)."""
    return os.environ.get("SCIP_GPU_KERNELS", "1") != "0"


def _on_device(a, depth: int = 0) -> bool:
    """Whether ``a`` is a CuPy array or holds one: a field of a dataclass (a ``Batch``, a
    ``MaskResult``, a shape ``_Geometry``) or an item of a tuple or list, one level down."""
    if is_cupy_array(a):
        return True
    if depth > 0:
        return False
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return any(_on_device(getattr(a, f.name, None), 1) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return any(_on_device(v, 1) for v in a)
    return False


def backend_of(args: tuple, kwargs: dict) -> str:
    """'cuda' when any argument is a CuPy array or holds one (``_on_device``), else 'cpu'.

    A stage whose arguments are a dataclass of device arrays (e.g. the shape geometry) runs
    on the device: the numba kernel of its ``cpu`` implementation cannot take CuPy arrays."""
    for a in (*args, *kwargs.values()):
        if _on_device(a):
            return "cuda"
    return "cpu"


def available(backend: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        from . import cpu_kernels

        return cpu_kernels.available()
    return kernels_enabled()


def select(name: str, args: tuple = (), kwargs: dict | None = None, *, backend: str | None = None) -> Implementation:
    """The implementation of stage ``name`` that runs for these arguments."""
    kwargs = kwargs or {}
    _load_implementations()
    st = STAGES[name]
    backend = backend or backend_of(args, kwargs)
    impl = st.impls.get(backend)
    if impl is not None and available(backend) and impl.covers(args, kwargs):
        return impl
    return st.impls["reference"]


def call(name: str, *args, **kwargs) -> Any:
    """Run stage ``name`` with the implementation chosen for its arguments."""
    return select(name, args, kwargs).fn(*args, **kwargs)


def implementation(name: str, backend: str) -> Callable:
    """The function registered for ``backend`` (KeyError when there is none)."""
    _load_implementations()
    return STAGES[name].impls[backend].fn


def registered(backend: str | None = None) -> list[tuple[str, str]]:
    """(stage, backend) of every registered implementation (optionally of one backend)."""
    _load_implementations()
    return sorted((s.name, b) for s in STAGES.values() for b in s.impls if backend in (None, b))


# ---------------------------------------------------------------------------------------------
# Comparison used by the tests


def assert_equivalent(ref, got, *, rtol: float = 1e-12, atol: float = 1e-12, where: str = "result") -> None:
    """Recursive comparison of stage results: arrays (NaN patterns equal; integers and booleans
    exact, floats within ``rtol``/``atol``), tuples and lists element by element, scalars."""
    from .backend import asnumpy

    if isinstance(ref, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(ref), f"{where}: {len(ref)} parts expected"
        for k, (a, b) in enumerate(zip(ref, got)):
            assert_equivalent(a, b, rtol=rtol, atol=atol, where=f"{where}[{k}]")
        return
    a = np.asarray(asnumpy(ref)) if hasattr(ref, "shape") else np.asarray(ref)
    b = np.asarray(asnumpy(got)) if hasattr(got, "shape") else np.asarray(got)
    assert a.shape == b.shape, f"{where}: shape {b.shape}, expected {a.shape}"
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        np.testing.assert_array_equal(b, a, err_msg=where)
        return
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=f"{where}: NaN pattern")
    ok = ~np.isnan(a)
    np.testing.assert_allclose(b[ok], a[ok], rtol=rtol, atol=atol, err_msg=where)
