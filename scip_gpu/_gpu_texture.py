"""CUDA implementation of the texture family (kernels/texture.cu), registered with scip_gpu.dispatch."""

from __future__ import annotations
