"""The command line's own messages: overrides checked before Hydra (one line, exit 2), --help,
--version, warmup, and the dashboard's dependency."""

from __future__ import annotations

import pytest

from scip_gpu.cli import main
from scip_gpu.errors import ConfigError
from scip_gpu.overrides import all_keys, prepare


@pytest.mark.parametrize("override,needle", [
    ("dataset.n_objcts=3", "did you mean dataset.n_objects? Write dataset.n_objects=3 (without '+'"),
    ("n_objects=3", "did you mean dataset.n_objects? Write dataset.n_objects=3"),
    ("+masks.methods.0.smoth=2", "'smoth' is not a key in masks.methods.0"),
    ("clustr.n_workers=2", "did you mean cluster.n_workers? Write cluster.n_workers=2"),
    ("masks.filters.0.setings={threshold: 1}", "did you mean masks.filters.0.settings?"),
    ("dataset=demo", "write +dataset=demo"),
    ("+masks=li", "write masks=li without '+'"),
    ("masks=lii", "choose from circle, li, none, scip; they are in conf/masks/); did you mean li?"),
    ("batch_size=abc", "batch_size=abc: expected a whole number"),
    ("strict=maybe", "strict=maybe: expected true or false"),
    ("device=gpu", "device=gpu: not a valid value (choose from auto, cpu, cuda)"),
    ("masks.methods.0.method=lii", "masks.methods.0.method=lii: not a valid value (choose from li, otsu, spot, "
     "circle); did you mean masks.methods.0.method=li?"),
    ("dataset.n_objects=1.5", "dataset.n_objects=1.5: expected a whole number"),
    ("export.formats=[csv]", "export.formats=[csv]: Invalid value 'csv', expected one of [parquet, anndata, "),
    ("masks.methods=[{method: lii}]", "Invalid value 'lii', expected one of [li, otsu, spot, circle]"),
    ("dataset.channels=abc", "dataset.channels=abc: expected a list"),
    (r"dataset.regex=(?P<id>\d+)_Ch(?P<channel>\d+)\.tif",
     r"""quote the value inside the shell's quotes, e.g. "dataset.regex='(?P<id>\d+)_Ch(?P<channel>\d+)\.tif'" """[:-1]),
])
def test_common_mistakes_get_one_line(override, needle):
    with pytest.raises(ConfigError) as exc:
        prepare([override])
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_overrides_that_hydra_cannot_merge_are_passed_on_as_force_adds():
    assert prepare(["+dataset=demo", "features.per_mask={otsu: [shape]}"]) == \
        ["+dataset=demo", "++features.per_mask={otsu: [shape]}"]
    assert prepare(["segmentation.compartments={DAPI: nucleus}"]) == ["++segmentation.compartments={DAPI: nucleus}"]
    assert prepare(["masks.methods.0.kwargs.smooth=2"]) == ["++masks.methods.0.kwargs.smooth=2"]
    assert prepare(["masks=li", "batch_size=8"]) == ["masks=li", "batch_size=8"]
    assert prepare(["dataset.n_objects=4"]) == ["+dataset=demo", "dataset.n_objects=4"]  # the default dataset


@pytest.mark.parametrize("override", ["batch_size=null", "batch_size=12", "device=cuda", "strict=true",
                                      "dataset.channels=[0,2]", "dataset.channel_names=[a,b,c]",
                                      "output=${oc.env:HOME}/run", "masks.methods.0.method=otsu",
                                      "masks.methods=[{method: li, name: x, kwargs: {smooth: 2}}]",
                                      "export.formats=[parquet]", "features.families=[shape,intensity]"])
def test_valid_values_pass(override):
    assert prepare([override])[-1].endswith(override)


def test_schema_keys_are_listed():
    keys = all_keys()
    assert {"dataset.n_objects", "masks.methods.0.kwargs", "cluster.dashboard_address", "output"} <= set(keys)


@pytest.mark.parametrize("argv,needle", [
    (["dataset.n_objcts=3"], "scip_gpu: error: unknown configuration key 'dataset.n_objcts'"),
    (["batch_size=abc"], "scip_gpu: error: batch_size=abc: expected a whole number"),
    (["dataset.min_size=100", "dataset.max_size=10"], "give 0 <= min_size <= max_size"),
    (["dataset.n_channels=0"], "dataset.n_channels: must be at least 1"),
    (["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed", "segmentation.expand_distance=-3"],
     "segmentation.expand_distance=-3: must not be negative"),
    (["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed", "segmentation.min_overlap=2"],
     "segmentation.min_overlap=2.0: the share of a cell's area"),
    (["+dataset=multipage_tiff", "dataset.path=x", r"dataset.regex='(?P<status>[a-z]+)_\d'"],
     "dataset.regex: the named group(s) ['status'] would replace scip_gpu's own column(s) ['meta_status']"),
    (["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed",
      r"dataset.regex='(?P<well>\w+)_(?P<label>\d)_w(?P<channel>\d)'"], "['meta_label']"),
    (["+dataset=tiff", "dataset.path=x", r"dataset.regex=(?P<id>\d+)_Ch(?P<channel>\d+)\.tif"], "must be quoted"),
    # (Hydra's own messages for these were several lines, a trace hint and exit 1)
    (["dataset.n_objects=5,6"], "a comma-separated value is a sweep, which scip_gpu does not run; for a list "
                                "write dataset.n_objects=[5,6]"),
    (["~dataset"], "~dataset: a configuration group cannot be removed; choose one of its options (bbbc021"),
    (["+dataset=demo", "+dataset=demo"], "+dataset=demo: dataset is chosen more than once"),
    (["log_level=loud"], "log_level: 'loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
])
def test_command_line_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("scip_gpu: error:")
    assert needle in err or "quote the value" in err
    assert not (tmp_path / "outputs").exists()


def test_help_and_version(capsys):
    from scip_gpu import __version__

    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit):
            main([flag])
        assert capsys.readouterr().out == f"scip_gpu {__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("+dataset=scip_zarr", "+dataset=fields_tiff", "dataset.channels", "output=FOLDER",
                   "address, local, local_cuda", "python -m scip_gpu warmup", "features.per_mask="):
        assert needle in text, needle
    assert "Hydra" not in text.splitlines()[0]


def test_dashboard_needs_bokeh(monkeypatch):
    import importlib.util

    from scip_gpu.cluster import check_dashboard
    from scip_gpu.config import ClusterConfig, ClusterType

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bokeh" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs bokeh, which is not installed: pip install 'scip_gpu\[dashboard\]'"):
        check_dashboard(ClusterConfig(type=ClusterType.local, dashboard_address=":8787"))
    check_dashboard(ClusterConfig(type=ClusterType.local))  # not asked for: nothing needed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    check_dashboard(ClusterConfig(type=ClusterType.local, dashboard_address=":8787"))


def test_warmup_command(capsys):
    from scip_gpu.warmup import main as warmup_main
    from scip_gpu.warmup import warmup

    assert warmup_main(["--help"]) == 0 and "numba" in capsys.readouterr().out
    assert warmup_main(["extra"]) == 2
    seconds = warmup(dtypes=("uint16",))  # (the kernels the rest of the suite compiles too)
    assert list(seconds) == ["uint16", "watershed"] and seconds["uint16"] > 0
