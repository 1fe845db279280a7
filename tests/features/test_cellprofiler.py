"""CellProfiler families (``features=cellprofiler``) on hand-computable objects (disc, square,
ring, an object in two pieces) against independent references: scikit-image ``regionprops``,
SciPy's distance transform, NumPy statistics, ``skimage.feature.graycomatrix`` with the textbook
Haralick formulas; and against cp_measure itself where it is installed (``pip install
'scip_gpu[parity]'``)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.feature import graycomatrix
from skimage.measure import regionprops
from skimage.morphology import convex_hull_image
from skimage.segmentation import find_boundaries

from scip_gpu import ops
from scip_gpu.features.cp_intensity import INTENSITY, LOCATION, plane_intensity
from scip_gpu.features.cp_sizeshape import FEATURES, sizeshape_features
from scip_gpu.features.cp_texture import HARALICK, haralick_planes, quantise_cp

H, W = 24, 26


def _objects():
    yy, xx = np.mgrid[:H, :W]
    r2 = (yy - 11) ** 2 + (xx - 12) ** 2
    disc = r2 <= 36
    square = np.zeros((H, W), bool)
    square[4:10, 5:11] = True  # 6 x 6
    ring = (r2 <= 64) & (r2 > 9)
    pieces = np.zeros((H, W), bool)  # two pieces, an empty row between them
    pieces[3:6, 4:9] = True
    pieces[7:9, 10:16] = True
    ellipse = ((yy - 12) / 4.0) ** 2 + ((xx - 13) / 9.0) ** 2 <= 1
    return np.stack([disc, square, ring, pieces, ellipse])


@pytest.fixture(scope="module")
def objects():
    return _objects()


def _get(f, name):
    return f[:, FEATURES.index(name)]


def test_sizeshape_against_regionprops(objects, kernel_path):
    f = sizeshape_features(objects)
    for k, m in enumerate(objects):
        rp = regionprops(m.astype(np.uint8))[0]
        area, perim = rp.area, rp.perimeter
        expect = {
            "Area": area, "Perimeter": perim, "ConvexArea": convex_hull_image(m).sum(),
            "Solidity": area / convex_hull_image(m).sum(), "Extent": rp.extent,
            "Eccentricity": rp.eccentricity, "MajorAxisLength": rp.axis_major_length,
            "MinorAxisLength": rp.axis_minor_length, "EulerNumber": rp.euler_number,
            "EquivalentDiameter": rp.equivalent_diameter_area, "FilledArea": rp.area_filled,
            "PerimeterCrofton": rp.perimeter_crofton,
            "FormFactor": 4 * np.pi * area / perim**2, "Compactness": perim**2 / (4 * np.pi * area),
            "Center_Y": rp.centroid[0], "Center_X": rp.centroid[1],
            "BoundingBoxMinimum_Y": rp.bbox[0], "BoundingBoxMinimum_X": rp.bbox[1],
            "BoundingBoxMaximum_Y": rp.bbox[2], "BoundingBoxMaximum_X": rp.bbox[3],
            "BoundingBoxArea": rp.area_bbox, "HuMoment_1": rp.moments_hu[1],
            "CentralMoment_2_0": rp.moments_central[2, 0],
            "NormalizedMoment_1_2": rp.moments_normalized[1, 2],
        }
        for name, v in expect.items():
            np.testing.assert_allclose(_get(f, name)[k], v, rtol=1e-10, atol=1e-10, err_msg=f"{k} {name}")
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1][m]
        np.testing.assert_allclose(_get(f, "MaximumRadius")[k], d.max(), rtol=1e-12)
        np.testing.assert_allclose(_get(f, "MeanRadius")[k], d.mean(), rtol=1e-12)
        np.testing.assert_allclose(_get(f, "MedianRadius")[k], np.median(d), rtol=1e-12)
    # the ellipse (a != c): CellProfiler's orientation is regionprops' in degrees
    rp = regionprops(objects[4].astype(np.uint8))[0]
    np.testing.assert_allclose(_get(f, "Orientation")[4], np.degrees(rp.orientation), rtol=1e-10)


def test_sizeshape_by_hand(objects):
    f = sizeshape_features(objects)
    # 6 x 6 square: pixel centres 5 apart; the hull of the centres is a 5 x 5 square
    np.testing.assert_allclose(_get(f, "MinFeretDiameter")[1], 5.0)
    np.testing.assert_allclose(_get(f, "MaxFeretDiameter")[1], 5 * np.sqrt(2))
    assert _get(f, "MaximumRadius")[1] == 3.0
    # two pieces: one object (area 15 + 12), Feret from the corners (3, 4) and (8, 15)
    assert _get(f, "Area")[3] == 27
    np.testing.assert_allclose(_get(f, "MaxFeretDiameter")[3], np.hypot(5, 11))
    # the ring: one hole of 29 pixels (r^2 <= 9), Euler number 0
    assert _get(f, "EulerNumber")[2] == 0
    assert _get(f, "FilledArea")[2] == _get(f, "Area")[2] + 29
    # a one-pixel object: perimeter 0 -> FormFactor NaN (CellProfiler: inf), Feret 0
    one = np.zeros((1, 5, 5), bool)
    one[0, 2, 2] = True
    g = sizeshape_features(np.concatenate([one, np.zeros_like(one)]))
    assert _get(g, "Area")[0] == 1 and np.isnan(_get(g, "FormFactor")[0])
    assert _get(g, "MaxFeretDiameter")[0] == 0 and _get(g, "MinFeretDiameter")[0] == 0
    assert np.isnan(g[1]).all()  # an empty mask: no object


def _quantile(s, frac):
    """CellProfiler's quantile, by hand: interpolation at n * frac."""
    pos = len(s) * frac
    lo = min(int(pos), len(s) - 1)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] * (1 - (pos - lo)) + s[hi] * (pos - lo)


def test_intensity_by_hand(objects, kernel_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, (len(objects), H, W)).astype(np.float64)
    x[1] = np.arange(H * W).reshape(H, W) % 7  # ties
    edge = objects & ~ops.binary_erosion_disk(objects, np.tile([H, W], (len(objects), 1)), 1)
    f = plane_intensity(x, objects, edge)
    names = list(INTENSITY) + [f"Location_{n}" for n in LOCATION]
    for k, m in enumerate(objects):
        v = x[k][m]
        s = np.sort(v)
        e = x[k][find_boundaries(m.astype(int), mode="inner") & m]
        rr, cc = np.nonzero(m)
        cmi = np.array([(rr * v).sum(), (cc * v).sum()]) / v.sum()
        first_max = np.flatnonzero(np.where(m, x[k], -np.inf).ravel() == v.max())[0]
        expect = {
            "IntegratedIntensity": v.sum(), "MeanIntensity": v.mean(), "StdIntensity": v.std(),
            "MinIntensity": v.min(), "MaxIntensity": v.max(),
            "IntegratedIntensityEdge": e.sum(), "MeanIntensityEdge": e.mean(),
            "StdIntensityEdge": e.std(), "MinIntensityEdge": e.min(), "MaxIntensityEdge": e.max(),
            "LowerQuartileIntensity": _quantile(s, 0.25), "MedianIntensity": _quantile(s, 0.5),
            "UpperQuartileIntensity": _quantile(s, 0.75),
            "MADIntensity": _quantile(np.sort(np.abs(v - _quantile(s, 0.5))), 0.5),
            "MassDisplacement": np.hypot(*(cmi - [rr.mean(), cc.mean()])),
            "Location_CenterMassIntensity_Y": cmi[0], "Location_CenterMassIntensity_X": cmi[1],
            "Location_MaxIntensity_Y": first_max // W, "Location_MaxIntensity_X": first_max % W,
        }
        for name, val in expect.items():
            np.testing.assert_allclose(f[k, names.index(name)], val, rtol=1e-10, atol=1e-9,
                                       err_msg=f"{k} {name}")
    # CellProfiler's quantiles of 1..4: position n * frac
    s = np.array([1.0, 2.0, 3.0, 4.0])
    assert (_quantile(s, 0.25), _quantile(s, 0.5), _quantile(s, 0.75)) == (2.0, 3.0, 4.0)
    empty = plane_intensity(x[:1], np.zeros_like(objects[:1]), np.zeros_like(objects[:1]))
    assert np.isnan(empty).all()


def _haralick_textbook(P, maxv):
    """mahotas' 13 features of one symmetric count matrix, written out from the definitions."""
    p = P / P.sum()
    n = len(p)
    i, j = np.mgrid[:n, :n]
    px, py = p.sum(0), p.sum(1)
    k = np.arange(n)
    ux, uy = px @ k, py @ k
    vx, vy = px @ k**2 - ux**2, py @ k**2 - uy**2
    pp = np.bincount((i + j).ravel(), p.ravel(), 2 * n)
    pm = np.bincount(np.abs(i - j).ravel(), p.ravel(), n)[:maxv]

    def H(q):
        q = q[q > 0]
        return -(q * np.log2(q)).sum()

    hx, hy, hxy = H(px), H(py), H(p)
    outer = np.outer(px, py)
    hxy1 = -(p[outer > 0] * np.log2(outer[outer > 0])).sum()
    savg = (np.arange(2 * n) * pp).sum()
    return np.array([
        (p**2).sum(), (k**2 * np.bincount(np.abs(i - j).ravel(), p.ravel(), n)).sum(),
        ((i * j * p).sum() - ux * uy) / np.sqrt(vx * vy), vx, (p / (1 + (i - j) ** 2)).sum(),
        savg, (np.arange(2 * n) ** 2 * pp).sum() - savg**2, H(pp), hxy,
        np.var(np.concatenate([pm, np.zeros(maxv - len(pm))])), H(pm),
        (hxy - hxy1) / max(hx, hy), np.sqrt(max(0, 1 - np.exp(-2 * (H(outer.ravel()) - hxy)))),
    ])


@pytest.mark.parametrize("levels,scale", [(256, 3), (8, 1)])
def test_texture_against_graycomatrix(objects, levels, scale):
    rng = np.random.default_rng(1)
    x = ndi.gaussian_filter(rng.random((len(objects), H, W)), (0, 1, 1))
    x = (x / x.max() * 65535).astype(np.uint16)
    q = quantise_cp(x, objects, levels)
    # CellProfiler's levels: rint(255 x / 65535), then (levels - 1) / 255 truncated
    q255 = np.rint(x / 65535 * 255)
    expect_q = q255 if levels == 256 else np.floor(q255 / 255 * (levels - 1))
    np.testing.assert_array_equal(q, np.where(objects, expect_q, 0))
    f = haralick_planes(q, scale, levels)
    for k in range(len(objects)):
        maxv = int(q[k].max()) + 1
        counts = [_pair_counts(q[k], dy * scale, dx * scale, maxv)
                  for dy, dx in [(0, 1), (1, 1), (1, 0), (1, -1)]]
        if min(C.sum() for C in counts) == 0:  # a direction without pairs: all NaN (mahotas raises)
            assert np.isnan(f[k]).all()
            continue
        for d, C in enumerate(counts):
            if d in (0, 2):  # skimage's offsets agree with mahotas' on the axes only
                P = graycomatrix(q[k].astype(np.uint8), [scale], [[0, -np.pi / 2][d // 2]],
                                 levels=256, symmetric=True)[:maxv, :maxv, 0, 0].astype(float)
                P[0] = P[:, 0] = 0
                np.testing.assert_array_equal(C, P)
            np.testing.assert_allclose(f[k, d], _haralick_textbook(C, maxv), rtol=1e-9, atol=1e-12,
                                       err_msg=f"object {k} direction {d}")


def _pair_counts(q, dy, dx, maxv):
    """Symmetric co-occurrence counts of the pixel pairs (r, c), (r + dy, c + dx) of one plane,
    pairs with a 0 left out, by a loop over the pixels."""
    C = np.zeros((maxv, maxv))
    h, w = q.shape
    for r in range(h):
        for c in range(w):
            r2, c2 = r + dy, c + dx
            if 0 <= r2 < h and 0 <= c2 < w and q[r, c] > 0 and q[r2, c2] > 0:
                C[q[r, c], q[r2, c2]] += 1
                C[q[r2, c2], q[r, c]] += 1
    return C


def test_texture_without_pairs_is_nan():
    q = np.zeros((1, 8, 8), np.int32)
    q[0, 2:4, 2:4] = 5  # 2 x 2: no pair 3 apart
    assert np.isnan(haralick_planes(q, 3, 256)).all()
    assert not np.isnan(haralick_planes(q, 1, 256)).any()


def test_against_cp_measure(objects):
    """Every value that cp_measure computes on the same objects (parity extra)."""
    bulk = pytest.importorskip("cp_measure.bulk")
    core = bulk.get_core_measurements()
    rng = np.random.default_rng(2)
    x = (ndi.gaussian_filter(rng.random((len(objects), H, W)), (0, 1, 1)) * 60000).astype(np.uint16)
    shape = sizeshape_features(objects)
    edge = objects & ~ops.binary_erosion_disk(objects, np.tile([H, W], (len(objects), 1)), 1)
    inten = plane_intensity(x.astype(np.float64), objects, edge)
    tex = haralick_planes(quantise_cp(x, objects, 256), 3, 256)
    names = list(INTENSITY) + [f"Location_{n}" for n in LOCATION]
    for k, m in enumerate(objects):
        lab = m.astype(np.int32)
        ref = {**core["sizeshape"](lab, x[k] / 65535), **core["feret"](lab, x[k] / 65535)}
        for name, v in ref.items():
            if name in FEATURES:
                np.testing.assert_allclose(shape[k, FEATURES.index(name)], v[0], rtol=1e-9, atol=1e-9,
                                           err_msg=name)
        ref = core["intensity"](lab, x[k].astype(np.float64), legacy=True)
        for j, name in enumerate(names):
            key = name if name.startswith("Location") else f"Intensity_{name}"
            np.testing.assert_allclose(inten[k, j], ref[key][0], rtol=1e-9, atol=1e-9, err_msg=name)
        if k != 1:
            continue  # mahotas at 256 levels takes a while: the square only
        ref = core["texture"](lab, x[k] / 65535, scale=3, gray_levels=256)
        for d in range(4):
            for j, name in enumerate(HARALICK):
                np.testing.assert_allclose(tex[k, d, j], ref[f"{name}_3_{d:02d}_256"][0], rtol=1e-9,
                                           atol=1e-12, err_msg=f"{name} {d}")


def test_preset_columns_and_descriptions():
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs
    from scip_gpu.features import var_table
    from scip_gpu.profile import build_plan

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        raw = compose("config", overrides=["+dataset=demo", "features=cellprofiler",
                                            "features.cellprofiler.texture_scales=[3,5]",
                                            "features.cellprofiler.texture_levels=8"])
    cfg, _ = to_config(raw)
    plan = build_plan(cfg, ["BF", "DNA"])
    var = var_table(plan.columns)
    assert "feat_li_AreaShape_Area_combined" in var.index
    assert var.loc["feat_li_AreaShape_Area_DNA", "measurement"] == "AreaShape_Area"
    row = var.loc["feat_li_Texture_Contrast_DNA_5_03_8"]
    assert (row.family, row.feature, row.channel, row.params, row.measurement) == (
        "cp_texture", "Contrast", "DNA", "scale=5,direction=3,levels=8", "Texture_Contrast_DNA_5_03_8")
    assert var.loc["feat_li_Location_CenterMassIntensity_X_BF", "family"] == "cp_intensity"
    n_tex = ((var.family == "cp_texture") & (var["mask"] == "li")).sum()
    assert n_tex == 2 * 2 * 4 * 13  # channels x scales x directions x features
    assert not [c for c in var.index if c.startswith("feat_raw")]  # the preset has no raw set
    from scip_gpu.config import validate
    from scip_gpu.errors import ConfigError

    cfg.features.cellprofiler.texture_levels = 1
    with pytest.raises(ConfigError, match="texture_levels"):
        validate(cfg)


def test_preset_run_writes_cellprofiler_names(tmp_path):
    """``features=cellprofiler`` end to end (in process): the CellProfiler names of every column
    reach AnnData ``var`` and the Parquet schema metadata."""
    import anndata as ad
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs
    from scip_gpu.export import read_columns
    from scip_gpu.pipeline import run

    register_configs()
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        raw = compose("config", overrides=["+dataset=demo", "dataset.n_objects=4", "features=cellprofiler",
                                            "masks=li", "cluster=sync", f"output={out}"])
    cfg, yaml = to_config(raw)
    run(cfg, yaml)
    cols = read_columns(next((out / "features.parquet").glob("*.parquet")))  # the part names the column file
    assert cols.loc["feat_li_Intensity_MedianIntensity_DNA", "measurement"] == "Intensity_MedianIntensity_DNA"
    assert cols.loc["feat_li_Texture_Contrast_DNA_3_00_256", "family"] == "cp_texture"
    a = ad.read_h5ad(out / "features.h5ad")
    assert a.var.loc["feat_li_Texture_InfoMeas2_SPOT_3_01_256", "measurement"] == "Texture_InfoMeas2_SPOT_3_01_256"
    assert set(a.var.family) == {"cp_sizeshape", "cp_zernike", "cp_intensity", "cp_texture", "cp_granularity",
                                 "cp_radial", "cp_colocalization"}  # cp_radial_zernike: off by default
    assert a.var.loc["feat_li_AreaShape_Zernike_3_1_DNA", "measurement"] == "AreaShape_Zernike_3_1"
    assert a.var.loc["feat_li_Correlation_Manders_SPOT_BF", "measurement"] == "Correlation_Manders_SPOT_BF"
    assert np.isfinite(a[:, "feat_li_AreaShape_Area_combined"].X).all()


def test_colocalization_by_hand(objects):
    from scip_gpu.features.cp_colocalization import FEATURES as COLOC, pair_colocalization

    rng = np.random.default_rng(3)
    a = rng.random((len(objects), H * W))
    b = 0.2 * a + 0.05 * rng.random((len(objects), H * W))
    x = np.stack([a, 2 * a, b], axis=1)
    view = objects.reshape(len(objects), -1)
    f = pair_colocalization(x, view, [(0, 1), (0, 2)])
    col = {f"{n}_{w}": k for k, (n, w) in enumerate(COLOC)}
    # B = 2 A: r = 1, slope 2, overlap 1, Manders 1 both ways, RWC 1 (equal ranks)
    np.testing.assert_allclose(f[:, 0, [col["Correlation_AB"], col["Overlap_AB"], col["Manders_AB"],
                                        col["Manders_BA"], col["RWC_AB"], col["RWC_BA"]]], 1.0, rtol=1e-12)
    np.testing.assert_allclose(f[:, 0, col["Slope_AB"]], 2.0, rtol=1e-12)
    np.testing.assert_allclose(f[:, 0, col["K_AB"]], 2.0, rtol=1e-12)  # sum(ab) / sum(a^2)
    for k, m in enumerate(view):
        fa, fb = a[k][m], b[k][m]
        np.testing.assert_allclose(f[k, 1, col["Correlation_AB"]], np.corrcoef(fa, fb)[0, 1], rtol=1e-10)
        np.testing.assert_allclose(f[k, 1, col["Slope_AB"]], np.polyfit(fa, fb, 1)[0], rtol=1e-8)
        both = (fa >= 0.15 * fa.max()) & (fb >= 0.15 * fb.max())
        np.testing.assert_allclose(f[k, 1, col["Manders_AB"]], fa[both].sum() / fa[fa >= 0.15 * fa.max()].sum(),
                                   rtol=1e-12)
        np.testing.assert_allclose(f[k, 1, col["K_BA"]], (fa[both] * fb[both]).sum() / (fb[both] ** 2).sum(),
                                   rtol=1e-12)
    assert np.isnan(pair_colocalization(x[:1], np.zeros_like(view[:1]), [(0, 1)])).all()


def test_colocalization_against_cp_measure(objects):
    mc = pytest.importorskip("cp_measure.core.measurecolocalization")
    from scip_gpu.features.cp_colocalization import FEATURES as COLOC, pair_colocalization

    rng = np.random.default_rng(4)
    x = ndi.gaussian_filter(rng.random((len(objects), 2, H, W)), (0, 0, 1, 1))
    x[1, 1] = np.round(x[1, 1] * 20) / 20  # ties: ranks
    f = pair_colocalization(x.reshape(len(objects), 2, -1), objects.reshape(len(objects), -1), [(0, 1)])
    names = {"Correlation": "Pearson", "Slope": "Slope", "Overlap": "Overlap"}
    for k, m in enumerate(objects):
        ref = {}
        for fn in (mc.get_correlation_pearson, mc.get_correlation_manders_fold, mc.get_correlation_rwc,
                   mc.get_correlation_overlap):
            ref.update(fn(x[k, 0], x[k, 1], m.astype(np.int32)))
        for j, (feat, way) in enumerate(COLOC):
            key = f"Correlation_{names[feat]}" if feat in names else f"Correlation_{feat}_{1 if way == 'AB' else 2}"
            np.testing.assert_allclose(f[k, 0, j], ref[key][0], rtol=1e-10, err_msg=key)


def geodesic_distance(view, seed):
    """Dijkstra's algorithm over 8-neighbour steps of length 1 and sqrt(2) inside ``view``, from
    ``seed`` (a heap, written out; infinite where not connected)."""
    import heapq

    h, w = view.shape
    dist = np.full((h, w), np.inf)
    dist[seed] = 0.0
    heap = [(0.0, tuple(seed))]
    while heap:
        d, (i, j) = heapq.heappop(heap)
        if d > dist[i, j]:
            continue
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                a, b = i + di, j + dj
                if (di or dj) and 0 <= a < h and 0 <= b < w and view[a, b]:
                    nd = d + (np.sqrt(2.0) if di and dj else 1.0)
                    if nd < dist[a, b]:
                        dist[a, b] = nd
                        heapq.heappush(heap, (nd, (a, b)))
    return dist


def _radial_by_hand(x, m, bins=4):
    """CellProfiler's radial distribution of one object, written out: SciPy's distance
    transform, Dijkstra over 8-neighbour steps from the first pixel farthest from the edge."""
    d_edge = ndi.distance_transform_edt(m)
    centre = np.unravel_index(np.argmax(np.where(m, d_edge, -1)), m.shape)
    dist = geodesic_distance(m, centre)
    good = m & np.isfinite(dist)
    nd = np.where(good, dist, 0) / (np.where(good, dist, 0) + d_edge + 0.001)
    binned = np.minimum((nd * bins).astype(int), bins)
    ii, jj = np.mgrid[: m.shape[0], : m.shape[1]]
    wedge = (ii > centre[0]) + 2 * (jj > centre[1]) + 4 * (abs(ii - centre[0]) > abs(jj - centre[1]))
    frac, mean_frac, cv = [], [], []
    for k in range(bins):
        sel = good & (binned == k)
        frac.append(x[sel].sum() / x[good].sum())
        mean_frac.append(frac[-1] / (sel.sum() / good.sum() + np.finfo(float).eps))
        means = [x[sel & (wedge == q)].mean() for q in range(8) if (sel & (wedge == q)).any()]
        cv.append(np.std(means) / np.mean(means) if means else 0.0)
    return np.array(frac + mean_frac + cv)


def test_radial_by_hand(objects, kernel_path):
    from scip_gpu.features.cp_radial import radial_planes

    rng = np.random.default_rng(5)
    x = ndi.gaussian_filter(rng.random((len(objects), H, W)), (0, 1, 1))
    f = radial_planes(x, objects, np.ones_like(objects))
    for k, m in enumerate(objects):
        np.testing.assert_allclose(f[k], _radial_by_hand(x[k], m), rtol=1e-10, atol=1e-12, err_msg=str(k))
    # a uniform disc: MeanFrac 1 in every bin (intensity share = pixel share), RadialCV 0
    uniform = radial_planes(np.ones((1, H, W)), objects[:1], np.ones_like(objects[:1]))[0]
    np.testing.assert_allclose(uniform[4:8], 1.0, rtol=1e-12)
    np.testing.assert_allclose(uniform[8:], 0.0, atol=1e-12)
    # two pieces: the piece without the centre is left out
    assert np.isfinite(f[3]).all()
    assert np.isnan(radial_planes(x[:1], np.zeros_like(objects[:1]), np.ones_like(objects[:1]))).all()


def test_radial_against_cp_measure(objects):
    bulk = pytest.importorskip("cp_measure.bulk")
    from scip_gpu.features.cp_radial import BINS, MEASURES, radial_planes

    core = bulk.get_core_measurements()
    rng = np.random.default_rng(6)
    x = ndi.gaussian_filter(rng.random((len(objects), H, W)), (0, 1, 1))
    f = radial_planes(x, objects, np.ones_like(objects))
    for k, m in enumerate(objects):
        with np.errstate(invalid="ignore", divide="ignore"):  # cp_measure divides 0 by 0 in empty wedges
            ref = core["radial_distribution"](m.astype(np.int32), x[k])
        want = [ref[f"RadialDistribution_{meas}_{b}of{BINS}"][0] for meas in MEASURES for b in range(1, BINS + 1)]
        np.testing.assert_allclose(f[k], want, rtol=1e-10, atol=1e-12)
