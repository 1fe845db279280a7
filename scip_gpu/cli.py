"""Command line: ``python -m scip_gpu [+dataset=NAME] [key=value ...]`` (Hydra).

Without a dataset the bundled demo is profiled. Exit status: 0 on success; 1 when no object
could be profiled, or with ``strict=true`` when any object failed; 2 for configuration, input or
output errors (reported before anything is written).
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig, OmegaConf

from ._resources import conf_dir
from .config import Config, DatasetConfig, register_configs
from .errors import ScipGpuError

log = logging.getLogger("scip_gpu")


def _setup_console_logging(level: str) -> None:
    logger = logging.getLogger("scip_gpu")
    logger.setLevel(level)
    if not any(getattr(h, "_scip_gpu_console", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[scip_gpu] %(message)s"))
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
        return 2
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


def main() -> None:
    import hydra

    register_configs()
    status = {"code": 0}

    def _app(cfg: DictConfig) -> None:
        status["code"] = task(cfg)

    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_app)()
    sys.exit(status["code"])
