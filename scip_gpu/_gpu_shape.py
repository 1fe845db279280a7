"""CUDA implementation of the shape family (kernels/shape.cu), registered with scip_gpu.dispatch."""

from __future__ import annotations
