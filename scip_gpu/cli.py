"""Command line: ``python -m scip_gpu [+dataset=NAME] [key=value ...]`` (Hydra).

Without a dataset the bundled demo is profiled. Exit status: 0 on success; 1 when no object
could be profiled, or with ``strict=true`` when any object failed; 2 for configuration, input or
output errors (reported before anything is written), a full disk included; 3 when partitions
could not be run for reasons outside their inputs (workers lost for good, no worker connected,
the scheduler gone): the finished ones are kept and ``resume=true`` runs the others; 130 on
Ctrl-C (``resume=true`` finishes the run). Each of these is one ``scip_gpu: ...`` line on
stderr, never a traceback; a traceback means a bug in scip_gpu.
"""

from __future__ import annotations

import logging
import re
import signal
import sys

from omegaconf import DictConfig, OmegaConf

from ._resources import conf_dir
from .config import Config, DatasetConfig, register_configs, validate
from .errors import ScipGpuError

log = logging.getLogger("scip_gpu")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at its creation, which an embedding
    program or a test may have replaced and closed since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _ConsoleFormatter(logging.Formatter):
    """The message only on the console; a traceback a record carries goes to run.log only."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _setup_console_logging(level: str) -> None:
    from .config import log_level

    logger = logging.getLogger("scip_gpu")
    logger.setLevel(log_level(level) or "INFO")  # (an unknown level: the configuration's check says so)
    if not any(getattr(h, "_scip_gpu_console", False) for h in logger.handlers):
        h = _StderrHandler()
        h.setFormatter(_ConsoleFormatter("[scip_gpu] %(message)s"))
        h._scip_gpu_console = True
        logger.addHandler(h)
    logger.propagate = False


def _unknown_keys(given, known, path: str = "") -> list[str]:
    """Keys present in ``given`` but not in ``known`` (force-added ``+key=`` overrides bypass
    the schema and would otherwise be dropped silently)."""
    from omegaconf import DictConfig, ListConfig

    out = []
    if not isinstance(given, (DictConfig, ListConfig)) or given._is_none() or given._is_missing():
        return out
    if isinstance(given, DictConfig) and isinstance(known, DictConfig):
        if known._metadata.object_type in (None, dict):  # free-form mapping (kwargs, settings)
            return out
        for k in given.keys():
            if k not in known:
                out.append(f"{path}{k}")
            else:
                out += _unknown_keys(given._get_node(k), known._get_node(k), f"{path}{k}.")
    elif isinstance(given, ListConfig) and isinstance(known, ListConfig):
        for i in range(min(len(given), len(known))):
            out += _unknown_keys(given._get_node(i), known._get_node(i), f"{path}{i}.")
    return out


def to_config(cfg: DictConfig) -> tuple[Config, str]:
    """Resolve a composed DictConfig (demo dataset when none was chosen) to a Config object."""
    from .errors import ConfigError

    if OmegaConf.is_missing(cfg, "dataset"):
        demo = OmegaConf.load(conf_dir() / "dataset" / "demo.yaml")
        cfg.dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), demo)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    obj = OmegaConf.to_object(cfg)
    unknown = _unknown_keys(cfg, OmegaConf.structured(obj))
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
    return obj, resolved


def task(cfg: DictConfig) -> int:
    """Run for a composed configuration; returns the exit status.

    The cluster starts as soon as the configuration is resolved (``cluster.EarlyCluster``),
    before the pipeline is imported: its workers start while this process imports, lists the
    objects and opens the run folder."""
    from .cluster import EarlyCluster

    _setup_console_logging(str(cfg.get("log_level", "INFO")))
    terminated: list[int] = []
    previous = _on_sigterm_interrupt(terminated)
    early = None
    try:
        config, resolved = to_config(cfg)
        validate(config)  # (before the cluster starts: a configuration error is one line, at once)
        if config.segmentation.method is not None and config.segmentation.method.value == "cellpose":
            from .cellpose_seg import check_cellpose

            check_cellpose(config)
        early = EarlyCluster.start(config)
        from .pipeline import run

        handed, early = early, None  # (run takes it, or shuts it down, however it ends)
        summary = run(config, resolved, early=handed)
    except ScipGpuError as exc:
        print(f"scip_gpu: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except OSError as exc:  # reading or writing failed outside any one object (the run folder...)
        print(f"scip_gpu: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"scip_gpu: {'terminated (SIGTERM): ' if terminated else ''}{str(exc) or 'interrupted'}",
              file=sys.stderr)
        return TERMINATED if terminated else INTERRUPTED
    finally:
        if early is not None:  # (stopped before the run had it: Ctrl-C while importing)
            early.discard()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary.line())
    if summary.n_ok == 0:
        where = (f"see {summary.output / 'errors.csv'}" if summary.n_errors or summary.n_fields_failed else
                 f"no object was found (fields: the segmentation found none; {summary.output / 'run.log'} has each "
                 "field's parameters)")
        print(f"scip_gpu: no object could be profiled; {where}", file=sys.stderr)
        return 1
    failed = [f"{n} {what}(s)" for n, what in ((summary.n_errors, "object"), (summary.n_fields_failed, "field")) if n]
    if failed:
        print(f"scip_gpu: {' and '.join(failed)} could not be profiled; see {summary.output / 'errors.csv'}",
              file=sys.stderr)
        if config.strict:
            return 1
    return 0


def _os_error(exc: OSError) -> str:
    from .errors import disk_full

    if disk_full(exc):
        return f"no space left on device ({exc}); free some space, then run again (resume=true keeps what finished)"
    return str(exc)


#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM): ``kill``, a batch job's walltime, ``docker stop``.
TERMINATED = 143


def _on_sigterm_interrupt(received: list):
    """Make SIGTERM stop the run as Ctrl-C does (the lock released, what finished kept, the
    resume hint printed) instead of killing the process with its lock left behind, which a
    resume on another host (a batch job started again elsewhere) may not break. The first
    SIGTERM raises KeyboardInterrupt in the main thread; later ones are ignored while it
    cleans up. Returns the previous handler (None where none could be set: not the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


#: Hydra's own options that take a value (the value is not an override)
_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                      "--config-dir", "-cd", "--experimental-rerun"}


def _split_args(args: list[str]) -> tuple[list[str], list[int]]:
    """The positions of the overrides among the command-line arguments (not Hydra's flags)."""
    positions, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a in _HYDRA_VALUE_FLAGS:
            skip = True
        elif a == "--info" or a == "-i":
            skip = i + 1 < len(args) and args[i + 1] in ("all", "config", "defaults", "defaults-tree", "plugins",
                                                          "searchpath")
        elif not a.startswith("-"):
            positions.append(i)
    return args, positions


def help_text() -> str:
    """``python -m scip_gpu --help``: what it does, the datasets, the main keys, examples."""
    from . import __version__
    from .overrides import group_options

    datasets = []
    for name in group_options("dataset"):
        lines = [ln[1:].strip() for ln in (conf_dir() / "dataset" / f"{name}.yaml").read_text().splitlines()
                 if ln.startswith("#") and "@package" not in ln]
        first = re.split(r"\. (?=[A-Z])", lines[0])[0].rstrip(".,") if lines else ""
        first = first if len(first) <= 72 else first[:first.rfind(" ", 0, 70)] + " ..."
        datasets.append(f"  +dataset={name:<15} {first}")
    groups = "\n".join(f"  {g:<13} {', '.join(group_options(g))}" for g in
                       ("masks", "features", "export", "cluster", "projection", "illumination", "segmentation"))
    return f"""scip_gpu {__version__}: morphological profiling of image-cytometry data (imaging flow cytometry
cells, fields of view) on a GPU or CPUs. Every object becomes a row of SCIP's features (intensity,
shape, texture per channel and mask), written as Parquet and AnnData into a new output folder.

usage: python -m scip_gpu [+dataset=NAME] [key=value ...]     (or: scip-gpu ...)
       python -m scip_gpu warmup          compile the numba CPU kernels ahead (first run otherwise ~15 s slower)
       python -m scip_gpu --version | --help | --cfg job [overrides] (print the composed configuration)

Without +dataset the bundled demo (300 synthetic cells) is profiled.

datasets (conf/dataset/; give dataset.path=...):
{chr(10).join(datasets)}

groups (group=option; conf/<group>/):
{groups}

main keys:
  dataset.path, dataset.channels, dataset.channel_names, dataset.regex   input and channels
  output=FOLDER     a new folder (default outputs/<dataset>-<time>); an existing non-empty one is refused
  device=auto|cpu|cuda   cluster.n_workers=N   partition_size=N   batch_size=N
  strict=true (exit 1 if any object failed)   resume=true output=FOLDER (finish an interrupted run)
  cluster.dashboard_address=:8787 (Dask dashboard; pip install 'scip_gpu[dashboard]')

examples:
  python -m scip_gpu
  python -m scip_gpu dataset.n_objects=50 cluster=sync output=/tmp/demo50
  python -m scip_gpu +dataset=scip_zarr dataset.path=/data/run1.zarr 'dataset.channels=[0,1,5]' \\
      'dataset.channel_names=[BF,DAPI,SSC]'
  python -m scip_gpu +dataset=tiff dataset.path=/data/tiffs \\
      "dataset.regex='(?P<id>\\d+)_Ch(?P<channel>\\d+)\\.tif'"
  python -m scip_gpu +dataset=demo features=intensity 'features.per_mask={{otsu: [shape, regions]}}'

Quote values with brackets, braces, commas or backslashes for the shell, and a regex once more
for Hydra ("key='...'"). Exit status: 0 ok, 1 objects failed (strict) or none profiled, 2 bad
configuration or input (nothing written), 3 partitions could not run (resume=true), 130 Ctrl-C.
Documentation: README.md; Hydra's own options: --hydra-help.
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m scip_gpu``: the project's own --help, --version and ``warmup``; overrides are
    checked (one line for the common mistakes, exit 2) before Hydra composes them."""
    import hydra

    from .overrides import prepare

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["warmup"]:
        from .warmup import main as warmup_main

        sys.exit(warmup_main(args[1:]))
    if "--version" in args or "-V" in args:
        from . import __version__

        print(f"scip_gpu {__version__}")
        sys.exit(0)
    if "--help" in args or "-h" in args:
        print(help_text(), end="")
        sys.exit(0)
    args, positions = _split_args(args)
    try:
        prepared = prepare([args[i] for i in positions])
    except ScipGpuError as exc:
        print(f"scip_gpu: error: {exc}", file=sys.stderr)
        sys.exit(2)
    flags = [a for i, a in enumerate(args) if i not in positions]
    sys.argv = [sys.argv[0], *flags, *prepared]

    register_configs()
    status = {"code": 0}

    def _app(cfg: DictConfig) -> None:
        status["code"] = task(cfg)

    try:
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_app)()
    except KeyboardInterrupt:  # before or after the run itself (composing the configuration...)
        print("scip_gpu: interrupted", file=sys.stderr)
        status["code"] = INTERRUPTED
    sys.exit(status["code"])
