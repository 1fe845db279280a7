"""CellProfiler's Zernike features (``cp_zernike``, ``cp_radial_zernike``): a hand computation
from the textbook polynomials, the enclosing circle against a brute-force one and centrosome's,
values against cp_measure, and the columns of the preset."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial import ConvexHull

from scip_gpu.features.cp_zernike import ZERNIKE_INDEXES, enclosing_circles, zernike_sums

from .test_cellprofiler import H, W, _objects


@pytest.fixture(scope="module")
def objects():
    """The shapes of test_cellprofiler, a one-pixel object, a diagonal line, a plus sign and an
    empty plane."""
    extra = np.zeros((4, H, W), bool)
    extra[0, 5, 7] = True
    extra[1, np.arange(8) + 2, np.arange(8) + 4] = True
    extra[2, 10, 3:20] = True
    extra[2, 2:19, 11] = True
    return np.concatenate([_objects(), extra])


def _radial(n, m, rho):
    return sum((-1) ** k * factorial(n - k)
               / (factorial(k) * factorial((n + m) // 2 - k) * factorial((n - m) // 2 - k))
               * rho ** (n - 2 * k) for k in range((n - m) // 2 + 1))


def _brute_circle(m):
    """Smallest of the circles through two or three hull points that hold every pixel centre."""
    pts = np.argwhere(m).astype(float)
    if len(pts) > 2:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # collinear points: the two ends decide
            pass
    best = (np.inf, None)
    cands = []
    for a, b in itertools.combinations(pts, 2):
        cands.append(((a + b) / 2, np.hypot(*(a - b)) / 2))
    for a, b, c in itertools.combinations(pts, 3):
        d = 2 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
        if d == 0:
            continue
        ux = ((a @ a) * (b[1] - c[1]) + (b @ b) * (c[1] - a[1]) + (c @ c) * (a[1] - b[1])) / d
        uy = ((a @ a) * (c[0] - b[0]) + (b @ b) * (a[0] - c[0]) + (c @ c) * (b[0] - a[0])) / d
        cen = np.array([ux, uy])
        cands.append((cen, np.hypot(*(a - cen))))
    for cen, r in cands:
        if r < best[0] and (np.hypot(*(pts - cen).T) <= r * (1 + 1e-12)).all():
            best = (r, cen)
    return best[1], best[0]


def test_circle_against_brute_force(objects, kernel_path):
    centre, radius = enclosing_circles(objects)
    for k, m in enumerate(objects):
        if not m.any():
            assert radius[k] == 0 and np.isnan(centre[k]).all()
            continue
        if m.sum() == 1:
            assert radius[k] == 0 and centre[k].tolist() == np.argwhere(m)[0].tolist()
            continue
        cen, r = _brute_circle(m)
        np.testing.assert_allclose(radius[k], r, rtol=1e-12, err_msg=str(k))
        np.testing.assert_allclose(centre[k], cen, rtol=1e-12, atol=1e-12, err_msg=str(k))
    # the disc of test_cellprofiler (radius 6 around (11, 12)): its four extreme pixels
    assert centre[0].tolist() == [11.0, 12.0] and radius[0] == 6.0


# A real li mask (a generated 12-channel cell of bench_gpu.py, channel 7) whose hull has four
# cocircular vertices, (20, 32), (39, 15), (43, 17) and (30, 42): two of them subtend the same
# angle over a chord, which arccos computes to the same last bit on one platform and not on
# another. Rows 20..48: (first column, last column) of each row.
_COCIRCULAR_ROWS = [(25, 32), (22, 34), (20, 36), (19, 37), (18, 38), (17, 39), (17, 40), (16, 40),
                    (16, 41), (15, 41), (15, 42), (15, 42), (14, 42), (14, 42), (14, 42), (14, 42),
                    (14, 42), (15, 42), (15, 41), (15, 41), (16, 41), (16, 40), (17, 40), (17, 39),
                    (18, 38), (19, 37), (21, 35), (23, 33), (27, 29)]


def _cocircular_plane():
    m = np.zeros((64, 64), bool)
    for i, (a, b) in enumerate(_COCIRCULAR_ROWS):
        m[20 + i, a:b + 1] = True
    return m


def test_circle_does_not_depend_on_the_last_bit_of_arccos(objects, monkeypatch):
    """The steps of Chrystal's algorithm are exact predicates: an arccos one ulp off (a GPU's
    against the CPU's libm) picked another of two equal angles on the plane above and then
    another formula for the same circle, whose radius differed by an ulp and moved two pixels
    on the circle out of the Zernike sums (30 values of one plane on an H100). The reference
    path on such a platform gives the same circle, bit for bit, and so do the numba twin and
    the brute force (to rounding)."""
    import types

    from scip_gpu.features import cp_zernike

    masks = np.concatenate([np.pad(objects, ((0, 0), (0, 64 - H), (0, 64 - W))), _cocircular_plane()[None]])
    want = enclosing_circles(masks)  # the numba twin
    for nudge in (-np.inf, np.inf):
        ns = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
        ns.arccos = lambda x, to=nudge: np.nextafter(np.arccos(x), to)
        monkeypatch.setattr(cp_zernike, "array_module", lambda a, ns=ns: ns)
        got = enclosing_circles.reference(masks)
        monkeypatch.undo()
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    cen, r = _brute_circle(masks[-1])
    np.testing.assert_allclose(want[1][-1], r, rtol=1e-12)
    np.testing.assert_allclose(want[0][-1], cen, rtol=1e-12)
    assert _cocircular_plane().sum() == 653


def test_sums_by_hand(objects, kernel_path):
    """Textbook :math:`R_n^m(\\rho) e^{im\\theta}` (factorials, complex powers) over the pixels in
    the circle."""
    rng = np.random.default_rng(7)
    x = ndi.gaussian_filter(rng.random(objects.shape), (0, 1, 1))
    centre, radius = enclosing_circles(objects)
    for weights in (None, x):
        re, im, rad, count = zernike_sums(objects, weights)
        np.testing.assert_array_equal(rad, radius)
        np.testing.assert_array_equal(count, objects.sum(axis=(1, 2)))
        for k, m in enumerate(objects):
            if radius[k] == 0:
                assert np.isnan(re[k]).all() and np.isnan(im[k]).all()
                continue
            i, j = np.nonzero(m)
            y, xx = (i - centre[k, 0]) / radius[k], (j - centre[k, 1]) / radius[k]
            inside = xx * xx + y * y <= 1
            z = (y + 1j * xx)[inside]
            w = np.ones(len(z)) if weights is None else weights[k][m][inside]
            rho = np.abs(z)
            e = np.where(rho > 0, z / np.where(rho > 0, rho, 1), 1)  # e^{i theta}
            want = np.array([(w * _radial(n, mm, rho) * e ** mm).sum() for n, mm in ZERNIKE_INDEXES])
            np.testing.assert_allclose(re[k], want.real, rtol=1e-9, atol=1e-9, err_msg=str(k))
            np.testing.assert_allclose(im[k], want.imag, rtol=1e-9, atol=1e-9, err_msg=str(k))
    # the disc: Zernike_0_0 = its 113 pixels over the circle's area 36 pi; odd m vanish
    re, im, rad, _ = zernike_sums(objects[:1])
    assert objects[0].sum() == 113
    np.testing.assert_allclose(np.hypot(re[0, 0], im[0, 0]) / (np.pi * 36), 113 / (36 * np.pi), rtol=1e-14)
    odd = ZERNIKE_INDEXES[:, 1] % 2 == 1
    np.testing.assert_allclose(np.hypot(re[0], im[0])[odd], 0, atol=1e-9)


def test_against_cp_measure(objects, kernel_path):
    """cp_measure's get_zernike and get_radial_zernikes (and centrosome's circle, bit for bit)."""
    pytest.importorskip("cp_measure")
    from centrosome.cpmorphology import minimum_enclosing_circle
    from cp_measure.core.measureobjectintensitydistribution import get_radial_zernikes
    from cp_measure.core.measureobjectsizeshape import get_zernike

    rng = np.random.default_rng(8)
    blobs = ndi.gaussian_filter(rng.random((6, H, W)), (0, 2, 2))
    planes = np.concatenate([objects, blobs > np.quantile(blobs, 0.6, axis=(1, 2), keepdims=True)])
    x = ndi.gaussian_filter(rng.random(planes.shape), (0, 1, 1))
    centre, radius = enclosing_circles(planes)
    re, im, rad, _ = zernike_sums(planes)
    wre, wim, _, cnt = zernike_sums(planes, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.hypot(re, im) / (np.pi * rad * rad)[:, None]
        mag = np.hypot(wre, wim) / cnt[:, None]
    phase = np.arctan2(wre, wim)
    for k, m in enumerate(planes):
        if not m.any():
            continue
        lab = m.astype(np.int32)
        c, r = minimum_enclosing_circle(lab)
        assert c[0].tolist() == centre[k].tolist() and r[0] == radius[k], k
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = get_zernike(lab, None)
            rad_ref = get_radial_zernikes(lab, x[k])
        names = [f"{n}_{mm}" for n, mm in ZERNIKE_INDEXES]
        np.testing.assert_allclose(shape[k], [ref[f"Zernike_{s}"][0] for s in names], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mag[k], [rad_ref[f"RadialDistribution_ZernikeMagnitude_{s}"][0] for s in names],
                                   rtol=1e-9, atol=1e-12)
        # phases on the circle (a real part that vanishes by symmetry is +-0 from rounding: +-pi);
        # the phase of a moment that vanishes is that of rounding noise: left out
        sure = mag[k] > 1e-9 * mag[k, 0]
        want = np.array([rad_ref[f"RadialDistribution_ZernikePhase_{s}"][0] for s in names])
        turn = np.angle(np.exp(1j * (phase[k] - want)))
        np.testing.assert_allclose(turn[sure], 0, atol=1e-9)
        np.testing.assert_array_equal(np.isnan(phase[k]), np.isnan(want))


def test_preset_columns():
    """30 shape columns per mask plane; the intensity moments only when switched on."""
    from scip_gpu.cli import to_config
    from scip_gpu.features import var_table
    from scip_gpu.profile import build_plan

    from ..test_config import _compose

    for on in (False, True):
        cfg, _ = to_config(_compose(["+dataset=demo", "features=cellprofiler",
                                     f"features.cellprofiler.radial_zernikes={str(on).lower()}"]))
        var = var_table(build_plan(cfg, ["BF", "DNA"]).columns)
        li = var[var["mask"] == "li"]
        assert (li.family == "cp_zernike").sum() == 30 * 3
        row = var.loc["feat_li_AreaShape_Zernike_9_1_combined"]
        assert (row.family, row.measurement, row.params) == ("cp_zernike", "AreaShape_Zernike_9_1", "n=9,m=1")
        assert (li.family == "cp_radial_zernike").sum() == (2 * 60 if on else 0)
    row = var.loc["feat_li_RadialDistribution_ZernikePhase_DNA_4_2"]
    assert (row.family, row.measurement) == ("cp_radial_zernike", "RadialDistribution_ZernikePhase_DNA_4_2")
