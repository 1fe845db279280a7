"""Shape family against scikit-image's regionprops, SCIP's way (mean over 8-connected
components of each mask), and against SCIP itself (scikit-image 0.20) where it is installed.

Tolerances per property, ``|got - want| <= rtol * |want| + atol * scale`` with ``scale`` the
property's natural magnitude in that mask (``natural_scale``: e.g. ``area * size**(p+q)`` for
``moments_central-p-q``, ``size**2`` for the inertia tensor, 1 for Hu moments and eccentricity,
pi for the orientation, ``size`` for lengths; ``size`` the largest bbox side of a component,
averaged over components like the property):

* integer-valued properties and raw moments are exact (same integers);
* perimeters, Feret diameter, solidity, extent, equivalent diameter come from the same exact
  inputs through the same formulas (only the order of the sums over components differs);
* everything derived from central moments gets rtol 1e-6 plus atol 1e-9 of the scale: where
  a value is zero in exact arithmetic (first-order central moments, the off-diagonal inertia
  of symmetric components, some Hu moments) scikit-image returns rounding noise of ~1e-16 of
  the scale and we return zero, and the second eigenvalue of a collinear component is such
  noise too (``minor_axis_length`` = 4 sqrt(noise) ~ 1e-7 of the size, hence its atol 1e-6);
* ``orientation``: the reference applies scikit-image 0.20's rule (SCIP's; 0.26 flipped the
  sign of the :math:`a = c` special case) and decides :math:`a = c` and :math:`b = 0` in exact
  integer arithmetic, as the implementation does (see ``ref_orientation``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label, regionprops, regionprops_table

from scip_gpu.batch import assemble
from scip_gpu.features import FAMILIES
from scip_gpu.features.shape import PROPS, compute_shape, shape_columns, shape_features
from scip_gpu.masks import MaskResult

EXACT = (0.0, 0.0)
SAME_FORMULA = (1e-12, 0.0)
MOMENT = (1e-6, 1e-9)

#: property -> (rtol, atol as a fraction of the natural scale); see the module docstring
TOLERANCE = {
    **{p: MOMENT for p in PROPS},
    "area": EXACT,
    "convex_area": EXACT,
    "euler_number": EXACT,
    "filled_area": EXACT,
    **{p: EXACT for p in PROPS if p.startswith("moments-")},
    "feret_diameter_max": SAME_FORMULA,
    "perimeter": SAME_FORMULA,
    "perimeter_crofton": SAME_FORMULA,
    "solidity": SAME_FORMULA,
    "extent": SAME_FORMULA,
    "equivalent_diameter": SAME_FORMULA,
    "minor_axis_length": (1e-6, 1e-6),
}

#: SCIP's (0.20) property names -> scikit-image 0.26 names (the old ones warn in 0.26)
NEW_NAMES = {"convex_area": "area_convex", "equivalent_diameter": "equivalent_diameter_area",
             "filled_area": "area_filled", "major_axis_length": "axis_major_length",
             "minor_axis_length": "axis_minor_length"}
PROP_IDS = sorted({NEW_NAMES.get(p.split("-")[0], p.split("-")[0]) for p in PROPS})

SCIP_PYTHON = Path("/tmp/scipenv/bin/python")


# ---------------------------------------------------------------------------------------------
# Reference (scikit-image, per object)


def ref_orientation(region) -> float:
    """scikit-image 0.20's orientation of one region, with a = c and b = 0 decided exactly."""
    m = region.moments.astype(np.int64)
    q20 = m[0, 0] * m[2, 0] - m[1, 0] ** 2  # = M00 * mu20, an integer
    q02 = m[0, 0] * m[0, 2] - m[0, 1] ** 2
    q11 = m[0, 0] * m[1, 1] - m[1, 0] * m[0, 1]
    a, _, _, c = region.inertia_tensor.ravel()
    if q20 == q02:  # a == c: 0.20 gives -pi/4 for b < 0 (mu11 > 0), else pi/4
        return -np.pi / 4 if q11 > 0 else np.pi / 4
    if q11 == 0:  # b is +-0: 0.5 * atan2(+0.0, c - a)
        return 0.5 * np.arctan2(0.0, c - a)
    return region.orientation


def reference_row(mask: np.ndarray) -> np.ndarray:
    """SCIP's 59 values for one mask (NaN for an empty mask, our deviation)."""
    lab = label(mask)
    if lab.max() == 0:
        return np.full(len(PROPS), np.nan)
    table = regionprops_table(lab, properties=PROP_IDS, cache=False)
    out = []
    for p in PROPS:
        base, *rest = p.split("-")
        out.append(np.mean(table["-".join([NEW_NAMES.get(base, base), *rest])]))
    out[PROPS.index("orientation")] = np.mean([ref_orientation(r) for r in regionprops(lab)])
    return np.array(out)


def natural_scale(mask: np.ndarray) -> np.ndarray:
    """Magnitude of each property in one mask, for absolute tolerances (mean over components)."""
    regions = regionprops(label(mask))
    if not regions:
        return np.full(len(PROPS), np.nan)
    size = np.array([max(r.image.shape) for r in regions], dtype=float)
    area = np.array([r.area for r in regions], dtype=float)
    out = []
    for p in PROPS:
        if p.startswith("moments_central-"):
            i, j = (int(v) for v in p.split("-")[1:])
            out.append(np.mean(area * size ** (i + j)))
        elif p.startswith("inertia_tensor"):
            out.append(np.mean(size**2))
        elif p in ("major_axis_length", "minor_axis_length"):
            out.append(np.mean(size))
        elif p == "orientation":
            out.append(np.pi)
        else:  # Hu moments, eccentricity; exact properties have atol 0
            out.append(1.0)
    return np.array(out)


def assert_rows_match(got: np.ndarray, want: np.ndarray, scale: np.ndarray, skip=()) -> None:
    """Compare (n, 59) tables property by property with ``TOLERANCE``."""
    assert got.shape == want.shape == scale.shape
    for j, prop in enumerate(PROPS):
        if prop in skip:
            continue
        g, w = got[:, j], want[:, j]
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=prop)
        ok = ~np.isnan(w)
        rtol, atol = TOLERANCE[prop]
        err = np.abs(g[ok] - w[ok])
        bad = err > rtol * np.abs(w[ok]) + atol * scale[ok, j]
        assert not bad.any(), (
            f"{prop}: {bad.sum()} of {ok.sum()} values off, e.g. got {g[ok][bad][:3]} "
            f"want {w[ok][bad][:3]}")


# ---------------------------------------------------------------------------------------------
# Test masks


def blob_mask(rng, h, w, kind: int) -> np.ndarray:
    """Random masks with many components, holes, border contact and single pixels."""
    if kind == 0:  # smooth blobs, some with holes
        return ndi.gaussian_filter(rng.random((h, w)), 2) > 0.52
    if kind == 1:  # speckle: many single pixels and small clusters
        return rng.random((h, w)) > 0.75
    if kind == 2:  # small irregular blobs
        return ndi.gaussian_filter(rng.random((h, w)), 1.2) > 0.5
    if kind == 3:  # concentric rings: components nested in holes of others
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot(yy - h / 2 + rng.normal(), xx - w / 2 + rng.normal())
        m = np.zeros((h, w), bool)
        for i, r0 in enumerate(np.arange(1, max(h, w), rng.uniform(2, 4))):
            if i % 2 == 0:
                m |= (r >= r0) & (r < r0 + rng.uniform(0.8, 2.5))
        return m ^ (rng.random((h, w)) > 0.97)
    # large blob touching the border, with holes
    m = ndi.gaussian_filter(rng.random((h, w)), 3) > 0.45
    return m & ~(ndi.gaussian_filter(rng.random((h, w)), 1) > 0.62)


def special_masks() -> list[np.ndarray]:
    """Hand-made masks: degenerate and nested shapes."""
    out = []
    m = np.zeros((9, 11), bool)
    m[0, 0] = m[4, 5] = m[8, 10] = True  # single pixels, two in corners
    out.append(m)
    m = np.zeros((12, 12), bool)
    m[1:11, 1:11] = True
    m[3:9, 3:9] = False
    m[5:7, 5:7] = True  # island in a hole (filled area of the ring counts it)
    out.append(m)
    m = np.zeros((16, 16), bool)  # three levels: ring > ring > dot
    m[0:16, 0:16] = True
    m[2:14, 2:14] = False
    m[4:12, 4:12] = True
    m[6:10, 6:10] = False
    m[7, 7] = True
    out.append(m)
    m = np.eye(10, dtype=bool) | np.eye(10, dtype=bool)[::-1]  # diagonal lines crossing
    out.append(m)
    m = np.zeros((7, 7), bool)
    m[1, 1:6] = True  # horizontal line, vertical line, L of three pixels, diagonal domino
    m[3:7, 0] = True
    m[4:6, 3] = True
    m[5, 4] = True
    m[3, 5] = m[2, 6] = True
    out.append(m)
    out.append(np.ones((5, 8), bool))  # the whole image
    m = np.zeros((10, 10), bool)  # diamond ring: 8-connected, its inside leaks diagonally
    for i in range(5):
        m[i, 4 - i] = m[i, 5 + i] = m[9 - i, 4 - i] = m[9 - i, 5 + i] = True
    out.append(m)
    return out


def make_objects(seed=0, n=20, channels=3, lo=1, hi=48):
    """(C, h, w) masks of objects of different sizes; the combined mask is their union."""
    rng = np.random.default_rng(seed)
    objs = []
    specials = special_masks()
    for i in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        m = np.stack([blob_mask(rng, h, w, (i + c) % 5) for c in range(channels)])
        if i < len(specials):
            s = specials[i]
            m = np.stack([blob_mask(rng, *s.shape, (i + c) % 5) for c in range(channels)])
            m[i % channels] = s
        objs.append(m)
    objs[1][2] = False  # an empty channel mask
    objs.append(np.ones((channels, 1, 7), bool))  # one-row object
    objs.append(np.ones((channels, 6, 1), bool))  # one-column object
    return objs


def make_batch(objs, usable=None, garbage=True):
    """Batch and hand-built MaskResult; pixels beyond each extent are set to True in the
    masks (they must be ignored)."""
    c = objs[0].shape[0]
    hs = max(o.shape[1] for o in objs) + 3
    ws = max(o.shape[2] for o in objs) + 5
    b = assemble([np.zeros(o.shape, np.uint16) for o in objs], np.arange(len(objs)), (hs, ws))
    mask = np.zeros((len(objs), c, hs, ws), bool)
    for i, o in enumerate(objs):
        mask[i, :, : o.shape[1], : o.shape[2]] = o
    if garbage:
        mask |= ~b.valid()[:, None]
    usable = np.ones(len(objs), bool) if usable is None else usable
    mask &= usable[:, None, None, None]
    combined = mask.any(axis=1)
    n = len(objs)
    mr = MaskResult("li", mask, combined, np.zeros((n, c), np.int64), np.full((n, 4), np.nan),
                    np.zeros((n, c)), np.zeros((n, c)), usable)
    return b, mr


def planes_of(objs) -> list[np.ndarray]:
    """Combined mask then channel masks of every object, in the column order."""
    return [m for o in objs for m in [o.any(axis=0), *o]]


@pytest.fixture(scope="module")
def computed():
    objs = make_objects()
    usable = np.ones(len(objs), bool)
    usable[3] = False
    b, mr = make_batch(objs, usable)
    return objs, usable, compute_shape(b, mr, None)


# ---------------------------------------------------------------------------------------------
# Tests


def test_values_match_skimage(computed):
    objs, usable, got = computed
    c = objs[0].shape[0]
    assert got.shape == (len(objs), len(PROPS) * (c + 1))
    assert got.dtype == np.float64
    planes = planes_of([objs[i] for i in np.flatnonzero(usable)])
    want = np.array([reference_row(m) for m in planes])
    scale = np.array([natural_scale(m) for m in planes])
    assert_rows_match(got[usable].reshape(-1, len(PROPS)), want, scale)


def test_empty_and_unusable_are_nan(computed):
    _, _, got = computed
    k = len(PROPS)
    assert np.isnan(got[3]).all()  # unusable object
    assert np.isnan(got[1, 3 * k:]).all()  # empty third channel
    assert not np.isnan(got[1, : 3 * k]).any()


def test_plane_stack_directly(kernel_path):
    """shape_features on a bare stack: every plane on its own, empty planes NaN."""
    rng = np.random.default_rng(7)
    planes = np.stack([blob_mask(rng, 30, 33, k % 5) for k in range(10)])
    planes[4] = False
    got = shape_features(planes)
    assert_rows_match(got, np.array([reference_row(p) for p in planes]),
                      np.array([natural_scale(p) for p in planes]))
    assert np.isnan(shape_features(np.zeros((3, 5, 5), bool))).all()


def test_compiled_shape_passes_equal_array_form(monkeypatch):
    from scip_gpu import cpu_kernels, dispatch, ops
    from scip_gpu.features import shape as S

    if not cpu_kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    planes = np.stack([blob_mask(rng, 30, 33, k % 5) for k in range(12)])
    planes[5] = False
    labels, nl = ops.label(np.pad(planes, ((0, 0), (1, 1), (1, 1))), 2)
    a = dispatch.implementation("shape.geometry", "cpu")(labels, nl)
    compiled = S.shape_features(planes)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)  # the array form from here on
    b = S._geometry(labels, nl)
    array_form = S.shape_features(planes)
    # same sums in the same order: every property equal to the last bit
    np.testing.assert_array_equal(compiled, array_form)
    assert nl > 12
    for name in ("lab", "row", "col", "rec", "plane", "minr", "maxr", "minc", "maxc", "roff", "rec_label",
                 "rec_k", "left", "right", "side"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_columns():
    cols = shape_columns("li", ["DAPI", "CD45", "BF"])
    assert len(cols) == len(PROPS) * 4 == 236
    names = [c.name for c in cols]
    assert names[:3] == ["feat_li_area_combined", "feat_li_convex_area_combined",
                         "feat_li_eccentricity_combined"]
    assert names[59] == "feat_li_area_DAPI"
    assert names[-1] == "feat_li_moments_hu-6_BF"
    # SCIP's _shape_features_meta: for name in ["combined"] + channels: f"{prop}_{name}"
    want = [f"feat_li_{p}_{n}" for n in ["combined", "DAPI", "CD45", "BF"] for p in PROPS]
    assert names == want
    assert {c.view for c in cols[:59]} == {"combined"} and cols[0].channel is None
    assert {c.view for c in cols[59:]} == {"mask"} and cols[59].channel == "DAPI"
    assert all(c.family == "shape" and c.kind == "feat" and c.mask == "li" for c in cols)
    assert [c.feature for c in cols[:59]] == list(PROPS)
    assert shape_columns(None, ["a"])[0].name == "feat_area_combined"
    assert FAMILIES["shape"].compute is compute_shape


# ---------------------------------------------------------------------------------------------
# SCIP itself (scikit-image 0.20)

_SCIP_SCRIPT = r"""
import json, sys
import numpy as np
from skimage.measure import label, regionprops
from scip.features.shape import _row, _shape_features_meta, prop_names

d = np.load(sys.argv[1])
rows, ambiguous = [], []
for i in range(len(d.files)):
    m = d[f"m{i}"].astype(bool)
    rows.append(_row(m) if m.any() else [np.nan] * len(prop_names))
    # components whose a == c / b == 0 decision in floats differs from exact arithmetic
    amb = False
    for r in regionprops(label(m)):
        mo = r.moments.astype(np.int64)
        q20 = mo[0, 0] * mo[2, 0] - mo[1, 0] ** 2
        q02 = mo[0, 0] * mo[0, 2] - mo[0, 1] ** 2
        q11 = mo[0, 0] * mo[1, 1] - mo[1, 0] * mo[0, 1]
        a, b, _, c = r.inertia_tensor.ravel()
        amb |= (q20 == q02) != (a - c == 0) or (q11 == 0) != (b == 0)
    ambiguous.append(bool(amb))
np.save(sys.argv[2], np.array(rows, dtype=float))
print(json.dumps({"props": prop_names, "ambiguous": ambiguous,
                  "meta": list(_shape_features_meta(["x", "y"]))}))
"""


@pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="SCIP's environment (/tmp/scipenv) absent")
def test_matches_scip_0_20(tmp_path):
    objs = make_objects(seed=3, n=10)
    b, mr = make_batch(objs)
    got = compute_shape(b, mr, None).reshape(-1, len(PROPS))
    masks = planes_of(objs)
    np.savez(tmp_path / "masks.npz", **{f"m{i}": m for i, m in enumerate(masks)})
    script = tmp_path / "ref.py"
    script.write_text(_SCIP_SCRIPT)
    res = subprocess.run([str(SCIP_PYTHON), str(script), str(tmp_path / "masks.npz"),
                          str(tmp_path / "ref.npy")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert tuple(info["props"]) == PROPS
    assert info["meta"] == [f"{p}_{n}" for n in ["combined", "x", "y"] for p in PROPS]
    want = np.load(tmp_path / "ref.npy")
    # SCIP's empty channel masks give 0 for the first 11 values: ours are NaN (deviation)
    empty = ~np.array([m.any() for m in masks])
    assert empty.any()
    want[empty] = np.nan
    amb = np.array(info["ambiguous"])
    assert amb.mean() < 0.1
    scale = np.array([natural_scale(m) for m in masks])
    assert_rows_match(got[~amb], want[~amb], scale[~amb])
    assert_rows_match(got[amb], want[amb], scale[amb], skip=("orientation",))


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    from scip_gpu.backend import gpu_available

    ok, reason = gpu_available()
    if not ok:
        pytest.skip(reason)
    rng = np.random.default_rng(11)
    planes = np.stack([blob_mask(rng, 40, 37, k % 5) for k in range(15)])
    got = cupy.asnumpy(shape_features(cupy.asarray(planes)))
    np.testing.assert_allclose(got, shape_features(planes), rtol=1e-12, atol=1e-12)


def test_exact_second_order_of_a_large_object_without_overflow():
    # a full 1210 x 1210 square: its third-order raw moments (up to about 1e23) do not fit int64,
    # its second-order central moments are exact (no "invalid value encountered in cast")
    import types
    import warnings

    from scip_gpu.features.shape import _exact_second_order

    side = 1210
    k = np.arange(side, dtype=object)
    s = [sum(k ** p) for p in range(4)]  # sums of r^p over one axis, exact
    raw = np.array([[[float(s[p] * s[q]) for q in range(4)] for p in range(4)]])  # sum of r^p c^q
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu, (q20, q02, q11) = _exact_second_order(types.SimpleNamespace(side=side + 10), raw, np.zeros((1, 4, 4)))
    n = side * side
    exact = n * s[2] * s[0] - (s[1] * s[0]) ** 2  # M00 * mu20 in integers
    assert int(q20[0]) == exact and int(q02[0]) == exact and int(q11[0]) == 0
    assert mu[0, 2, 0] == pytest.approx(exact / n, rel=1e-15) and mu[0, 1, 1] == 0
