"""RoPE solution: ``kernels/rope_v3_vectorized.cu``, in place, q and k in one launch.

The limit it approaches is DRAM bandwidth: RoPE does ~3 FLOPs per 4 bytes moved (bf16 read + write),
two orders of magnitude left of the ridge point, so the only question is how close the kernel gets
to the device's copy bandwidth while moving the minimum bytes — q and k read once and written once,
one cos/sin row per token. How: one 128-bit load/store per 8 bf16 elements, cos/sin read once per
(token, thread) into registers, a thread owning both halves of every rotation pair (so in place is
race-free), q heads and k heads in one index space (GQA), and each thread issuing the loads of two
heads before using either (bytes in flight). See the kernel's header comment for the thread layout.

Requirements beyond the contract: head_dim 64 or 128; last dim of q/k contiguous; base pointers and
token/head strides 16-byte aligned (true for contiguous tensors and for ``[tokens, heads*head_dim]``
slices of a fused QKV projection). On CPU it raises ``RopeDeviceError`` pointing to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from phase2_rope_cuda.cuda_launch import (
    DTYPE_TAG,
    ELEMENT_BYTES,
    POSITION_TAG,
    VECTORIZED_FILE,
    VECTORIZED_HEAD_DIMS,
    cupy_stream,
    driver_function,
    is_16b_aligned,
    require_cuda,
)
from phase2_rope_cuda.shapes import RopeInputError, check_rope_inputs

MAX_THREADS = 1024
MAX_PLANS = 4096


@dataclass(frozen=True)
class LaunchConfig:
    """Thread layout of the vectorized kernel; the bench sweeps it (llm.c's block-size sweep)."""

    heads_per_thread: int = 2  # heads one thread rotates; the kernel issues two heads' loads at once
    min_threads_per_block: int = 256  # tokens per block grow until the block has at least this many threads


DEFAULT_CONFIG = LaunchConfig()


def chunks_per_head(head_dim: int, dtype: torch.dtype) -> int:
    """Threads per head: (D/2) / (elements per 16 bytes)."""
    elements_per_16b = 16 // ELEMENT_BYTES[dtype]
    return (head_dim // 2) // elements_per_16b


def launch_shape(
    tokens: int, num_heads: int, head_dim: int, dtype: torch.dtype, config: LaunchConfig = DEFAULT_CONFIG
) -> tuple[tuple[int], tuple[int, int]]:
    """(grid, block) for ``tokens`` tokens of ``num_heads`` q+k heads."""
    chunks = chunks_per_head(head_dim, dtype)
    lanes = -(-num_heads // max(1, config.heads_per_thread))
    lanes = max(1, min(lanes, MAX_THREADS // chunks))
    per_token = chunks * lanes
    tokens_per_block = max(1, min(MAX_THREADS // per_token, -(-config.min_threads_per_block // per_token)))
    grid = (-(-tokens // tokens_per_block),)
    return grid, (per_token, tokens_per_block)


def _check_layout(name: str, x: torch.Tensor) -> None:
    if x.stride(2) != 1:
        raise RopeInputError(f"the last dimension of {name} must be contiguous (stride {x.stride(2)}); pass {name}.contiguous()")
    if not is_16b_aligned(x, (x.stride(0), x.stride(1))):
        raise RopeInputError(
            f"{name} must start at a 16-byte aligned address with 16-byte aligned token/head strides "
            f"(strides {tuple(x.stride())}) for 128-bit accesses; pass {name}.contiguous() or use phase2_rope_cuda.framework"
        )


@dataclass
class _Plan:
    """Everything about a call that depends only on shapes, strides, dtypes and device: built once."""

    function: object  # cupy.cuda.Function
    device_index: int
    grid: tuple
    block: tuple
    scalars: tuple  # the kernel's integer arguments, as numpy scalars of the kernel's types


_PLANS: dict[tuple, _Plan | None] = {}


def _plan_key(q, k, positions, cos_sin_cache, config) -> tuple:
    return (q.shape, k.shape, q.stride(), k.stride(), q.dtype, k.dtype, q.device, k.device,
            positions.shape, positions.stride(), positions.dtype, positions.device,
            cos_sin_cache.shape, cos_sin_cache.stride(), cos_sin_cache.dtype, cos_sin_cache.device, config)


def _make_plan(q, k, positions, cos_sin_cache, config) -> _Plan | None:
    """All the checks of the contract, once per layout; None for an empty call."""
    check_rope_inputs(q, k, positions, cos_sin_cache)
    require_cuda("solution", q, k, positions, cos_sin_cache)
    tokens, num_q_heads, head_dim = q.shape
    if head_dim not in VECTORIZED_HEAD_DIMS:
        raise RopeInputError(
            f"the vectorized kernel is built for head_dim {VECTORIZED_HEAD_DIMS}, got {head_dim}; "
            "use phase2_rope_cuda.framework for other sizes"
        )
    if tokens >= 2**31:
        raise RopeInputError(f"at most 2**31 - 1 tokens per call, got {tokens}")
    _check_layout("q", q)
    _check_layout("k", k)
    if tokens == 0:
        return None
    if positions.stride(0) != 1 or not cos_sin_cache.is_contiguous():
        raise RopeInputError("positions and cos_sin_cache must be contiguous; pass .contiguous()")
    num_kv_heads = k.shape[1]
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    name = f"rope_v3_{DTYPE_TAG[q.dtype]}_hd{head_dim}_{POSITION_TAG[positions.dtype]}"
    grid, block = launch_shape(tokens, num_q_heads + num_kv_heads, head_dim, q.dtype, config)
    scalars = (np.int32(tokens), np.int32(num_q_heads), np.int32(num_kv_heads),
               np.int64(q.stride(0)), np.int64(q.stride(1)), np.int64(k.stride(0)), np.int64(k.stride(1)))
    return _Plan(driver_function(VECTORIZED_FILE, name, index), index, grid, block, scalars)


def apply_rope_(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    config: LaunchConfig = DEFAULT_CONFIG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` [tokens, q_heads, D] and ``k`` [tokens, kv_heads, D] in place; returns (q, k)."""
    key = _plan_key(q, k, positions, cos_sin_cache, config)
    if key in _PLANS:
        plan = _PLANS[key]
    else:
        if len(_PLANS) >= MAX_PLANS:  # a server sees many token counts: keep the table bounded
            _PLANS.clear()
        plan = _PLANS[key] = _make_plan(q, k, positions, cos_sin_cache, config)
    if plan is None:
        return q, k
    q_ptr, k_ptr, cache_ptr = q.data_ptr(), k.data_ptr(), cos_sin_cache.data_ptr()
    if (q_ptr | k_ptr | cache_ptr) & 15:  # strides were checked with the plan; base addresses change per call
        _check_layout("q", q)
        _check_layout("k", k)
        raise RopeInputError("cos_sin_cache must start at a 16-byte aligned address (float4 loads); pass a fresh cache")
    args = (q_ptr, k_ptr, positions.data_ptr(), cache_ptr, *plan.scalars)
    if plan.device_index == torch.cuda.current_device():
        plan.function(plan.grid, plan.block, args, 0, cupy_stream(plan.device_index))
    else:
        with torch.cuda.device(plan.device_index):
            import cupy

            with cupy.cuda.Device(plan.device_index):
                plan.function(plan.grid, plan.block, args, 0, cupy_stream(plan.device_index))
    return q, k
