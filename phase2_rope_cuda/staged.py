"""RoPE version 2: ``kernels/rope_v2_shared.cu``, a block per (token, head tile), cos/sin in shared memory.

The lesson's middle step between the framework (v1) and the solution (v3). It keeps v1's scalar
accesses but fixes the bookkeeping: the position and the cos/sin row are read once per block and
shared through shared memory by every head of the tile, a thread owns both halves of its rotation
pair (in place, no scratch copy), and q and k heads are one launch. What it still pays for is the
2-byte access: a warp moves 64 bytes per load instruction (v3 moves 512), so it stays short of
the copy bandwidth (the report's main-shape and token-sweep tables give the measured figures).

Requirements beyond the contract: last dim of q/k contiguous, head_dim ≤ 256. Any number of heads
and any token/head strides (no alignment needed). On CPU it raises ``RopeDeviceError``.
"""

from __future__ import annotations

import numpy as np
import torch

from phase2_rope_cuda.cuda_launch import (
    DTYPE_TAG,
    POSITION_TAG,
    SHARED_FILE,
    SHARED_MAX_HEAD_DIM,
    get_kernel,
    launch_on,
    require_cuda,
)
from phase2_rope_cuda.shapes import RopeInputError, check_rope_inputs

THREADS_PER_BLOCK = 256  # heads per tile = this / (head_dim / 2): 8 heads of 64, 4 heads of 128


def launch_shape(tokens: int, num_heads: int, head_dim: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(grid, block): a block per (token, tile of heads); a thread per rotation pair of one head."""
    half = head_dim // 2
    heads_per_block = max(1, min(num_heads, THREADS_PER_BLOCK // half))
    return (tokens, -(-num_heads // heads_per_block)), (half, heads_per_block)


def apply_rope_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [tokens, q_heads, D] and ``k`` [tokens, kv_heads, D] in place; returns (q, k)."""
    check_rope_inputs(q, k, positions, cos_sin_cache)
    require_cuda("staged", q, k, positions, cos_sin_cache)
    tokens, num_q_heads, head_dim = q.shape
    if head_dim > SHARED_MAX_HEAD_DIM:
        raise RopeInputError(f"the shared-memory kernel takes head_dim ≤ {SHARED_MAX_HEAD_DIM}, got {head_dim}; "
                             "use phase2_rope_cuda.framework")
    if q.stride(2) != 1 or k.stride(2) != 1:
        raise RopeInputError("the last dimension of q and k must be contiguous; pass .contiguous()")
    if tokens == 0:
        return q, k
    if tokens >= 2**31:
        raise RopeInputError(f"at most 2**31 - 1 tokens per call, got {tokens}")
    positions, cos_sin_cache = positions.contiguous(), cos_sin_cache.contiguous()
    num_kv_heads = k.shape[1]
    name = f"rope_v2_{DTYPE_TAG[q.dtype]}_{POSITION_TAG[positions.dtype]}"
    grid, block = launch_shape(tokens, num_q_heads + num_kv_heads, head_dim)
    args = (q.data_ptr(), k.data_ptr(), positions.data_ptr(), cos_sin_cache.data_ptr(),
            np.int32(num_q_heads), np.int32(num_kv_heads), np.int32(head_dim),
            np.int64(q.stride(0)), np.int64(q.stride(1)), np.int64(k.stride(0)), np.int64(k.stride(1)))
    launch_on(q.device, get_kernel(SHARED_FILE, name, q.device), grid, block, args)
    return q, k
