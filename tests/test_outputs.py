"""Outputs every reader opens, explicit NaN, the analysis-ready variant and the QC report (issue 14).

One small run (8 demo cells written as multi-page TIFFs, one corrupt file) serves every test.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from scip_gpu.demo import LABELS, make_cell

from .test_cli import run_cli

N_GOOD = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    data = root / "cells"
    data.mkdir()
    for i in range(N_GOOD):
        img, label = make_cell(i, min_size=40, max_size=48)
        tifffile.imwrite(data / f"{label}_{i}.tif", img, photometric="minisblack")
    (data / "spotty_99.tif").write_bytes(b"not a TIFF at all")
    out = root / "run"
    res = run_cli("+dataset=multipage_tiff", f"dataset.path={data}", "dataset.glob=*.tif",
                  r"dataset.regex='(?P<phenotype>[a-z_]+)_(?P<id>\d+)\.tif'", "dataset.channels=[0,1,2]",
                  "dataset.channel_names=[BF,DNA,SPOT]", "partition_size=4", "cluster=sync",
                  "export.analysis_ready=true", f"output={out}", cwd=root)
    assert res.returncode == 0, res.stderr
    return out


def test_parquet_folder_holds_only_parts_and_small_footers(run):
    folder = run / "features.parquet"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"part-0000{i}.json" for i in range(3)]
    for p in folder.iterdir():
        meta = pq.ParquetFile(p).metadata.metadata
        assert set(meta) == {b"scip_gpu"}  # no Arrow schema copy, no pandas metadata
        key = json.loads(meta[b"scip_gpu"])
        assert key["columns"] == "features.columns.csv" and len(meta[b"scip_gpu"]) < 200
    from scip_gpu.export import read_columns

    cols = read_columns(folder)
    df = pd.read_parquet(folder)
    assert list(cols.index) == list(df.columns)  # every column described once, in order
    assert cols.loc["feat_li_median_DNA", "family"] == "intensity" and cols.loc["feat_li_median_DNA", "view"] == "mask"
    assert "meta_li_empty_DNA" in cols.loc["feat_li_median_DNA", "nan_reason"]
    assert cols.loc["meta_li_empty_SPOT", "dtype"] == "bool"
    pd.testing.assert_frame_equal(read_columns(run), cols)


def _sorted(df):
    return df.sort_values("meta_index").reset_index(drop=True)


def test_every_reader_reads_one_dataset(run):
    folder = run / "features.parquet"
    ref = _sorted(pd.read_parquet(folder))
    assert len(ref) == N_GOOD + 1 and (ref["meta_status"] == "error").sum() == 1
    arrow = _sorted(pq.read_table(folder).to_pandas())
    pd.testing.assert_frame_equal(arrow, ref)
    for name in ("polars", "duckdb"):  # not in the test extra (large wheels): checked where installed
        mod = pytest.importorskip(name)
        if name == "polars":
            other = mod.read_parquet(folder).to_pandas()
        else:
            other = mod.sql(f"SELECT * FROM read_parquet('{folder}/*.parquet')").df()
            assert mod.sql(f"SELECT count(*) FROM '{folder}'").fetchall() == [(N_GOOD + 1,)]
        other = _sorted(other)
        assert list(other.columns) == list(ref.columns)
        feat = [c for c in ref.columns if c.startswith("feat_")]
        np.testing.assert_array_equal(other[feat].to_numpy(float), ref[feat].to_numpy(float))
        flags = [[None if pd.isna(v) else bool(v) for v in d["meta_li_empty_SPOT"]] for d in (other, ref)]
        assert flags[0] == flags[1] and flags[1].count(None) == 1


def test_empty_flags_say_why_features_are_nan(run):
    df = _sorted(pd.read_parquet(run / "features.parquet"))
    ok = df["meta_status"] == "ok"
    assert df.loc[~ok, "meta_li_empty_BF"].isna().all()  # error rows: unknown, not False
    for mask in ("li", "otsu"):
        for ch in ("BF", "DNA", "SPOT"):
            flag = df.loc[ok, f"meta_{mask}_empty_{ch}"].astype(bool)
            # an empty mask makes every feature of that channel NaN; a non-empty one leaves them defined
            assert (df.loc[ok, f"feat_{mask}_mean_{ch}"].isna() == flag).all(), (mask, ch)
            assert (df.loc[ok, f"feat_{mask}_area_{ch}"].isna() == flag).all(), (mask, ch)
            # no region left in the main channel (BF) empties every channel of the mask
            main_empty = df.loc[ok, f"meta_{mask}_regions_BF"] == 0
            assert flag[main_empty].all()
            # otherwise the channel is empty exactly when its own mask has no region
            assert (flag[~main_empty] == (df.loc[ok, f"meta_{mask}_regions_{ch}"][~main_empty] == 0)).all()
    assert df.loc[ok, [c for c in df.columns if "_empty_" in c]].astype(bool).any().any()  # the case occurs


def test_analysis_ready_anndata_has_no_nan_and_pca_runs(run):
    import anndata as ad

    a = ad.read_h5ad(run / "features.analysis.h5ad")
    df = _sorted(pd.read_parquet(run / "features.parquet"))
    ok = df[df["meta_status"] == "ok"].reset_index(drop=True)
    assert a.n_obs == N_GOOD and list(a.obs["meta_index"]) == list(ok["meta_index"])
    x = np.asarray(a.X)
    assert np.isfinite(x).all()
    feat = [c for c in df.columns if c.startswith("feat_")]
    share = ok[feat].isna().mean()
    kept = share[share <= 0.5].index
    assert list(a.var_names) == list(kept)
    assert sorted(a.uns["scip_gpu_analysis"]["dropped"]) == sorted(share[share > 0.5].index)
    assert (a.var["n_imputed"] == ok[kept].isna().sum()).all()
    cols = pd.read_csv(run / "features.columns.csv", index_col="name", keep_default_na=False)
    assert (a.var["nan_reason"] == cols.loc[kept, "nan_reason"]).all()  # var describes as the CSV does
    med = ok[kept].median()  # pandas' median, skipping NaN: the imputed value
    for col in kept[ok[kept].isna().any()][:20]:
        j = a.var_names.get_loc(col)
        miss = ok[col].isna().to_numpy()
        np.testing.assert_allclose(x[miss, j], np.float32(med[col]), rtol=1e-6)
        np.testing.assert_array_equal(x[~miss, j], ok.loc[~miss, col].to_numpy(np.float32))
    # PCA as scanpy.pp.pca does it (centre, SVD): finite components
    xc = x.astype(np.float64) - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    assert np.isfinite(s).all() and s[0] > 0


def _images(text):
    from PIL import Image

    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()
        out.append(img.size)
    return out


def _html_tables(fragment):
    """The tables of an HTML fragment as DataFrames of strings (header row first)."""
    import html

    out = []
    for table in re.findall(r"<table.*?</table>", fragment, re.S):
        rows = [[html.unescape(re.sub(r"<.*?>", "", c)).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)]
                for r in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
        out.append(pd.DataFrame(rows[1:], columns=rows[0]))
    return out


def _section(text, sid):
    return re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S).group(1)


def test_report_is_complete(run):
    text = (run / "report.html").read_text()
    from scip_gpu.report import SECTIONS

    for sid in SECTIONS:
        assert f'<section id="{sid}">' in text, sid
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    sizes = _images(text)
    assert len(sizes) == 2 and all(w > 200 and h > 200 for w, h in sizes)  # montage, distributions
    df = pd.read_parquet(run / "features.parquet")
    table = _html_tables(_section(text, "groups"))[0].set_index("group").astype(int)
    counts = df.groupby("meta_phenotype").size()
    assert table["objects"].to_dict() == counts.to_dict()
    assert table.loc["spotty", "errors"] == 1 and table["errors"].sum() == 1
    assert set(table.index) <= set(LABELS)
    errors = _section(text, "errors")
    assert "spotty_99.tif" in errors and "Errors (1)" in errors
    nan = _html_tables(_section(text, "nan"))[0]
    ok = df[df["meta_status"] == "ok"]
    row = nan[(nan["mask"] == "li") & (nan["family"] == "intensity")].iloc[0]
    cols = pd.read_csv(run / "features.columns.csv", index_col="name")
    li_int = cols.index[(cols["mask"] == "li") & (cols["family"] == "intensity")]
    assert int(row["columns"]) == len(li_int)
    assert row["NaN values"] == f"{100 * ok[li_int].isna().to_numpy().mean():.1f} %"


def _expected_nan_rows(run) -> dict:
    """The report's NaN table computed here from the Parquet parts with pandas (independent of
    report.nan_counts): per (mask, family) columns, complete columns, NaN share, rows with a NaN,
    share explained by the meta_{mask}_empty_{channel or combined} flag."""
    df = pd.read_parquet(run / "features.parquet")
    ok = df[df["meta_status"] == "ok"].reset_index(drop=True)
    cols = pd.read_csv(run / "features.columns.csv", index_col="name")
    feat = cols[cols["kind"] == "feat"]
    out = {}
    for (mask, fam), g in feat.groupby([feat["mask"].fillna("-"), "family"]):
        miss = ok[g.index].isna()
        explained = 0
        for name, c in g.iterrows():
            per_channel = isinstance(c["view"], str) and not c["view"].startswith("combined") and isinstance(c["channel"], str)
            flag = f"meta_{mask}_empty_{c['channel'] if per_channel else 'combined'}"
            if flag in ok:
                explained += int((miss[name] & ok[flag].astype(bool)).sum())
        n_nan = int(miss.to_numpy().sum())
        out[(mask, fam)] = {"columns": len(g), "complete columns": int((~miss.any()).sum()),
                            "NaN values": f"{100 * miss.to_numpy().mean():.1f} %",
                            "rows with NaN": f"{100 * miss.any(axis=1).mean():.1f} %",
                            "NaN explained by empty flags": f"{100 * explained / n_nan:.0f} %" if n_nan else "-"}
    return out


def test_report_nan_table_from_the_workers_counts(run):
    """The workers' per-partition NaN counts (in each partition's checkpoint) sum to the table
    computed from the written parts, and reading the parts instead (a partition without counts)
    gives the same table."""
    from scip_gpu.export import part_name
    from scip_gpu.report import nan_table

    text = (run / "report.html").read_text()
    shown = _html_tables(_section(text, "nan"))[0]
    expected = _expected_nan_rows(run)
    assert len(shown) == len(expected) and any(v["NaN values"] != "0.0 %" for v in expected.values())
    for _, row in shown.iterrows():
        want = expected[(row["mask"], row["family"])]
        assert {k: (int(row[k]) if isinstance(want[k], int) else row[k]) for k in want} == want, (row["mask"], row["family"])
    checkpoints = sorted((run / "checkpoints").glob("part-*.json"))
    stats = [json.loads(p.read_text())["nan_stats"] for p in checkpoints]
    assert all(s is not None and s["n_ok"] >= 0 for s in stats)
    cols = pd.read_csv(run / "features.columns.csv", index_col="name")
    plan_cols = [_column(name, c) for name, c in cols.iterrows() if c["family"] != "input"]
    parts = [run / "features.parquet" / part_name(i) for i in range(len(checkpoints))]
    from_stats = nan_table(parts, plan_cols, stats)
    from_parts = nan_table(parts, plan_cols, [None, stats[1], None])
    pd.testing.assert_frame_equal(from_stats, from_parts)
    assert from_stats["NaN values"].tolist() == shown["NaN values"].tolist()


def test_nan_counts_by_hand():
    """Four rows (the last an error row), two flags, three feature columns, counted by hand."""
    from types import SimpleNamespace as C

    from scip_gpu.report import nan_counts

    cols = [C(name="meta_li_empty_A", kind="meta", family="empty", mask="li", view="mask", channel="A"),
            C(name="meta_li_empty_combined", kind="meta", family="empty", mask="li", view="combined", channel=None),
            C(name="feat_li_mean_A", kind="feat", family="intensity", mask="li", view="mask", channel="A"),
            C(name="feat_li_max_A", kind="feat", family="intensity", mask="li", view="mask", channel="A"),
            C(name="feat_li_area_combined", kind="feat", family="shape", mask="li", view="combined", channel=None)]
    nan = np.nan
    values = np.array([[1, 0, nan, nan, 3.0],   # A empty: both A features NaN, explained
                       [0, 1, nan, 2.0, nan],   # A not empty but its mean NaN: not explained; area explained
                       [nan, 0, 1.0, 2.0, nan],  # combined flag false: the area's NaN not explained
                       [nan, nan, nan, nan, nan]])  # error row: not counted
    got = nan_counts(values, cols, np.array([True, True, True, False]))
    assert got == {"n_ok": 3, "nan": [2, 1, 2], "explained": [1, 1, 1],
                   "rows": {"li|intensity": 2, "li|shape": 2}}


@pytest.mark.parametrize("group", ["meta_label", "meta_plate", None])
def test_distributions_are_each_groups_finite_values(monkeypatch, group):
    """Each panel's boxes hold a group's finite values of its column, groups in sorted order of
    their text (a missing group value belongs to no group), by hand."""
    from types import SimpleNamespace

    from matplotlib.axes import Axes

    from scip_gpu.report import distributions_png

    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0, np.inf, 6.0, 7.0],
                          "b": [10.0, -1.0, 3.0, np.nan, 5.0, 0.5, 2.0],
                          "meta_label": ["x", "y", "x", None, "y", "x", "z"],
                          "meta_plate": [2, 10, 2, 10, 2, 10, 10]})
    boxes = []
    monkeypatch.setattr(Axes, "boxplot", lambda self, data, positions, **kw: boxes.append(
        ([list(d) for d in data], list(positions))))
    png = distributions_png(frame, [SimpleNamespace(name="a"), SimpleNamespace(name="b")], group)
    assert png.startswith(b"\x89PNG")
    want = {"meta_label": [([[1.0, 6.0], [2.0], [7.0]], [1, 2, 3]),     # x, y, z (None: no group)
                           ([[10.0, 3.0, 0.5], [-1.0, 5.0], [2.0]], [1, 2, 3])],
            "meta_plate": [([[2.0, 4.0, 6.0, 7.0], [1.0]], [1, 2]),     # "10" < "2" as text
                           ([[-1.0, 0.5, 2.0], [10.0, 3.0, 5.0]], [1, 2])],
            None: [([[1.0, 2.0, 4.0, 6.0, 7.0]], [1]), ([[10.0, -1.0, 3.0, 5.0, 0.5, 2.0]], [1])]}[group]
    assert boxes == want


def _column(name, c):
    from types import SimpleNamespace

    get = lambda k: None if pd.isna(c[k]) else c[k]  # noqa: E731
    return SimpleNamespace(name=name, kind=c["kind"], family=c["family"], mask=get("mask"), view=get("view"),
                           channel=get("channel"))


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_anndata_writer_parts_in_any_order_and_failures_leave_nothing(run, tmp_path, monkeypatch, kernel_copy):
    """X written part by part as partitions come back (here in reverse order) equals the parts;
    a part that cannot be read fails ``finish`` and leaves no file, temporary or final. X is
    contiguous and its rows are written into the file without HDF5: a worker's rows copied by
    the kernel (``os.copy_file_range``) or, where that fails, read and written."""
    import errno
    import os

    import anndata as ad
    import h5py

    copies_made = []

    def no_copy_file_range(*args):
        copies_made.append(args)
        raise OSError(errno.EXDEV, "not across these file systems")

    if not kernel_copy:
        monkeypatch.setattr(os, "copy_file_range", no_copy_file_range, raising=False)

    from scip_gpu.export import AnnDataWriter, part_name

    from omegaconf import OmegaConf

    from scip_gpu.cli import to_config
    from scip_gpu.config import Config
    from scip_gpu.profile import build_plan

    cfg, _ = to_config(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run / "config.yaml")))
    plan_cols = build_plan(cfg, ["BF", "DNA", "SPOT"]).columns
    cols = pd.read_csv(run / "features.columns.csv", index_col="name")
    assert [c.name for c in plan_cols] == [n for n, c in cols.iterrows() if c["family"] != "input"]
    meta = [n for n, c in cols.iterrows() if c["family"] == "input" and n != "meta_status"]
    parts = [run / "features.parquet" / part_name(i) for i in range(3)]
    rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    offsets = {0: 0, 1: rows[0], 2: rows[0] + rows[1]}
    from scip_gpu.report import _read, report_columns

    lead, keys = report_columns(pq.read_schema(parts[0]).names, plan_cols)
    keep = lead + [c.name for c in keys]
    # rows a worker left: part 0's as written from its table (used, then removed); part 1's of a
    # wrong size (ignored: decoded from the part); part 2 none
    import shutil

    from scip_gpu.export import write_x_side, x_side_path

    folder = tmp_path / "features.parquet"
    folder.mkdir()
    copies = [Path(shutil.copy(p, folder / p.name)) for p in parts]
    full = pd.read_parquet(copies[0])
    write_x_side(tmp_path, 0, full[[c.name for c in plan_cols]].astype(float).to_numpy(), plan_cols)
    x_side_path(tmp_path, 1).write_bytes(b"\0" * 12)
    assert x_side_path(tmp_path, 0).stat().st_size == rows[0] * sum(c.kind == "feat" for c in plan_cols) * 4
    w = AnnDataWriter(tmp_path / "x.h5ad", sum(rows), plan_cols, meta, offsets, keep=keep)
    for i in (2, 1):
        w.add(i, copies[i])
    w.finish(copies)  # (part 0 added here)
    assert not x_side_path(tmp_path, 0).exists() and not x_side_path(tmp_path, 1).exists()
    shutil.rmtree(folder)
    # the report's columns, kept from the same reads, are what the report would read
    assert len(keys) >= 4 and "meta_status" in lead
    pd.testing.assert_frame_equal(w.kept_frame(3), _read(parts, keep))
    assert len(copies_made) == (0 if kernel_copy else 1)  # (part 0's rows, from its worker's file)
    with h5py.File(tmp_path / "x.h5ad", "r") as f:
        assert f["X"].chunks is None and f["X"].id.get_offset() is not None
    a = ad.read_h5ad(tmp_path / "x.h5ad")
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    feat = [c.name for c in plan_cols if c.kind == "feat"]
    assert list(a.var_names) == feat and a.n_obs == len(df) == N_GOOD + 1
    np.testing.assert_array_equal(a.X, df[feat].to_numpy(np.float32))
    assert a.obs["meta_status"].tolist() == df["meta_status"].tolist()

    bad = AnnDataWriter(tmp_path / "y.h5ad", sum(rows), plan_cols, meta, offsets)
    bad.add(0, tmp_path / "missing.parquet")
    with pytest.raises(OSError):
        bad.finish(parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]
    # a run leaves none of the workers' X rows behind
    assert not list(run.glob(".*.tmp"))


def _run_plan_and_source(run):
    from omegaconf import OmegaConf

    from scip_gpu.cli import to_config
    from scip_gpu.config import Config
    from scip_gpu.io import make_source
    from scip_gpu.profile import build_plan

    cfg, _ = to_config(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run / "config.yaml")))
    source = make_source(cfg.dataset)
    table = source.objects()
    table.insert(0, "meta_index", np.arange(len(table), dtype=np.int64))
    return build_plan(cfg, ["BF", "DNA", "SPOT"]), source, table


def test_montage_drawn_during_the_run_is_used_only_when_its_examples_are_the_reports(run, tmp_path, monkeypatch):
    """MontageAhead chooses the examples as if every object were ok; the report uses its PNG
    only when the run's choice (ok objects only) is the same, else draws its own."""
    from scip_gpu import report
    from scip_gpu.export import part_name

    plan, source, table = _run_plan_and_source(run)
    parts = [run / "features.parquet" / part_name(i) for i in range(3)]
    frame = report._read(parts, ["meta_index", "meta_phenotype", "meta_id", "meta_status"])
    ok = (frame["meta_status"] == "ok").to_numpy()
    real = report.montage_choice(frame, "meta_phenotype", ok)
    failed = set(frame.loc[~ok, "meta_index"])
    assert len(failed) == 1

    def ahead_with(errors_by_part):
        ahead = report.MontageAhead(source, table, plan, 4)  # (the run's partition_size)
        assert ahead.choice() is None  # nothing drawn before its partitions are done
        for part, errs in errors_by_part.items():
            ahead.partition_done(part, errs)
        return ahead

    ahead = ahead_with({i: set() for i in range(3)})  # as if every object were ok
    index, labels = ahead.choice()
    assert len(index) == len(labels) > 0 and all(label.endswith(f"#{i}") for i, label in zip(index, labels))
    assert ahead.png() == report.montage_of(source, table, plan, index, labels)  # the same drawing
    assert (real == (index, labels)) == (not failed & set(index))  # the same examples unless one failed
    # an example reported failed: nothing drawn (the driver never loads a failed object)
    one = index[0]
    ahead = ahead_with({i: ({one} if i == one // 4 else set()) for i in range(3)})
    assert ahead.choice() is None and ahead.png() is None

    drawn = report.montage_of(source, table, plan, *real)

    class Ahead:  # the run's choice: the report must use this PNG and draw nothing
        def choice(self):
            return real

        def png(self):
            return drawn

    monkeypatch.setattr(report, "montage_of", lambda *a: pytest.fail("drew the montage again"))
    out = tmp_path / "r"
    out.mkdir()
    prov = json.loads((run / "provenance.json").read_text())
    assert report.write_report(out, source=source, plan=plan, table=table, parts=parts, provenance=prov,
                               montage=Ahead()) is not None
    assert base64.b64encode(drawn).decode() in (out / "report.html").read_text()


def test_report_failure_never_raises(tmp_path, caplog):
    from scip_gpu.report import write_report

    with caplog.at_level("WARNING", logger="scip_gpu"):
        assert write_report(tmp_path, source=None, plan=None, table=None, parts=[], provenance={}) is None
    assert "QC report could not be written" in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_report_switch_and_anndata_only(tmp_path):
    out = tmp_path / "run"
    res = run_cli("+dataset=demo", "dataset.n_objects=3", "features=intensity", "cluster=sync",
                  "export.formats=[anndata]", "export.report=false", f"output={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert "features.h5ad" in names and "report.html" not in names
    assert "features.parquet" not in names and "features.columns.csv" not in names  # parts were intermediates


def test_parquet_compression_choice(tmp_path):
    """export.compression: the parts' codec (the default snappy, or none: written faster, larger);
    the values are the same either way; an unknown codec is a configuration error naming the key."""
    runs = {}
    for codec in ("snappy", "none"):
        out = tmp_path / codec
        args = ["+dataset=demo", "dataset.n_objects=6", "features=intensity", "cluster=sync", "export.report=false",
                f"output={out}"] + ([] if codec == "snappy" else [f"export.compression={codec}"])
        res = run_cli(*args, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        part = next((out / "features.parquet").iterdir())
        meta = pq.ParquetFile(part).metadata
        codecs = {meta.row_group(0).column(j).compression for j in range(meta.num_columns)}
        assert codecs == {"SNAPPY" if codec == "snappy" else "UNCOMPRESSED"}
        runs[codec] = pd.read_parquet(out / "features.parquet")
    pd.testing.assert_frame_equal(runs["none"], runs["snappy"])
    res = run_cli("+dataset=demo", "dataset.n_objects=2", "export.compression=brotlii", f"output={tmp_path / 'bad'}",
                  cwd=tmp_path)
    assert res.returncode != 0 and "compression" in res.stderr and "brotlii" in res.stderr
    assert not (tmp_path / "bad").exists()
