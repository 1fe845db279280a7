"""Python API: ``scip_gpu.profile(source, *overrides, **options) -> anndata.AnnData``.

The same run as ``python -m scip_gpu``, with the command line's defaults (``conf/``), from a
script or a notebook. See ``profile``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ._resources import conf_dir
from .errors import ConfigError, InputError
from .io.base import Source, object_error, select_channels

#: configuration groups a keyword may choose an option of (``masks="li"``)
GROUPS = ("dataset", "masks", "features", "export", "cluster", "projection", "illumination", "segmentation")


# ---------------------------------------------------------------------------------------------
# In-memory arrays as an object source


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__getitem__")


def _to_numpy(a) -> np.ndarray:
    """A NumPy array from NumPy, CuPy (copied to the host) or Dask (computed) input (the tests
    of array_api_compat import neither CuPy nor Dask)."""
    from array_api_compat import is_cupy_array, is_dask_array

    if is_dask_array(a):
        a = a.compute()
    if is_cupy_array(a):
        a = a.get()
    return np.asarray(a)


class ArraySource(Source):
    """Objects held in memory: an (N, C, H, W) array (NumPy, CuPy or Dask) or a sequence of
    (C, H, W) arrays of any sizes. Each object is copied to the host (CuPy) or computed (Dask)
    when its partition is loaded, never all at once."""

    kind = "in-memory arrays"

    def __init__(self, cfg, images, masks=None):
        super().__init__(cfg)
        if masks is not None:
            n_masks = int(masks.shape[0]) if _is_array(masks) else len(masks)
            n_images = int(images.shape[0]) if _is_array(images) else len(images)
            if n_masks != n_images:
                raise InputError(f"in-memory masks: {n_masks} mask(s) for {n_images} image(s); give one per image")
        self.masks = masks
        if _is_array(images):
            if len(images.shape) != 4:
                raise InputError(
                    f"in-memory images: expected an (N, C, H, W) array or a list of (C, H, W) arrays, got an array "
                    f"of shape {tuple(images.shape)}" + (" (for one channel, add the axis: images[:, None])"
                                                         if len(images.shape) == 3 else ""))
            shapes = [tuple(int(v) for v in images.shape[1:])] * int(images.shape[0])
        else:
            try:
                images = list(images)
            except TypeError:
                raise InputError(f"in-memory images: expected an (N, C, H, W) array or a list of (C, H, W) arrays, "
                                 f"got {type(images).__name__}") from None
            bad = [i for i, a in enumerate(images) if not _is_array(a) or len(a.shape) != 3]
            if bad:
                a = images[bad[0]]
                raise InputError(f"in-memory images: object {bad[0]} is not a (C, H, W) array "
                                 f"(got {getattr(a, 'shape', type(a).__name__)})")
            shapes = [tuple(int(v) for v in a.shape) for a in images]
        self.images = images
        self._shapes = shapes
        counts = Counter(s[0] for s in shapes)
        self._n_channels = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else None

    def objects(self) -> pd.DataFrame:
        return pd.DataFrame({"meta_id": np.arange(len(self._shapes), dtype=np.int64)})

    def selected_channels(self, objects):
        if self.cfg.channels is not None:
            return [int(c) for c in self.cfg.channels]
        return list(range(self._n_channels or 0))

    def describe(self, row) -> str:
        return f"in-memory object {row['meta_id']}"

    def load_masks(self, rows: pd.DataFrame) -> list:
        """The masks given for the rows as (C, H, W) bool (C: the channels profiled), or an
        ``ObjectError``. A (H, W) mask applies to every channel; a (C, H, W) one per channel
        (``dataset.channels`` selects from it as from the image). Non-zero is inside."""
        n_ch = len(self.selected_channels(None))
        out = []
        for i in (int(i) for i in rows["meta_id"]):
            name = f"in-memory object {i}"
            try:
                m = _to_numpy(self.masks[i]) != 0
                if m.ndim == 2:
                    m = np.broadcast_to(m, (n_ch, *m.shape))
                elif m.ndim == 3:
                    m = select_channels(m, self.cfg.channels, f"{name} (its mask)")
                else:
                    raise ValueError(f"a mask must be (H, W) or (C, H, W), got shape {m.shape}")
                out.append(m)
            except Exception as exc:  # noqa: BLE001 - this object's error only
                out.append(object_error(exc, name))
        return out

    def load(self, rows: pd.DataFrame) -> list:
        ids = [int(i) for i in rows["meta_id"]]
        if _is_array(self.images) and ids:
            try:  # one read of the partition (a Dask array computes its chunks once)
                block = _to_numpy(self.images[ids[0]:ids[-1] + 1] if ids == list(range(ids[0], ids[-1] + 1))
                                  else self.images[ids])
                items = list(block)
            except Exception:  # noqa: BLE001 - then object by object, each failing on its own
                items = [None] * len(ids)
        else:
            items = [None] * len(ids)
        out = []
        for i, item in zip(ids, items):
            name = f"in-memory object {i}"
            try:
                img = item if item is not None else _to_numpy(self.images[i])
                out.append(select_channels(img, self.cfg.channels, name,
                                           None if self.cfg.channels is not None else self._n_channels))
            except Exception as exc:  # noqa: BLE001 - this object's error only
                out.append(object_error(exc, name))
        return out


# ---------------------------------------------------------------------------------------------
# Composing the configuration


def infer_dataset(path: str | Path) -> str:
    """The dataset configuration (``conf/dataset/NAME.yaml``) for a path: a zarr array (SCIP's
    ragged layout or a dense one), an OME-Zarr plate or image (fields of view), an OME-TIFF or
    multi-page TIFF file or folder of them."""
    p = Path(path)
    low = p.name.lower()
    if (p / ".zarray").is_file():
        try:
            meta = json.loads((p / ".zarray").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}/.zarray cannot be read: {exc}") from exc
        return "scip_zarr" if str(meta.get("dtype", "")).endswith("O") else "zarr"
    if (p / ".zattrs").is_file() or (p / "zarr.json").is_file():  # a zarr group: OME-Zarr?
        from .io.ome_zarr import ome_attrs, open_group

        try:
            ome, _ = ome_attrs(open_group(p))
        except InputError:  # an array, not a group
            ome = {}
        if any(k in ome for k in ("plate", "multiscales", "bioformats2raw.layout")):
            return "ome_zarr"  # fields of view (an image of per-object crops: dataset='ome_zarr_objects')
    if low.endswith(".zarr"):
        return "zarr"
    if low.endswith((".ome.tif", ".ome.tiff")):
        return "ome_tiff"
    if low.endswith((".tif", ".tiff")):
        return "multipage_tiff"
    if p.is_dir():
        files = [f.name.lower() for f in p.iterdir() if f.name.lower().endswith((".tif", ".tiff"))]
        if files and all(f.endswith((".ome.tif", ".ome.tiff")) for f in files):
            return "ome_tiff"
        if files:
            return "multipage_tiff"
    if not p.exists() and not p.is_symlink() and not any(ch in str(path) for ch in "*?["):
        raise InputError(f"{str(path)!r} does not exist")
    raise ConfigError(
        f"cannot tell the dataset type of {str(path)!r}: give it, e.g. dataset='tiff' (one TIFF per channel, "
        "with dataset_options={'regex': ...}), dataset='fields_tiff' or dataset='zarr' (the names in conf/dataset/)")


def _flat_keys(prefix: str, value) -> list[str]:
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            out += _flat_keys(f"{prefix}.{k}" if prefix else str(k), v)
        return out or [prefix]
    return [prefix]


def compose(source, overrides: tuple[str, ...] = (), options: Mapping[str, Any] | None = None,
            default_cluster: str = "sync"):
    """The composed Hydra configuration for ``profile`` (a DictConfig), and the dataset name
    chosen (None for in-memory arrays)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import register_configs
    from .overrides import group_options, prepare, resolve

    options = dict(options or {})
    groups = [f"cluster={default_cluster}"]
    merges: dict[str, Any] = {}
    dataset_name = options.pop("dataset", None)
    dataset_options = options.pop("dataset_options", None) or {}
    if isinstance(dataset_name, Mapping):
        dataset_options, dataset_name = {**dict(dataset_name), **dataset_options}, None
    for key, value in options.items():
        if key in GROUPS and isinstance(value, str):
            groups = [g for g in groups if not g.startswith(f"{key}=")] + [f"{key}={value}"]
        else:
            merges[key] = value

    in_memory = not isinstance(source, (str, Path, Mapping)) and source is not None
    if isinstance(source, Mapping):  # a dataset configuration
        dataset_options = {**dict(source), **dataset_options}
        dataset_name = dataset_name or (dataset_options.get("name") if dataset_options.get("name") in
                                        group_options("dataset") else None)
        if dataset_name is None and "format" not in dataset_options:
            raise ConfigError("a dataset configuration needs a format (dataset.format) or the name of one in "
                              f"conf/dataset/ ({', '.join(group_options('dataset'))})")
    elif isinstance(source, (str, Path)):
        text = str(source)
        if dataset_name is None and text in group_options("dataset") and not Path(text).exists():
            dataset_name = text  # a dataset configuration's name
        else:
            dataset_name = dataset_name or infer_dataset(text)
            dataset_options = {"path": text, **dataset_options}
    if dataset_options:
        merges["dataset"] = {**dataset_options, **(merges.get("dataset") or {})}
    if in_memory:
        dataset_name = None
        merges["dataset"] = {"name": "arrays", "format": "arrays", **(merges.get("dataset") or {})}
    if dataset_name is not None:
        groups.append(f"+dataset={dataset_name}")
    chosen = {o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o}  # a group chosen as a string wins
    groups = [g for g in groups if g.split("=", 1)[0].lstrip("+") not in chosen]

    for section, value in merges.items():  # a misspelt key: one line naming the closest key
        for key in _flat_keys(section, value):
            if resolve(key)[0] == "unknown":
                prepare([f"{key}=0"])  # raises ConfigError
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="scip_gpu"):
            cfg = hydra_compose("config", overrides=prepare([*groups, *overrides]))
        if merges:
            if "dataset" in merges and OmegaConf.is_missing(cfg, "dataset"):
                from .config import DatasetConfig

                cfg.dataset = OmegaConf.structured(DatasetConfig)
            OmegaConf.set_struct(cfg, False)  # free-form mappings (per_mask, kwargs) take new keys
            cfg = OmegaConf.merge(cfg, merges)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError((f"{key}: " if key else "") + str(exc).splitlines()[0]) from None
    except Exception as exc:  # Hydra's composition errors (an unknown option...)
        if type(exc).__module__.startswith("hydra"):
            raise ConfigError(" ".join(str(exc).split())) from None
        raise
    return cfg, dataset_name


# ---------------------------------------------------------------------------------------------
# Workers that do not run the calling script again


@contextlib.contextmanager
def _main_not_rerun():
    """While local worker processes start (``multiprocessing`` spawn), present ``__main__`` as
    a notebook does (no ``__file__``, no ``__spec__``), so that workers do not import and run the
    calling script again: no ``if __name__ == "__main__":`` guard is needed around ``profile``."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# ---------------------------------------------------------------------------------------------
# profile()


def profile(source, *overrides: str, output: str | Path | None = None, channel_names=None, masks=None,
            mask_name: str = "mask", **options):
    """Profile objects with scip_gpu and return their features as an AnnData.

    The same run as ``python -m scip_gpu``, with the same defaults (``conf/``: li + otsu masks,
    every feature family and the raw set, Parquet and AnnData export), except the cluster:
    ``cluster="sync"`` runs the partitions one after the other in this process, so nothing
    starts, and nothing runs your script again. Pass ``cluster="local"`` for one worker process
    per core (Dask ``LocalCluster``): scip_gpu starts its workers so that they do not import
    the calling script again, so no ``if __name__ == "__main__":`` guard is needed in a script,
    and it works in a notebook.

    Parameters
    ----------
    source : str, Path, mapping, array or sequence of arrays
        - a path, as ``dataset.path`` on the command line (a glob pattern too); the dataset type
          is inferred (a zarr array in SCIP's ragged layout -> ``scip_zarr``, another zarr array
          -> ``zarr``, OME-TIFF -> ``ome_tiff``, TIFF -> ``multipage_tiff``) or given with
          ``dataset="tiff"`` (one TIFF per channel), ``"fields_tiff"``...;
        - the name of a dataset configuration in ``conf/dataset/`` (``"demo"``), or a mapping of
          dataset keys (``{"name": "tiff", "path": ..., "regex": ...}`` or with a ``format``);
        - in-memory images: an ``(N, C, H, W)`` NumPy, CuPy or Dask array, or a sequence of
          ``(C, H, W)`` arrays of any sizes (each object is read when its partition is profiled).
    *overrides : str
        Command-line overrides, written as on the command line: ``"masks=li"``,
        ``"masks.methods.0.kwargs.smooth=2"``, ``"features.per_mask={otsu: [shape]}"``.
    output : str or Path, optional
        The run folder (a new or empty folder; an existing non-empty one is refused, never
        overwritten). Without it the run goes to a temporary folder that is removed once the
        AnnData is read back; ``adata.uns["errors"]`` then holds the error report.
    channel_names : list of str, optional
        One name per channel profiled (``dataset.channel_names``).
    masks : array or sequence of arrays, optional
        With in-memory images: a mask per image, profiled like a mask method's (columns
        ``feat_{mask_name}_*``, before the methods' ones): ``(N, H, W)`` or a list of ``(H, W)``
        (the same mask for every channel), or ``(N, C, H, W)`` / a list of ``(C, H, W)`` (one per
        channel); bool or labels (non-zero is inside). A string or a mapping instead chooses or
        changes the mask methods as on the command line (``masks="li"``); with masks given,
        ``"masks=none"`` profiles them alone.
    mask_name : str
        Column prefix of the given masks.
    **options
        Configuration keys: a group's option by name (``masks="li"``, ``features="intensity"``,
        ``cluster="local"``, ``dataset="tiff"``), a top-level key (``device="cuda"``,
        ``batch_size=512``), or a mapping merged onto a section (``dataset_options={"channels":
        [0, 1]}`` or ``dataset={...}``, ``cluster={"n_workers": 4}``, ``masks={"edge_width": 4}``).

    Returns
    -------
    anndata.AnnData
        One row per object (every object has a row; a failed object's features are NaN):
        features in ``X`` (float32), column descriptions in ``var``, ``meta_*`` columns in
        ``obs``, the run's provenance in ``uns["scip_gpu"]`` and its errors in ``uns["errors"]``.

    Raises
    ------
    scip_gpu.errors.ConfigError, InputError, OutputError
        Before anything is written, when the configuration, the input or the output folder
        cannot be used (the command line's exit status 2).

    Examples
    --------
    >>> import numpy as np, scip_gpu
    >>> from scip_gpu.demo import make_cell
    >>> cells = [make_cell(i)[0] for i in range(8)]          # (3, H, W) uint16 each
    >>> adata = scip_gpu.profile(cells, channel_names=["BF", "DNA", "SPOT"])
    >>> adata.shape
    (8, 1369)
    """
    import anndata as ad

    from .cli import to_config
    from .pipeline import run

    if channel_names is not None:
        options["dataset_options"] = {**(options.get("dataset_options") or {}), "channel_names": list(channel_names)}
    if isinstance(masks, (str, Mapping)):  # the `masks` group, as on the command line
        options["masks"], masks = masks, None
    if masks is not None and isinstance(source, (str, Path, Mapping)):
        raise ConfigError("masks=...: masks can be given with in-memory images only")
    if source is None:
        raise ConfigError("profile(source): give a path, a dataset configuration (e.g. 'demo') or images")
    in_memory = not isinstance(source, (str, Path, Mapping))
    cfg, _ = compose(source, overrides, options)
    if not any(str(o).startswith("export") for o in overrides) and "export" not in options:
        cfg.export.formats = ["parquet", "anndata"]  # (the AnnData is what profile returns)
    formats = list(cfg.export.formats)
    if "anndata" not in [getattr(f, "value", f) for f in formats]:
        cfg.export.formats = formats + ["anndata"]
    if masks is not None:
        cfg.masks.given = mask_name
    if cfg.get("output") is not None and output is None:
        output = cfg.output
    with contextlib.ExitStack() as stack:
        if output is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="scip_gpu-"))
            cfg.output = str(Path(tmp) / "run")
        else:
            cfg.output = str(output)
        config, resolved = to_config(cfg)
        src = ArraySource(config.dataset, source, masks) if in_memory else None
        kind = getattr(config.cluster.type, "value", config.cluster.type)
        if kind in ("local", "local_cuda"):
            stack.enter_context(_main_not_rerun())
        summary = run(config, resolved, source=src)
        adata = ad.read_h5ad(Path(summary.output) / f"{config.export.filename}.h5ad")
        errors = pd.read_csv(Path(summary.output) / "errors.csv")
        adata.uns["errors"] = errors
        adata.uns.setdefault("scip_gpu", {})["output"] = str(summary.output) if output is not None else ""
        adata.uns["scip_gpu"]["summary"] = summary.line()
    return adata


__all__ = ["profile", "ArraySource", "infer_dataset"]
