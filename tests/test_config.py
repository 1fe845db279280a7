"""Configuration: every option of every group composes and validates; bad keys fail early."""

from __future__ import annotations

import copy

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from scip_gpu._resources import conf_dir
from scip_gpu.cli import to_config
from scip_gpu.config import Config, register_configs, validate
from scip_gpu.errors import ConfigError

register_configs()
GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in conf_dir().iterdir() if g.is_dir()}
PATHS = {"demo": [], "scip_zarr": ["dataset.path=x.zarr"], "zarr": ["dataset.path=x.zarr"],
         "tiff": ["dataset.path=d"], "multipage_tiff": ["dataset.path=d"], "ome_tiff": ["dataset.path=d"]}


def _compose(overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_groups_exist():
    assert {"dataset", "masks", "features", "export", "cluster", "segmentation", "projection",
            "illumination"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    if group == "dataset":
        overrides = [f"+dataset={option}", *PATHS.get(option, ["dataset.path=x"])]
        if option == "fields_tiff":
            overrides.append("segmentation=watershed")
    elif group in ("segmentation", "projection", "illumination") and option != "none":
        overrides = [f"{group}={option}", "+dataset=fields_tiff", "dataset.path=x"]
        if group != "segmentation":
            overrides.append("segmentation=watershed")
    else:
        overrides = [f"{group}={option}"]
    cfg, yaml = to_config(_compose(overrides))
    assert isinstance(cfg, Config)
    validate(cfg)
    assert "dataset:" in yaml


def test_missing_dataset_falls_back_to_demo():
    cfg, _ = to_config(_compose([]))
    assert cfg.dataset.format.value == "demo" and cfg.dataset.n_objects == 300


@pytest.mark.parametrize("override,needle", [
    ("outptu=/tmp/x", "outptu"),
    ("masks.methods.0.smoth=2", "smoth"),
    ("masks.methods.0.method=threshold", "threshold"),
    ("device=gpu", "gpu"),
    ("cluster.type=slurmm", "slurmm"),
    ("features.families=[shape,colour]", "colour"),
])
def test_bad_keys_and_values_fail_naming_them(override, needle):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as exc:
        _compose([override])
    text = str(exc.value) + str(getattr(exc.value, "__cause__", ""))
    assert needle in text


def test_validate_catches_inconsistencies():
    cfg, _ = to_config(_compose(["+dataset=demo", "dataset.channel_names=[a,b]", "dataset.channels=[0]"]))
    with pytest.raises(ConfigError, match="2 names for 1 channels"):
        validate(cfg)
    cfg, _ = to_config(_compose(["masks.methods.1.name=li"]))
    with pytest.raises(ConfigError, match="unique"):
        validate(cfg)
    cfg, _ = to_config(_compose(["+masks.methods.1.kwargs.spotsize=3"]))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['spotsize'\] for mask method 'otsu'"):
        validate(cfg)
    cfg, _ = to_config(_compose(["masks.main_channel_index=5"]))
    with pytest.raises(ConfigError, match="channel index 5 is out of range for 3"):
        validate(cfg, n_channels=3)
    cfg, _ = to_config(_compose(["+features.per_mask.nope=[shape]"]))
    with pytest.raises(ConfigError, match="'nope' is not a configured mask"):
        validate(cfg)
    cfg, _ = to_config(_compose(["io.kvikio=maybe"]))
    with pytest.raises(ConfigError, match="io.kvikio: 'maybe' is not one of auto, true, false"):
        validate(cfg)
    for value in ("auto", "true", "false"):
        validate(to_config(_compose([f"io.kvikio={value}"]))[0])


@pytest.mark.parametrize("overrides,n_channels,needle", [
    # (found by a user test: each was accepted, then wrong values, NaN columns, a crash or a
    # traceback followed)
    (["+dataset=demo", "dataset.channels=[-1]"], None, "negative indices are not accepted"),
    (["masks.edge_width=-2"], None, "masks.edge_width: -2 must not be negative"),
    (["log_level=loud"], None, "log_level: 'loud' is not one of DEBUG, INFO"),
    (["cluster.n_workers=-1"], None, "cluster.n_workers: must be at least 1, got -1"),
    (["+dataset=demo", "dataset.n_objects=0"], None, "dataset.n_objects: must be at least 1, got 0"),
    (["cluster.n_workers=0"], None, "cluster.n_workers: must be at least 1, got 0"),
    (["cluster.threads_per_worker=0"], None, "cluster.threads_per_worker: must be at least 1"),
    (["masks=li", "masks.methods.0.kwargs.smooth=[1.0,2.0]"], 3, r"smooth: 2 values for 3 selected channels"),
    (["masks=li", "masks.methods.0.kwargs.smooth=[1.0,2.0,1.0,1.0]"], 3, r"smooth: 4 values for 3"),
])
def test_validate_rejects_values_a_run_cannot_use(overrides, n_channels, needle):
    cfg, _ = to_config(_compose(overrides))
    with pytest.raises(ConfigError, match=needle):
        validate(cfg, n_channels)


def test_log_level_in_any_case_and_per_channel_smoothing_of_the_right_length():
    for level in ("debug", "Warning", "ERROR"):
        validate(to_config(_compose([f"log_level={level}"]))[0])
    validate(to_config(_compose(["masks=li", "masks.methods.0.kwargs.smooth=[1.0,2.0,0.5]"]))[0], 3)


def test_watershed_parameters_from_the_command_line():
    fields = ["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed"]
    cfg, _ = to_config(_compose(fields))
    validate(cfg)
    seg = cfg.segmentation
    assert seg.radius is None and seg.block_size is None and seg.threshold_method.value == "triangle"
    # the README's example (segmentation.radius=20 segmentation.min_distance=8) and every other key
    given = ["segmentation.radius=20", "segmentation.smoothing=1.2", "segmentation.threshold_method=li",
             "segmentation.threshold=0.1", "segmentation.block_size=31", "segmentation.min_distance=8",
             "segmentation.distance_smoothing=1.5", "segmentation.max_hole_size=0", "segmentation.min_size=20"]
    cfg, _ = to_config(_compose(fields + given))
    validate(cfg)
    keys = ("radius", "smoothing", "threshold", "block_size", "min_distance", "distance_smoothing",
            "max_hole_size", "min_size")
    got = {k: getattr(cfg.segmentation, k) for k in keys}
    assert got == {"radius": 20.0, "smoothing": 1.2, "threshold": 0.1, "block_size": 31, "min_distance": 8,
                   "distance_smoothing": 1.5, "max_hole_size": 0, "min_size": 20}
    assert cfg.segmentation.threshold_method.value == "li"
    for key, value, match in [("block_size", 30, "block_size=30: must be an odd"),
                              ("radius", 0.0, "radius=0.0: must be positive"),
                              ("min_distance", 0, "min_distance=0: must be at least 1"),
                              ("smoothing", -1.0, "smoothing=-1.0: must not be negative")]:
        bad = copy.deepcopy(cfg)
        setattr(bad.segmentation, key, value)
        with pytest.raises(ConfigError, match=match):
            validate(bad)
    with pytest.raises(ConfigCompositionException, match="threshold_method=mean"):
        _compose(fields + ["segmentation.threshold_method=mean"])


def test_force_added_unknown_key_is_refused():
    with pytest.raises(ConfigError, match=r"unknown configuration key\(s\): masks.methods.0.smoth"):
        to_config(_compose(["+masks.methods.0.smoth=2"]))
    to_config(_compose(["+masks.methods.0.kwargs.extra=2"]))  # free-form kwargs: checked by validate()


def test_field_options_need_a_fields_dataset():
    cfg, _ = to_config(_compose(["segmentation=watershed"]))
    with pytest.raises(ConfigError, match="segmentation applies to fields of view"):
        validate(cfg)
    cfg, _ = to_config(_compose(["+dataset=fields_tiff", "dataset.path=x"]))
    with pytest.raises(ConfigError, match="needs a segmentation"):
        validate(cfg)
    cfg, _ = to_config(_compose(["projection=max"]))
    with pytest.raises(ConfigError, match="apply to fields of view"):
        validate(cfg)


def test_mapping_override_without_plus():
    """A plain dictionary override adds keys to a free-form mapping (Hydra merges it into the
    node; struct mode would refuse the new keys); misspelt keys around it still fail."""
    cfg, _ = to_config(_compose(["+dataset=fields_tiff", "dataset.path=x", "segmentation=watershed",
                                 "segmentation.compartments={DAPI: nucleus, Tubulin: cytoplasm}"]))
    assert cfg.segmentation.compartments == {"DAPI": "nucleus", "Tubulin": "cytoplasm"}
    # a dataset's own mapping: the override replaces the channels it names, keeps the others
    cfg, _ = to_config(_compose(["+dataset=bbbc021", "dataset.path=x", "segmentation.compartments={Tubulin: cytoplasm}"]))
    assert cfg.segmentation.compartments == {"DAPI": "nucleus", "Tubulin": "cytoplasm", "Actin": "cell"}
    with pytest.raises(ConfigCompositionException, match="compartmentz"):
        _compose(["+dataset=bbbc021", "dataset.path=x", "segmentation.compartmentz={DAPI: nucleus}"])
    with pytest.raises(ConfigCompositionException, match="nucleus_chanel"):
        _compose(["+dataset=bbbc021", "dataset.path=x", "segmentation.nucleus_chanel=1"])


@pytest.mark.parametrize("dataset", ["fields_tiff", "bbbc021"])
def test_fields_profile_the_compartments_by_default(dataset):
    """Segmented fields: each channel in its compartment, no per-cell li/otsu masks unless asked."""
    base = [f"+dataset={dataset}", "dataset.path=x", "segmentation=watershed"]
    cfg, _ = to_config(_compose(base))
    assert cfg.masks.methods == []
    for choice, want in (("masks=scip", ["li", "otsu"]), ("masks=li", ["li"])):
        cfg, _ = to_config(_compose([*base, choice]))
        assert [m.method.value for m in cfg.masks.methods] == want, choice
    cfg, _ = to_config(_compose(["+dataset=tiff", "dataset.path=x"]))  # single objects: SCIP's pair
    assert [m.method.value for m in cfg.masks.methods] == ["li", "otsu"]


@pytest.mark.parametrize("dataset", [o for o in GROUPS["dataset"]])
@pytest.mark.parametrize("preset", GROUPS["features"])
def test_every_dataset_keeps_the_chosen_feature_preset(dataset, preset):
    """A dataset's configuration (a global package merged after the feature group) leaves the
    preset's families alone: ``+dataset=bbbc021 features=cellprofiler`` once profiled SCIP's
    families under the name of the cellprofiler preset."""
    from omegaconf import OmegaConf

    want = OmegaConf.load(conf_dir() / "features" / f"{preset}.yaml")
    extra = [] if dataset == "demo" else ["dataset.path=x"]
    cfg = _compose([f"+dataset={dataset}", *extra, f"features={preset}"])
    assert cfg.features.preset == want.preset
    assert list(cfg.features.families) == list(want.families), (dataset, preset)


def test_python_config_has_the_command_line_defaults():
    """A Config built in Python profiles what `python -m scip_gpu` profiles (masks li + otsu,
    every family, the raw set, ...): every default of the dataclasses equals the composed one."""
    from dataclasses import asdict

    from scip_gpu.config import DatasetConfig, DatasetFormat, MaskMethod

    composed, _ = to_config(_compose([]))
    python = Config(dataset=DatasetConfig(name="demo", format=DatasetFormat.demo, channel_names=["BF", "DNA", "SPOT"]))
    assert asdict(python) == asdict(composed)
    assert [(m.method, m.name, m.kwargs) for m in python.masks.methods] == \
        [(MaskMethod.li, "li", {"smooth": 1.0}), (MaskMethod.otsu, "otsu", {})]


def test_per_mask_and_filter_settings_are_checked():
    cfg, _ = to_config(_compose(["++features.per_mask={otsu: [shape, colour]}"]))
    with pytest.raises(ConfigError, match=r"features.per_mask.otsu: unknown feature family \['colour'\]"):
        validate(cfg)
    cfg, _ = to_config(_compose(["masks.filters=[{method: std, settings: {treshold: 50}}]"]))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['treshold'\] for filter 'std'.*did you mean 'threshold'"):
        validate(cfg)
