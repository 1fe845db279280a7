"""The bad-input corpus (tests/data/bad_inputs): every bad file is reported with a clear cause,
good inputs are profiled, and only strict=true makes the exit status non-zero."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT
from .test_cli import run_cli

CORPUS = ROOT / "tests" / "data" / "bad_inputs"
EXPECTED = {  # file -> words the error must contain (besides the file's name)
    "truncated.tif": ["corrupt"],
    "zero_byte.tif": ["corrupt"],
    "not_a_tiff.tif": ["corrupt"],
    "float_nan_inf.tif": ["NaN or infinite", "2 "],
    "all_zero.tif": ["same value", "nothing to measure"],
    "one_pixel.tif": ["smaller than the 11x11 footprint"],
    "tiny_5x5.tif": ["smaller than the 11x11 footprint"],
    "two_channels.tif": ["channel index 2 is out of range", "has 2 channel(s)"],
    "unexpected_axes.tif": ["one Y and one X axis", "'YYX'"],
}
ARGS = ["+dataset=multipage_tiff", f"dataset.path={CORPUS}", "dataset.glob=*.tif", "dataset.channels=[0,1,2]",
        "features=intensity", "cluster=sync"]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    res = run_cli(*ARGS, f"output={tmp / 'out'}", cwd=tmp)
    return tmp, res


def test_every_bad_input_is_reported(corpus_run):
    tmp, res = corpus_run
    assert res.returncode == 0, res.stderr
    assert f"{len(EXPECTED)} object(s) could not be profiled" in res.stderr
    errors = pd.read_csv(tmp / "out" / "errors.csv")
    assert len(errors) == len(EXPECTED)
    for name, words in EXPECTED.items():
        row = errors[errors["object"].str.endswith(name)]
        assert len(row) == 1, name
        msg = row["error"].iloc[0]
        assert name in msg, msg
        for w in words:
            assert w in msg, (name, msg)


def test_good_inputs_are_profiled_and_rows_kept(corpus_run):
    tmp, _ = corpus_run
    df = pd.read_parquet(tmp / "out" / "features.parquet")
    assert len(df) == len(list(CORPUS.glob("*.tif")))  # every input keeps its row
    good = df[df["meta_path"].str.contains("good_")]
    assert len(good) == 2 and (good["meta_status"] == "ok").all()
    assert good["feat_li_mean_ch0"].notna().all()
    bad = df[~df["meta_path"].str.contains("good_")]
    assert (bad["meta_status"] == "error").all() and bad["feat_raw_mean_ch0"].isna().all()


def test_strict_makes_failures_fatal(corpus_run):
    tmp, _ = corpus_run
    res = run_cli(*ARGS, "strict=true", f"output={tmp / 'strict'}", cwd=tmp)
    assert res.returncode == 1
    assert (tmp / "strict" / "errors.csv").exists()  # the report is still written


def test_regex_without_required_groups(tmp_path):
    res = run_cli("+dataset=tiff", f"dataset.path={CORPUS}", "dataset.regex='(?P<name>good)_(?P<n>\\d)'",
                  "cluster=sync", cwd=tmp_path)
    assert res.returncode == 2
    assert "lacks the named group(s) ['id', 'channel']" in res.stderr


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    res = run_cli(*ARGS, f"output={blocker / 'out'}", cwd=tmp_path)
    assert res.returncode == 2
    assert "cannot be created or written" in res.stderr and str(blocker) in res.stderr


def test_missing_channel_file_and_mismatched_counts(tmp_path):
    # per-channel TIFFs: object 0 complete, object 1 lacks channel 2
    src = tmp_path / "tiffs"
    src.mkdir()
    import tifffile

    good = tifffile.imread(CORPUS / "good_0.tif")
    for obj in (0, 1):
        for c in range(3):
            if (obj, c) != (1, 2):
                tifffile.imwrite(src / f"cell{obj}_ch{c}.tif", good[c])
    shutil.copy(CORPUS / "good_1.tif", src / "cell2_ch0.tif")  # a 3-page file where one plane is expected
    res = run_cli("+dataset=tiff", f"dataset.path={src}", "dataset.regex='cell(?P<id>\\d)_ch(?P<channel>\\d)'",
                  "features=intensity", "cluster=sync", f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index("meta_index")["error"].to_dict()
    assert "no file for channel '2'" in errors[1]
    assert "cell2_ch0.tif: expected one plane per channel file, found 3" in errors[2]


def test_odd_files_do_not_decide_for_the_good_ones(tmp_path):
    # no dataset.channels: the first file has 2 channels, one name is a broken link, one file has
    # axes no loader expects; the 3-channel files are what most objects are, and are profiled
    import os

    src = tmp_path / "cells"
    src.mkdir()
    for name in ("two_channels.tif", "good_0.tif", "good_1.tif", "unexpected_axes.tif"):
        shutil.copy(CORPUS / name, src / name.replace("two_channels", "a_two_channels"))
    shutil.copy(CORPUS / "good_0.tif", src / "good_2.tif")
    os.symlink(tmp_path / "moved_away.tif", src / "link.tif")
    res = run_cli("+dataset=multipage_tiff", f"dataset.path={src}", "features=intensity", "cluster=sync",
                  f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "using 3 channel(s), what 3 of 4 readable files have" in res.stderr
    df = pd.read_parquet(tmp_path / "out" / "features.parquet")
    assert len(df) == 6
    ok = df[df["meta_path"].str.contains("good_")]
    assert len(ok) == 3 and (ok["meta_status"] == "ok").all() and ok["feat_raw_mean_ch2"].notna().all()
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index("object")["error"]
    assert len(errors) == 3
    assert "has 2 channel(s) where most objects have 3" in errors[str(src / "a_two_channels.tif")]
    assert "broken symbolic link" in errors[str(src / "link.tif")]
    assert "one Y and one X axis" in errors[str(src / "unexpected_axes.tif")]


# ---------------------------------------------------------------------------------------------
# Fields of view: a bad field fails alone, whatever partition it shares


def _run_fields(tmp_path, *overrides):
    from scip_gpu import pipeline
    from scip_gpu.cli import to_config

    from .test_config import _compose

    out = tmp_path / "out"
    cfg, _ = to_config(_compose(["+dataset=fields_tiff", f"dataset.path={tmp_path / 'fields'}",
                                 "segmentation=watershed", "features=intensity", "cluster=sync", "progress=false",
                                 "segmentation.fields_per_partition=4", f"output={out}", *overrides]))
    summary = pipeline.run(cfg)
    df = pd.read_parquet(out / "features.parquet")
    errors = pd.read_csv(out / "errors.csv")
    return summary, df, errors


def test_a_field_with_nan_pixels_fails_alone(tmp_path, caplog):
    # two good fields and one float field with NaN pixels in one partition (and one
    # illumination group): the NaN field is named with its file and cause; the others are
    # profiled with a finite correction image
    import tifffile

    from .fields_data import write_fields

    caplog.set_level("INFO", logger="scip_gpu")
    fields = write_fields(tmp_path / "fields", n_fields=3, n_cells=2)
    bad = fields[2][0].astype(np.float32)
    bad[5, 7] = np.nan
    bad[9, 3] = np.inf
    tifffile.imwrite(tmp_path / "fields" / "B02_s3_w1.tif", bad)
    summary, df, errors = _run_fields(tmp_path, "illumination=jones_2006")
    assert summary.n_ok == len(df) == 4  # two cells in each good field
    # a failed field is no object: the summary counts it apart (it said "4 ok, 1 with errors" of 4 objects)
    assert (summary.n_objects, summary.n_errors, summary.n_fields_failed) == (4, 0, 1)
    assert "(4 ok, 0 with errors; 1 field(s) could not be profiled)" in summary.line()
    assert set(df["meta_field"]) == {"B02_1", "B02_2"} and (df["meta_status"] == "ok").all()
    assert df["feat_mean_1"].notna().all()
    assert len(errors) == 1 and errors["object"].iloc[0] == "field B02_3"
    msg = errors["error"].iloc[0]
    assert "2 NaN or infinite pixel value(s)" in msg and str(tmp_path / "fields" / "B02_s3_w1.tif") in msg
    corr = tifffile.imread(tmp_path / "out" / "illumination" / "all.tif")
    assert np.isfinite(corr).all()
    assert ": 4 objects in 1 partition(s)" in caplog.text  # the worker's line counts objects, not fields


def test_a_field_whose_segmentation_fails_fails_alone(tmp_path, monkeypatch):
    # a field the segmentation raises on (whatever the cause) among good ones in one partition
    from scip_gpu import segmentation

    from .fields_data import write_fields

    fields = write_fields(tmp_path / "fields", n_fields=3, n_cells=2)
    doomed = float(fields[1][0].max())
    real = segmentation.watershed_nuclei

    def watershed(img, **kwargs):
        if float(img.max()) == doomed:
            raise RuntimeError("segmentation bug")
        return real(img, **kwargs)

    monkeypatch.setattr(segmentation, "watershed_nuclei", watershed)
    summary, df, errors = _run_fields(tmp_path)
    assert set(df["meta_field"]) == {"B02_1", "B02_3"} and len(df) == 4 and (df["meta_status"] == "ok").all()
    assert errors["error"].tolist() == ["field B02_2: segmentation failed: RuntimeError: segmentation bug"]


def test_a_field_of_another_size_is_left_out_of_the_illumination_mean(tmp_path):
    # the odd field comes first in its own partition: the mean is of the shape most fields have,
    # the odd field is an error row naming it, the run goes on
    import tifffile

    from .fields_data import make_field, write_fields

    fields = write_fields(tmp_path / "fields", n_fields=3, n_cells=2)
    small, _ = make_field(7, shape=(48, 64), n_cells=1)
    for ch, plane in zip((1, 2, 4), small):
        tifffile.imwrite(tmp_path / "fields" / f"B02_s0_w{ch}.tif", plane)
    summary, df, errors = _run_fields(tmp_path, "illumination=jones_2006", "segmentation.fields_per_partition=1")
    assert set(df["meta_field"]) == {"B02_1", "B02_2", "B02_3"} and (df["meta_status"] == "ok").all()
    assert len(df) == 6 and df["feat_mean_1"].notna().all()
    assert errors["object"].tolist() == ["field B02_0"]
    assert "does not match the field (3, 48, 64)" in errors["error"].iloc[0]
    corr = tifffile.imread(tmp_path / "out" / "illumination" / "all.tif")
    assert corr.shape == fields[0].shape and np.isfinite(corr).all()


def test_fields_without_any_cell_say_so(tmp_path, capsys):
    # every field empty (no nucleus anywhere): exit 1, and the message says that nothing was found
    # rather than pointing at an empty error report
    import tifffile

    from scip_gpu import cli

    from .test_messages import compose

    (tmp_path / "fields").mkdir()
    for site in (1, 2):
        for ch in (1, 2, 4):
            tifffile.imwrite(tmp_path / "fields" / f"B02_s{site}_w{ch}.tif", np.full((48, 64), 100, np.uint16))
    out = tmp_path / "out"
    assert cli.task(compose("+dataset=fields_tiff", f"dataset.path={tmp_path / 'fields'}", "segmentation=watershed",
                            "features=intensity", "cluster=sync", "progress=false", f"output={out}")) == 1
    err = capsys.readouterr().err
    assert "scip_gpu: no object could be profiled; no object was found" in err
    assert len(pd.read_csv(out / "errors.csv")) == 0


def test_the_device_path_reports_the_same_bad_inputs(corpus_run, tmp_path, monkeypatch):
    """device=cuda (the stand-in CuPy, kernels emulated): every bad file of the corpus is the
    same error as on the CPU, the good ones get the CPU path's values."""
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    from .test_config import _compose
    from .test_gpu_path import _reference_kernels
    from . import fake_cupy

    import anndata  # noqa: F401  (imported before the fake: it probes for cupyx.scipy.sparse)

    cupy = fake_cupy.install(monkeypatch)
    _reference_kernels(monkeypatch, cupy)
    cpu_dir, _ = corpus_run
    cfg, yaml = to_config(_compose([*ARGS, "device=cuda", f"output={tmp_path / 'cuda'}", "progress=false"]))
    summary = run(cfg, yaml)
    assert summary.n_errors == len(EXPECTED)
    got = pd.read_csv(tmp_path / "cuda" / "errors.csv").sort_values("object").reset_index(drop=True)
    want = pd.read_csv(cpu_dir / "out" / "errors.csv").sort_values("object").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["object", "stage", "error"]], want[["object", "stage", "error"]])
    cuda = pd.read_parquet(tmp_path / "cuda" / "features.parquet").sort_values("meta_path").reset_index(drop=True)
    cpu = pd.read_parquet(cpu_dir / "out" / "features.parquet").sort_values("meta_path").reset_index(drop=True)
    pd.testing.assert_frame_equal(cuda, cpu, rtol=1e-9, atol=1e-12)
