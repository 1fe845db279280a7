"""The CellProfiler kernels built on the exact distance transform (kernels/cp_edt.cuh,
cp_sizeshape.cu: ``cp_radii``; cp_radial.cu: ``cp_radial``) against their numba twins
(``scip_gpu.cp_cpu_kernels``): the same doubles, bit for bit (NaN and inf included), and
against SciPy's distance transform and hand values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from scip_gpu import cp_cpu_kernels, cpu_kernels, gpu_kernels
from scip_gpu.features.cp_radial import BINS

from ..features.test_cellprofiler import geodesic_distance


@pytest.fixture(autouse=True)
def _numba():
    if not cpu_kernels.available():
        pytest.skip("numba is not installed")


def _planes(h=14, w=13):
    """Edge cases: empty, one pixel, a full plane (touching every border), two pieces, a ring,
    a thin diagonal, a random blob, a disk (an even count whose middle distances differ)."""
    planes = []

    def plane():
        m = np.zeros((h, w), bool)
        planes.append(m)
        return m

    plane()
    plane()[5, 7] = True
    plane()[:, :] = True
    m = plane()
    m[1:5, 1:6] = True
    m[8:13, 6:12] = True
    m = plane()
    m[2:12, 2:11] = True
    m[5:9, 5:8] = False
    m = plane()
    m[np.arange(10), np.arange(10) + 2] = True
    m[np.arange(10), np.arange(10) + 3] = True
    rng = np.random.default_rng(5)
    m = plane()
    m[:] = ndi.gaussian_filter(rng.random((h, w)), 1.5) > 0.5
    m[0, :] = True  # touching the top border
    yy, xx = np.mgrid[:h, :w]
    plane()[:] = (yy - 6) ** 2 + (xx - 6.5) ** 2 < 4.5 ** 2
    return np.stack(planes)


# ---------------------------------------------------------------------------------------------
# cp_sizeshape.radii


def _radii_inputs(masks):
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    has = padded.any(axis=(1, 2))
    ids = np.cumsum(has) * has
    return padded, (padded * ids[:, None, None]).astype(np.int32), int(ids.max())


def _radii_scipy(padded, labels, nl):
    """Independent values: SciPy's transform per plane, NumPy's max / mean / median."""
    out = np.zeros((3, nl + 1))
    for p, lab in zip(padded, labels):
        d = ndi.distance_transform_edt(p)[lab > 0]
        if d.size:
            out[:, lab.max()] = d.max(), d.mean(), np.median(d)
    return out


def test_radii_kernel_equals_numba_and_scipy(device):
    padded, labels, nl = _radii_inputs(_planes())
    want = cp_cpu_kernels.radii(padded, labels, nl)
    got = gpu_kernels.cp_radii(device.asarray(padded), device.asarray(labels), nl).get()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, _radii_scipy(padded, labels, nl), rtol=1e-12, atol=0)
    # a one-pixel object: radius 1; the full plane (13 x 14 in a frame): its centre is 7 away
    assert got[:, 1].tolist() == [1.0, 1.0, 1.0]
    assert got[0, 2] == 7.0
    # the disk: 60 pixels, middle distances sqrt(2) and 2
    assert got[2, nl] == (np.sqrt(2) + 2) / 2


def test_radii_kernel_without_background(device):
    """No background pixel in reach (no frame): infinite distances, as the numba kernel."""
    fg = np.ones((2, 5, 6), bool)
    fg[1, 2, 3] = False
    labels = np.zeros((2, 5, 6), np.int32)
    labels[0] = 1
    labels[1, :, :2] = 2
    want = cp_cpu_kernels.radii(fg, labels, 2)
    got = gpu_kernels.cp_radii(device.asarray(fg), device.asarray(labels), 2).get()
    np.testing.assert_array_equal(got, want)
    assert np.isinf(got[:, 1]).all() and np.isfinite(got[:, 2]).all()


# ---------------------------------------------------------------------------------------------
# cp_radial.planes


def _radial_inputs(masks, seed=0):
    rng = np.random.default_rng(seed)
    m, h, w = masks.shape
    valid = np.ones((m, h, w), bool)
    valid[-1, :, w - 3:] = False  # a plane narrower than the batch
    view = masks & valid
    x = rng.random((m, h, w))
    x[2] = 0.25  # a constant object
    return x, view, valid


def test_radial_kernel_equals_numba(device):
    x, view, valid = _radial_inputs(_planes())
    want = cp_cpu_kernels.radial_planes(x, view, valid)
    got = gpu_kernels.cp_radial_planes(device.asarray(x), device.asarray(view), device.asarray(valid)).get()
    assert got.shape == (len(x), 3 * BINS)
    np.testing.assert_array_equal(got, want)  # bit for bit, NaN where numba has NaN
    assert np.isnan(got[0]).all() and not np.isnan(got[1:]).any()
    # one pixel: the centre, bin 0 holds everything; MeanFrac 1 / (1 + eps); no variation
    np.testing.assert_array_equal(got[1], [1, 0, 0, 0, 1 / (1 + np.finfo(float).eps), 0, 0, 0, 0, 0, 0, 0])
    # a constant object has no variation between wedges
    np.testing.assert_array_equal(got[2, 2 * BINS:], 0.0)


def test_radial_kernel_geodesic_paths(device):
    """Objects whose geodesic distances follow many equally short paths of both step kinds
    (a spiral, a comb, a disk with a notch), and a piece not connected to the centre: the
    relaxation's fixed point is Dijkstra's, double for double."""
    h, w = 24, 23
    planes = np.zeros((3, h, w), bool)
    s = planes[0]
    s[1, 1:22] = s[1:22, 21] = s[21, 2:22] = s[5:22, 2] = s[5, 2:18] = s[5:18, 17] = True
    s[17, 6:18] = s[9:18, 6] = s[9, 6:14] = True
    c = planes[1]
    c[2:22, 2:21:3] = True
    c[2, 2:21] = True
    c[12, 0:3] = True  # touching the left border
    yy, xx = np.mgrid[:h, :w]
    d = planes[2]
    d[:] = (yy - 11.5) ** 2 + (xx - 10.3) ** 2 < 9.5 ** 2
    d[11, 10:] = False
    d[0:3, 20:23] = True  # not connected to the centre
    x, view, valid = _radial_inputs(planes, seed=3)
    valid[-1] = True
    view = planes.copy()
    want = cp_cpu_kernels.radial_planes(x, view, valid)
    got = gpu_kernels.cp_radial_planes(device.asarray(x), device.asarray(view), device.asarray(valid)).get()
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()


def test_cp_distance_kernels_global_workspace(sim_small_shared):
    """Planes whose workspace exceeds the (emulated) shared memory: the global-memory slices,
    on a grid capped below the plane count (blocks run several planes, empty ones among them)."""
    planes = _planes()
    masks = np.zeros((11, 40, 44), bool)
    for k in range(len(masks)):
        masks[k, 7:21, 13:26] = planes[k % len(planes)]
    x, view, valid = _radial_inputs(masks)
    assert gpu_kernels.workspace_bytes("cp_radial", 40, 44) > 16 * 1024
    got = gpu_kernels.cp_radial_planes(sim_small_shared.asarray(x), sim_small_shared.asarray(view),
                                       sim_small_shared.asarray(valid)).get()
    np.testing.assert_array_equal(got, cp_cpu_kernels.radial_planes(x, view, valid))
    padded, labels, nl = _radii_inputs(masks)
    got = gpu_kernels.cp_radii(sim_small_shared.asarray(padded), sim_small_shared.asarray(labels), nl).get()
    np.testing.assert_array_equal(got, cp_cpu_kernels.radii(padded, labels, nl))
    launches = gpu_kernels.module().launches
    global_runs = {name for name, grid, _, shared in launches if shared == 0 and grid < len(masks)}
    assert global_runs >= {"cp_radial", "cp_radii"}


def test_relaxation_fixed_point_is_dijkstra_bit_for_bit():
    """What the kernel's geodesic step relies on: relaxation until nothing changes (the array
    path's ``geodesic_from``, the kernel's rounds) ends on Dijkstra's doubles exactly, although
    equally short paths sum their steps in different orders (rounding is monotone)."""
    from scip_gpu.features.cp_radial import geodesic_from

    rng = np.random.default_rng(11)
    view = ndi.gaussian_filter(rng.random((6, 40, 40)), (0, 2, 2)) > 0.47
    seeds = np.array([int(np.flatnonzero(v)[len(np.flatnonzero(v)) // 2]) for v in view])
    relaxed = geodesic_from(view, seeds)
    for v, s, r in zip(view, seeds, relaxed):
        np.testing.assert_array_equal(r, geodesic_distance(v, divmod(int(s), v.shape[1])))
    # the order matters: one straight and two diagonal steps sum to two different doubles
    s2 = np.sqrt(2.0)
    assert (0.0 + 1.0 + s2) + s2 != (0.0 + s2 + s2) + 1.0
    # a pixel reached along both orders gets the smaller (a 4 x 4 block: (0, 0) -> (3, 2))
    block = np.ones((4, 4), bool)
    got = geodesic_from(block[None], np.array([0]))[0, 3, 2]
    assert got == min((0.0 + 1.0 + s2) + s2, (0.0 + s2 + s2) + 1.0) == geodesic_distance(block, (0, 0))[3, 2]


def test_family_stages_dispatch_to_the_kernels(device):
    """On device arrays the stages run the kernels (the rest of the family its array path):
    the radius columns and the radial values equal the CPU path's exactly."""
    from scip_gpu.features.cp_radial import radial_planes
    from scip_gpu.features.cp_sizeshape import FEATURES, sizeshape_features

    masks = _planes()
    want = sizeshape_features(masks)
    got = sizeshape_features(device.asarray(masks)).get()
    cols = [FEATURES.index(f) for f in ("MaximumRadius", "MeanRadius", "MedianRadius")]
    np.testing.assert_array_equal(got[:, cols], want[:, cols])
    assert np.isnan(got[0]).all() and np.isfinite(got[1:, cols]).all()
    x, view, valid = _radial_inputs(masks)
    np.testing.assert_array_equal(radial_planes(device.asarray(x), device.asarray(view), device.asarray(valid)).get(),
                                  radial_planes(x, view, valid))
    launches = getattr(gpu_kernels.module(), "launches", None)
    if launches is not None:  # the emulation records its launches
        assert {"cp_radii", "cp_radial"} <= {name for name, *_ in launches}


def test_cp_distance_kernels_decline_planes_too_large_for_them():
    from scip_gpu import dispatch

    def radii_args(h, w):
        return (np.zeros((1, h, w), bool), np.zeros((1, h, w), np.int32), 0)

    def radial_args(h, w):
        return (np.zeros((1, h, w)), np.zeros((1, h, w), bool), np.zeros((1, h, w), bool))

    radii = dispatch.STAGES["cp_sizeshape.radii"].impls["cuda"]
    radial = dispatch.STAGES["cp_radial.planes"].impls["cuda"]
    assert radii.covers(radii_args(256, 256), {}) and radial.covers(radial_args(256, 256), {})
    assert not radii.covers(radii_args(257, 256), {}) and not radial.covers(radial_args(256, 257), {})
    assert not radii.covers((np.zeros((1, 8, 8), bool), np.zeros((1, 8, 8), np.int64), 0), {})


def test_cellprofiler_families_on_the_device_path_equal_cpu(device):
    """The cp_sizeshape and cp_radial family blocks (what ``profile_batch`` calls per mask) on
    device arrays of demo cells with li masks: these kernels inside the families, the CPU
    path's values."""
    import dataclasses

    from scip_gpu.batch import Batch, assemble
    from scip_gpu.cli import to_config
    from scip_gpu.demo import make_cell
    from scip_gpu.features.cp_radial import compute_radial
    from scip_gpu.features.cp_sizeshape import compute_sizeshape
    from scip_gpu.masks import compute_masks

    from ..test_config import _compose

    cfg, _ = to_config(_compose(["+dataset=demo", "masks=li"]))
    cells = [make_cell(i, min_size=28, max_size=40)[0] for i in range(3)]
    batch = assemble(cells, np.arange(3), (48, 48), np)
    mr = compute_masks(batch, cfg.masks.methods[0], cfg.masks, np.ones((3, cells[0].shape[0]), bool))
    dbatch = Batch(device.asarray(batch.pixels), device.asarray(batch.extents), batch.index)
    dmr = dataclasses.replace(mr, **{f.name: device.asarray(getattr(mr, f.name))
                                     for f in dataclasses.fields(mr) if isinstance(getattr(mr, f.name), np.ndarray)})
    for block in (compute_sizeshape, compute_radial):
        want = np.asarray(block(batch, mr, None))
        got = block(dbatch, dmr, None).get()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isfinite(want).mean() > 0.5
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    launches = getattr(gpu_kernels.module(), "launches", None)
    if launches is not None:
        assert {"cp_radii", "cp_radial"} <= {name for name, *_ in launches}
