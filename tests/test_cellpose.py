"""Cellpose segmentation (scip_gpu.cellpose_seg): weights resolution without downloads, model
cache, batching of fields, on randomly initialised networks (no weights are fetched)."""

from __future__ import annotations

import importlib
import importlib.util
import socket
import subprocess
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scip_gpu import cellpose_seg
from scip_gpu.backend import gpu_available
from scip_gpu.cellpose_seg import (
    ModelNotFoundError,
    clear_model_cache,
    load_model,
    resolve_model,
    segment_fields,
)
from scip_gpu.errors import ConfigError

_TORCHVISION_SHIM = []  # keeps the torch.library definitions below alive


def _import_cellpose():
    """``(cellpose.models, cellpose.vit)``, or skip the test when they cannot be imported.

    cellpose imports torchvision, which cellpose only uses for training augmentation. A
    torchvision wheel built for another torch variant (a CUDA torchvision next to a CPU-only
    torch, as on machines where only the CPU torch is at hand) cannot load its compiled
    operators and then fails at import, registering a fake kernel for ``torchvision::nms``.
    Declaring the two operator schemas it needs lets it import; its compiled operators stay
    unavailable, and nothing used at inference needs them.
    """
    pytest.importorskip("torch")
    if importlib.util.find_spec("cellpose") is None:
        pytest.skip("cellpose is not installed")
    try:
        importlib.import_module("torchvision")
    except ImportError as exc:
        pytest.skip(f"torchvision cannot be imported: {exc}")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SHIM.append(lib)
        importlib.import_module("torchvision")
    from cellpose import models, vit

    return models, vit


def _tiny_sam(checkpoint=None):
    """A SAM-style image encoder with 1 block of width 32 in place of ViT-L (24 blocks of 1024):
    the same classes and token geometry (1024 px, 16 px patches), about 0.2 M parameters."""
    import torch
    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(
        depth=1, embed_dim=32, img_size=1024, mlp_ratio=2.0, num_heads=2, patch_size=16,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=(0,), window_size=14, out_chans=32)
    return types.SimpleNamespace(image_encoder=encoder)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Weights of a randomly initialised, small CPSAM network saved to a file.

    cellpose 4 builds every SAM-type model as CPSAM on SAM's ViT-L (305 M parameters, 1.2 GB of
    weights); the encoder builder is swapped for a one-block one while this module's tests run,
    everything else (CPSAM, CellposeModel, weights loading, eval) is cellpose's own code.
    """
    _, vit = _import_cellpose()
    import torch

    with pytest.MonkeyPatch.context() as mp:
        # vit.sam_model_registry is segment_anything's dict itself
        mp.setitem(vit.sam_model_registry, "vit_l", _tiny_sam)
        torch.manual_seed(0)
        net = vit.CPSAM(dtype=torch.float32)
        path = tmp_path_factory.mktemp("cellpose") / "tiny_cpsam"
        net.save_model(path)
        yield path, {k: v.clone() for k, v in net.state_dict().items()}
    clear_model_cache()


@pytest.fixture
def fields():
    """Two smooth random 64 x 64 fields."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    return [(ndi.gaussian_filter(rng.random((64, 64)), 3) * 1000).astype(np.float32)
            for _ in range(2)]


# arguments that make a random network produce objects (its cell probabilities lie in about
# [-2, 2] and its flows are noise): keep every pixel, no flow or size filter
PERMISSIVE = {"cellprob_threshold": -6.0, "flow_threshold": 0.0, "min_size": -1,
              "max_size_fraction": 1.0}


def _count_evals(monkeypatch, model):
    calls = []
    real = model.eval

    def spy(x, *args, **kwargs):
        calls.append(np.shape(x))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model, "eval", spy)
    return calls


# --------------------------------------------------------------------------------------------
# weights resolution: no cellpose needed, nothing downloaded


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """An empty $CELLPOSE_LOCAL_MODELS_PATH and an empty home (so ~/.cellpose/models too)."""
    local = tmp_path / "models"
    home = tmp_path / "home"
    local.mkdir()
    home.mkdir()
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(local))
    monkeypatch.setenv("HOME", str(home))
    return local, home / ".cellpose" / "models"


@pytest.mark.parametrize("name", ["cpsam", "no_such_model"])
def test_unknown_model_clear_error_without_download(name, model_dirs, no_network):
    local, _ = model_dirs
    with pytest.raises(ModelNotFoundError) as err:
        load_model(name)
    msg = str(err.value)
    assert "CELLPOSE_LOCAL_MODELS_PATH" in msg and str(local) in msg
    assert "never downloads" in msg
    if name == "cpsam":
        assert "https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam" in msg
    else:
        assert "not one of cellpose 4's built-in models" in msg
    assert isinstance(err.value, ConfigError) and isinstance(err.value, FileNotFoundError)


def test_unset_env_is_named(model_dirs, monkeypatch, no_network):
    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH")
    with pytest.raises(ModelNotFoundError, match=r"\$CELLPOSE_LOCAL_MODELS_PATH is not set"):
        resolve_model("cpsam")


def test_missing_path(tmp_path, no_network):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "weights" / "cpsam")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "cpsam"))
    with pytest.raises(ConfigError, match="is a folder"):
        resolve_model(tmp_path)
    with pytest.raises(ConfigError, match="expected a weights path"):
        resolve_model("")


def test_resolve_by_name(model_dirs, tmp_path, monkeypatch):
    local, cellpose_dir = model_dirs
    cellpose_dir.mkdir(parents=True)
    (cellpose_dir / "cpsam").write_bytes(b"x")
    (cellpose_dir / "mine").write_bytes(b"x")
    (local / "cpsam").write_bytes(b"x")
    # $CELLPOSE_LOCAL_MODELS_PATH first, then cellpose's own folder
    assert resolve_model("cpsam") == (local / "cpsam").resolve()
    assert resolve_model("mine") == (cellpose_dir / "mine").resolve()
    assert resolve_model(local / "cpsam") == (local / "cpsam").resolve()
    monkeypatch.chdir(local)
    assert resolve_model("./cpsam") == (local / "cpsam").resolve()


def test_import_loads_no_torch():
    code = ("import sys, scip_gpu.cellpose_seg;"
            "bad = [m for m in ('torch', 'cellpose', 'cupy') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_arguments_fail_before_cellpose(fields):
    with pytest.raises(ValueError, match="1 to 3 channels"):
        segment_fields("unused", [np.zeros((4, 8, 8))])
    with pytest.raises(ValueError, match="out of range"):
        segment_fields("unused", [np.zeros((2, 8, 8))], channels=[2])
    with pytest.raises(ValueError, match=r"\(H, W\) or \(C, H, W\)"):
        segment_fields("unused", [np.zeros(8)])
    with pytest.raises(TypeError, match="channel_axis"):
        segment_fields("unused", fields, channel_axis=0)
    with pytest.raises(TypeError, match="model"):
        segment_fields(3, fields)
    assert segment_fields("unused", []) == []


# --------------------------------------------------------------------------------------------
# with cellpose and a random network


def test_load_model_reads_the_file_and_caches(tiny_weights, monkeypatch):
    models, _ = _import_cellpose()
    import torch

    path, state = tiny_weights
    clear_model_cache()
    built = []
    real = models.CellposeModel

    def counting(*args, **kwargs):
        built.append(kwargs["pretrained_model"])
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "CellposeModel", counting)
    model = load_model(path, gpu=False)
    assert load_model(str(path), gpu=False) is model
    assert built == [str(path.resolve())]
    assert model.device == torch.device("cpu")
    # the saved (random) weights were loaded, in cellpose's default bfloat16
    got = model.net.out.weight.detach().float().cpu()
    torch.testing.assert_close(got, state["out.weight"].to(torch.bfloat16).float())
    # another precision is another model
    assert load_model(path, gpu=False, use_bfloat16=False) is not model
    assert len(built) == 2


def test_segment_fields_plumbing(tiny_weights, fields, monkeypatch):
    path, _ = tiny_weights
    model = load_model(path, gpu=False)
    calls = _count_evals(monkeypatch, model)
    labels = segment_fields(model, fields, **PERMISSIVE)
    assert calls == [(2, 1, 64, 64)]  # both fields in one eval call
    assert isinstance(labels, list) and len(labels) == 2
    for lab in labels:
        assert isinstance(lab, np.ndarray) and lab.dtype == np.int32 and lab.shape == (64, 64)
        assert lab.min() >= 0 and lab.max() > 0
        # labels are 1..n without gaps
        assert np.array_equal(np.unique(lab[lab > 0]), np.arange(1, lab.max() + 1))
    # default thresholds: a random network finds no cells, still the right type
    for lab in segment_fields(model, fields):
        assert lab.dtype == np.int32 and lab.shape == (64, 64) and lab.min() >= 0


def test_segment_fields_by_path_uses_cached_model(tiny_weights, fields, monkeypatch):
    models, _ = _import_cellpose()
    path, _ = tiny_weights
    clear_model_cache()
    built = []
    real = models.CellposeModel
    monkeypatch.setattr(models, "CellposeModel", lambda *a, **k: built.append(1) or real(*a, **k))
    first = segment_fields(str(path), fields, **PERMISSIVE)
    second = segment_fields(path, fields, **PERMISSIVE)
    assert len(built) == 1
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_batched_equals_one_at_a_time(tiny_weights, fields):
    """Stacking fields must not mix them: per-field normalisation, tiles and dynamics."""
    path, _ = tiny_weights
    model = load_model(path, gpu=False, use_bfloat16=False)
    rng = np.random.default_rng(1)
    fields = fields + [fields[0] * 50 + rng.random((64, 64), dtype=np.float32)]
    batched = segment_fields(model, fields, **PERMISSIVE)
    for field, lab in zip(fields, batched):
        np.testing.assert_array_equal(lab, segment_fields(model, [field], **PERMISSIVE)[0])


def test_shapes_grouped_order_kept(tiny_weights, fields, monkeypatch):
    path, _ = tiny_weights
    model = load_model(path, gpu=False)
    calls = _count_evals(monkeypatch, model)
    rng = np.random.default_rng(2)
    images = [fields[0], rng.random((48, 80), dtype=np.float32), fields[1]]
    labels = segment_fields(model, images, **PERMISSIVE)
    assert [lab.shape for lab in labels] == [(64, 64), (48, 80), (64, 64)]
    assert sorted(calls) == [(1, 1, 48, 80), (2, 1, 64, 64)]
    np.testing.assert_array_equal(labels[2], segment_fields(model, [fields[1]], **PERMISSIVE)[0])


def test_channels_select_and_order(tiny_weights, fields):
    path, _ = tiny_weights
    model = load_model(path, gpu=False)
    rng = np.random.default_rng(3)
    image = np.stack([fields[0], rng.random((64, 64), dtype=np.float32) * 10, fields[1]])
    got = segment_fields(model, [image], channels=[2, 0], **PERMISSIVE)[0]
    np.testing.assert_array_equal(
        got, segment_fields(model, [image[[2, 0]]], **PERMISSIVE)[0])
    # uint16 input is accepted like float
    np.testing.assert_array_equal(
        segment_fields(model, [fields[0].astype(np.uint16)], **PERMISSIVE)[0],
        segment_fields(model, [np.floor(fields[0])], **PERMISSIVE)[0])


def test_gpu_true_without_gpu_fails():
    _import_cellpose()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ConfigError, match="gpu=True"):
        cellpose_seg.torch_device(gpu=True)
    assert cellpose_seg.torch_device(gpu=None).type == "cpu"
    assert cellpose_seg.torch_device(device="cpu").type == "cpu"


def test_as_cupy_needs_gpu(fields):
    if gpu_available()[0]:
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="as_cupy"):
        segment_fields("unused", fields, as_cupy=True)


def test_default_architecture_from_path(tmp_path, fields, monkeypatch):
    """cellpose 4's real CPSAM network (ViT-L) through load_model and segment_fields.

    The weights file holds only ``W2`` (the fixed token-to-pixel map cellpose requires of a
    cellpose 4 file); cellpose loads state dicts non-strictly, so the other 305 M parameters
    keep their random initialisation: no 1.2 GB file is written.
    """
    _, vit = _import_cellpose()
    import torch
    from segment_anything.build_sam import build_sam_vit_l

    # the real ViT-L builder, also while the tiny_weights fixture has swapped it
    monkeypatch.setitem(vit.sam_model_registry, "vit_l", build_sam_vit_l)
    path = tmp_path / "random_cpsam"
    torch.save({"W2": torch.eye(3 * 8 * 8).reshape(3 * 64, 3, 8, 8)}, path)
    model = load_model(path, gpu=False)
    try:
        assert sum(p.numel() for p in model.net.parameters()) > 300e6
        labels = segment_fields(model, fields, batch_size=2, **PERMISSIVE)
        assert [(lab.dtype, lab.shape) for lab in labels] == [(np.int32, (64, 64))] * 2
        assert all(lab.min() >= 0 for lab in labels)
    finally:
        del model
        clear_model_cache()


def _real_cpsam() -> Path | None:
    try:
        return resolve_model("cpsam")
    except ModelNotFoundError:
        return None


@pytest.mark.skipif(_real_cpsam() is None,
                    reason="no cpsam weights in $CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models")
def test_real_cpsam_finds_discs(monkeypatch):
    _, vit = _import_cellpose()
    from segment_anything.build_sam import build_sam_vit_l
    from skimage.draw import disk

    monkeypatch.setitem(vit.sam_model_registry, "vit_l", build_sam_vit_l)

    image = np.full((128, 128), 100, np.float32)
    for centre in ((32, 32), (32, 96), (96, 64)):
        image[disk(centre, 12)] = 1000
    labels = segment_fields(load_model("cpsam"), [image], diameter=24)[0]
    assert labels.max() == 3


@pytest.mark.gpu
def test_gpu_as_cupy(tiny_weights, fields):
    _import_cellpose()
    import torch

    ok, reason = gpu_available()
    if not (ok and torch.cuda.is_available()):
        pytest.skip(f"needs CuPy and torch on a GPU ({reason})")
    import cupy

    path, _ = tiny_weights
    model = load_model(path)  # gpu=None: the GPU when it works
    assert model.device.type == "cuda"
    labels = segment_fields(model, fields, as_cupy=True, **PERMISSIVE)
    host = segment_fields(model, fields, **PERMISSIVE)
    for lab, ref in zip(labels, host):
        assert isinstance(lab, cupy.ndarray) and lab.dtype == cupy.int32 and lab.shape == (64, 64)
        np.testing.assert_array_equal(cupy.asnumpy(lab), ref)


# --------------------------------------------------------------------------------------------
# the pipeline: missing weights or cellpose stop a run at start-up, in one line


@pytest.mark.parametrize("missing", ["weights", "cellpose"])
def test_run_without_weights_or_cellpose_stops_in_one_line(missing, model_dirs, tmp_path, monkeypatch, capsys):
    from scip_gpu.cli import task

    from . import fake_cellpose
    from .fields_data import write_fields
    from .test_config import _compose

    local, _ = model_dirs
    write_fields(tmp_path / "plate1", n_fields=1)
    if missing == "weights":
        fake_cellpose.install(monkeypatch)  # installed, but no weights file
    else:
        (local / "cpsam").write_bytes(b"weights")
        monkeypatch.setitem(sys.modules, "cellpose", None)  # as if not installed
    out = tmp_path / "out"
    from scip_gpu.cluster import EarlyCluster

    started = []  # (before any cluster starts: the check needs no data)
    monkeypatch.setattr(EarlyCluster, "start", classmethod(lambda cls, cfg: started.append(cfg)))
    code = task(_compose(["+dataset=fields_tiff", f"dataset.path={tmp_path / 'plate1'}", "segmentation=cellpose",
                          "cluster=local", f"output={out}"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and started == []
    if missing == "weights":
        assert err == [f"scip_gpu: error: segmentation.cellpose.model=cpsam: cellpose model 'cpsam': no weights file "
                       f"at {local / 'cpsam'} ($CELLPOSE_LOCAL_MODELS_PATH) or {Path.home() / '.cellpose/models/cpsam'} "
                       "(scip_gpu never downloads weights: download "
                       f"https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam to {local / 'cpsam'}, "
                       "or give the file's path as the model)"]
    else:
        assert err == ["scip_gpu: error: segmentation=cellpose needs cellpose 4 and PyTorch, which are not installed: "
                       "pip install 'scip_gpu[cellpose]' (install torch first)"]
