"""The AreaShape block kernel (kernels/cp_sizeshape_block.cu, stage cp_sizeshape.block) against
the array-namespace reference (``features.cp_sizeshape.sizeshape_features``) on edge-case
planes, and some values against hand computations; in dynamic shared memory and in the
global-memory workspace."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from scip_gpu import gpu_kernels
from scip_gpu.batch import Batch
from scip_gpu.features.cp_sizeshape import FEATURES, compute_sizeshape
from scip_gpu.stage_examples import hand_planes, mask_batch

F = {f: k for k, f in enumerate(FEATURES)}


#: columns computed with atan2 or pow: NumPy (>= 2.4) evaluates these with its own SIMD routines,
#: which differ from glibc's (the emulation's, as from CUDA's on a GPU) in the last bit
TRANSCENDENTAL = [k for k, f in enumerate(FEATURES)
                  if f == "Orientation" or f.startswith(("NormalizedMoment", "HuMoment"))]


def _run(device, batch, mr, exact=True):
    """The kernel's (N, C + 1, 80) values, checked against the reference's: to 1e-12 (atan2 and
    pow are the device's own on a GPU); in the CPU emulation (the same operations in the same
    order) bit for bit, except the columns of atan2 and pow (``TRANSCENDENTAL``), which come from
    glibc there and from NumPy's own routines in the reference."""
    want = compute_sizeshape(batch, mr, None)
    dbatch = Batch(device.asarray(batch.pixels), device.asarray(batch.extents), batch.index)
    dmr = SimpleNamespace(mask=device.asarray(mr.mask), combined=device.asarray(mr.combined),
                          usable=device.asarray(mr.usable))
    n, c = mr.mask.shape[:2]
    table = device.zeros((n, 2 + (c + 1) * len(FEATURES)))  # the batch table: the kernel writes its columns
    cols = table[:, 2:]
    res = gpu_kernels.cp_sizeshape_block(dbatch, dmr, SimpleNamespace(out=cols))
    assert res is cols
    got = table[:, 2:].get()
    assert (table[:, :2].get() == 0).all()
    assert got.shape == want.shape == (n, (c + 1) * len(FEATURES))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-12, atol=1e-12)
    if exact:
        plain = np.ones(len(FEATURES), bool)
        plain[TRANSCENDENTAL] = False
        plain = np.tile(plain, got.shape[1] // len(FEATURES))
        np.testing.assert_array_equal(got[:, plain], want[:, plain])
    ints = [F[k] for k in ("Area", "ConvexArea", "EulerNumber", "FilledArea", "BoundingBoxArea",
                           "BoundingBoxMinimum_X", "BoundingBoxMaximum_X", "BoundingBoxMinimum_Y",
                           "BoundingBoxMaximum_Y")]
    g, w = got.reshape(-1, len(FEATURES)), want.reshape(-1, len(FEATURES))
    np.testing.assert_array_equal(g[:, ints], w[:, ints])
    return got.reshape(n, c + 1, len(FEATURES))


def test_kernel_equals_reference_on_edge_cases(device, request):
    exact = request.node.callspec.params["device"] == "sim"
    h, w = 14, 17
    one = np.zeros((h, w), bool)
    one[3, 4] = True
    full = np.ones((h, w), bool)
    planes = [one, full, *hand_planes((h, w)), *np.zeros((3, h, w), bool)]  # 4 objects of 3 planes
    # a fifth object, a copy of the first, not usable
    batch, mr, _ = mask_batch(planes + planes[:3], 2, usable=[True] * 4 + [False])
    got = _run(device, batch, mr, exact)
    rows = got.reshape(-1, len(FEATURES))
    one, full, pieces, ring, frame, hline, vline, diag, two, empty = rows[:10]
    assert len(FEATURES) == gpu_kernels.CP_SIZESHAPE_NF  # CPS_NF of the kernel
    # hand values
    assert one[F["Area"]] == 1 and one[F["MaxFeretDiameter"]] == 0 and np.isnan(one[F["FormFactor"]])
    assert full[F["Area"]] == full[F["ConvexArea"]] == full[F["FilledArea"]] == h * w
    assert full[F["Solidity"]] == full[F["Extent"]] == 1.0 and full[F["EulerNumber"]] == 1
    assert full[F["MinFeretDiameter"]] == h - 1
    assert full[F["MaxFeretDiameter"]] == np.sqrt((h - 1) ** 2 + (w - 1) ** 2)
    assert pieces[F["EulerNumber"]] == 3 and pieces[F["Area"]] == 6 + 1 + 8
    assert ring[F["EulerNumber"]] == 3 - 2 and ring[F["Area"]] == 24 + 1 + 8
    assert ring[F["FilledArea"]] == 49 + 9
    assert frame[F["EulerNumber"]] == 0 and frame[F["FilledArea"]] == h * w
    assert frame[F["MaximumRadius"]] == 1.0 and frame[F["MedianRadius"]] == 1.0
    assert hline[F["MinFeretDiameter"]] == 0 and hline[F["MaxFeretDiameter"]] == w - 5
    assert vline[F["MaxFeretDiameter"]] == h - 3 and vline[F["Orientation"]] == 0.0
    assert diag[F["MaxFeretDiameter"]] == np.sqrt(2.0 * (h - 5) ** 2) and diag[F["MinorAxisLength"]] == 0
    assert two[F["MaxFeretDiameter"]] == np.sqrt((h - 1) ** 2 + 25.0) and two[F["EulerNumber"]] == 2
    # the empty plane and the object that is not usable: NaN
    assert np.isnan(empty).all() and np.isnan(got[-1]).all() and not np.isnan(got[0, :, F["Area"]]).any()


def test_kernel_1xn_and_nx1_planes(device, request):
    exact = request.node.callspec.params["device"] == "sim"
    for shape in ((1, 13), (13, 1)):
        line = np.ones(shape, bool)
        split = line.copy()
        split.flat[[0, 5, 6, 10]] = False
        got = _run(device, *mask_batch([line, split, line & False], 2)[:2], exact)
        assert got[0, 0, F["MaxFeretDiameter"]] == 12 and got[0, 1, F["EulerNumber"]] == 3


def test_kernel_global_workspace_96(sim_small_shared):
    """96 x 96 planes: the workspace exceeds 16 KiB, so the kernel runs on global memory."""
    assert gpu_kernels.workspace_bytes("cp_sizeshape_planes", 98, 98) > 16 * 1024
    yy, xx = np.mgrid[:96, :96]
    blob = ((yy - 45) / 30.0) ** 2 + ((xx - 50) / 38.0) ** 2 <= 1
    speckle = np.random.default_rng(5).random((96, 96)) < 0.3
    _run(sim_small_shared, *mask_batch([blob, blob & ~speckle, *hand_planes((96, 96))[:2]], 1)[:2])
    launches = gpu_kernels.module().launches
    assert any(name == "cp_sizeshape_planes" and shared == 0 for name, _, _, shared in launches)
