"""CUDA implementation of the intensity family (kernels/intensity.cu), registered with scip_gpu.dispatch."""

from __future__ import annotations
