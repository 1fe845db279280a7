"""The AreaShape kernels of kernels/cp_shape_extra.cu (``cp_feret``: stage cp_sizeshape.feret;
``cp_filled_area``: stage shape.filled_area) against their numba twins (the same doubles, bit
for bit) and against independent references (centrosome's Feret diameters, scikit-image's
``area_filled``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from scip_gpu import cp_cpu_kernels, cpu_kernels, gpu_kernels, ops
from scip_gpu.features import shape
from scip_gpu.features.cp_sizeshape import vertex_table


@pytest.fixture(autouse=True)
def _numba():
    if not cpu_kernels.available():
        pytest.skip("numba is not installed")


# ---------------------------------------------------------------------------------------------
# cp_sizeshape.feret


def _polygons(seed=3):
    """Convex hulls of random points (one with more vertices than a team has threads: a ring of
    40 points), plus polygons of no, one and two vertices, as an (L, V) table."""
    rng = np.random.default_rng(seed)
    polys = [np.zeros((0, 2)), np.array([[3.0, 4.0]]), np.array([[0.0, 0.0], [5.0, 2.0]])]
    for _ in range(6):
        pts = rng.integers(0, 40, size=(int(rng.integers(4, 30)), 2)).astype(np.float64)
        polys.append(pts[ConvexHull(pts).vertices])
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    polys.append(np.stack([30 * np.sin(ang) + 31.3, 17 * np.cos(ang) + 20.1], axis=1))
    polys.append(np.array([[0.0, 0.0], [0.0, 4.0], [3.0, 4.0], [3.0, 0.0]]))  # a 3 x 4 rectangle
    return vertex_table(polys)


def test_feret_kernel_equals_numba_and_centrosome(device):
    vr, vc, nv = _polygons()
    want = cp_cpu_kernels.feret_from_vertices(vr, vc, nv)
    got = gpu_kernels.cp_feret(device.asarray(vr), device.asarray(vc), device.asarray(nv))
    got = tuple(g.get() for g in got)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # no, one vertex: 0 and 0; two: min 0, max their distance; the rectangle: 3 and 5
    assert got[0][:3].tolist() == [0.0, 0.0, 0.0]
    assert got[1][:3].tolist() == [0.0, 0.0, np.sqrt(29.0)]
    assert (got[0][-1], got[1][-1]) == (3.0, 5.0)
    # centrosome's diameters of the polygons with at least three vertices (where it is installed:
    # the parity extra)
    try:
        from centrosome.cpmorphology import feret_diameter
    except ImportError:
        return
    rows = np.flatnonzero(nv >= 3)
    chulls = np.concatenate([np.stack([np.full(nv[i], j + 1), vr[i, : nv[i]], vc[i, : nv[i]]], axis=1)
                             for j, i in enumerate(rows)])
    cmin, cmax = feret_diameter(chulls, nv[rows], np.arange(1, len(rows) + 1))
    np.testing.assert_allclose(got[0][rows], cmin, rtol=1e-12)
    np.testing.assert_allclose(got[1][rows], cmax, rtol=1e-12)


def test_feret_kernel_many_polygons(device):
    """More polygons than one block's teams and a grid of several groups; an empty table."""
    vr, vc, nv = _polygons()
    vr, vc, nv = np.tile(vr, (3, 1)), np.tile(vc, (3, 1)), np.tile(nv, 3)
    want = cp_cpu_kernels.feret_from_vertices(vr, vc, nv)
    got = gpu_kernels.cp_feret(device.asarray(vr), device.asarray(vc), device.asarray(nv))
    np.testing.assert_array_equal(got[0].get(), want[0])
    np.testing.assert_array_equal(got[1].get(), want[1])
    empty = gpu_kernels.cp_feret(device.zeros((0, 1)), device.zeros((0, 1)), device.zeros(0, dtype=np.int64))
    assert empty[0].shape == empty[1].shape == (0,)


# ---------------------------------------------------------------------------------------------
# shape.filled_area


def _holed_planes(h=13, w=14):
    """Labels with holes of every kind: a ring (a 4-connected hole), a ring whose hole touches
    the bounding box's corner only diagonally, a ring holding a smaller ring (nested holes, and
    a label inside a hole), a C shape (no hole), one pixel, a diagonal line whose box is mostly
    background joined to the box border, an object touching the plane's border with a notch
    on its box's border."""
    planes = np.zeros((4, h, w), bool)
    p = planes[0]
    p[1:8, 1:8] = True
    p[3:6, 3:6] = False  # hole of 9 pixels
    p[9:12, 9:13] = True
    p[10, 10:12] = False  # hole of 2 pixels
    p = planes[1]
    p[0:11, 0:11] = True
    p[1:10, 1:10] = False
    p[3:8, 3:8] = True
    p[4:7, 4:7] = False  # a ring in a ring: the outer label's box is all filled
    p[5, 5] = True
    p = planes[2]
    p[2:9, 2:9] = True
    p[4:7, 4:9] = False  # a C: open to the right
    p[11, 12] = True
    p = planes[3]
    p[np.arange(10) + 1, np.arange(10) + 2] = True
    p[0, 13] = True
    p[:, 0] = True
    p[6, 0] = False
    p[5:8, 1] = True  # a notch (6, 0) on the box's border: not a hole
    padded = np.pad(planes, ((0, 0), (1, 1), (1, 1)))
    labels, nl = ops.label(padded, 2)
    return padded, labels.astype(np.int32), nl


def _filled_inputs(padded, labels, nl, holed=None):
    geo = shape._geometry(labels, nl)
    area = np.bincount(labels.ravel(), minlength=nl + 1).astype(np.float64)
    area[0] = 0.0
    if holed is None:
        holed = np.ones(nl + 1, dtype=bool)
    holed[0] = False
    return padded, labels, geo.plane, area, holed


def _skimage_filled(labels, nl):
    from skimage.measure import regionprops

    out = np.zeros(nl + 1)
    for plane in labels:
        for r in regionprops(plane):
            out[r.label] = r.area_filled
    return out


def test_filled_area_kernel_equals_numba_and_skimage(device):
    padded, labels, owner, area, holed = _filled_inputs(*_holed_planes())
    nl = area.shape[0] - 1
    want = cpu_kernels.filled_area(padded, labels, owner, area, holed)
    got = gpu_kernels.cp_filled_area(*(device.asarray(a) for a in (padded, labels, owner, area, holed))).get()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[1:], _skimage_filled(labels, nl)[1:])
    assert got[0] == 0.0
    # the first ring: 49 pixels filled; the ring in a ring: the outer box, 121 pixels
    assert got[labels[0, 2, 2]] == 49.0 and got[labels[1, 1, 1]] == 121.0
    # only the holed labels change: the others keep their area (here: wrong on purpose)
    some = holed.copy()
    some[labels[0, 2, 2]] = False
    area2 = area.copy()
    area2[labels[0, 2, 2]] = -1.0
    got2 = gpu_kernels.cp_filled_area(*(device.asarray(a) for a in (padded, labels, owner, area2, some))).get()
    np.testing.assert_array_equal(got2, cpu_kernels.filled_area(padded, labels, owner, area2, some))
    assert got2[labels[0, 2, 2]] == -1.0


def test_filled_area_kernel_global_workspace(sim_small_shared):
    """Planes whose workspace does not fit the (emulated) 16 KiB of shared memory: the global
    scratch variant, the same integers."""
    rng = np.random.default_rng(2)
    masks = rng.random((2, 80, 70)) < 0.55
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    labels, nl = ops.label(padded, 2)
    args = _filled_inputs(padded, labels.astype(np.int32), nl)
    assert gpu_kernels.workspace_bytes("cp_filled_area", 82, 72) > 16 * 1024
    want = cpu_kernels.filled_area(*args)
    got = gpu_kernels.cp_filled_area(*(sim_small_shared.asarray(a) for a in args)).get()
    np.testing.assert_array_equal(got, want)
    assert (got > args[3]).any()  # some labels have holes


# ---------------------------------------------------------------------------------------------
# shape.pattern_props


def _skimage_patterns(labels, nl):
    from skimage.measure import regionprops

    out = np.zeros((3, nl + 1))
    for plane in labels:
        for r in regionprops(plane):
            out[:, r.label] = r.euler_number, r.perimeter_crofton, r.perimeter
    return out


def test_pattern_kernel_equals_numba_and_skimage(device):
    """Labels with holes and nested labels, and a plane of 400 one-pixel labels (more labels
    in a plane than a block has threads)."""
    padded, _, _ = _holed_planes(h=40, w=40)
    stack = np.concatenate([padded, np.zeros((1, 42, 42), bool)])
    stack[-1, 1:41:2, 1:41:2] = True
    labels, nl = ops.label(stack, 2)
    labels = labels.astype(np.int32)
    assert nl > 400
    want = cpu_kernels.pattern_props(stack, labels, nl)
    got = gpu_kernels.cp_pattern_props(device.asarray(stack), device.asarray(labels), nl).get()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, _skimage_patterns(labels, nl), rtol=1e-12, atol=1e-12)
    # the ring in a ring holds a dot: its outer ring has Euler number 0, the one-pixel labels 1
    dots = np.unique(labels[-1][labels[-1] > 0])
    assert got[0, labels[1, 1, 1]] == 0.0 and len(dots) == 400 and (got[0, dots] == 1.0).all()


def test_pattern_kernel_global_workspace(sim_small_shared):
    rng = np.random.default_rng(4)
    padded = np.pad(rng.random((2, 70, 66)) < 0.6, ((0, 0), (1, 1), (1, 1)))
    labels, nl = ops.label(padded, 2)
    labels = labels.astype(np.int32)
    assert gpu_kernels.workspace_bytes("cp_pattern_sums", 72, 68) > 16 * 1024
    want = cpu_kernels.pattern_props(padded, labels, nl)
    got = gpu_kernels.cp_pattern_props(sim_small_shared.asarray(padded), sim_small_shared.asarray(labels), nl).get()
    np.testing.assert_array_equal(got, want)
