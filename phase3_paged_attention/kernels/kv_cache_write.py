"""Write new K/V rows into their paged slots: the cache half of every decode and prefill step.

One program per token copies its [num_kv_heads, head_dim] rows of K and V (contiguous in the cache:
a slot is ``num_kv_heads * head_dim`` consecutive elements). Memory traffic: read 2 · tokens · H · D
elements, write the same; nothing else. Negative slots are padding tokens and are skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from phase3_paged_attention.kernels.launch import next_pow2, require_runnable


@triton.jit
def _write_kv_cache_kernel(
    K, V, K_cache, V_cache, Slot_mapping,
    stride_kt, stride_kh, stride_vt, stride_vh,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(Slot_mapping + token).to(tl.int64)
    if slot >= 0:
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
        token64 = token.to(tl.int64)
        k = tl.load(K + token64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
        v = tl.load(V + token64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
        dst = slot * (NUM_KV_HEADS * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(K_cache + dst, k, mask=mask)
        tl.store(V_cache + dst, v, mask=mask)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Launch one program per token (inputs already validated by the caller)."""
    tokens, num_kv_heads, head_dim = k.shape
    if tokens == 0:
        return
    require_runnable(k)
    _write_kv_cache_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=next_pow2(num_kv_heads), BLOCK_D=next_pow2(head_dim),
        num_warps=1 if num_kv_heads * head_dim <= 256 else 4,
    )
