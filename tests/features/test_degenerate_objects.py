"""Feature values of degenerate but legal objects (one or two pixels, lines one pixel wide,
planes without background, extreme pixel values), each against an independent reference:
a hand computation, scikit-image, SciPy or cp_measure. The array-namespace reference is run
with the compiled kernels switched off, as the GPU path runs it."""

from __future__ import annotations

import numpy as np
import pytest

from scip_gpu import cpu_kernels


@pytest.fixture
def reference_only(monkeypatch):
    """The array-namespace reference of every stage (numba off)."""
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)


@pytest.mark.parametrize("pixels", [[(3, 4)], [(3, 4), (3, 5)], [(2, 2), (3, 3)]],
                         ids=["one-pixel", "two-adjacent", "two-diagonal"])
def test_enclosing_circles_of_a_batch_of_tiny_objects(pixels, reference_only):
    """A batch whose objects all have one or two pixels: the circle is the pixel (radius 0) or
    the segment's midpoint with half its length (the hull table has one or two columns only)."""
    from scip_gpu.features.cp_zernike import enclosing_circles

    m = np.zeros((2, 7, 8), bool)
    for r, c in pixels:
        m[:, r, c] = True
    m[1] = np.roll(m[1], 1, axis=1)  # the second plane: the same object one column right
    centre, radius = enclosing_circles(m)
    pts = np.array(pixels, float)
    want_c = pts.mean(axis=0)
    want_r = np.hypot(*(pts[-1] - pts[0])) / 2
    np.testing.assert_allclose(centre, [want_c, want_c + [0, 1]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(radius, [want_r, want_r], rtol=0, atol=1e-12)


def _given(images, masks):
    """A batch of (C, h, w) images and the MaskResult of their given (C, h, w) masks."""
    from scip_gpu.batch import assemble
    from scip_gpu.config import MasksConfig
    from scip_gpu.masks import given_masks

    h = max(i.shape[1] for i in images) + 2
    w = max(i.shape[2] for i in images) + 2
    batch = assemble(images, np.arange(len(images)), (h, w))
    host = np.zeros(batch.pixels.shape, bool)
    for k, m in enumerate(masks):
        host[k, :, :m.shape[1], :m.shape[2]] = m
    return batch, given_masks(batch, host, "m", MasksConfig())


def test_glcm_of_constant_and_pairless_views_is_scikit_images(kernel_path):
    """A constant view (one quantisation level) and a one-pixel view (no pixel pair at distance 3
    or 5): scikit-image's graycoprops (SCIP's) gives correlation 1 there, not NaN, and the column
    descriptions do not say otherwise."""
    from skimage.feature import graycoprops

    from scip_gpu.features.registry import FAMILIES, nan_reason
    from scip_gpu.features.texture import PROPERTIES, texture_columns
    from scip_gpu.profile import FeatureContext

    img = np.full((1, 12, 12), 77, np.uint16)
    img[0, 0, :] = 5  # background differs; the view is constant
    square = np.zeros((1, 12, 12), bool)
    square[0, 3:10, 3:10] = True
    dot = np.zeros((1, 12, 12), bool)
    dot[0, 5, 5] = True
    batch, mr = _given([img, img], [square, dot])
    got = np.asarray(FAMILIES["texture"].compute(batch, mr, FeatureContext()))
    cols = texture_columns("m", ["A"])
    col = {c.name: j for j, c in enumerate(cols)}
    one_level = np.zeros((16, 16, 1, 1))
    one_level[0, 0] = 1.0
    empty = np.zeros((16, 16, 1, 1))
    for row, glcm in ((0, one_level), (1, empty)):
        for prop in PROPERTIES:
            want = float(graycoprops(glcm, prop)[0, 0])
            for view in ("", "combined_"):
                assert got[row, col[f"feat_m_{view}glcm_mean_{prop}_3_A"]] == want, (row, prop, view)
    assert got[0, col["feat_m_glcm_mean_correlation_3_A"]] == 1.0
    corr = next(c for c in cols if c.feature.startswith("glcm_mean_correlation"))
    assert "constant" not in nan_reason(corr)


@pytest.mark.parametrize("pixels", [[(3, 4)], [(3, 4), (3, 5)], [(2, 2), (3, 3)], [(1, 1), (1, 5), (5, 3)]],
                         ids=["one-pixel", "two-adjacent", "two-diagonal", "three-apart"])
def test_sizeshape_of_objects_without_perimeter_against_cp_measure(pixels, kernel_path):
    """Objects whose scikit-image perimeter is 0: CellProfiler's Compactness P² / max(4πA, 1) is
    0 there (cp_measure's value), FormFactor 4πA / P² is NaN (README: not infinity)."""
    pytest.importorskip("cp_measure")
    from cp_measure.bulk import get_core_measurements

    from scip_gpu.features.cp_sizeshape import FEATURES
    from scip_gpu.features.registry import FAMILIES
    from scip_gpu.profile import FeatureContext

    m = np.zeros((1, 7, 8), bool)
    for r, c in pixels:
        m[0, r, c] = True
    img = np.full((1, 7, 8), 100, np.uint16)
    batch, mr = _given([img], [m])
    got = np.asarray(FAMILIES["cp_sizeshape"].compute(batch, mr, FeatureContext()))[0, len(FEATURES):]  # channel A
    with np.errstate(divide="ignore", invalid="ignore"):
        cp = get_core_measurements()["sizeshape"](m[0].astype(np.int32), None)
    col = {f: j for j, f in enumerate(FEATURES)}
    assert cp["Perimeter"][0] == got[col["Perimeter"]] == 0
    assert got[col["Compactness"]] == cp["Compactness"][0] == 0
    assert np.isnan(got[col["FormFactor"]]) and np.isinf(cp["FormFactor"][0])
    assert got[col["Area"]] == cp["Area"][0] == len(pixels)


def test_correlation_and_slope_with_constant_channels(kernel_path):
    """Pearson's r and the slope of B on A in an object where a channel is constant: undefined
    (NaN) where a channel (r) or A (slope) is constant, slope 0 on a constant B, whatever the
    rounding of the mean (1234 / 65535 is not exact in binary); elsewhere numpy's values."""
    from scip_gpu.features.cp_colocalization import FEATURES
    from scip_gpu.features.registry import FAMILIES
    from scip_gpu.profile import FeatureContext

    rng = np.random.default_rng(0)
    m = np.zeros((3, 9, 9), bool)
    m[:, 1:8, 2:7] = True
    varying = rng.integers(100, 60000, (9, 9)).astype(np.uint16)
    const = np.full((9, 9), 1234, np.uint16)
    images = [np.stack([const, const, varying]), np.stack([varying, const, varying[::-1]])]
    batch, mr = _given(images, [m, m])
    got = np.asarray(FAMILIES["cp_colocalization"].compute(batch, mr, FeatureContext())).reshape(2, 3, -1)
    corr, slope = [f for f, _ in FEATURES].index("Correlation"), [f for f, _ in FEATURES].index("Slope")
    # pairs (A, B), (A, C), (B, C) of object 0: A and B constant
    assert np.isnan(got[0, :, corr]).all()
    assert np.isnan(got[0, 0, slope]) and np.isnan(got[0, 1, slope]) and np.isnan(got[0, 2, slope])
    # object 1: A varies, B constant, C varies
    assert np.isnan(got[1, 0, corr]) and got[1, 0, slope] == 0.0
    assert np.isnan(got[1, 2, corr]) and np.isnan(got[1, 2, slope])
    a = varying[1:8, 2:7].ravel() / 65535
    c = varying[::-1][1:8, 2:7].ravel() / 65535
    np.testing.assert_allclose(got[1, 1, corr], np.corrcoef(a, c)[0, 1], rtol=1e-12)
    np.testing.assert_allclose(got[1, 1, slope], np.polyfit(a, c, 1)[0], rtol=1e-9)


def test_radial_distribution_of_an_object_filling_its_image(kernel_path):
    """An object whose image has no background pixel has no edge: every pixel in the first bin
    (README, deliberate differences); with one background pixel in a corner the values are
    cp_measure's again."""
    pytest.importorskip("cp_measure")
    from cp_measure.bulk import get_core_measurements

    from scip_gpu.features.cp_radial import BINS, MEASURES
    from scip_gpu.features.registry import FAMILIES
    from scip_gpu.profile import FeatureContext

    rng = np.random.default_rng(1)
    img = rng.integers(1000, 60000, (1, 9, 11)).astype(np.uint16)
    full = np.ones((1, 9, 11), bool)
    corner = full.copy()
    corner[0, 0, 0] = False
    batch, mr = _given([img, img], [full, corner])
    got = np.asarray(FAMILIES["cp_radial"].compute(batch, mr, FeatureContext())).reshape(2, len(MEASURES), BINS)
    frac, mean_frac = got[0, 0], got[0, 1]
    np.testing.assert_allclose(frac, [1, 0, 0, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(mean_frac, [1 / (1 + np.finfo(float).eps), 0, 0, 0], rtol=1e-15)
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = get_core_measurements()["radial_distribution"](corner[0].astype(np.int32), img[0] / 65535)
    want = [[cp[f"RadialDistribution_{m}_{b + 1}of{BINS}"][0] for b in range(BINS)] for m in MEASURES]
    np.testing.assert_allclose(got[1], want, rtol=1e-9, atol=1e-12)


def test_dim_channel_texture_is_nan_and_its_description_says_why(kernel_path):
    """CellProfiler's texture of a dim 16-bit channel: its pixels over 65535 quantise to gray
    level 0 at 256 levels, no pair is left, every Haralick value is NaN (as cp_measure's); a
    bright copy of the same object has values. The column descriptions name that cause, and
    the normalised moments of order below 2 as always NaN."""
    from scip_gpu.features.cp_sizeshape import sizeshape_columns
    from scip_gpu.features.cp_texture import texture_columns
    from scip_gpu.features.registry import FAMILIES, nan_reason
    from scip_gpu.profile import FeatureContext

    rng = np.random.default_rng(5)
    dim = rng.integers(40, 120, (1, 16, 16)).astype(np.uint16)  # rint(255 x / 65535) = 0
    bright = (dim * 300).astype(np.uint16)
    square = np.zeros((1, 16, 16), bool)
    square[0, 3:13, 3:13] = True
    batch, mr = _given([dim, bright], [square, square])
    got = np.asarray(FAMILIES["cp_texture"].compute(batch, mr, FeatureContext()))
    assert np.isnan(got[0]).all() and not np.isnan(got[1]).any()
    tex = texture_columns("m", ["A"])[0]
    assert "quantises to 0" in nan_reason(tex) and "empty" in nan_reason(tex)
    by_feature = {c.feature: c for c in sizeshape_columns("m", ["A"]) if c.channel == "A"}
    assert "always" in nan_reason(by_feature["NormalizedMoment_0_1"])
    assert "always" not in nan_reason(by_feature["NormalizedMoment_2_0"])
    assert "perimeter is 0" in nan_reason(by_feature["FormFactor"])
