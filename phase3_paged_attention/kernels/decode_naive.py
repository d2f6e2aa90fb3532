"""Naive paged decode (the framework): one program per (sequence, q head), the score row in memory.

What a first Triton port of ``softmax(q·Kᵀ)·V`` looks like, and why it is slow:

1. Pass 1 walks the sequence page by page, computes ``s = q·k * scale`` for every token and *stores
   the whole score row* to a scratch buffer in HBM (4 bytes per token per q head), tracking the max.
2. Pass 2 reads the row back and turns it into probabilities ``p = exp(s − max)`` (written back), summing them.
3. Pass 3 reads ``p`` again and accumulates ``p · v``, then divides by the sum.

Each q head is its own program, so the K and V of a kv head are loaded once per q head of its group
(8× for TinyLlama's 32 q / 4 kv heads; L2 catches some of it, not all), the dot products run on
CUDA cores one q row at a time (no tensor cores: a single row is too thin for ``tl.dot``), and the
scratch row adds 3 extra passes over ``4 · context`` bytes. One page per loop step also keeps the
tiles small (block_size × head_dim), so few bytes are in flight per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from phase3_paged_attention.kernels.launch import next_pow2, require_runnable


@triton.jit
def _naive_decode_kernel(
    Q, K_cache, V_cache, Block_tables, Context_lens, Scores, Out,
    scale,
    stride_qb, stride_qh,
    stride_cb, stride_cs, stride_ch,  # cache strides: block, slot within block, kv head (head_dim is 1)
    stride_bt,
    stride_sb, stride_sh,
    stride_ob, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    context_len = tl.load(Context_lens + seq)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)  # PAGE_SIZE rounded up to a power of two
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + seq * stride_qb + head * stride_qh + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    scores = Scores + seq * stride_sb + head * stride_sh
    num_pages = tl.cdiv(context_len, PAGE_SIZE)

    # Pass 1: scores for every token, written out; the running max.
    row_max = tl.full([], -float("inf"), tl.float32)
    for page in range(0, num_pages):
        block = tl.load(Block_tables + seq * stride_bt + page).to(tl.int64)
        tok = page * PAGE_SIZE + offs_p
        mask_t = (offs_p < PAGE_SIZE) & (tok < context_len)
        base = block * stride_cb + offs_p[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
        k = tl.load(K_cache + base, mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        s = tl.sum(q[None, :] * k, axis=1) * scale
        s = tl.where(mask_t, s, -float("inf"))
        tl.store(scores + tok, s, mask=mask_t)
        row_max = tl.maximum(row_max, tl.max(s, axis=0))

    # Pass 2: probabilities (unnormalised) written back, and their sum.
    row_sum = tl.zeros([], dtype=tl.float32)
    for page in range(0, num_pages):
        tok = page * PAGE_SIZE + offs_p
        mask_t = (offs_p < PAGE_SIZE) & (tok < context_len)
        s = tl.load(scores + tok, mask=mask_t, other=-float("inf"))
        p = tl.exp(s - row_max)
        tl.store(scores + tok, p, mask=mask_t)
        row_sum += tl.sum(p, axis=0)

    # Pass 3: the weighted sum of V rows.
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for page in range(0, num_pages):
        block = tl.load(Block_tables + seq * stride_bt + page).to(tl.int64)
        tok = page * PAGE_SIZE + offs_p
        mask_t = (offs_p < PAGE_SIZE) & (tok < context_len)
        p = tl.load(scores + tok, mask=mask_t, other=0.0)
        base = block * stride_cb + offs_p[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
        v = tl.load(V_cache + base, mask=mask_t[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(p[:, None] * v, axis=0)

    out = acc / tl.where(row_sum > 0, row_sum, 1.0)  # an empty sequence gives zeros, not NaN
    tl.store(Out + seq * stride_ob + head * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=mask_d)


def naive_paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                       context_lens: torch.Tensor, scale: float, max_context_len: int | None,
                       out: torch.Tensor) -> torch.Tensor:
    batch, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    if batch == 0:
        return out
    require_runnable(q)
    longest = block_tables.shape[1] * page_size if max_context_len is None else max_context_len
    scores = torch.empty((batch, num_q_heads, max(longest, 1)), dtype=torch.float32, device=q.device)
    _naive_decode_kernel[(batch, num_q_heads)](
        q, k_cache, v_cache, block_tables, context_lens, scores, out,
        scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        scores.stride(0), scores.stride(1),
        out.stride(0), out.stride(1),
        GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), PAGE_SIZE=page_size,
        BLOCK_P=next_pow2(page_size),
        num_warps=4,
    )
    return out
