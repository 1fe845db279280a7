"""cellpose 4's model API, as scip_gpu uses it, for machines without cellpose and torch.

``install(monkeypatch)`` puts a ``cellpose`` package (``cellpose.models.CellposeModel``) and the
few ``torch`` names ``scip_gpu.cellpose_seg`` touches into ``sys.modules``; the real
``load_model`` / ``segment_fields`` code runs on them. The model labels each image by an Otsu
threshold of its first channel and connected components (``reference_labels``), an independent
and known segmentation to compare the pipeline's output against. Every model built and every
``eval`` call is recorded on the returned namespace.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.metadata
import sys
import types

import numpy as np


def reference_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int32 labels the fake model gives a (C, H, W) image."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    first = np.asarray(image[0], dtype=np.float64)
    return label(first > threshold_otsu(first)).astype(np.int32)


class _Device:
    def __init__(self, kind: str, index=None):
        self.type, self.index = kind, index

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def install(monkeypatch) -> types.SimpleNamespace:
    import anndata  # noqa: F401  (imported before the fake torch: it probes for torch)

    record = types.SimpleNamespace(models=[], evals=[])

    class CellposeModel:
        def __init__(self, *, pretrained_model, device, use_bfloat16=True):
            self.pretrained_model, self.device = pretrained_model, device
            record.models.append({"pretrained_model": pretrained_model, "device": str(device)})

        def eval(self, x, *, channel_axis, batch_size, diameter, flow_threshold, cellprob_threshold, min_size,
                 normalize, **kwargs):
            x = np.asarray(x)
            assert channel_axis == 1 and x.ndim == 4, x.shape  # (N, C, H, W), as cellpose 4 takes a batch
            record.evals.append({"shape": x.shape, "diameter": diameter, "flow_threshold": flow_threshold,
                                 "batch_size": batch_size})
            masks = np.stack([reference_labels(im) for im in x])
            return masks.squeeze(), None, None  # cellpose squeezes a batch of one

    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__dict__.update(attrs)
        return m

    models = module("cellpose.models", CellposeModel=CellposeModel)
    torch = module(
        "torch", Tensor=type("Tensor", (), {}),
        device=_Device,
        cuda=types.SimpleNamespace(is_available=lambda: False),
        sparse=types.SimpleNamespace(check_sparse_tensor_invariants=lambda enable: contextlib.nullcontext()))
    monkeypatch.setitem(sys.modules, "cellpose", module("cellpose", models=models))
    monkeypatch.setitem(sys.modules, "cellpose.models", models)
    monkeypatch.setitem(sys.modules, "torch", torch)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "4.0.8" if name == "cellpose" else real_version(name))
    from scip_gpu import cellpose_seg

    cellpose_seg.clear_model_cache()
    monkeypatch.setattr(cellpose_seg, "_MODELS", {})
    return record
