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
