"""RoPE framework: ``kernels/rope_v1_naive.cu``, one CUDA thread per element. Correct, and slow.

What is slow, and why (each point is a thing the solution fixes):
- every element loads its own position and its own cos and sin, and finds (token, head, d) with
  64-bit division: per byte of q/k moved, several instructions of bookkeeping;
- 2-byte loads and stores (bf16): a warp-wide access moves 64 bytes, 1/8 of what 128-bit accesses move;
- a thread per element cannot rotate in place (the rotation partner lives in another warp), so each
  tensor is written to a scratch buffer and copied back: q and k cross DRAM twice;
- q and k are separate launches (four kernels in all, with the copies).

On CPU tensors it raises ``RopeDeviceError`` pointing to ``phase2_rope_cuda.reference.apply_rope_``.
"""

from __future__ import annotations

import numpy as np
import torch

from phase2_rope_cuda.cuda_launch import (
    DTYPE_TAG,
    NAIVE_FILE,
    POSITION_TAG,
    get_kernel,
    launch_on,
    require_cuda,
)
from phase2_rope_cuda.shapes import RopeInputError, check_rope_inputs

THREADS_PER_BLOCK = 256


def _rotate_one(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    tokens, heads, head_dim = x.shape
    if x.stride(2) != 1:
        raise RopeInputError(f"the last dimension of q/k must be contiguous (stride {x.stride(2)}); pass x.contiguous()")
    scratch = torch.empty((tokens, heads, head_dim), dtype=x.dtype, device=x.device)
    name = f"rope_v1_{DTYPE_TAG[x.dtype]}_{POSITION_TAG[positions.dtype]}"
    kernel = get_kernel(NAIVE_FILE, name, x.device)
    total = tokens * heads * head_dim
    grid = ((total + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK,)
    args = (
        x.data_ptr(), scratch.data_ptr(), positions.data_ptr(), cos_sin_cache.data_ptr(),
        np.int64(tokens), np.int32(heads), np.int32(head_dim),
        np.int64(x.stride(0)), np.int64(x.stride(1)),
    )
    launch_on(x.device, kernel, grid, (THREADS_PER_BLOCK,), args)
    x.copy_(scratch)  # the second trip through DRAM that in-place kernels avoid


def apply_rope_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [tokens, q_heads, D] and ``k`` [tokens, kv_heads, D] in place; returns (q, k)."""
    check_rope_inputs(q, k, positions, cos_sin_cache)
    require_cuda("framework", q, k, positions, cos_sin_cache)
    if q.shape[0] == 0:
        return q, k
    positions = positions.contiguous()
    cos_sin_cache = cos_sin_cache.contiguous()
    _rotate_one(q, positions, cos_sin_cache)
    _rotate_one(k, positions, cos_sin_cache)
    return q, k
