"""CellProfiler's MeasureObjectNeighbors (``cp_neighbors``) of segmented fields of view: a hand
case, cp_measure's ``measureobjectneighbors`` on a synthetic label image and on a piece of the
shared DSB2018 field (ground-truth labels), and the fields pipeline end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scip_gpu.features.cp_neighbors import FEATURES, expand_labels, field_neighbors, strel_offsets

COL = {f: k for k, f in enumerate(FEATURES)}


def test_hand_case():
    """Three 4x4 squares in a row (the first two touching, the third 3 px away) and one far off;
    labels 2, 5, 7, 9 (not contiguous)."""
    lab = np.zeros((20, 40), np.int32)
    lab[2:6, 2:6] = 2
    lab[2:6, 6:10] = 5
    lab[2:6, 13:17] = 7  # 3 empty columns: its pixels 4 columns from 5's
    lab[15:19, 30:34] = 9
    ids, v = field_neighbors(lab, "adjacent")
    assert ids.tolist() == [2, 5, 7, 9]
    assert v[:, COL["NumberOfNeighbors"]].tolist() == [1, 1, 0, 0]
    # each square's outline is its 12 border pixels; 4 of 2's touch 5 (its right column) and
    # the right column of 5 is 4 px from 7's: only 5's left column touches
    np.testing.assert_allclose(v[:, COL["PercentTouching"]], [100 * 4 / 12, 100 * 4 / 12, 0, 0])
    # centres (3.5, 3.5), (3.5, 7.5), (3.5, 14.5), (16.5, 31.5)
    assert v[:, COL["FirstClosestObjectNumber"]].tolist() == [5, 2, 5, 7]
    assert v[:, COL["SecondClosestObjectNumber"]].tolist() == [7, 7, 2, 5]
    far7 = np.hypot(13, 17)
    np.testing.assert_allclose(v[:, COL["FirstClosestDistance"]], [4, 4, 7, far7])
    np.testing.assert_allclose(v[:, COL["SecondClosestDistance"]], [11, 7, 11, np.hypot(13, 24)])
    # collinear neighbours on one side: 0 degrees; on both sides: 180 degrees
    np.testing.assert_allclose(v[:3, COL["AngleBetweenNeighbors"]], [0, 180, 0], atol=1e-6)
    # within 3 px: 5 and 7 (pixels 4 apart) are not neighbours; within 4 px they are; the
    # touching disk is 4.5 px: all of 2 and 5 is that close to the other, only 7's left column to 5
    _, v3 = field_neighbors(lab, "within", 3)
    _, v4 = field_neighbors(lab, "within", 4)
    assert v3[:, COL["NumberOfNeighbors"]].tolist() == [1, 1, 0, 0]
    assert v4[:, COL["NumberOfNeighbors"]].tolist() == [1, 2, 1, 0]
    np.testing.assert_allclose(v4[:, COL["PercentTouching"]], [100, 100, 100 * 4 / 12, 0])
    # expanded until adjacent (every pixel to its nearest object): a chain 2 - 5 - 7 - 9, the far
    # square's region meeting only the third's; the regions touch along whole sides
    _, ve = field_neighbors(lab, "expand")
    assert ve[:, COL["NumberOfNeighbors"]].tolist() == [1, 2, 2, 1]
    # one object: no closest objects (NaN), no neighbours
    ids, v1 = field_neighbors(np.where(lab == 9, 9, 0), "within", 5)
    assert ids.tolist() == [9] and v1[0, 0] == 0 and v1[0, 1] == 0 and np.isnan(v1[0, 2:]).all()


def test_strel_matches_centrosome():
    cpm = pytest.importorskip("centrosome.cpmorphology")
    for r in (1, 1.5, 2, 5, 5.5):
        s = cpm.strel_disk(r)
        c = s.shape[0] // 2
        dy, dx = np.nonzero(s)
        ref = sorted((int(a - c), int(b - c)) for a, b in zip(dy, dx) if (a, b) != (c, c))
        assert sorted(map(tuple, strel_offsets(r).tolist())) == ref


def _random_labels(rng, shape=(64, 72), n=14):
    from skimage.segmentation import expand_labels as grow

    lab = np.zeros(shape, np.int32)
    pts = rng.integers(4, np.array(shape) - 4, size=(n, 2))
    lab[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    lab = grow(lab, 5)
    lab[rng.random(shape) < 0.04] = 0  # ragged edges
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(lab)[0]


def _cp(mn, lab, method, distance=5):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = mn.measureobjectneighbors(lab, lab, method, distance)
    return {k.split("_")[1]: np.asarray(v, float) for k, v in r.items()}


def _check_against_cp_measure(mn, lab):
    """Within and Adjacent: every value; cp_measure reports the object itself as the first
    closest (its lexsort includes the object), so its second is our first. Expand until
    adjacent: CellProfiler takes neighbours on the expanded labels and centres of the objects as
    segmented, which cp_measure's Adjacent gives on those two label images (cp_measure's own
    Expand keeps the unexpanded labels as neighbours: README)."""
    for method, name, d in (("within", mn.D_WITHIN, 5), ("within", mn.D_WITHIN, 2), ("adjacent", mn.D_ADJACENT, 1)):
        ids, v = field_neighbors(lab, method, d)
        ref = _cp(mn, lab, name, d)
        for f in FEATURES:
            if f == "SecondClosestObjectNumber":
                continue
            key = "SecondClosestObjectNumber" if f == "FirstClosestObjectNumber" else f
            np.testing.assert_allclose(v[:, COL[f]], ref[key], rtol=1e-12, atol=1e-9, err_msg=f"{method} {d} {f}")
    _, v = field_neighbors(lab, "expand")
    grown = _cp(mn, expand_labels(lab), mn.D_ADJACENT)
    plain = _cp(mn, lab, mn.D_ADJACENT)
    for f in ("NumberOfNeighbors", "PercentTouching"):
        np.testing.assert_allclose(v[:, COL[f]], grown[f], rtol=1e-12, err_msg=f"expand {f}")
    for f in ("FirstClosestDistance", "SecondClosestDistance", "AngleBetweenNeighbors"):
        np.testing.assert_allclose(v[:, COL[f]], plain[f], rtol=1e-12, atol=1e-9, err_msg=f"expand {f}")
    np.testing.assert_array_equal(v[:, COL["FirstClosestObjectNumber"]], plain["SecondClosestObjectNumber"])


def test_against_cp_measure_synthetic():
    mn = pytest.importorskip("cp_measure.multimask.measureobjectneighbors")
    lab = _random_labels(np.random.default_rng(5))
    assert lab.max() >= 10
    _check_against_cp_measure(mn, lab)


def test_against_cp_measure_dsb2018_piece(shared_data):
    mn = pytest.importorskip("cp_measure.multimask.measureobjectneighbors")
    import tifffile
    from skimage.segmentation import relabel_sequential

    DSB = shared_data / "nuclei-dsb2018"

    lab = relabel_sequential(tifffile.imread(DSB / "mask2d.tif")[:200, :240].astype(np.int32))[0]
    assert lab.max() >= 20
    _check_against_cp_measure(mn, lab)
    # the ground-truth numbers are kept: the rows join on them
    full = tifffile.imread(DSB / "mask2d.tif")
    ids, v = field_neighbors(full, "expand")
    assert set(v[:, COL["FirstClosestObjectNumber"]].astype(int)) <= set(ids.tolist())
    assert ids.tolist() == sorted(set(np.unique(full).tolist()) - {0})


def _bbbc021_cellprofiler_run(tmp_path, *overrides):
    """The command line's run (in this process) of a 2-field BBBC021 replica (4 cells each) with
    the cellprofiler preset and ``overrides``: (dataset folder, run folder, its table), every
    row checked ok."""
    import pandas as pd
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs
    from scip_gpu.pipeline import run

    from .fields_data import write_bbbc021_replica

    root = tmp_path / "bbbc021"
    write_bbbc021_replica(root, shape=(96, 112), n_cells=4, wells=("B02",), sites=(1,))
    out = tmp_path / "run"
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        raw = compose("config", overrides=[
            "+dataset=bbbc021", f"dataset.path={root}", f"dataset.metadata.0.path={root / 'BBBC021_v1_image.csv'}",
            f"dataset.metadata.1.path={root / 'BBBC021_v1_moa.csv'}", "illumination.method=null",
            "features=cellprofiler", *overrides, "segmentation.labels_format=ome_tiff", "export.report=false",
            "cluster=sync", f"output={out}"])
    cfg, yaml = to_config(raw)
    run(cfg, yaml)
    df = pd.read_parquet(out / "features.parquet")
    assert len(df) >= 4 and (df["meta_status"] == "ok").all()
    return root, out, df


def test_fields_pipeline_rows(tmp_path):
    """A fields dataset with the ``cellprofiler`` preset: per compartment, the rows carry the
    values of their field's label image (exported); an IFC-style dataset has no such columns."""
    import tifffile

    root, out, df = _bbbc021_cellprofiler_run(
        tmp_path, "features.families=[regions, cp_neighbors]", "features.cellprofiler.neighbors_method=within",
        "features.cellprofiler.neighbors_distance=3")
    for field, rows in df.groupby("meta_field"):
        with tifffile.TiffFile(next((out / "labels").glob(f"*{field.split('/')[-1][:8]}*.ome.tif"))) as tf:
            nuc, cell = tf.series[0].asarray()[:2]
        for comp, lab in (("nucleus", nuc), ("cell", cell)):
            ids, v = field_neighbors(lab, "within", 3)
            got = rows[[f"feat_Neighbors_{f}_{comp}_3" for f in FEATURES]].to_numpy()
            want = v[np.searchsorted(ids, rows["meta_label"].to_numpy())]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, equal_nan=True)
    import anndata as ad

    var = ad.read_h5ad(out / "features.h5ad").var
    assert var.loc["feat_Neighbors_NumberOfNeighbors_cell_3", "measurement"] == "Neighbors_NumberOfNeighbors_3"
    assert set(var.family) >= {"cp_neighbors"}


def test_no_neighbour_columns_without_segmentation():
    from scip_gpu.config import Config, FeatureFamily, MaskMethod, MaskMethodConfig
    from scip_gpu.profile import build_plan

    cfg = Config()
    cfg.features.families = [FeatureFamily.cp_sizeshape, FeatureFamily.cp_neighbors]
    cfg.masks.methods = [MaskMethodConfig(MaskMethod.li, "li", {})]
    plan = build_plan(cfg, ["DNA", "BF"])
    assert plan.columns and not [c for c in plan.columns if c.family == "cp_neighbors"]


def test_neighbour_options_are_checked():
    from hydra import compose, initialize_config_dir

    from scip_gpu._resources import conf_dir
    from scip_gpu.cli import to_config
    from scip_gpu.config import register_configs, validate
    from scip_gpu.errors import ConfigError

    register_configs()
    for key, value in (("neighbors_method", "touching"), ("neighbors_distance", 0)):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            raw = compose("config", overrides=["+dataset=demo", "features=cellprofiler",
                                                f"features.cellprofiler.{key}={value}"])
        with pytest.raises(ConfigError, match=key):
            cfg, _ = to_config(raw)
            validate(cfg)


def test_rows_of_a_field():
    """Rows take their label's values per compartment; a label missing from a compartment (a
    cell without nucleus) is NaN there."""
    from scip_gpu.features.cp_neighbors import rows_of_field

    cell = np.zeros((20, 30), np.int32)
    cell[2:8, 2:8], cell[2:8, 8:14], cell[12:18, 20:26] = 3, 4, 8
    nuc = np.where(np.isin(cell, [3, 8]), cell, 0)
    got = rows_of_field({"nucleus": nuc, "cell": cell}, [8, 4, 3], ["nucleus", "cell", "cell"], None)
    assert got.shape == (3, 14)
    _, vn = field_neighbors(nuc, "expand")
    _, vc = field_neighbors(cell, "expand")
    np.testing.assert_array_equal(got[:, :7], np.stack([vn[1], np.full(7, np.nan), vn[0]]))
    np.testing.assert_array_equal(got[:, 7:], vc[[2, 1, 0]])
    assert rows_of_field({"cell": np.zeros((5, 5), int)}, [1], ["cell"], None).shape == (1, 7)


def test_fields_edge_intensity_is_that_of_the_whole_field(tmp_path):
    """CellProfiler's edge pixels of a segmented cell (its pixels with a 4-neighbour of another
    label, the field's border not counting: skimage's find_boundaries(mode='inner') of the whole
    field's label image): the cells are cropped one pixel beyond their box, so the crop's border
    is background as on the field. Before, the crop was the box and the cell's pixels on it were
    not edge pixels (about two thirds of a round cell's edge lost)."""
    import tifffile
    from skimage.measure import regionprops
    from skimage.segmentation import find_boundaries

    root, out, df = _bbbc021_cellprofiler_run(tmp_path, "features.families=[cp_intensity, cp_sizeshape]")
    for field, rows in df.groupby("meta_field"):
        plate = rows["meta_plate"].iloc[0]
        images = {f.name.split("_w")[1][0]: tifffile.imread(f) for f in (root / plate).glob("*.tif")}
        with tifffile.TiffFile(out / "labels" / f"{field}.ome.tif") as tf:
            nuc, cell = tf.series[0].asarray()[:2]
        for channel, w, lab in (("DAPI", "1", nuc), ("Tubulin", "2", cell)):
            edge = find_boundaries(lab, mode="inner") & (lab > 0)
            want = np.bincount(lab[edge], weights=images[w][edge] / 65535.0, minlength=lab.max() + 1)
            got = rows[f"feat_Intensity_IntegratedIntensityEdge_{channel}"].to_numpy()
            np.testing.assert_allclose(got, want[rows["meta_label"].to_numpy()], rtol=1e-12)
            # coordinates in the field's, as CellProfiler on the whole field
            props = {p.label: p for p in regionprops(lab, intensity_image=images[w])}
            for k, (_, r) in zip(rows["meta_label"], rows.iterrows()):
                cy, cx = props[k].centroid
                assert r[f"feat_AreaShape_Center_X_{channel}"] == pytest.approx(cx, rel=1e-12)
                assert r[f"feat_AreaShape_Center_Y_{channel}"] == pytest.approx(cy, rel=1e-12)
                assert r[f"feat_AreaShape_BoundingBoxMinimum_Y_{channel}"] == props[k].bbox[0]
                ys, xs = np.nonzero((lab == k) & (images[w] == images[w][lab == k].max()))
                assert (r[f"feat_Location_MaxIntensity_Y_{channel}"], r[f"feat_Location_MaxIntensity_X_{channel}"]) \
                    == (ys[0], xs[0])  # the first maximum in raster order
