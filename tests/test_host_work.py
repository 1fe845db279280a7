"""The host's share of a partition, vectorised (issue 11: the command line at the device's pace):
validation of a run of images by one reduction (``pipeline.check_images``), the feature table
column by column for Parquet (``export.columns_first``) and the part written from it, the X rows
for the AnnData file cast in one pass (``export.write_x_side``). Each against the per-object or
NumPy form it replaces."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scip_gpu import export
from scip_gpu.batch import adjacent_view
from scip_gpu.pipeline import check_image, check_images


def _reference(items, n_ch, min_side):
    out = []
    for p, it in enumerate(items):
        if isinstance(it, Exception):
            out.append((it, "load"))
            continue
        try:
            out.append(check_image(it, n_ch, min_side, lambda p=p: f"object {p}"))
        except Exception as exc:  # noqa: BLE001
            out.append((exc, getattr(exc, "stage", "validate")))
    return out


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, tuple):
            assert isinstance(g, tuple), (g, w)
            assert type(g[0]) is type(w[0]) and str(g[0]) == str(w[0]) and g[1] == w[1]
        else:
            assert not isinstance(g, tuple), g
            assert g is w or np.array_equal(g, w, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32, np.float32, np.float64, ">u2", ">f8", np.float16])
def test_check_images_equals_check_image_object_by_object(dtype):
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 30))
        block = (rng.random((n, 3, 8, 9)) * 100).astype(dtype)
        items = [block[i] for i in range(n)]
        for k in range(n):
            r = rng.random()
            if r < 0.05:
                items[k] = np.full((3, 8, 9), 7, dtype=dtype)  # one value throughout
            elif r < 0.08:
                items[k] = OSError("cannot be read")  # a load error passes through
            elif r < 0.10:
                items[k] = block[k][:2]  # a channel missing
            elif r < 0.12:
                items[k] = np.zeros((3, 0, 4), dtype)  # empty
            elif r < 0.14:
                items[k] = block[k][:, :3, :3]  # below the filters' footprint
            elif r < 0.16:
                items[k] = list(block[k])  # array-like: checked alone
            elif r < 0.18:
                items[k] = np.ascontiguousarray(block[k][:, ::-1])  # not adjacent: stacked
            elif np.dtype(dtype).kind == "f":
                if r < 0.20:
                    block[k, 1, 2, 3] = np.nan
                elif r < 0.22:
                    block[k, 2, 0, 0] = np.inf
                elif r < 0.24 and dtype == np.float64:
                    block[k, 0] *= 1e200  # beyond what the float64 moments represent
                elif r < 0.26:
                    block[k, 2] = 5 + 1e-30 * block[k, 2]  # a range too small for them
        if rng.random() < 0.3:
            items = items[::-1]
        min_side = int(rng.integers(1, 6))
        _assert_same(check_images(items, 3, min_side, lambda p: f"object {p}"),
                     _reference(items, 3, min_side))


def test_check_images_runs_are_longer_than_a_reduction(monkeypatch):
    from scip_gpu import pipeline

    monkeypatch.setattr(pipeline, "CHECK_RUN", 4)
    block = np.random.default_rng(0).integers(0, 500, (11, 2, 6, 6)).astype(np.uint16)
    block[5] = 3
    items = list(block)
    got = check_images(items, 2, 1, lambda p: f"object {p}")
    _assert_same(got, _reference(items, 2, 1))
    assert isinstance(got[5], tuple) and "object 5: every pixel has the same value" in str(got[5][0])


def test_adjacent_view_of_a_read_block():
    block = np.arange(5 * 2 * 3 * 4, dtype=np.uint16).reshape(5, 2, 3, 4)
    view = adjacent_view([block[i] for i in range(1, 4)])
    assert np.shares_memory(view, block) and np.array_equal(view, block[1:4])
    assert not view.flags.writeable
    assert adjacent_view([block[0], block[2]]) is None  # not one after the other
    assert adjacent_view([block[0], block.copy()[1]]) is None  # adjacent addresses only within one buffer
    assert adjacent_view([block[0], block[1][:, :2]]) is None


@pytest.mark.parametrize("shape", [(1000, 130), (7, 3), (0, 5), (513, 65), (4, 0)])
def test_columns_first(shape):
    values = np.random.default_rng(1).standard_normal(shape)
    got = export.columns_first(values)
    assert got.flags.c_contiguous and np.array_equal(got, values.T)
    fortran = np.asfortranarray(values)
    same = export.columns_first(fortran)
    assert np.array_equal(same, values.T) and (values.size == 0 or np.shares_memory(same, fortran))


def test_part_written_column_by_column_reads_back(tmp_path):
    rng = np.random.default_rng(3)
    n = 700
    values = rng.standard_normal((n, 4))
    values[::7, 1] = np.nan
    values[:, 3] = rng.integers(0, 2, n)  # a flag column (0/1), NaN where unknown
    values[5, 3] = np.nan
    schema = pa.schema([pa.field("meta_index", pa.int64()), pa.field("a", pa.float64()),
                        pa.field("b", pa.float64()), pa.field("c", pa.float64()), pa.field("flag", pa.bool_())])
    import pandas as pd

    head = pd.DataFrame({"meta_index": np.arange(n)})
    for order in ("C", "F"):
        path = export.write_part(tmp_path / order, 0, head, schema, np.asarray(values, order=order))
        back = pq.read_table(path)
        for j, name in enumerate(["a", "b", "c"]):
            assert np.array_equal(back.column(name).to_numpy(), values[:, j], equal_nan=True)
        flag = back.column("flag").to_pylist()
        assert flag[5] is None and [f for i, f in enumerate(flag) if i != 5] == \
            [bool(v) for i, v in enumerate(values[:, 3]) if i != 5]


def test_part_encodings_follow_each_schema(tmp_path):
    """Floats are written without dictionary encoding, the other columns with it (booleans
    never have one in Parquet), for each schema as given, also when several schemas alternate
    (the names are kept per schema: "x" is a float feature in one, a string in the other)."""
    import pandas as pd

    n = 50
    values = np.random.default_rng(5).standard_normal((n, 2))
    values[:, 1] = values[:, 1] > 0
    lead = [pa.field("meta_index", pa.int64()), pa.field("meta_path", pa.string())]
    first = pa.schema(lead + [pa.field("x", pa.float64()), pa.field("f", pa.bool_())])
    second = pa.schema(lead + [pa.field("x", pa.string()), pa.field("g", pa.bool_()), pa.field("b", pa.float64())])
    head = pd.DataFrame({"meta_index": np.arange(n), "meta_path": [f"cell{i % 3}.tif" for i in range(n)]})

    def dictionary_pages(path):
        meta = pq.ParquetFile(path).metadata
        return {meta.schema.column(j).name: meta.row_group(0).column(j).has_dictionary_page
                for j in range(meta.num_columns)}

    for k, schema in enumerate([first, second, first, second]):
        if schema is first:
            path = export.write_part(tmp_path / str(k), 0, head, schema, values)
        else:
            path = export.write_part(tmp_path / str(k), 0, head.assign(x=["u", "v"] * (n // 2)), schema,
                                     values[:, ::-1])
        want = {"meta_index": True, "meta_path": True, **({"x": False, "f": False} if schema is first else
                                                          {"x": True, "g": False, "b": False})}
        assert dictionary_pages(path) == want


def test_x_side_rows_are_the_feature_columns_as_float32(tmp_path):
    from types import SimpleNamespace

    kinds = ["meta", "feat", "feat", "meta", "feat", "feat", "feat"]
    columns = [SimpleNamespace(kind=k, name=f"c{j}") for j, k in enumerate(kinds)]
    values = np.random.default_rng(4).standard_normal((9, len(kinds))) * 1e3
    values[2, 4] = 1e300  # beyond float32: inf in X
    export.write_x_side(tmp_path, 3, values, columns)
    feat = [j for j, k in enumerate(kinds) if k == "feat"]
    x = export.read_x_side(export.x_side_path(tmp_path, 3), 9, len(feat))
    with np.errstate(over="ignore"):
        want = values[:, feat].astype(np.float32)
    assert np.array_equal(x, want) and np.isinf(x[2, 2])
    export.write_x_side(tmp_path, 4, values[:, :1], columns[:1])  # (no feature column: an empty file)
    assert export.x_side_path(tmp_path, 4).stat().st_size == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_x_side_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """Writing the X rows to a full disk (/dev/full) raises what ``errors.disk_full`` knows
    (errno 28): ``ndarray.tofile`` raised "N requested and M written" without errno, and a run
    whose disk filled reported a cluster fault (exit 3) instead of the full disk (exit 2)."""
    from pathlib import PosixPath
    from types import SimpleNamespace

    from scip_gpu.errors import disk_full

    class DevFull(PosixPath):
        def unlink(self, missing_ok=False):  # (never the device node)
            pass

    monkeypatch.setattr(export, "temp_path", lambda final: DevFull("/dev/full"))
    columns = [SimpleNamespace(kind="feat", name=f"c{j}") for j in range(50)]
    with pytest.raises(OSError) as exc:
        export.write_x_side(tmp_path, 0, np.ones((2000, 50)), columns)
    assert disk_full(exc.value)
    assert not export.x_side_path(tmp_path, 0).exists()


def test_only_failing_images_are_checked_alone(monkeypatch):
    from scip_gpu import pipeline

    alone = []
    real = pipeline.check_image
    monkeypatch.setattr(pipeline, "check_image",
                        lambda img, *a: (callable(a[-1]) and alone.append(1)) or real(img, *a))
    block = np.random.default_rng(5).integers(0, 900, (300, 3, 7, 7)).astype(np.uint16)
    block[[10, 200]] = 0
    got = check_images(list(block), 3, 3, lambda p: f"object {p}")
    assert len(alone) == 2  # the two failing objects, for their messages; 298 by reductions
    assert [i for i, g in enumerate(got) if isinstance(g, tuple)] == [10, 200]


def test_stage_copies_a_read_block_at_once_and_pads_the_rest():
    from scip_gpu.batch import adjacent_view, stage

    block = np.random.default_rng(6).integers(0, 60000, (6, 2, 5, 7)).astype(np.uint16)
    images = [block[i] for i in range(6)]
    assert adjacent_view(images) is not None and adjacent_view(images[::2]) is None
    for imgs, shape in [(images, (5, 7)), (images[::-1], (5, 7)), (images, (8, 9)),
                        ([block[0], block[1][:, :3, :4], block[2]], (5, 7))]:
        st = stage(imgs, shape)
        want = np.zeros((len(imgs), 2, *shape), dtype=np.uint16)
        for i, im in enumerate(imgs):
            want[i, :, :im.shape[1], :im.shape[2]] = im
        assert np.array_equal(st.host, want)
        assert st.extents.tolist() == [list(im.shape[1:]) for im in imgs]


def test_scratch_pool_hands_out_only_arrays_nothing_refers_to():
    from scip_gpu.scratch import ScratchPool

    pool = ScratchPool(keep_bytes=10_000)
    a = pool.empty((10, 20))
    view = a[2:]
    assert not pool.give(a)  # a view of it is alive
    del view
    assert pool.give(a) and pool.kept_bytes == a.nbytes
    b = pool.empty((10, 20))
    assert b is a and pool.reused == 1 and pool.kept_bytes == 0
    assert pool.empty((10, 20), order="F") is not a  # another layout
    del a
    assert not pool.give(b[:, :3])  # not the owner
    alias = b
    assert not pool.give(b)  # two names
    del alias
    assert not pool.give(pool.empty((100, 20)))  # beyond keep_bytes
    assert pool.give(b)


def test_partitions_on_a_gpu_reuse_their_host_tables_with_the_same_outputs(tmp_path, monkeypatch):
    """device=cuda (stand-in CuPy): the table, its column-by-column copy and the X rows of one
    partition are reused by the next; the parts and X are those of a run without the pool."""
    import anndata  # noqa: F401  (before the fake: it probes for cupyx.scipy.sparse)

    from scip_gpu import pipeline, scratch
    from scip_gpu.export import arrow_schema, read_x_side, x_side_path

    from . import fake_cupy
    from .test_overlap import _setup

    cfg, src, objs, plan = _setup(12, ["masks=none"])
    schema = arrow_schema(objs[[c for c in objs.columns if c.startswith("meta_")]], plan.columns)
    fake_cupy.install(monkeypatch)
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    tasks = pipeline.partition_tasks(objs, 4)
    outputs = {}
    for keep in (0, scratch.KEEP_BYTES):
        pool = scratch.ScratchPool(keep_bytes=keep)
        monkeypatch.setattr(pipeline, "POOL", pool)
        folder = tmp_path / f"keep{keep}" / "features.parquet"
        folder.mkdir(parents=True)
        for t in tasks:
            res = pipeline.process_partition(t, source=src, plan=plan, folder=str(folder), schema=schema,
                                             device="cuda")
            assert res.n_ok == 4
        n_feat = sum(c.kind == "feat" for c in plan.columns)
        outputs[keep] = ([pq.read_table(folder / f"part-{i:05d}.parquet") for i in range(3)],
                         [read_x_side(x_side_path(folder.parent, i), 4, n_feat) for i in range(3)])
        assert pool.reused == (0 if keep == 0 else 6)  # partitions 2 and 3: the table, its columns, X
    for a, b in zip(*[outputs[k][0] for k in outputs]):
        assert a.equals(b)
    for a, b in zip(*[outputs[k][1] for k in outputs]):
        assert a is not None and np.array_equal(a, b, equal_nan=True)


def test_a_run_drops_the_arrays_it_kept(tmp_path, monkeypatch):
    import anndata  # noqa: F401  (before the fake: it probes for cupyx.scipy.sparse)

    from scip_gpu import pipeline, scratch
    from scip_gpu.cli import to_config

    from . import fake_cupy
    from .test_config import _compose

    fake_cupy.install(monkeypatch)
    monkeypatch.setenv("SCIP_GPU_KERNELS", "0")
    pool = scratch.ScratchPool()
    monkeypatch.setattr(pipeline, "POOL", pool)
    cfg, yaml = to_config(_compose(["+dataset=demo", "dataset.n_objects=8", "dataset.min_size=40",
                                    "dataset.max_size=44", "features=intensity", "masks=none", "partition_size=4",
                                    "cluster=sync", "cluster.threads_per_worker=1", "device=cuda",
                                    f"output={tmp_path / 'run'}", "progress=false"]))
    assert pipeline.run(cfg, yaml).n_ok == 8
    assert pool.reused >= 1  # used during the run ...
    assert pool.kept_bytes == 0  # ... and emptied at its end


@pytest.mark.parametrize("preset", ["scip", "cellprofiler"])
def test_nan_counts_against_counting_row_by_row(preset):
    """``report.nan_counts`` (one pass per statistic, explanations over the flagged rows) against
    counts made row by row from ``_nan_spec``'s columns, flags and groups."""
    from scip_gpu.api import compose
    from scip_gpu.cli import to_config
    from scip_gpu.profile import build_plan
    from scip_gpu.report import _nan_spec, nan_counts

    cfg, _ = compose(None, ("+dataset=zarr", "dataset.path=x", f"features={preset}"))
    plan = build_plan(to_config(cfg)[0], ["a", "b"])
    feat_idx, flag_idx, explains, groups = _nan_spec(plan.columns)
    rng = np.random.default_rng(11)
    n = 60
    values = rng.standard_normal((n, plan.n_features))
    values[rng.random(values.shape) < 0.05] = np.nan
    values[:, flag_idx] = rng.choice([0.0, 1.0, np.nan], size=(n, len(flag_idx)), p=[0.7, 0.2, 0.1])
    ok = rng.random(n) > 0.25
    got = nan_counts(values, plan.columns, ok)
    miss = np.isnan(values[:, feat_idx])
    want_nan = [sum(bool(miss[r, j]) for r in range(n) if ok[r]) for j in range(len(feat_idx))]
    want_explained = [0] * len(feat_idx)
    for k, pos in enumerate(explains):
        for j in pos:
            want_explained[j] = sum(bool(miss[r, j]) for r in range(n) if ok[r] and values[r, flag_idx[k]] > 0)
    want_rows = {g: sum(1 for r in range(n) if ok[r] and miss[r, pos].any()) for g, pos in groups.items()}
    assert got == {"n_ok": int(ok.sum()), "nan": want_nan, "explained": want_explained, "rows": want_rows}
    assert any(want_rows.values())  # (the example exercises them)
    assert sum(want_explained) > 0 or not any(len(pos) for pos in explains)
