"""Cellpose segmentation of whole fields of view (cellpose 4, CellposeSAM).

This replaces SCIP's ``segmentation/cellpose.py`` (cellpose 2, ``models.Cellpose('cyto2')``,
cached on the Dask worker): the model is cached per process and per device, and all fields of
the same shape go through the network together.

Model weights
-------------
scip_gpu **never downloads weights** (and never falls back to another model). ``model`` is
either

* a path to a cellpose 4 weights file (``cpsam``, or a model fine-tuned with cellpose 4), or
* a file name, looked up in ``$CELLPOSE_LOCAL_MODELS_PATH`` and then in cellpose's own folder
  ``~/.cellpose/models`` (where cellpose itself stores what it downloads).

To get the CellposeSAM weights (about 1.2 GB), on a machine with internet access::

    mkdir -p /data/cellpose-models
    curl -L -o /data/cellpose-models/cpsam \\
        https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam
    export CELLPOSE_LOCAL_MODELS_PATH=/data/cellpose-models

and then use ``model="cpsam"`` (configuration: ``segmentation.cellpose.model: cpsam``), or
give the full path. Running ``cellpose`` once with internet access also works: it saves the file
as ``~/.cellpose/models/cpsam``. Cellpose 3 models (``cyto2``, ``cyto3``, ``nuclei``) cannot be
loaded by cellpose 4.

Device
------
The GPU is used when PyTorch can really allocate on one (the test of cellpose's
``core.assign_device``) unless ``gpu=False``; ``gpu=True`` fails when no GPU works.

Labels always come back through the host. Cellpose 4 has no API that returns device tensors: the
network output is copied to NumPy after every batch of tiles (``core._forward``), the flow
dynamics run on the device again, and the labels are finished on the CPU (``fastremap``
renumbering, ``fill_voids`` hole filling, size filters) and returned as NumPy arrays. With
``as_cupy=True`` the finished labels are copied to the GPU once per group of fields (one
host-to-device copy, no DLPack hand-over is possible).

Requirements
------------
``cellpose>=4`` and PyTorch (``pip install 'scip_gpu[cellpose]'``). Cellpose imports torchvision
(``cellpose.transforms``, and ``segment_anything`` which it uses for the CPSAM encoder); the
torchvision build must match the installed torch. Inference never calls torchvision (only
cellpose's training augmentation does). Nothing here imports torch or cellpose at module import.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import asnumpy, gpu_available
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from cellpose.models import CellposeModel

log = logging.getLogger(__name__)

MODELS_PATH_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
#: cellpose's own model folder (``cellpose.models._MODEL_DIR_DEFAULT``)
CELLPOSE_MODEL_DIR = Path("~/.cellpose/models")
#: where cellpose 4.2 downloads its built-in models from (``cellpose.models._MODEL_URL``)
CELLPOSE_MODEL_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"
#: cellpose 4's built-in model names (``cellpose.models.MODEL_NAMES``)
BUILTIN_MODELS = ("cpsam", "cpsam_v2", "cpdino", "cpdino-vitb")

# model.eval arguments that segment_fields sets itself (2-D fields, channels first, masks)
_RESERVED_EVAL_ARGS = frozenset(
    {"x", "channels", "channel_axis", "z_axis", "do_3D", "stitch_threshold", "compute_masks"}
)

_MODELS: dict[tuple[str, str, bool], CellposeModel] = {}
_MODELS_LOCK = threading.Lock()


class ModelNotFoundError(ConfigError, FileNotFoundError):
    """The Cellpose weights are not on disk (scip_gpu never downloads them)."""


# --------------------------------------------------------------------------------------------
# finding the weights


def model_dirs() -> list[Path]:
    """Folders searched for a model given by name: ``$CELLPOSE_LOCAL_MODELS_PATH`` (when set),
    then cellpose's own ``~/.cellpose/models``."""
    dirs = []
    env = os.environ.get(MODELS_PATH_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    default = CELLPOSE_MODEL_DIR.expanduser()
    if default not in dirs:
        dirs.append(default)
    return dirs


def _looks_like_path(model: str | os.PathLike) -> bool:
    if isinstance(model, os.PathLike):
        return True
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(s in model for s in seps) or model.startswith("~")


def _how_to_get(name: str, dest: str) -> str:
    """How to get the weights ``name`` to ``dest``, in one line."""
    if name in BUILTIN_MODELS:
        return f"download {CELLPOSE_MODEL_URL}{name} to {dest}"
    return (f"{name!r} is not one of cellpose 4's built-in models ({', '.join(BUILTIN_MODELS)}): "
            f"put the weights file of your model at {dest}")


def resolve_model(model: str | os.PathLike) -> Path:
    """Path of the weights file for ``model`` (a path, or a name in the model folders).

    Raises
    ------
    ModelNotFoundError
        When no such file is on disk; the message (one line) names the path(s) looked at, says
        where to get the weights and where to put them. Nothing is downloaded.
    """
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ConfigError(f"cellpose model: expected a weights path or a model name, got {model!r}")
    path = Path(model).expanduser()
    if path.is_file():
        return path.resolve()
    if _looks_like_path(model):
        if path.is_dir():
            raise ConfigError(f"cellpose model: {path} is a folder, not a weights file")
        raise ModelNotFoundError(
            f"cellpose model: the weights file {path} does not exist (scip_gpu never downloads weights: "
            f"{_how_to_get(path.name, str(path))})")
    searched = model_dirs()
    for folder in searched:
        candidate = folder / str(model)
        if candidate.is_file():
            return candidate.resolve()
    env_set = bool(os.environ.get(MODELS_PATH_ENV, "").strip())
    where = " or ".join(str(d / str(model)) + (f" (${MODELS_PATH_ENV})" if env_set and i == 0 else "")
                        for i, d in enumerate(searched))
    env_note = "" if env_set else f"; ${MODELS_PATH_ENV} is not set"
    raise ModelNotFoundError(
        f"cellpose model {str(model)!r}: no weights file at {where}{env_note} (scip_gpu never downloads "
        f"weights: {_how_to_get(str(model), str(searched[0] / str(model)))}, or give the file's path as "
        "the model)")


# --------------------------------------------------------------------------------------------
# torch / cellpose


def _import_cellpose_models():
    """``cellpose.models``, with install hints instead of bare import failures."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        major = int(version("cellpose").split(".")[0])
    except PackageNotFoundError as exc:
        raise ImportError(
            "Cellpose segmentation needs cellpose 4 and PyTorch: pip install 'scip_gpu[cellpose]'"
        ) from exc
    if major < 4:
        raise ImportError(f"cellpose {version('cellpose')} is installed; scip_gpu needs "
                          "cellpose>=4 (pip install 'cellpose>=4,<5')")
    try:
        from cellpose import models
    except ImportError as exc:  # torch, or one of cellpose's own dependencies
        raise ImportError(f"cellpose cannot be imported ({exc}); install cellpose 4 and PyTorch: "
                          "pip install 'scip_gpu[cellpose]'") from exc
    except RuntimeError as exc:
        if "torchvision" in str(exc):
            # e.g. a CUDA torchvision wheel next to a CPU-only torch: its compiled operators
            # cannot load and torchvision fails at import (cellpose imports it unconditionally)
            import torch

            raise ImportError(
                f"cellpose cannot be imported because torchvision does not match torch "
                f"{torch.__version__} ({exc}). Install the torchvision build made for this torch "
                "(same CUDA or CPU variant, e.g. from the same PyTorch index)."
            ) from exc
        raise
    return models


def torch_device(gpu: bool | None = None, device: str | None = None):
    """The ``torch.device`` to run Cellpose on.

    Parameters
    ----------
    gpu : bool or None
        ``None``: a CUDA GPU when PyTorch can allocate on one, else the CPU. ``True``: a GPU or a
        :class:`ConfigError`. ``False``: the CPU.
    device : str, optional
        An explicit torch device (``"cuda:1"``, ``"cpu"``); overrides ``gpu``.
    """
    import torch

    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # one cache key per physical device
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    if gpu is False:
        return torch.device("cpu")
    reason = "torch.cuda.is_available() is False"
    if torch.cuda.is_available():
        try:
            # allocate before trusting the GPU, as cellpose's core.assign_device does
            torch.zeros((1, 1), device="cuda").sum().item()
            return torch.device("cuda", torch.cuda.current_device())
        except (RuntimeError, AssertionError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
    if gpu:
        raise ConfigError(f"cellpose: gpu=True but PyTorch cannot use a CUDA GPU ({reason})")
    log.info("cellpose: no usable GPU (%s); running on the CPU", reason)
    return torch.device("cpu")


def load_model(
    model: str | os.PathLike,
    *,
    gpu: bool | None = None,
    device: str | None = None,
    use_bfloat16: bool = True,
) -> CellposeModel:
    """Load a cellpose 4 model from local weights, once per process and device.

    Parameters
    ----------
    model : str or path
        Path to a weights file, or a name found in ``$CELLPOSE_LOCAL_MODELS_PATH`` or
        ``~/.cellpose/models`` (e.g. ``"cpsam"``). Never downloaded.
    gpu : bool or None
        See :func:`torch_device`.
    device : str, optional
        Explicit torch device, e.g. ``"cuda:1"`` for the second GPU of a node.
    use_bfloat16 : bool
        Run the network in bfloat16 (cellpose's default) rather than float32.

    Returns
    -------
    cellpose.models.CellposeModel
        The same object for the same (weights file, device, precision) within a process.

    Raises
    ------
    ModelNotFoundError
        The weights are not on disk.
    ImportError
        cellpose 4 / torch are not installed (or torchvision does not match torch).
    """
    path = resolve_model(model)  # before importing torch: a missing model fails fast
    models = _import_cellpose_models()
    dev = torch_device(gpu, device)
    key = (str(path), str(dev), bool(use_bfloat16))
    with _MODELS_LOCK:  # threaded Dask workers: build each model once
        cached = _MODELS.get(key)
        if cached is not None:
            return cached
        log.info("cellpose: loading %s on %s", path, dev)
        try:
            # an existing path: cellpose loads it and never looks for a download
            net = models.CellposeModel(pretrained_model=str(path), device=dev,
                                       use_bfloat16=use_bfloat16)
        except ValueError as exc:  # e.g. "does not appear to be a CP4 model"
            raise ConfigError(f"cellpose model {path}: {exc}") from exc
        _MODELS[key] = net
        return net


def clear_model_cache() -> None:
    """Forget the cached models (their GPU memory is freed once nothing else holds them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# --------------------------------------------------------------------------------------------
# segmentation


def _field_chw(image: Any, channels: Sequence[int] | None, index: int) -> np.ndarray:
    """One field as a float32 (C, H, W) host array holding the selected channels."""
    a = asnumpy(image)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim != 3:
        raise ValueError(f"field {index}: expected a (H, W) or (C, H, W) image, "
                         f"got shape {a.shape}")
    if channels is not None:
        bad = [c for c in channels if not -a.shape[0] <= c < a.shape[0]]
        if bad:
            raise ValueError(f"field {index}: channel(s) {bad} out of range for "
                             f"{a.shape[0]} channels")
        a = a[list(channels)]
    if not 1 <= a.shape[0] <= 3:
        # cellpose 4 would silently keep only the first three
        raise ValueError(f"field {index}: cellpose takes 1 to 3 channels, got {a.shape[0]}; "
                         "choose them with channels=")
    return np.ascontiguousarray(a, dtype=np.float32)


def segment_fields(
    model: CellposeModel | str | os.PathLike,
    images: Sequence[Any],
    *,
    channels: Sequence[int] | None = None,
    diameter: float | None = None,
    flow_threshold: float = 0.4,
    cellprob_threshold: float = 0.0,
    min_size: int = 15,
    batch_size: int = 8,
    normalize: bool | Mapping[str, Any] = True,
    as_cupy: bool = False,
    **eval_kwargs: Any,
) -> list:
    """Segment fields of view with Cellpose; fields of one shape share one ``model.eval`` call.

    Cellpose 4's ``eval`` runs a *list* of images one by one; fields with the same shape are
    therefore stacked into an ``(N, C, H, W)`` array, which cellpose treats as a batch of 2-D
    images: the tiles of all N fields go through the network in batches of ``batch_size``,
    each field is normalised on its own, and the masks are computed per field (the same
    result as segmenting the fields one at a time).

    Parameters
    ----------
    model : CellposeModel or str or path
        A model from :func:`load_model`, or what :func:`load_model` accepts (then loaded with
        its defaults, and cached).
    images : sequence of (H, W) or (C, H, W) arrays
        NumPy or CuPy arrays (CuPy ones are copied to the host: cellpose takes NumPy).
    channels : sequence of int, optional
        Channels to segment on, in order (e.g. ``[cell, nucleus]`` like SCIP's
        ``[parent, dapi]``); 1 to 3 of them. ``None``: all channels of the image (at most 3).
    diameter : float, optional
        Typical object diameter in pixels: fields are rescaled by ``30 / diameter`` for the
        network. ``None``: no rescaling (cellpose 4 does not estimate sizes).
    flow_threshold, cellprob_threshold, min_size
        As in ``CellposeModel.eval``.
    batch_size : int
        Number of 256 x 256 tiles per network pass (cellpose 4's meaning).
    normalize : bool or dict
        Cellpose's per-channel percentile normalisation (dict: cellpose's normalisation options).
    as_cupy : bool
        Return CuPy arrays on the model's GPU (one host-to-device copy per group of fields; see
        the module docstring for why the labels come through the host).
    **eval_kwargs
        Further ``CellposeModel.eval`` options (``niter``, ``max_size_fraction``, ``augment``,
        ``tile_overlap``, ``resample``...).

    Returns
    -------
    list of (H, W) int32 arrays
        One label image per field, in input order; 0 is background.
    """
    reserved = _RESERVED_EVAL_ARGS.intersection(eval_kwargs)
    if reserved:
        raise TypeError(f"segment_fields sets {', '.join(sorted(reserved))} itself")
    if as_cupy:
        ok, reason = gpu_available()
        if not ok:
            raise ConfigError(f"as_cupy=True needs CuPy on a GPU: {reason}")
    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "eval"):
        raise TypeError("model: expected a CellposeModel, a path or a name, "
                        f"got {type(model).__name__}")
    fields = [_field_chw(im, channels, i) for i, im in enumerate(images)]
    if not fields:
        return []
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)

    import torch

    if isinstance(normalize, Mapping):
        norm = {**normalize, "norm3D": False}
    else:
        # always a dict: cellpose updates its module-level defaults in place for a bool
        norm = {"normalize": bool(normalize), "norm3D": False}

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, f in enumerate(fields):
        groups.setdefault(f.shape, []).append(i)

    out: list = [None] * len(fields)
    for (_, h, w), idx in groups.items():
        stack = np.stack([fields[i] for i in idx])  # (N, C, H, W)
        # cellpose builds a sparse tensor without saying whether to check its invariants, and
        # torch warns on every call; opting out explicitly is torch's default behaviour
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            masks = model.eval(
                stack, channel_axis=1, batch_size=batch_size, diameter=diameter,
                flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                min_size=min_size, normalize=norm, **eval_kwargs)[0]
        # cellpose squeezes its output: (H, W) for one field
        labels = np.asarray(masks).reshape(len(idx), h, w).astype(np.int32, copy=False)
        if as_cupy:
            labels = _to_cupy(labels, model)
        for k, i in enumerate(idx):
            out[i] = labels[k]
    return out


def _to_cupy(labels: np.ndarray, model: Any):
    import cupy

    dev = getattr(model, "device", None)
    index = dev.index if getattr(dev, "type", None) == "cuda" else None  # None: current GPU
    with cupy.cuda.Device(index):
        return cupy.asarray(labels)  # one host-to-device copy for the whole group


def check_cellpose(cfg) -> None:
    """``check_segmentation``'s Cellpose checks (the package, the weights), which need no data:
    the command line runs them before it starts the cluster."""
    import importlib.util

    seg = cfg.segmentation
    if seg.method is None or seg.method.value != "cellpose":
        return
    if getattr(cfg.cluster.type, "value", cfg.cluster.type) == "address":
        return
    if importlib.util.find_spec("cellpose") is None:  # (not imported here: it imports torch)
        raise ConfigError("segmentation=cellpose needs cellpose 4 and PyTorch, which are not installed: "
                          "pip install 'scip_gpu[cellpose]' (install torch first)")
    keys = []  # the models segment() loads: nuclei, and cells with cells=cellpose
    if seg.cellpose.nucleus_model:
        keys.append(("segmentation.cellpose.nucleus_model", seg.cellpose.nucleus_model))
    if not seg.cellpose.nucleus_model or seg.cells.value == "cellpose":
        keys.append(("segmentation.cellpose.model", seg.cellpose.model))
    for key, model in keys:
        try:
            resolve_model(model)
        except ConfigError as exc:  # ModelNotFoundError, or a folder given as the weights
            raise type(exc)(f"{key}={model}: {exc}") from None
