"""The operations of the decode step that run as fused kernels on a GPU and as PyTorch elsewhere.

- ``rms_norm``: the final norm before the lm_head, ``kernels.rmsnorm`` (one kernel) or phase 0's reference
  (the layers' norms are phase 0's ``decoder_layer``'s own, the one definition of the layer);
- ``engine.kernel_attention`` uses phase 0's ``rope_cache_attention`` (RoPE + cache write + split attention
  + merge: two kernels) for a one-token step over the static cache.

A graph-replayed step pays a launch per kernel whatever the kernel does; PyTorch's attention is tens of
kernels per layer, which left the step bound by kernel count, not by reading the weights, and so made
tensor parallelism (which divides the bytes, not the kernels) unable to show anything.

The engine chooses once (``TPEngine(kernels=...)``, default: kernels on CUDA) and passes its choice down
in ``AttnContext.kernels``; tests ask for the Triton versions on a CPU (Triton's interpreter,
``TRITON_INTERPRET=1``) or for the PyTorch ones on a GPU.
"""

from __future__ import annotations

import os

import torch

from phase0_prototype.model import rms_norm as reference_rms_norm


def choose_kernels(device: torch.device, kernels: bool | None) -> bool:
    """Whether the step runs the Triton kernels on ``device``: ``kernels``, or None for "on CUDA"."""
    if kernels is None:
        return device.type == "cuda"
    if kernels and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 before triton is imported")
    return kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, kernels: bool) -> torch.Tensor:
    if not kernels:
        return reference_rms_norm(x, weight, eps)
    from phase6_tensor_parallel.kernels.rmsnorm import triton_rms_norm

    return triton_rms_norm(x, weight, eps)
