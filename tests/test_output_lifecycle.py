"""Outputs at their edges: names the outputs cannot hold, files outside the run folder, damaged
parts on resume, and the AnnData outputs of one run agreeing with each other."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import scip_gpu
from scip_gpu import export
from scip_gpu.demo import make_cell
from scip_gpu.errors import ConfigError
from scip_gpu.features.registry import Column

SMALL = ("masks=li",)
OPTIONS = dict(features="intensity", export={"report": False, "formats": ["parquet"]})


@pytest.fixture(scope="module")
def cells():
    return [make_cell(i, min_size=32, max_size=32)[0] for i in range(3)]


@pytest.mark.parametrize("name", ["../mine", "/tmp/mine", "sub/mine", "", ".mine", " mine"])
def test_export_filename_is_a_plain_name_in_the_run_folder(tmp_path, cells, name):
    (tmp_path / "mine.h5ad").write_text("the user's own file")
    with pytest.raises(ConfigError, match="export.filename"):
        scip_gpu.profile(cells[:1], *SMALL, output=tmp_path / "run", features="intensity",
                         export={"filename": name})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5ad"]  # nothing written, nothing replaced
    assert (tmp_path / "mine.h5ad").read_text() == "the user's own file"


@pytest.mark.parametrize("names, formats, needle", [
    (["BF", "combined", "SPOT"], ["parquet"], "more than once"),  # feat_li_mean_combined: the combined mask's
    (["BF", "DNA", "dna"], ["parquet"], "differ only in case"),  # DuckDB: feat_li_mean_dna -> the DNA column
    (["BF", "DNA/Hoechst", "SPOT"], ["parquet", "anndata"], "'/'"),
    (["BF", "DNA/Hoechst", "SPOT"], ["anndata_zarr"], "'/'"),
])
def test_column_names_the_outputs_cannot_hold_stop_the_run_at_start(tmp_path, cells, names, formats, needle):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=needle):
        scip_gpu.profile(cells[:1], *SMALL, output=out, channel_names=names, features="intensity",
                         export={"formats": formats})
    assert not out.exists()


def test_a_slash_is_fine_in_parquet_only_and_in_feature_names():
    cols = [Column("meta_li_empty_a/b", "meta", "empty", "empty", dtype="bool"),
            Column("feat_li_mean_a/b", "feat", "intensity", "mean")]
    meta = pd.DataFrame({"meta_index": np.arange(2)})
    export.check_column_names(export.arrow_schema(meta, cols), cols, ["parquet"])
    export.check_column_names(export.arrow_schema(meta, cols[1:]), cols[1:], ["anndata", "anndata_zarr"])
    with pytest.raises(ConfigError, match=r"\['meta_li_empty_a/b'\]"):
        export.check_column_names(export.arrow_schema(meta, cols), cols, ["parquet", "anndata"])


def test_resume_runs_damaged_parts_again(tmp_path, cells):
    out = tmp_path / "run"
    scip_gpu.profile(cells, *SMALL, output=out, partition_size=1, **OPTIONS)
    folder = out / "features.parquet"
    before = pd.read_parquet(folder)
    assert len(before) == 3 and (before["meta_status"] == "ok").all()
    # what a machine crash (renamed before the data reached the disk) or a bad copy leaves
    part1, part2 = folder / "part-00001.parquet", folder / "part-00002.parquet"
    part1.write_bytes(part1.read_bytes()[:1000])  # truncated: no footer
    part2.write_bytes(b"")  # zero bytes
    scip_gpu.profile(cells, *SMALL, output=out, partition_size=1, resume=True, **OPTIONS)
    after = pd.read_parquet(folder)
    pd.testing.assert_frame_equal(after, before)  # no row lost or repeated, the same values
    assert after["meta_index"].tolist() == [0, 1, 2]
    log = (out / "run.log").read_text()
    assert "part-00001.parquet is damaged (unreadable" in log and "part-00002.parquet is damaged" in log


def test_every_anndata_output_of_a_fields_run_has_the_same_obs_names_and_missing_values(tmp_path):
    """features.h5ad, features.zarr and features.analysis.h5ad of objects segmented from fields
    are indexed by ``<meta_field>-<meta_label>``, so that they join on ``obs_names``; a metadata
    value missing in the Parquet parts (a CSV without a row for the field) stays missing."""
    import anndata as ad

    cols = [Column("feat_mean_DNA", "feat", "intensity", "mean", channel="DNA"),
            Column("feat_sum_DNA", "feat", "intensity", "sum", channel="DNA")]
    meta = pd.DataFrame({"meta_field_index": [0, 0, 1], "meta_field": ["A1_1", "A1_1", "A2_1"],
                         "meta_label": [1, 2, 1], "meta_compound": ["taxol", "taxol", None]})
    rows = meta.assign(meta_status=["ok", "error", "ok"])
    values = np.array([[1.0, 10.0], [np.nan, np.nan], [3.0, 30.0]])
    schema = export.arrow_schema(meta, cols)
    parts = [export.write_part(tmp_path / "features.parquet", 0, rows, schema, values)]
    meta_cols = list(meta.columns)
    export.write_anndata(parts, tmp_path / "features.h5ad", cols, meta_cols)
    export.write_anndata_zarr(parts, tmp_path / "features.zarr", cols, meta_cols)
    export.write_analysis_ready(parts, tmp_path / "features.analysis.h5ad", cols, meta_cols)
    full = ad.read_h5ad(tmp_path / "features.h5ad")
    assert full.obs_names.tolist() == ["A1_1-1", "A1_1-2", "A2_1-1"]
    assert ad.read_zarr(tmp_path / "features.zarr").obs_names.tolist() == full.obs_names.tolist()
    ready = ad.read_h5ad(tmp_path / "features.analysis.h5ad")
    assert ready.obs_names.tolist() == ["A1_1-1", "A2_1-1"]  # the ok rows, under their names
    np.testing.assert_array_equal(ready.X, full[ready.obs_names].X)
    np.testing.assert_array_equal(ready.X, np.float32([[1, 10], [3, 30]]))
    assert pq.read_table(parts[0], columns=["meta_compound"]).column(0).null_count == 1
    for adata in (full, ad.read_zarr(tmp_path / "features.zarr"), ready):
        compound = adata.obs["meta_compound"]
        assert compound.isna().tolist() == [False] * (len(compound) - 1) + [True]  # not the string "None"
        assert compound.iloc[0] == "taxol" and "None" not in compound.astype(object).tolist()


@pytest.mark.parametrize("formats", [["parquet", "anndata"], ["anndata"]])
def test_a_part_a_killed_worker_left_is_removed_at_the_end(tmp_path, cells, monkeypatch, formats):
    """What a worker killed while writing a part leaves (its temporary file; the partition ran
    again elsewhere) is removed once every partition is done: polars refuses a Parquet folder
    holding it, and with export.formats=[anndata] the folder of intermediate parts is removed."""
    import anndata as ad

    write_part = export.write_part

    def write_part_after_a_killed_worker(folder, part, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        export.temp_path(Path(folder) / export.part_name(part)).write_bytes(b"half a part")  # the dead worker's
        return write_part(folder, part, *args, **kwargs)

    monkeypatch.setattr(export, "write_part", write_part_after_a_killed_worker)
    out = tmp_path / "run"
    adata = scip_gpu.profile(cells[:2], *SMALL, output=out, features="intensity",
                             export={"report": False, "formats": formats})
    assert adata.n_obs == 2 and (adata.obs["meta_status"] == "ok").all()
    if "parquet" in formats:
        assert [p.name for p in (out / "features.parquet").iterdir()] == ["part-00000.parquet"]
        try:  # (not in the test extra: checked where installed)
            import polars as pl
        except ImportError:
            pl = None
        if pl is not None:
            assert pl.read_parquet(out / "features.parquet")["meta_index"].to_list() == [0, 1]
    else:
        assert not (out / "features.parquet").exists()
    assert (out / "provenance.json").is_file()  # the run got to its end
    assert ad.read_h5ad(out / "features.h5ad").n_obs == 2


def test_check_readers_reads_a_fields_run(tmp_path, capsys):
    """benchmarks/check_readers.py (README, Outputs) on objects segmented from fields of view,
    which have no meta_index: rows matched by field and label."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "check_readers", Path(__file__).resolve().parents[1] / "benchmarks" / "check_readers.py")
    check_readers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_readers)
    cols = [Column("feat_mean_DNA", "feat", "intensity", "mean", channel="DNA")]
    meta = pd.DataFrame({"meta_field_index": [1, 0, 0], "meta_field": ["A2_1", "A1_1", "A1_1"],
                         "meta_label": [1, 2, 1]})
    schema = export.arrow_schema(meta, cols)
    folder = tmp_path / "features.parquet"
    export.write_part(folder, 0, meta.iloc[:1].assign(meta_status="ok"), schema, np.array([[3.0]]))
    export.write_part(folder, 1, meta.iloc[1:].assign(meta_status="ok"), schema, np.array([[2.0], [1.0]]))
    status = check_readers.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "pandas: 3 rows x 5 columns, same values" in out and "FAILS" not in out
    assert f"{folder}: 2 files" in out  # the sizes, also without an AnnData file
    installed = all(importlib.util.find_spec(m) for m in ("polars", "duckdb"))
    assert status == (0 if installed else 2)
    df = pd.read_parquet(folder)
    assert df.sort_values(check_readers.row_key(df))["feat_mean_DNA"].tolist() == [1.0, 2.0, 3.0]


def test_sigterm_stops_the_run_like_ctrl_c_and_resume_finishes_it(tmp_path, monkeypatch, capsys):
    """``kill PID``, a batch job's walltime, ``docker stop``: SIGTERM releases the lock, keeps
    what finished and exits 143; resume=true then finishes with every object once."""
    import json
    import os
    import signal

    from hydra import compose, initialize_config_dir

    from scip_gpu import cli, state
    from scip_gpu._resources import conf_dir

    logger = logging.getLogger("scip_gpu")  # (cli.task sets up its console logging)
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    out = tmp_path / "run"
    args = ["+dataset=demo", "dataset.n_objects=2", "dataset.min_size=32", "dataset.max_size=32", "partition_size=1",
            "cluster=sync", "features=intensity", "masks=li", "export.report=false", f"output={out}"]
    write_summary = state.write_summary

    def terminated_after_the_first(out_, result):
        write_summary(out_, result)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(state, "write_summary", terminated_after_the_first)
    before = signal.getsignal(signal.SIGTERM)
    cli.register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        assert cli.task(compose("config", overrides=args)) == cli.TERMINATED
        assert signal.getsignal(signal.SIGTERM) == before  # the handler is the run's only
        err = capsys.readouterr().err
        assert "terminated (SIGTERM)" in err and "resume=true" in err
        assert not (out / state.LOCK_FILE).exists()
        assert len(list((out / "checkpoints").glob("part-*.json"))) == 1
        monkeypatch.setattr(state, "write_summary", write_summary)
        assert cli.task(compose("config", overrides=args + ["resume=true"])) == 0
    df = pd.read_parquet(out / "features.parquet")
    assert sorted(df["meta_index"]) == [0, 1] and (df["meta_status"] == "ok").all()
    assert json.loads((out / "provenance.json").read_text())["resumes"] == 1


@pytest.mark.parametrize("strict, status", [("false", 0), ("true", 1)])
def test_a_failed_field_is_reported_as_a_field(tmp_path, monkeypatch, capsys, strict, status):
    from hydra import compose, initialize_config_dir

    from scip_gpu import cli, pipeline
    from scip_gpu._resources import conf_dir

    logger = logging.getLogger("scip_gpu")  # (cli.task sets up its console logging)
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    summary = pipeline.RunSummary(tmp_path, 4, 4, 0, 10, 1.0, [{"stage": "field"}], n_fields_failed=1)
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: summary)
    cli.register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        assert cli.task(compose("config", overrides=["+dataset=demo", f"strict={strict}"])) == status
    captured = capsys.readouterr()
    assert "profiled 4 objects (4 ok, 0 with errors; 1 field(s) could not be profiled)" in captured.out
    assert "scip_gpu: 1 field(s) could not be profiled; see" in captured.err


def test_a_tilde_in_the_output_path_is_the_home_folder(tmp_path, monkeypatch):
    """`"output='~/runs/a'"` (Hydra's grammar needs the quotes; the shell passes the tilde on):
    the run goes to $HOME/runs/a, not to a folder named '~' in the working directory."""
    from scip_gpu.cli import to_config
    from scip_gpu.pipeline import run

    from .test_config import _compose

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    cfg, yaml = to_config(_compose(["+dataset=demo", "dataset.n_objects=3", "cluster=sync", "output='~/runs/a'",
                                    "export.report=false", "export.formats=[parquet]", "features.families=[bbox]"]))
    run(cfg, yaml)
    assert (home / "runs" / "a" / "features.parquet").exists()
    assert not (cwd / "~").exists()
