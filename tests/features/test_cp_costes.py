"""Costes' automatic-threshold colocalisation (``Correlation_Costes_*`` of ``cp_colocalization``):
against the definition written out (orthogonal regression by eigenvector, every candidate
threshold scanned) and against cp_measure where it is installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.ndimage as ndi

from scip_gpu.features.cp_colocalization import FLOAT_SCALE, costes_pairs, costes_scale


def _costes_by_scan(fi, si, scale):
    """Costes' thresholds by a scan of every grid candidate: the regression line is the major
    axis of the covariance of the non-zero pixels; the threshold of A is one grid step below
    the lowest candidate from which on the background (pixels below either threshold) is
    non-negatively correlated."""
    nz = (fi > 0) | (si > 0)
    w, v = np.linalg.eigh(np.cov(fi[nz], si[nz]))
    a = v[1, 1] / v[0, 1]
    b = si[nz].mean() - a * fi[nz].mean()
    r = np.full(scale + 1, np.nan)
    for m in range(1, scale + 1):
        bg = (fi < m / scale) | (si < a * m / scale + b)
        if bg.sum() >= 3:
            r[m] = np.corrcoef(fi[bg], si[bg])[0, 1]
    good = r >= 0
    m0 = int(np.flatnonzero(~good)[-1]) + 1  # lowest candidate with all above it good
    assert good[m0:].all() and not good[:m0][1:].any(), "the example must have one sign change"
    t_a = (m0 - 1) / scale
    t_b = a * t_a + b
    both = (fi > t_a) & (si > t_b)
    return fi[both].sum() / fi[fi >= t_a].sum(), si[both].sum() / si[si >= t_b].sum()


def _example(rng, scale=100):
    """Co-varying bright pixels over an anti-correlated dim background, on the grid 1/scale."""
    fg = rng.uniform(0.3, 0.9, 60)
    fg_b = np.clip(fg + rng.normal(0, 0.05, 60), 0, 1)
    bg = rng.uniform(0.0, 0.25, 40)
    fi = np.concatenate([fg, bg])
    si = np.concatenate([fg_b, 0.25 - bg])
    return np.round(fi * scale) / scale, np.round(si * scale) / scale


def test_costes_against_the_definition(kernel_path):
    rng = np.random.default_rng(7)
    scale = 100
    objs = [_example(rng, scale) for _ in range(3)]
    x = np.stack([np.stack(o) for o in objs])  # (3, 2, 100)
    view = np.ones((3, x.shape[2]), bool)
    view[2, ::7] = False  # a different pixel set
    got = costes_pairs(x, view, [(0, 1)], scale)
    for k in range(3):
        fi, si = x[k, 0][view[k]], x[k, 1][view[k]]
        np.testing.assert_allclose(got[k, 0], _costes_by_scan(fi, si, scale), rtol=1e-12)
    assert (got > 0.5).all() and (got < 1).all()  # the dim background is not colocalised


def test_costes_undefined_cases(kernel_path):
    rng = np.random.default_rng(8)
    fi, si = _example(rng)
    x = np.stack([np.stack([fi, si])] * 5)
    view = np.ones((5, fi.size), bool)
    view[0, 2:] = False  # 2 pixels
    x[1, 1] = 0.4  # constant B
    x[2, 1] = 1 - x[2, 0]  # perfectly anti-correlated
    x[3] *= 300  # not on the [0, 1] scale
    got = costes_pairs(x, view, [(0, 1)], 100)
    assert np.isnan(got[:4]).all()
    assert np.isfinite(got[4]).all()


def test_costes_scale_of_pixel_types():
    assert costes_scale(np.uint8) == 255 and costes_scale(np.uint16) == 65535
    assert costes_scale(np.uint32) == 2**32 - 1 and costes_scale(np.float32) == FLOAT_SCALE


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_costes_against_cp_measure(dtype, kernel_path):
    mc = pytest.importorskip("cp_measure.core.measurecolocalization")
    rng = np.random.default_rng(9)
    n, h, w = 24, 24, 26
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        cy, cx, r = rng.uniform(8, 16), rng.uniform(8, 18), rng.uniform(3, 9)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    scale = np.iinfo(dtype).max
    base = ndi.gaussian_filter(rng.random((n, h, w)), (0, 1.5, 1.5))
    a = base + 0.1 * rng.random((n, h, w))
    b = 0.5 * base + rng.uniform(0, 0.3, (n, 1, 1)) * rng.random((n, h, w))
    a = (a / a.max() * scale * 0.8).astype(dtype)
    b = (b / b.max() * scale * 0.6).astype(dtype)
    x = np.stack([a, b], 1).astype(np.float64) / scale
    got = costes_pairs(x.reshape(n, 2, -1), masks.reshape(n, -1), [(0, 1)], costes_scale(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cp_measure warns where Costes is undefined
        ref = np.array([[v[0] for v in mc.get_correlation_costes(a[i], b[i], masks[i].astype(np.int32)).values()]
                        for i in range(n)])
    assert np.isfinite(ref).sum() >= n  # most objects defined
    np.testing.assert_allclose(got[:, 0], ref, rtol=1e-12, atol=1e-15)
