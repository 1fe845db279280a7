"""Configuration schema (dataclasses registered in Hydra's ConfigStore).

The YAML files under ``conf/`` are validated against these dataclasses when Hydra composes the
configuration, so a misspelt key or an unknown method name fails at start-up with a message that
names it. ``validate`` then checks what a schema cannot express (lengths that must agree, the
options each mask method accepts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from .errors import ConfigError


class DatasetFormat(str, Enum):
    demo = "demo"  # bundled synthetic imaging-flow-style cells, generated on the fly
    zarr_ragged = "zarr_ragged"  # SCIP's layout: 1-D object array, one flattened (C,H,W) cell each
    zarr = "zarr"  # dense (N, C, H, W) array
    tiff = "tiff"  # one TIFF per channel, grouped into objects by a regex
    multipage_tiff = "multipage_tiff"  # one file per object, channels as pages
    ome_tiff = "ome_tiff"  # one OME-TIFF per object, axes read from its metadata
    fields_tiff = "fields_tiff"  # fields of view: one TIFF per channel (and z plane) per field
    ome_zarr = "ome_zarr"  # fields of view: OME-Zarr plates (every field of every well) or images
    ome_zarr_objects = "ome_zarr_objects"  # OME-Zarr images of per-object crops (N, C, Y, X)
    arrays = "arrays"  # in-memory images given to scip_gpu.profile (not available on the command line)


#: dataset formats whose images are fields of view (segmented into objects)
FIELD_FORMATS = ("fields_tiff", "ome_zarr")


def is_fields_format(fmt) -> bool:
    return getattr(fmt, "value", fmt) in FIELD_FORMATS


class ProjectionMethod(str, Enum):
    min = "min"
    mean = "mean"
    max = "max"
    median = "median"


class IlluminationMethod(str, Enum):
    jones_2006 = "jones_2006"  # per-group mean image, median-smoothed (Singh et al. 2014)


class SegmentationMethod(str, Enum):
    watershed = "watershed"
    cellpose = "cellpose"


class CellsMode(str, Enum):
    expand = "expand"  # cells = nuclei expanded by `expand_distance` pixels
    watershed = "watershed"  # cells = watershed of the cell channel seeded by the nuclei
    cellpose = "cellpose"  # cells segmented by Cellpose on the cell channel
    none = "none"  # the nuclei are the objects


class ThresholdMethod(str, Enum):
    triangle = "triangle"  # Zack's triangle: the foot of the background peak (keeps dim nuclei)
    li = "li"  # Li's minimum cross-entropy
    otsu = "otsu"  # Otsu's between-class variance


class MaskMethod(str, Enum):
    li = "li"
    otsu = "otsu"
    spot = "spot"
    circle = "circle"


class FilterMethod(str, Enum):
    normaltest = "normaltest"
    std = "std"
    value_range = "value_range"


class FeatureFamily(str, Enum):
    shape = "shape"
    intensity = "intensity"
    texture = "texture"
    bbox = "bbox"
    regions = "regions"
    # CellProfiler's per-object measurements (``conf/features/cellprofiler.yaml``)
    cp_sizeshape = "cp_sizeshape"
    cp_intensity = "cp_intensity"
    cp_texture = "cp_texture"
    cp_radial = "cp_radial"
    cp_colocalization = "cp_colocalization"
    cp_granularity = "cp_granularity"
    cp_neighbors = "cp_neighbors"  # segmented fields of view only
    cp_zernike = "cp_zernike"
    cp_radial_zernike = "cp_radial_zernike"  # empty unless features.cellprofiler.radial_zernikes


class ExportFormat(str, Enum):
    parquet = "parquet"
    anndata = "anndata"  # features.h5ad
    anndata_zarr = "anndata_zarr"  # features.zarr (AnnData's zarr store)


class ParquetCompression(str, Enum):
    snappy = "snappy"  # pyarrow's default: fast, about 1.5x smaller than none on feature tables
    lz4 = "lz4"
    zstd = "zstd"  # smallest files, slowest to write
    gzip = "gzip"
    none = "none"  # fastest to write (about half the CPU of snappy per row), largest files


class LabelsFormat(str, Enum):
    ome_zarr = "ome_zarr"  # labels/<field>.ome.zarr: OME-Zarr (NGFF 0.4) label images, napari label layers
    ome_tiff = "ome_tiff"  # labels/<field>.ome.tif: one plane per compartment


class ClusterType(str, Enum):
    local = "local"  # dask.distributed LocalCluster of worker processes
    local_cuda = "local_cuda"  # dask-cuda LocalCUDACluster: one worker per GPU
    slurm = "slurm"  # dask-jobqueue SLURMCluster (batch jobs)
    pbs = "pbs"  # dask-jobqueue PBSCluster
    address = "address"  # an existing Dask scheduler
    sync = "sync"  # no cluster: partitions run in this process (threads_per_worker at a time; debugging)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class MetadataJoin:
    """Join the rows of a CSV onto the object (or field) table."""

    path: Optional[str] = None  # null: skipped
    keys: Dict[str, str] = field(default_factory=dict)  # CSV column -> meta key (without "meta_")
    columns: Dict[str, str] = field(default_factory=dict)  # CSV column -> new meta key; {}: all


@dataclass
class DatasetConfig:
    """Where the objects come from and which channels to use."""

    name: str = "dataset"
    format: DatasetFormat = MISSING
    path: Optional[str] = None
    # zarr/multipage/OME: channel indices into each image (OME-Zarr: indices or omero labels); tiff: channel keys as matched by the
    # regex's `channel` group. null: all channels.
    channels: Optional[List[Any]] = None
    channel_names: Optional[List[str]] = None
    # tiff: must contain the named groups `id` and `channel`; every named group becomes a meta
    # column. zarr formats: applied to the zarr path. multipage/OME: applied to each file path.
    regex: Optional[str] = None
    glob: str = "*.tif*"
    metadata: List[MetadataJoin] = field(default_factory=list)
    # OME-Zarr only: the resolution level read (0 = full resolution, the multiscales' first dataset)
    level: int = 0
    # demo only
    n_objects: int = 300
    n_channels: int = 3
    min_size: int = 48
    max_size: int = 72
    seed: int = 0


@dataclass
class ProjectionConfig:
    method: Optional[ProjectionMethod] = None  # z-projection of multi-focal stacks; null: none


@dataclass
class IlluminationConfig:
    method: Optional[IlluminationMethod] = None  # null: no correction
    key: Optional[str] = None  # meta key grouping the fields (e.g. plate); null: one group
    median_filter_size: int = 50
    downscale: int = 1
    precomputed: Optional[str] = None  # folder of correction images (<group>.tif) to use instead
    export: bool = True  # write the correction images to <output>/illumination/


@dataclass
class CellposeConfig:
    model: str = "cpsam"  # a name in CELLPOSE_LOCAL_MODELS_PATH or a path to weights
    nucleus_model: Optional[str] = None  # for nuclei; null: same as model
    diameter: Optional[float] = None
    flow_threshold: float = 0.4
    batch_size: int = 8


@dataclass
class SegmentationConfig:
    method: Optional[SegmentationMethod] = None  # null: the images are single objects
    name: Optional[str] = None  # column prefix of the segmentation masks; null: none (SCIP)
    nucleus_channel: int = 0
    cell_channel: Optional[int] = None
    cells: CellsMode = CellsMode.expand
    expand_distance: int = 10
    # watershed nuclei (segmentation.watershed_nuclei). Lengths and areas in pixels of the field;
    # null: derived per field from the typical nucleus radius r (SCALE_RULES), logged per field
    radius: Optional[float] = None  # typical nucleus radius r; null: estimated per field
    smoothing: Optional[float] = None  # Gaussian sigma before thresholding; null: r/8
    threshold_method: ThresholdMethod = ThresholdMethod.triangle  # global threshold
    threshold: Optional[float] = None  # fixed global threshold (image as float); null: threshold_method's
    block_size: Optional[int] = None  # local-threshold window (odd); 0: no local threshold; null: 4r+1
    min_distance: Optional[int] = None  # minimum distance between nucleus centres; null: 0.6r
    distance_smoothing: Optional[float] = None  # Gaussian sigma on the distance map; null: r/6
    max_hole_size: Optional[int] = None  # holes up to this area are filled; 0: none; null: pi r^2
    # objects less than this many standard errors of the noise above their surrounding
    # background are dropped (empty wells, noise); 0: none
    min_contrast: float = 10.0
    # objects with fewer pixels are dropped; null: pi (0.4r)^2 for the watershed, none beyond
    # Cellpose's own (15 px) for cellpose (conf/segmentation/cellpose.yaml sets 30)
    min_size: Optional[int] = None
    min_overlap: float = 0.1  # child-to-parent assignment (SCIP's rule)
    # channel name -> compartment (nucleus, cell, cytoplasm) whose mask the channel is measured
    # in; channels not listed: the nucleus channel -> nucleus, the others -> cell
    compartments: Dict[str, str] = field(default_factory=dict)
    cellpose: CellposeConfig = field(default_factory=CellposeConfig)
    export_labels: bool = True  # label images per field under <output>/labels/
    labels_format: LabelsFormat = LabelsFormat.ome_zarr
    fields_per_partition: int = 4


@dataclass
class MaskMethodConfig:
    method: MaskMethod = MISSING
    name: Optional[str] = None  # column prefix; defaults to the method name
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MaskFilterConfig:
    method: FilterMethod = MISSING
    channel_indices: Optional[List[int]] = None  # null: all channels
    settings: Dict[str, Any] = field(default_factory=dict)


def _scip_masks() -> list:
    """SCIP's usual pair of masks (``conf/masks/scip.yaml``): li (smooth 1.0) and otsu."""
    return [MaskMethodConfig(MaskMethod.li, "li", {"smooth": 1.0}), MaskMethodConfig(MaskMethod.otsu, "otsu")]


# Every default below is the command line's default (the options ``conf/config.yaml`` chooses:
# masks=scip, features=scip, export=default, cluster=local, no projection, illumination or
# segmentation), so that a Config built in Python profiles what ``python -m scip_gpu`` profiles
# (tests/test_config.py compares them).


@dataclass
class MasksConfig:
    methods: List[MaskMethodConfig] = field(default_factory=_scip_masks)
    filters: List[MaskFilterConfig] = field(default_factory=list)
    combined_indices: Optional[List[int]] = None  # channels whose masks form the combined mask
    main_channel_index: int = 0  # no region left here: the object's features are NaN
    remove_border_regions: bool = True
    edge_width: int = 6  # radius of the disk that erodes a mask into its edge rim
    # column prefix of the masks given with in-memory images (scip_gpu.profile(images, masks=...),
    # which sets it); their columns come before the methods'. null: none
    given: Optional[str] = None


@dataclass
class CellProfilerConfig:
    """Options of the CellProfiler families (``features=cellprofiler``); CellProfiler's defaults."""

    texture_scales: List[int] = field(default_factory=lambda: [3])  # GLCM distances (pixels)
    texture_levels: int = 256  # gray levels of the GLCM (CellProfiler 3+: 256; 2: 8)
    # MeasureGranularity: subsampling factor for granularity measurements and for background
    # reduction (both in (0, 1]), radius of the background's structuring element (pixels, after
    # subsampling), range of the granular spectrum (number of steps)
    granularity_subsample_size: float = 0.25
    granularity_image_sample_size: float = 0.25
    granularity_element_size: int = 10
    granularity_spectrum_length: int = 16
    # MeasureObjectNeighbors (fields of view): expand (until adjacent; CellProfiler's default),
    # within (neighbors_distance pixels) or adjacent
    neighbors_method: str = "expand"
    neighbors_distance: int = 5
    # Zernike intensity moments of MeasureObjectIntensityDistribution (family cp_radial_zernike):
    # 60 columns per channel, off as in CellProfiler
    radial_zernikes: bool = False


@dataclass
class FeaturesConfig:
    preset: str = "scip"
    families: List[FeatureFamily] = field(
        default_factory=lambda: [
            FeatureFamily.shape,
            FeatureFamily.intensity,
            FeatureFamily.texture,
            FeatureFamily.bbox,
            FeatureFamily.regions,
        ]
    )
    # mask name -> families for that mask (names as in `families`; checked by validate). Plain
    # strings: OmegaConf cannot add keys whose values are lists of enums (omegaconf#1090-like)
    per_mask: Dict[str, List[str]] = field(default_factory=dict)
    raw: bool = True  # the 11 statistics of each unmasked channel (feat_raw_*)
    cellprofiler: CellProfilerConfig = field(default_factory=CellProfilerConfig)


@dataclass
class ExportConfig:
    formats: List[ExportFormat] = field(
        default_factory=lambda: [ExportFormat.parquet, ExportFormat.anndata]
    )
    filename: str = "features"
    # a QC report (report.html, and qc_fields.png for fields of view) in the run folder; a failure
    # to write it is logged and never fails the run
    report: bool = True
    # also write {filename}.analysis.h5ad: ok rows only, columns NaN in more than max_nan_share of
    # them dropped, the remaining NaN replaced by the column's median (ready for scanpy.pp.pca)
    analysis_ready: bool = False
    max_nan_share: float = 0.5
    # codec of the Parquet parts; every reader (pandas, pyarrow, polars, DuckDB) reads them all
    compression: ParquetCompression = ParquetCompression.snappy


@dataclass
class ClusterConfig:
    type: ClusterType = ClusterType.local
    n_workers: Optional[int] = None  # null: number of cores
    # partitions in flight per worker process (sync: in this process); with more than one, their
    # reading and writing overlap the one partition that holds the device (one at a time);
    # null: from the cores (cluster.partitions_in_flight: local_cuda half the cores per GPU, 2..8)
    threads_per_worker: Optional[int] = 1
    # threads reading and decoding one partition's objects (null: on a GPU the cores per
    # partition in flight, up to 8; on a CPU 1, as the CPU path runs one worker process per core)
    loader_threads: Optional[int] = None
    memory_limit: str = "auto"
    dashboard_address: Optional[str] = None  # e.g. ":8787" (needs bokeh)
    # distributed's statistical profiler in every worker (the dashboard's Profile page): it
    # samples every thread's stack every 10 ms and costs about a tenth of the profiling time
    worker_profiler: bool = False
    # local_cuda: GPUs to use (CUDA_VISIBLE_DEVICES syntax, null: all) and RMM pool per worker
    cuda_visible_devices: Optional[str] = None
    rmm_pool_size: Optional[str] = None
    # address: the scheduler to connect to, e.g. tcp://10.0.0.5:8786
    address: Optional[str] = None
    # slurm / pbs (dask-jobqueue): resources of each batch job, and how many jobs
    jobs: int = 1
    cores: int = 8  # cores per job
    memory: str = "16GB"  # memory per job
    processes: Optional[int] = None  # worker processes per job (null: dask-jobqueue's choice)
    walltime: str = "01:00:00"
    queue: Optional[str] = None
    account: Optional[str] = None
    job_extra: List[str] = field(default_factory=list)  # extra #SBATCH / #PBS directives
    job_prologue: List[str] = field(default_factory=list)  # shell lines run before the worker
    local_directory: Optional[str] = None
    log_directory: Optional[str] = None
    gpus_per_job: int = 0  # > 0: workers declare the GPU resource
    # faults of the cluster (not of the objects): seconds to wait for a worker when none is
    # connected, at the start or after every worker died (null: 120 s for local clusters, 24 h
    # for address/slurm/pbs; 0: indefinitely); then the run stops and resume=true finishes it
    worker_timeout: Optional[float] = None
    # times a lost task (cancelled, its data gone) is submitted again, and Dask retries of a task
    # that raised; a partition that still fails is left for resume=true (never marked done)
    retries: int = 2
    # worker deaths a task may cause before it is given up (schedulers scip_gpu starts; null:
    # Dask's distributed.scheduler.allowed-failures, 3); a partition given up is then profiled
    # one object per task to find the object that kills its workers
    allowed_failures: Optional[int] = None


#: values of ``io.kvikio``
KVIKIO_MODES = ("auto", True, False)


@dataclass
class IOConfig:
    """How objects are read."""

    # device=cuda, dense zarr: read uncompressed chunks of stores on the local file system straight
    # into device memory with kvikio. auto: where kvikio is installed and the store allows it (else
    # through the host, logged); true: required (the run stops at start-up, naming the store and
    # why, when it cannot); false: always through the host
    kvikio: Any = "auto"


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    masks: MasksConfig = field(default_factory=MasksConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    illumination: IlluminationConfig = field(default_factory=IlluminationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    io: IOConfig = field(default_factory=IOConfig)
    output: Optional[str] = None  # null: a new folder under output_root
    output_root: str = "outputs"
    device: Device = Device.auto
    partition_size: Optional[int] = None  # objects per Dask task (one Parquet file each); null: auto
    batch_size: Optional[int] = None  # objects per array batch inside a task; null: auto (256 on a CPU,
    # on a GPU from free device memory and the object size, up to 4096)
    pad_multiple: int = 8  # padded batch shapes are multiples of this
    strict: bool = False  # exit non-zero when any object failed
    log_level: str = "INFO"
    progress: bool = True
    profile_stages: bool = False  # time each stage (GPU: synchronises at stage boundaries)
    resume: bool = False  # continue an interrupted run in `output`: only missing partitions run


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(Config)
    _open_mappings(node)
    cs = ConfigStore.instance()
    cs.store(name="scip_gpu_schema", node=node)


def _open_mappings(node) -> None:
    """Let the free-form mappings of the schema (``Dict[...]`` fields such as
    ``segmentation.compartments`` or ``features.per_mask``) take keys the schema cannot know.

    Hydra merges a dictionary override (``segmentation.compartments={DAPI: nucleus}``) into the
    existing node, and the composed configuration is in struct mode, which refuses new keys
    ("not in struct") unless the node itself says otherwise. The dataclass fields stay closed: a
    misspelt key still fails.
    """
    from omegaconf import DictConfig, OmegaConf

    for key in node.keys():
        child = node._get_node(key)
        if not isinstance(child, DictConfig) or child._is_none() or child._is_missing():
            continue
        if child._metadata.object_type in (None, dict):  # a Dict[...] field, not a dataclass
            OmegaConf.set_struct(child, False)
        else:
            _open_mappings(child)


# ---------------------------------------------------------------------------------------------
# Checks that a schema cannot express


def kvikio_mode(value) -> str | bool | None:
    """``io.kvikio`` as "auto", True or False (None when it is none of them)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return {"auto": "auto", "true": True, "false": False}.get(text)


def mask_names(cfg: Config) -> list[str]:
    return [m.name or m.method.value for m in cfg.masks.methods]


def _check_watershed(seg) -> None:
    """The watershed's scale parameters: null (derived from the nucleus radius) or in range."""
    def bad(key, why):
        raise ConfigError(f"segmentation.{key}={getattr(seg, key)}: {why} (null: derived from the nucleus radius)")

    if seg.radius is not None and not seg.radius > 0:
        bad("radius", "must be positive (pixels)")
    for key in ("smoothing", "distance_smoothing", "min_size", "max_hole_size", "min_contrast"):
        if getattr(seg, key) is not None and not getattr(seg, key) >= 0:
            bad(key, "must not be negative")
    if seg.min_distance is not None and seg.min_distance < 1:
        bad("min_distance", "must be at least 1 pixel")
    b = seg.block_size
    if b is not None and b != 0 and (b < 3 or b % 2 == 0):
        bad("block_size", "must be an odd number of pixels, at least 3, or 0 for no local threshold")


#: meta columns (without ``meta_``) that scip_gpu itself writes, for every dataset and for fields
#: of view: a regex group or a joined CSV column of that name would replace them
RESERVED_META = ("index", "status", "path", "zarr_idx", "object_number")
RESERVED_FIELD_META = ("field_index", "field", "label", "touches_border")


def reserved_meta(name: str, fields: bool) -> bool:
    """Whether ``meta_<name>`` is one of scip_gpu's own columns (``fields``: of a fields dataset)."""
    return name in RESERVED_META or fields and (name in RESERVED_FIELD_META or name.startswith("bbox_"))


def _check_regex_groups(regex: str | None, fields: bool) -> None:
    import re

    try:
        groups = list(re.compile(regex).groupindex) if regex else []
    except re.error:
        return  # (reported, with the cause, where the regex is used)
    clash = [g for g in groups if reserved_meta(g, fields)]
    if clash:
        raise ConfigError(f"dataset.regex: the named group(s) {clash} would replace scip_gpu's own column(s) "
                          f"{['meta_' + g for g in clash]}; give them other names (e.g. (?P<{clash[0]}_name>...))")


def _check_export_filename(name: str) -> None:
    """``export.filename`` names files inside the run folder: a plain, visible file name.
    A path (``../x``, ``/data/x``) would write, and replace, files outside the run folder; a
    name starting with ``.`` would hide the outputs from readers (and look like a temporary file)."""
    import os

    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or name.strip() != name or name.startswith(".") or any(s in name for s in seps) or "\0" in name:
        raise ConfigError(f"export.filename: {name!r} is not a plain file name; it names the files inside the "
                          "run folder (features -> features.parquet, features.h5ad...): give a name without "
                          "'/', '\\' or surrounding spaces, not starting with '.' (choose the folder with output=...)")


def expand_user_paths(cfg: Config) -> None:
    """``~`` and ``~user`` at the start of the configuration's paths (output, output_root,
    dataset.path, dataset.metadata paths, illumination.precomputed) expanded in place: Hydra's
    grammar needs ``"output='~/runs'"`` quoted, so the shell passes the tilde on, which would
    otherwise make a folder named ``~`` in the working directory."""
    import os

    def exp(v):
        return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v

    cfg.output, cfg.output_root = exp(cfg.output), exp(cfg.output_root)
    cfg.dataset.path = exp(cfg.dataset.path)
    for m in cfg.dataset.metadata:
        m.path = exp(m.path)
    cfg.illumination.precomputed = exp(cfg.illumination.precomputed)


#: the values of ``log_level`` (in any case)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value) -> str | None:
    """``log_level``'s level name in upper case (``debug`` -> ``DEBUG``), None if it is none."""
    name = str(value).strip().upper()
    return name if name in LOG_LEVELS else None


def validate(cfg: Config, n_channels: int | None = None) -> None:
    """Raise ``ConfigError`` naming the key when the configuration is inconsistent.

    Parameters
    ----------
    cfg : Config
    n_channels : int, optional
        Number of selected channels, when known, to check channel indices against.
    """
    from .masks import check_filter, check_method_kwargs

    ds = cfg.dataset
    if ds.channels is not None and len(ds.channels) == 0:
        raise ConfigError("dataset.channels: empty list; use null for all channels")
    if ds.channels is not None and any(isinstance(c, int) and c < 0 for c in ds.channels):  # (or names)
        # (Python's negative indices would pick different channels in objects with different
        # channel counts under one column name)
        raise ConfigError(f"dataset.channels: {list(ds.channels)}: channel indices count from 0; negative "
                          "indices are not accepted")
    if ds.channels is not None and ds.channel_names is not None:
        if len(ds.channels) != len(ds.channel_names):
            raise ConfigError(
                f"dataset.channel_names has {len(ds.channel_names)} names for "
                f"{len(ds.channels)} channels in dataset.channels; give one name per channel"
            )
    if ds.channel_names is not None and len(set(ds.channel_names)) != len(ds.channel_names):
        raise ConfigError(f"dataset.channel_names: names must be unique, got {ds.channel_names}")
    for key in ("partition_size", "batch_size", "pad_multiple"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be at least 1, got {getattr(cfg, key)}")
    if log_level(cfg.log_level) is None:
        raise ConfigError(f"log_level: {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)} (any case)")
    if cfg.masks.edge_width < 0:
        raise ConfigError(f"masks.edge_width: {cfg.masks.edge_width} must not be negative (the radius, in pixels, "
                          "of the disk that erodes a mask into its edge rim; 0: no edge views)")
    cl = cfg.cluster
    for key in ("n_workers", "threads_per_worker", "loader_threads"):
        v = getattr(cl, key)
        if v is not None and v < 1:
            raise ConfigError(f"cluster.{key}: must be at least 1, got {v} (null: chosen from the cores)")
    if cl.jobs < 1 or cl.cores < 1:
        raise ConfigError(f"cluster.jobs and cluster.cores: must be at least 1, got {cl.jobs} and {cl.cores}")

    names = mask_names(cfg) + ([cfg.masks.given] if cfg.masks.given else [])
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"masks.methods: mask names must be unique (they prefix the columns); repeated: {dup}. "
            "Give each method a distinct `name`."
        )
    if "raw" in names:
        raise ConfigError("masks.methods: the name 'raw' is reserved for the unmasked features")
    for i, m in enumerate(cfg.masks.methods):
        check_method_kwargs(m.method.value, dict(m.kwargs), where=f"masks.methods[{i}]")
    for i, f in enumerate(cfg.masks.filters):  # (a misspelt setting would otherwise fail every object)
        check_filter(f.method.value, dict(f.settings), where=f"masks.filters[{i}]")
    known_families = [f.value for f in FeatureFamily]
    for key, fams in cfg.features.per_mask.items():
        bad = [f for f in fams if getattr(f, "value", f) not in known_families]
        if bad:
            raise ConfigError(f"features.per_mask.{key}: unknown feature famil{'ies' if len(bad) > 1 else 'y'} "
                              f"{bad} (choose from {known_families})")
        if key not in names and key != cfg.segmentation.name:
            raise ConfigError(
                f"features.per_mask: {key!r} is not a configured mask (masks: {names or 'none'})"
            )
    cp = cfg.features.cellprofiler
    if not 2 <= cp.texture_levels <= 256:
        raise ConfigError(f"features.cellprofiler.texture_levels: {cp.texture_levels} is not between 2 "
                          "and 256 (CellProfiler's range)")
    if cp.neighbors_method not in ("expand", "within", "adjacent"):
        raise ConfigError(f"features.cellprofiler.neighbors_method: {cp.neighbors_method!r} is not one of "
                          "expand, within, adjacent")
    if cp.neighbors_distance < 1:
        raise ConfigError(f"features.cellprofiler.neighbors_distance: {cp.neighbors_distance} must be at least "
                          "1 pixel")
    if not cp.texture_scales or min(cp.texture_scales) < 1:
        raise ConfigError(f"features.cellprofiler.texture_scales: {list(cp.texture_scales)} must be one or "
                          "more distances of at least 1 pixel")
    for key in ("granularity_subsample_size", "granularity_image_sample_size"):
        v = getattr(cp, key)
        if not 0 < v <= 1:
            raise ConfigError(f"features.cellprofiler.{key}: {v} is not in (0, 1] (CellProfiler's range)")
    for key in ("granularity_element_size", "granularity_spectrum_length"):
        v = getattr(cp, key)
        if v < 1:
            raise ConfigError(f"features.cellprofiler.{key}: {v} must be at least 1 (CellProfiler's range)")
    seg = cfg.segmentation
    fmt = getattr(ds.format, "value", ds.format)
    fields = is_fields_format(fmt)
    _check_regex_groups(ds.regex, fields)
    if fmt == "demo":
        if ds.n_channels < 1:
            raise ConfigError(f"dataset.n_channels: must be at least 1, got {ds.n_channels}")
        if ds.n_objects < 1:
            raise ConfigError(f"dataset.n_objects: must be at least 1, got {ds.n_objects}")
        if not 0 <= ds.min_size <= ds.max_size:
            raise ConfigError(f"dataset.min_size={ds.min_size}, dataset.max_size={ds.max_size}: the demo cells' "
                              "sides are drawn between them: give 0 <= min_size <= max_size")
    if fields and seg.method is None:
        raise ConfigError(f"dataset.format={fmt} needs a segmentation: set segmentation=watershed "
                          "or segmentation=cellpose")
    if seg.method is not None and not fields:
        raise ConfigError(f"segmentation.method={seg.method.value}: segmentation applies to fields of view "
                          "(dataset.format=fields_tiff or ome_zarr); this dataset holds single objects")
    if not fields and (cfg.illumination.method is not None or cfg.projection.method is not None):
        raise ConfigError("projection and illumination apply to fields of view (dataset.format=fields_tiff or "
                          "ome_zarr); this dataset holds single objects")
    if ds.level < 0:
        raise ConfigError(f"dataset.level: must be 0 (full resolution) or more, got {ds.level}")
    for ch, comp in seg.compartments.items():
        if comp not in ("nucleus", "cell", "cytoplasm"):
            raise ConfigError(f"segmentation.compartments.{ch}: unknown compartment {comp!r} "
                              "(choose nucleus, cell or cytoplasm)")
    _check_watershed(seg)
    if seg.expand_distance < 0:
        raise ConfigError(f"segmentation.expand_distance={seg.expand_distance}: must not be negative (pixels the "
                          "nuclei grow by to make cells; 0: cells are the nuclei)")
    if not 0 <= seg.min_overlap < 1:
        raise ConfigError(f"segmentation.min_overlap={seg.min_overlap}: the share of a cell's area a nucleus must "
                          "cover to be assigned to it, in [0, 1)")
    if seg.fields_per_partition < 1:
        raise ConfigError(f"segmentation.fields_per_partition={seg.fields_per_partition}: must be at least 1")
    if seg.method is not None and seg.cells.value in ("watershed", "cellpose") and seg.cell_channel is None:
        raise ConfigError(f"segmentation.cells={seg.cells.value} needs segmentation.cell_channel")
    if cfg.illumination.downscale < 1 or cfg.illumination.median_filter_size < 1:
        raise ConfigError("illumination: downscale and median_filter_size must be at least 1")
    for j, join in enumerate(ds.metadata):
        if join.path is not None and not join.keys:
            raise ConfigError(f"dataset.metadata[{j}].keys: give the key columns to join on")
    if kvikio_mode(cfg.io.kvikio) is None:
        raise ConfigError(f"io.kvikio: {cfg.io.kvikio!r} is not one of auto, true, false")
    if cfg.export.formats == []:
        raise ConfigError("export.formats: choose at least one of parquet, anndata, anndata_zarr")
    if not 0.0 <= cfg.export.max_nan_share <= 1.0:
        raise ConfigError(f"export.max_nan_share: needs a share between 0 and 1, got {cfg.export.max_nan_share}")
    _check_export_filename(cfg.export.filename)

    if n_channels is not None:
        def _check_index(key: str, idx: int) -> None:
            if not 0 <= idx < n_channels:
                raise ConfigError(
                    f"{key}: channel index {idx} is out of range for {n_channels} selected "
                    f"channels (valid: 0..{n_channels - 1})"
                )

        if cfg.masks.methods:
            _check_index("masks.main_channel_index", cfg.masks.main_channel_index)
        for i, m in enumerate(cfg.masks.methods):
            smooth = dict(m.kwargs).get("smooth")
            if isinstance(smooth, (list, tuple)) and len(smooth) != n_channels:
                raise ConfigError(f"masks.methods[{i}].kwargs.smooth: {len(smooth)} values for {n_channels} selected "
                                  "channels; give one value, or one per channel")
        for i in cfg.masks.combined_indices or []:
            _check_index("masks.combined_indices", i)
        for j, f in enumerate(cfg.masks.filters):
            for i in f.channel_indices or []:
                _check_index(f"masks.filters[{j}].channel_indices", i)
        if seg.method is not None:
            _check_index("segmentation.nucleus_channel", seg.nucleus_channel)
            if seg.cell_channel is not None:
                _check_index("segmentation.cell_channel", seg.cell_channel)
