"""Profiling a batch: masks, then every configured feature family, vectorised over objects.

``build_plan`` turns the configuration into a ``Plan`` (the ordered column list, padding margin,
size limits) once on the driver; workers call ``profile_batch`` with it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .backend import asnumpy, is_gpu
from .batch import Batch, wait_for_copies
from .config import Config, mask_names
from .features import FAMILIES, FAMILY_ORDER, Column
from .features.registry import FLAG_FAMILIES
from .masks import compute_masks, filter_channels, method_margin, min_side


class StageTimer:
    """Wall time per pipeline stage, summed over batches (``profile_stages=true``).

    On the GPU the device is synchronised at each stage boundary, which costs a little time:
    it is off by default.
    """

    def __init__(self, enabled: bool = False, xp=None):
        self.enabled = enabled
        self.xp = xp
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def _sync(self):
        if self.xp is not None and is_gpu(self.xp):
            self.xp.cuda.Device().synchronize()


NO_TIMER = StageTimer(False)

#: objects per batch on a CPU when ``batch_size`` is not set
CPU_BATCH = 256
#: the largest automatic batch on a GPU, and the share of free device memory it may take
GPU_BATCH_MAX = 4096
GPU_BATCH_BUDGET = 2 * 2**30


def batch_bytes_per_object(n_channels: int, shape: tuple[int, int], n_features: int, itemsize: int = 2) -> int:
    """Device memory one object takes while its batch runs: pixels, channel masks and their
    transient copy, combined mask, the feature table and one family's block."""
    h, w = shape
    return n_channels * h * w * (itemsize + 2) + 2 * h * w + 3 * 8 * n_features


def auto_batch_size(xp, n_channels: int, shape: tuple[int, int], n_features: int, itemsize: int = 2) -> int:
    """Objects per batch when ``batch_size`` is not set: 256 on a CPU; on a GPU as many as fit
    in a quarter of the free device memory and at most 2 GiB, between 64 and 4096."""
    if not is_gpu(xp):
        return CPU_BATCH
    free, _ = xp.cuda.runtime.memGetInfo()
    per = batch_bytes_per_object(n_channels, shape, n_features, itemsize)
    return int(max(64, min(GPU_BATCH_MAX, min(GPU_BATCH_BUDGET, free // 4) // per)))


@dataclass
class FeatureContext:
    """Options the families read (beyond the batch and its masks).

    ``out``: during ``profile_batch``, the family's columns of the batch's (N, F) device table
    (a strided view); an implementation may write its result there and return it, which
    saves a copy. Families that return another array are copied into it.
    """

    edge_width: int = 6
    #: ``features.cellprofiler`` options (``CellProfilerConfig``) of the CellProfiler families
    cellprofiler: object = None
    out: object = field(default=None, repr=False, compare=False)


@dataclass
class Plan:
    """Everything a worker needs to profile batches (picklable)."""

    cfg: Config
    channel_names: list[str]
    columns: list[Column] = field(default_factory=list)
    families: dict[str, list[str]] = field(default_factory=dict)
    #: (mask name or None for raw, family) -> (first, last + 1) column of its block
    spans: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    margin: int = 0
    min_side: int = 1
    context: FeatureContext = field(default_factory=FeatureContext)

    @property
    def n_features(self) -> int:
        return len(self.columns)


def segmentation_mask_name(cfg: Config) -> str:
    """Column prefix of the segmentation masks ("" for none, as SCIP after segmentation)."""
    return cfg.segmentation.name or ""


def families_for(cfg: Config, name: str) -> list[str]:
    """The families profiled for mask ``name``, in SCIP's order; the ``empty`` flags follow the
    bbox columns whenever the mask has shape, intensity or texture features."""
    chosen = cfg.features.per_mask.get(name, cfg.features.families)
    fams = {getattr(f, "value", f) for f in chosen}
    out = [f for f in FAMILY_ORDER if f in fams and f in FAMILIES]
    masked = [i for i, f in enumerate(out) if f in ("shape", "intensity", "texture")]
    if masked:
        out[masked[0]:masked[0]] = list(FLAG_FAMILIES)
    return out


def build_plan(cfg: Config, channel_names: list[str]) -> Plan:
    """Ordered columns and limits for a configuration and its channel names.

    Column order follows SCIP: for each mask method in configuration order its regions, bbox,
    shape, intensity and texture columns, then the raw (unmasked) intensity columns.
    """
    plan = Plan(cfg, list(channel_names),
                context=FeatureContext(cfg.masks.edge_width, cfg.features.cellprofiler))
    margin = cfg.masks.edge_width
    side = 1

    def add(name, fam):
        family = FAMILIES[fam]
        if family.per_field:  # the segmentation's mask of a fields dataset only
            comps = []
            if cfg.segmentation.method is not None and name == segmentation_mask_name(cfg):
                from .fields import channel_compartments

                comps = channel_compartments(cfg.segmentation, channel_names)
            cols = family.columns(name, channel_names, options=cfg.features.cellprofiler, compartments=comps)
        elif family.options:
            cols = family.columns(name, channel_names, options=cfg.features.cellprofiler)
        else:
            cols = family.columns(name, channel_names)
        plan.spans[(name, fam)] = (len(plan.columns), len(plan.columns) + len(cols))
        plan.columns += cols

    if cfg.segmentation.method is not None:  # the segmentation's masks come first
        name = segmentation_mask_name(cfg)
        plan.families[name] = families_for(cfg, name)
        for fam in plan.families[name]:
            add(name, fam)
    if cfg.masks.given:  # masks given with in-memory images (scip_gpu.profile)
        plan.families[cfg.masks.given] = families_for(cfg, cfg.masks.given)
        for fam in plan.families[cfg.masks.given]:
            add(cfg.masks.given, fam)
    for m, name in zip(cfg.masks.methods, mask_names(cfg)):
        plan.families[name] = families_for(cfg, name)
        for fam in plan.families[name]:
            add(name, fam)
        kwargs = dict(m.kwargs)
        margin = max(margin, method_margin(m.method.value, kwargs))
        side = max(side, min_side(m.method.value, kwargs))
    if cfg.features.raw:
        add(None, "raw")
    plan.margin = margin
    plan.min_side = side
    return plan


def profile_batch(batch: Batch, plan: Plan, timer: StageTimer = NO_TIMER, given=(), *, to_host: bool = True):
    """(N, F) float64 host array of all feature and numeric meta columns, in plan order.

    Every family writes its columns into one (N, F) table in the batch's array namespace,
    which comes back to the host in one copy (on a GPU, the only synchronisation of the batch).

    ``given``: mask results computed elsewhere (the segmentation's), profiled first.
    ``to_host=False`` returns the device table instead, with the batch's work still running
    asynchronously (for callers that overlap the copy back with the next batch).
    """
    xp = batch.xp
    cfg = plan.cfg
    wait_for_copies(batch)  # (pixels copied on a copy stream: the kernels start after the copy)
    table = xp.empty((batch.n, plan.n_features), dtype=xp.float64)

    def family(name, fam, mr):
        a, b = plan.spans[(name, fam)]
        out = table[:, a:b]
        if FAMILIES[fam].per_field:  # filled by the fields pipeline (field_pipeline.process_fields)
            out[...] = xp.nan
            return
        with timer(fam):
            res = FAMILIES[fam].compute(batch, mr, replace(plan.context, out=out))
            if res is not out:
                out[...] = res

    for mr in given:
        for fam in plan.families[mr.name]:
            family(mr.name, fam, mr)
    if cfg.masks.methods:
        with timer("filters"):
            passed = filter_channels(batch, cfg.masks.filters)
        for m, name in zip(cfg.masks.methods, mask_names(cfg)):
            with timer(f"mask:{name}"):
                mr = compute_masks(batch, m, cfg.masks, passed)
            for fam in plan.families[name]:
                family(name, fam, mr)
    if cfg.features.raw:
        family(None, "raw", None)
    if not to_host:
        return table
    with timer("transfer"):
        return asnumpy(table)  # one copy back
