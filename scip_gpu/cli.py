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
import sys

from omegaconf import DictConfig, OmegaConf

from ._resources import conf_dir
from .config import Config, DatasetConfig, register_configs
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
    logger = logging.getLogger("scip_gpu")
    logger.setLevel(level)
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
    """Run for a composed configuration; returns the exit status."""
    from .pipeline import run

    _setup_console_logging(str(cfg.get("log_level", "INFO")))
    try:
        config, resolved = to_config(cfg)
        summary = run(config, resolved)
    except ScipGpuError as exc:
        print(f"scip_gpu: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except OSError as exc:  # reading or writing failed outside any one object (the run folder...)
        print(f"scip_gpu: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"scip_gpu: {str(exc) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
    print(summary.line())
    if summary.n_ok == 0:
        print(f"scip_gpu: no object could be profiled; see {summary.output / 'errors.csv'}", file=sys.stderr)
        return 1
    if summary.n_errors:
        print(f"scip_gpu: {summary.n_errors} object(s) could not be profiled; see "
              f"{summary.output / 'errors.csv'}", file=sys.stderr)
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


def main() -> None:
    import hydra

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
