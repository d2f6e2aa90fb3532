"""The two operations of the decode step that run as fused kernels on a GPU and as PyTorch elsewhere.

- ``rms_norm``: ``kernels.rmsnorm`` (one kernel) on CUDA, phase 0's reference on a CPU;
- ``qkv_attention`` (in ``engine``) uses phase 0's ``rope_cache_attention`` (RoPE + cache write + split
  attention + merge: two kernels) for a one-token step over the static cache.

A graph-replayed step pays a few µs per kernel whatever it does; PyTorch's versions of these two are ~30
kernels per layer, which left the step bound by kernel count, not by reading the weights, and so made
tensor parallelism (which divides the bytes, not the kernels) unable to show anything.

``KERNELS`` overrides the choice (tests: True runs the Triton versions, on a CPU in Triton's interpreter,
``TRITON_INTERPRET=1``; False the PyTorch ones, also on a GPU).
"""

from __future__ import annotations

import os

import torch

from phase0_prototype.model import rms_norm as reference_rms_norm

KERNELS: bool | None = None  # None: the kernels for CUDA tensors, PyTorch for CPU ones


def use_kernels(t: torch.Tensor) -> bool:
    if KERNELS is None:
        return t.is_cuda
    if KERNELS and not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 before triton is imported")
    return KERNELS


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not use_kernels(x):
        return reference_rms_norm(x, weight, eps)
    from phase6_tensor_parallel.kernels.rmsnorm import triton_rms_norm

    return triton_rms_norm(x, weight, eps)
