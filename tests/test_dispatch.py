"""Every registered implementation of every stage (``scip_gpu.dispatch``) against the stage's
reference, on the stage's own examples; and the choice ``dispatch.select`` makes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import scip_gpu.features  # noqa: F401  (registers the stages of every module)
import scip_gpu.masks  # noqa: F401
import scip_gpu.ops  # noqa: F401
import scip_gpu.stats  # noqa: F401
from scip_gpu import cpu_kernels, dispatch

#: the stages the pipeline is built from (names other implementations register against)
EXPECTED = {
    "ops.gaussian", "ops.sobel", "ops.binary_erosion_disk", "ops.median_disk", "ops.label",
    "ops.fill_holes_and_clean", "ops.regions_touching_border", "ops.watershed", "ops.image_stats",
    "masks.threshold_li", "masks.threshold_otsu_int", "masks.otsu_digitize", "masks.scale_to_u16",
    "masks.digitize_rows", "masks.outside_sums", "masks.channel_masks", "masks.combine",
    "stats.compact_statistics",
    "texture.masked_range", "texture.glcm_props", "texture.sobel_view_statistics", "texture.block",
    "intensity.view_statistics", "intensity.block", "intensity.raw",
    "shape.geometry", "shape.raw_moments", "shape.central_moments", "shape.pattern_props",
    "shape.lower_hull", "shape.filled_area", "shape.block",
    "cp_sizeshape.block", "cp_sizeshape.radii", "cp_sizeshape.feret", "cp_intensity.block", "cp_intensity.planes",
    "cp_texture.block", "cp_texture.haralick", "cp_colocalization.block",
    "cp_colocalization.pairs", "cp_colocalization.costes", "cp_radial.block", "cp_radial.planes",
    "cp_granularity.block", "cp_granularity.planes",
    "cp_zernike.block", "cp_zernike.circles", "cp_zernike.sums", "cp_radial_zernike.block",
}

from .conftest import cuda_backend

#: (stage, backend, device): cuda implementations run on the CPU emulation and, marked gpu, on a GPU
IMPLEMENTATIONS = [
    case
    for stage_name, backend in dispatch.registered() if backend != "reference"
    for case in ([pytest.param(stage_name, backend, "sim", id=f"{stage_name}-cuda-sim"),
                  pytest.param(stage_name, backend, "gpu", id=f"{stage_name}-cuda-gpu", marks=pytest.mark.gpu)]
                 if backend == "cuda" else [pytest.param(stage_name, backend, "cpu", id=f"{stage_name}-cpu")])
]


def _examples(name: str):
    return list(dispatch.STAGES[name].examples(np.random.default_rng(0)))


def _run_reference(name, args, kwargs, monkeypatch):
    """The reference with every nested stage on its reference too (numba switched off)."""
    with monkeypatch.context() as m:
        m.setattr(cpu_kernels, "available", lambda: False)
        return dispatch.STAGES[name].impls["reference"].fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))


@pytest.mark.parametrize(("name", "backend", "device"), IMPLEMENTATIONS)
def test_implementation_equals_reference(name, backend, device, monkeypatch):
    impl = dispatch.STAGES[name].impls[backend]
    if backend == "cpu":
        if not cpu_kernels.available():
            pytest.skip("numba is not installed")

        def run(args, kwargs):
            return impl.fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    else:
        cuda = cuda_backend(device, monkeypatch)
        if cuda is None:
            pytest.skip("no GPU" if device == "gpu" else "g++ is not installed (the CUDA emulation needs it)")

        def run(args, kwargs):
            return cuda(name, impl.fn, copy.deepcopy(args), copy.deepcopy(kwargs))
    compare = dispatch.STAGES[name].compare or (lambda ref, got, args, kwargs: dispatch.assert_equivalent(ref, got))
    ran = 0
    for k, (args, kwargs) in enumerate(_examples(name)):
        if not impl.covers(args, kwargs):
            continue
        got = run(args, kwargs)
        ref = _run_reference(name, args, kwargs, monkeypatch)
        try:
            compare(ref, got, args, kwargs)
        except AssertionError as exc:
            raise AssertionError(f"{name} ({backend}), example {k}: {exc}") from None
        ran += 1
    assert ran, f"no example of {name} is accepted by its {backend} implementation"


def test_every_stage_has_a_reference_and_examples():
    assert EXPECTED <= set(dispatch.STAGES), sorted(EXPECTED - set(dispatch.STAGES))
    for name, st in dispatch.STAGES.items():
        assert "reference" in st.impls, f"{name}: no reference"
        assert st.examples is not None, f"{name}: no examples"
        assert _examples(name), f"{name}: no examples"
        assert st.doc, f"{name}: the reference has no docstring"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_with_nested_kernels(name, monkeypatch):
    """The examples are valid inputs of the reference, and the reference gives the same with the
    stages it calls on their numba implementations (as the pipeline runs it) as on their
    references: this covers the stages that have no implementation but their reference."""
    st = dispatch.STAGES[name]
    compare = st.compare or (lambda ref, got, args, kwargs: dispatch.assert_equivalent(ref, got))
    for k, (args, kwargs) in enumerate(_examples(name)):
        got = st.impls["reference"].fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        if cpu_kernels.available():
            try:
                compare(_run_reference(name, args, kwargs, monkeypatch), got, args, kwargs)
            except AssertionError as exc:
                raise AssertionError(f"{name}, example {k}: {exc}") from None


def test_select_picks_numba_for_numpy_inputs(monkeypatch):
    from scip_gpu import ops

    x = np.zeros((2, 8, 8), dtype=np.uint16)
    e = np.array([[8, 8], [5, 3]])
    if cpu_kernels.available():
        assert dispatch.select("ops.gaussian", (x, e, 1.0), {}).backend == "cpu"
        assert dispatch.select("ops.sobel", (x, e), {}).backend == "cpu"
    # inputs the kernel does not cover: the reference
    assert dispatch.select("ops.gaussian", (x, e, 0.0), {}).backend == "reference"
    assert dispatch.select("ops.gaussian", (x.astype(np.float32), e, 1.0), {}).backend == "reference"
    assert dispatch.select("ops.median_disk", (x.astype(np.int32), e, 2), {}).backend == "reference"
    # numba unavailable (or not installed): the reference everywhere
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    for name in ("ops.gaussian", "ops.sobel", "ops.label"):
        assert dispatch.select(name, (x, e, 1.0) if name == "ops.gaussian" else (x, e), {}).backend == "reference"
    assert dispatch.select("ops.gaussian", (x, e, 1.0), {}) is dispatch.STAGES["ops.gaussian"].impls["reference"]
    # the dispatching function runs what select picks
    calls = []
    real = dispatch.STAGES["ops.sobel"].impls["reference"].fn
    monkeypatch.setattr(dispatch.STAGES["ops.sobel"].impls["reference"], "fn",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ops.sobel(x, e)
    assert calls == [1]


def test_dispatching_function_calls_the_cpu_implementation(monkeypatch):
    from scip_gpu import ops

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    impl = dispatch.STAGES["ops.label"].impls["cpu"]
    calls = []
    real = impl.fn
    monkeypatch.setattr(impl, "fn", lambda *a, **k: calls.append(a) or real(*a, **k))
    labels, n = ops.label(np.eye(4, dtype=bool)[None], 2)
    assert len(calls) == 1 and n == 1 and labels.dtype == np.int32


@pytest.fixture
def toy_stage():
    """A throwaway stage with cpu and cuda implementations (removed afterwards)."""
    name = "test.toy"

    @dispatch.stage(name, examples=lambda rng: iter([((np.ones(3),), {})]))
    def toy(x):
        """Toy stage."""
        return "reference"

    dispatch.register(name, "cpu", accepts=lambda x: x.size > 1)(lambda x: "cpu")
    dispatch.register(name, "cuda")(lambda x: "cuda")
    yield toy
    del dispatch.STAGES[name]


def test_select_rules(toy_stage, monkeypatch):
    x = np.ones(3)
    want_cpu = "cpu" if cpu_kernels.available() else "reference"
    assert toy_stage(x) == want_cpu
    assert toy_stage(np.ones(1)) == "reference"  # not accepted
    assert dispatch.select("test.toy", (x,), backend="cuda").backend == "cuda"
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")  # CUDA kernels off: the reference on the GPU
    assert dispatch.select("test.toy", (x,), backend="cuda").backend == "reference"
    assert toy_stage(x) == want_cpu  # the CPU's kernels do not depend on it
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert toy_stage(x) == "reference"


def test_no_inline_backend_branches():
    """Algorithms do not choose their implementation themselves: only dispatch.py and
    cpu_kernels.py ask whether numba is there."""
    root = Path(scip_gpu.ops.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name not in ("dispatch.py", "cpu_kernels.py") and "cpu_kernels.available()" in p.read_text()]
    assert offenders == []
