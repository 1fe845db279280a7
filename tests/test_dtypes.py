"""Pixel types and value ranges (issue 12, items 6 and 7).

- Every supported pixel type gives an object the same values whatever the types of the objects
  that share its partition: batches never mix types (``batch.group_by_shape(dtypes=...)``,
  ``batch.assemble`` refuses a mix) and float16 is profiled as float32 (``batch.profile_dtype``).
- Float pixel values the float64 statistics cannot represent (overflowing 4th-order moments,
  underflowing deviations) make the object an error row with the cause, never an ``ok`` row with
  infinite or silently NaN features; any infinite feature left makes its row an error too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scip_gpu import pipeline
from scip_gpu.batch import assemble, group_by_shape, profile_dtype
from scip_gpu.cli import to_config
from scip_gpu.export import arrow_schema
from scip_gpu.profile import build_plan

from .test_config import _compose

CHANNELS = ["BF", "DNA", "SPOT"]


class ListSource:
    """A loader over a list of in-memory images (object i: ``images[i]``)."""

    kind = "list"

    def __init__(self, images):
        self.images = images

    def load(self, rows):
        return [self.images[int(i)] for i in rows["meta_id"]]

    def describe(self, row) -> str:
        return f"image {int(row['meta_id'])}"


@pytest.fixture(scope="module")
def plan():
    cfg, _ = to_config(_compose(["+dataset=demo", "batch_size=64"]))  # li + otsu, every family
    return build_plan(cfg, CHANNELS)


def profile(plan, images, tmp_path, name="p"):
    """process_partition over ``images`` in one partition: (result, table by object)."""
    rows = pd.DataFrame({"meta_index": np.arange(len(images), dtype=np.int64),
                         "meta_id": np.arange(len(images), dtype=np.int64)})
    folder = tmp_path / name
    res = pipeline.process_partition((0, rows), source=ListSource(images), plan=plan, folder=str(folder),
                                     schema=arrow_schema(rows, plan.columns), device="cpu")
    return res, pd.read_parquet(folder / "part-00000.parquet")


def features(df, i):
    return df.drop(columns=["meta_index", "meta_id"]).iloc[i]


def demo_cells(n, size, seed=0):
    """``n`` demo cells of ``size`` x ``size`` pixels as float64 (uint16 values)."""
    from scip_gpu.io import make_source

    cfg, _ = to_config(_compose(["+dataset=demo", f"dataset.n_objects={n}", f"dataset.min_size={size}",
                                 f"dataset.max_size={size}", f"dataset.seed={seed}"]))
    src = make_source(cfg.dataset)
    return [np.asarray(im, dtype=np.float64) for im in src.load(src.objects())]


@pytest.fixture(scope="module")
def base():
    """Three 40x40 3-channel cells (uint16 values as float64): the image and two neighbours."""
    return demo_cells(3, 40)


def as_type(img, dtype):
    """``img`` in ``dtype``, scaled down to fit an integer type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return np.round(img * min(1.0, np.iinfo(dtype).max / img.max())).astype(dtype)
    return img.astype(dtype)


def test_profile_dtype_rule():
    assert profile_dtype(np.float16) == np.float32
    for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float32,
              np.float64):
        assert profile_dtype(t) == t
    assert profile_dtype(np.dtype(">u2")) == np.uint16  # byte order is not a type
    with pytest.raises(TypeError):
        profile_dtype(np.bool_)


def test_batches_never_mix_pixel_types():
    shapes = [(40, 40)] * 6
    groups = group_by_shape(shapes, margin=8, multiple=8, batch_size=64,
                            dtypes=[np.uint16, np.float16, np.float32, np.uint16, np.float64, np.dtype(">u2")])
    members = sorted(sorted(m.tolist()) for _, m in groups)
    assert members == [[0, 3, 5], [1, 2], [4]]  # float16 is profiled as float32
    imgs = [np.ones((3, 8, 8), np.uint16), np.ones((3, 8, 8), np.float32)]
    with pytest.raises(TypeError, match="one pixel type"):
        assemble(imgs, np.arange(2), (8, 8))
    b = assemble([np.ones((3, 8, 8), np.float16)], np.arange(1), (8, 8))
    assert b.pixels.dtype == np.float32


NEIGHBOURS = {  # what shares the partition with the image under test
    "alone": [],
    "uint16": [np.uint16, np.uint16],
    "float32": [np.float32, np.float32],
    "float64": [np.float64, np.float64],
    "mixed": [np.uint8, np.float64, np.int32, np.float32, np.uint16, np.float16],
}


@pytest.fixture(scope="module")
def alone(plan, tmp_path_factory):
    """Features of an image profiled alone, by (base image, pixel type) (computed once)."""
    cache = {}

    def get(base, k, dtype):
        key = (k, np.dtype(dtype).str)
        if key not in cache:
            res, df = profile(plan, [as_type(base[k], dtype)], tmp_path_factory.mktemp("alone"))
            assert res.n_ok == 1, res.errors
            cache[key] = features(df, 0)
        return cache[key]

    return get


@pytest.mark.parametrize("dtype", ["float16", "uint16", "float32", "uint8"])
def test_values_do_not_depend_on_neighbours(plan, base, alone, dtype, tmp_path):
    want = alone(base, 0, dtype)
    assert np.isfinite(want.filter(like="feat_li_mean").to_numpy(float)).all()  # a real cell, measured
    for name, types in NEIGHBOURS.items():
        others = [(1 + k % 2, t) for k, t in enumerate(types)]
        images = [as_type(base[0], dtype)] + [as_type(base[j], t) for j, t in others]
        res, df = profile(plan, images, tmp_path, name)
        assert res.n_ok == len(images), (name, res.errors)
        pd.testing.assert_series_equal(features(df, 0), want, check_names=False, obj=f"{dtype} next to {name}")
        for k, (j, t) in enumerate(others):  # and each neighbour is as it is alone
            pd.testing.assert_series_equal(features(df, 1 + k), alone(base, j, t), check_names=False,
                                           obj=f"{np.dtype(t)} next to {dtype}")


def test_float16_is_profiled_as_float32(plan, base, tmp_path):
    img = base[0].astype(np.float16)
    _, half = profile(plan, [img], tmp_path, "half")
    _, single = profile(plan, [img.astype(np.float32)], tmp_path, "single")
    pd.testing.assert_frame_equal(half, single)
    assert (half["meta_status"] == "ok").all()


def test_float16_on_the_array_path(plan, base, tmp_path, kernel_path):
    """Without the compiled kernels too (the reference path)."""
    res, df = profile(plan, [base[0].astype(np.float16), base[1].astype(np.uint16)], tmp_path)
    assert res.n_ok == 2, res.errors


# ---------------------------------------------------------------------------------------------
# Value ranges


def test_values_beyond_float64_statistics_are_error_rows(plan, base, tmp_path):
    good = base[0]
    imgs = [good, good * 1e300, good * 1e80, good * 1e-100, -good * 1e300, good.astype(np.float32)]
    res, df = profile(plan, imgs, tmp_path)
    status = df["meta_status"].tolist()
    assert status == ["ok", "error", "error", "error", "error", "ok"], res.errors
    causes = {e["meta_index"]: e for e in res.errors}
    for i in (1, 2, 4):
        assert causes[i]["stage"] == "validate"
        assert "beyond what the statistics can represent" in causes[i]["error"], causes[i]
        assert f"image {i}" in causes[i]["error"]
    assert "underflow" in causes[3]["error"] and "channel 0" in causes[3]["error"]
    feat = df.filter(like="feat_").to_numpy(float)
    assert not np.isinf(feat).any()
    assert np.isnan(feat[[1, 2, 3, 4]]).all()
    _, alone = profile(plan, [good], tmp_path, "alone")  # the good neighbours are unaffected
    pd.testing.assert_series_equal(features(df, 0), features(alone, 0), check_names=False)


@pytest.mark.parametrize("size", [(24, 24), (64, 64)])
def test_largest_and_smallest_accepted_values_give_finite_features(plan, base, tmp_path, size):
    """Up to the documented limits the features are finite and NaN exactly where they are for
    the same image at an ordinary scale (no overflow, no underflow to 0/0)."""
    h, w = size
    img = demo_cells(1, h, seed=5)[0]
    img = img / np.abs(img).max()
    top = pipeline.max_pixel_magnitude(h, w) * 0.999
    small = pipeline.min_channel_range(h, w) * 1.001 / np.ptp(img, axis=(1, 2)).min()
    res, df = profile(plan, [img, img * top, img * small], tmp_path)
    assert res.n_ok == 3, res.errors
    feat = df.filter(like="feat_").to_numpy(float)
    assert np.isfinite(feat[~np.isnan(feat)]).all()
    np.testing.assert_array_equal(np.isnan(feat[1]), np.isnan(feat[0]))
    np.testing.assert_array_equal(np.isnan(feat[2]), np.isnan(feat[0]))
    # just beyond the limit: refused, with the limit in the message
    res, df = profile(plan, [img * top * 1.01], tmp_path, "beyond")
    assert res.n_ok == 0 and "overflow above" in res.errors[0]["error"]


def test_integer_images_are_never_out_of_range(plan, tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(-2**62, 2**62, size=(3, 32, 32), dtype=np.int64)
    res, df = profile(plan, [big, big.astype(np.uint64) + np.uint64(2**63)], tmp_path)
    assert res.n_ok == 2, res.errors
    feat = df.filter(like="feat_").to_numpy(float)
    assert not np.isinf(feat).any()


def test_an_infinite_feature_makes_an_error_row(plan, base, tmp_path, monkeypatch):
    """Whatever produces it, an infinite feature is never written in an ``ok`` row."""
    real = pipeline.profile_batch

    def overflowing(batch, plan, timer=pipeline.StageTimer()):
        out = real(batch, plan, timer)
        out[batch.index == 1, 5] = np.inf
        return out

    monkeypatch.setattr(pipeline, "profile_batch", overflowing)
    res, df = profile(plan, [base[0], base[1], base[2]], tmp_path)
    assert df["meta_status"].tolist() == ["ok", "error", "ok"]
    (err,) = res.errors
    assert err["meta_index"] == 1 and err["stage"] == "features"
    assert "overflowed to infinity" in err["error"] and plan.columns[5].name in err["error"]
    assert df.filter(like="feat_").iloc[1].isna().all()
    assert res.n_ok == 2


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64])
def test_filters_see_integer_pixels_as_scikit_image_does(dtype):
    """``ops.as_float`` is scikit-image's ``img_as_float`` (0.20, SCIP's, to 0.26): unsigned
    ints over their maximum, signed ints over their maximum with the most negative value at -1.
    The filters of the li mask (``skimage.filters.gaussian``) see these values."""
    from skimage import img_as_float

    from scip_gpu.ops import as_float

    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    x = rng.integers(info.min, info.max, 500, dtype=dtype, endpoint=True)
    x[:4] = [info.min, info.max, 0, 1]
    np.testing.assert_array_equal(as_float(x), img_as_float(x))


def test_int64_cells_get_the_masks_of_the_same_values_in_int32():
    """int64 pixels of ordinary values: the li threshold sees x / 2^63 (distinct values), not -1
    everywhere (the shift by the type's minimum lost them: empty masks, NaN features)."""
    import scip_gpu
    from scip_gpu.demo import make_cell

    cells = [make_cell(i)[0] for i in range(3)]
    out = {dt: scip_gpu.profile([c.astype(dt) for c in cells], "masks=li", features="intensity",
                                channel_names=CHANNELS) for dt in (np.int32, np.int64)}
    a, b = out[np.int32], out[np.int64]
    assert not a.obs["meta_li_empty_DNA"].any()
    np.testing.assert_array_equal(b.obs["meta_li_empty_DNA"], a.obs["meta_li_empty_DNA"])
    np.testing.assert_allclose(b[:, "feat_li_mean_DNA"].X, a[:, "feat_li_mean_DNA"].X, rtol=1e-6)
