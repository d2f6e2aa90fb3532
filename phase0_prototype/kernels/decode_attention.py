"""Decode attention over the static cache with RoPE and the K/V cache write fused in (flash-decoding).

Input is the fused projection's output row ``qkv [B, (Hq + 2·Hkv)·D]``. One program per (sequence, KV head,
split of the cache): it rotates the ``G = Hq/Hkv`` query heads and the new key by the position's angle,
the program whose split holds the current position writes the new key and value into the cache, and each
program runs an online softmax of its G query heads over its slice of the cached positions (the new token
is taken from registers, so no program reads a slot written in the same launch). Splitting the sequence
puts tens of programs on the GPU instead of ``B·Hkv`` (4 at batch 1), and the grid is fixed by the cache
length so the launch captures in a CUDA graph; splits past the current position load nothing.
A second kernel merges the splits' partial results (log-sum-exp weights) into ``[B, Hq·D]``.

At batch 1 the kernel is bound by latency, not bandwidth, so both products run on tensor cores (a group's
query heads padded to 16 rows; p rounded to the cache dtype as in flash attention). Under programmatic
dependent launch it requests its first cached keys and values before waiting for the projection, and both
kernels let their dependents launch first, so the output projection streams its weights in meanwhile
(``gemv.pdl_enabled``). Their latency is still a visible share of the step (``NOTES.md``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from phase0_prototype.kernels.gemv import pdl_wait

BLOCK_S = 32  # cache positions per loop step
MAX_SPLITS = 128
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # its tl.dot mishandles bf16: products run in fp32


@triton.jit
def _attend_split_kernel(qkv_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, part_o_ptr, part_ml_ptr,
                         stride_qkv, stride_cb, stride_ch, stride_cs, q_size, kv_size, n_kv_heads, n_splits,
                         scale, ROPE: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
                         SPLIT_LEN: tl.constexpr, BLOCK_S: tl.constexpr, USE_PDL: tl.constexpr,
                         IS_FP32: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // n_kv_heads
    h = bh % n_kv_heads
    pos = tl.load(pos_ptr + b).to(tl.int32)
    offs_d = tl.arange(0, D)
    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < G
    row = qkv_ptr + b.to(tl.int64) * stride_qkv
    start = split * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, pos)  # cached positions [start, end) are older than this token
    k_base = k_ptr + b.to(tl.int64) * stride_cb + h * stride_ch
    v_base = v_ptr + b.to(tl.int64) * stride_cb + h * stride_ch
    # The cached keys and values were written by earlier steps, not by the previous kernel: the first block
    # is requested before waiting for the projection (with PDL that overlaps the projection's tail).
    offs_s = start + tl.arange(0, BLOCK_S)
    mask_s = offs_s < end
    kv_off = offs_s.to(tl.int64)[:, None] * stride_cs + offs_d[None, :]
    k = tl.load(k_base + kv_off, mask=mask_s[:, None], other=0.0)
    v = tl.load(v_base + kv_off, mask=mask_s[:, None], other=0.0)
    pdl_wait(USE_PDL, True)  # qkv is the previous kernel's output; the merge and o launch now and prefetch
    q_off = (h * G + offs_g)[:, None] * D
    k_row = row + q_size + h * D
    v_row = row + q_size + kv_size + h * D
    q = tl.load(row + q_off + offs_d[None, :], mask=mask_g[:, None], other=0.0)
    k_new = tl.load(k_row + offs_d)
    dtype = q.dtype
    q = q.to(tl.float32)
    k_new = k_new.to(tl.float32)
    if ROPE:  # rotate-half: x·cos + (−x[d+D/2] for d < D/2, x[d−D/2] after)·sin, tables rounded as in PyTorch
        half = D // 2
        partner = (offs_d + half) % D
        sign = tl.where(offs_d < half, -1.0, 1.0)
        c = tl.load(cos_ptr + pos * D + offs_d).to(dtype).to(tl.float32)
        s = tl.load(sin_ptr + pos * D + offs_d).to(dtype).to(tl.float32)
        q_p = tl.load(row + q_off + partner[None, :], mask=mask_g[:, None], other=0.0).to(tl.float32)
        k_p = tl.load(k_row + partner).to(tl.float32)
        q = (q * c[None, :] + sign[None, :] * q_p * s[None, :]).to(dtype).to(tl.float32)
        k_new = (k_new * c + sign * k_p * s).to(dtype).to(tl.float32)
    v_new = tl.load(v_row + offs_d).to(tl.float32)

    mine = (pos >= start) & (pos < start + SPLIT_LEN)  # this split holds the current position
    write = (tl.zeros((D,), dtype=tl.int32) + mine.to(tl.int32)) != 0  # a vector mask (for the interpreter)
    tl.store(k_base + pos.to(tl.int64) * stride_cs + offs_d, k_new.to(k_ptr.dtype.element_ty), mask=write)
    tl.store(v_base + pos.to(tl.int64) * stride_cs + offs_d, v_new.to(v_ptr.dtype.element_ty), mask=write)

    # online softmax, started from the new token when it is ours (base-2 exponentials, scale folded in)
    qk_scale = scale * 1.4426950408889634
    s_new = tl.sum(q * k_new[None, :], axis=1) * qk_scale
    m = tl.where(mine, s_new, float("-inf"))
    l_sum = tl.where(mine, 1.0, 0.0) + tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.where(mine, 1.0, 0.0) * v_new[None, :] + tl.zeros((BLOCK_G, D), dtype=tl.float32)
    q_dot = q.to(k_ptr.dtype.element_ty)
    for _ in range(0, SPLIT_LEN, BLOCK_S):
        k_cur, v_cur, mask_cur = k, v, mask_s
        offs_s += BLOCK_S  # the next block, requested before this one is used (masked off past the split)
        mask_s = offs_s < end
        kv_off = offs_s.to(tl.int64)[:, None] * stride_cs + offs_d[None, :]
        k = tl.load(k_base + kv_off, mask=mask_s[:, None], other=0.0)
        v = tl.load(v_base + kv_off, mask=mask_s[:, None], other=0.0)
        # tensor cores: [BLOCK_G ≥ 16, D] x [D, BLOCK_S]; fp32 caches keep full precision
        if DOT_IN_FP32:
            scores = tl.dot(q, tl.trans(k_cur.to(tl.float32)), input_precision="ieee") * qk_scale
        else:
            scores = tl.dot(q_dot, tl.trans(k_cur)) * qk_scale
        scores = tl.where(mask_cur[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: keep exp() away from nan
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(scores - m_safe[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        # p rounded to the cache dtype for the second product (as flash attention does)
        if DOT_IN_FP32:
            if not IS_FP32:
                p = p.to(v_cur.dtype).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v_cur.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v_cur.dtype), v_cur)
        m = m_new
    # partials: o [B, Hq, splits, D] (unnormalised), (m, l) [B, Hq, splits, 2]
    hq = (b * n_kv_heads + h) * G + offs_g
    slot = hq.to(tl.int64) * n_splits + split
    n_active = pos // SPLIT_LEN + 1  # splits [0, n_active) hold positions ≤ pos; the rest have nothing to say
    if split < n_active:
        tl.store(part_o_ptr + slot[:, None] * D + offs_d[None, :], acc, mask=mask_g[:, None])
        tl.store(part_ml_ptr + slot * 2, m, mask=mask_g)
        tl.store(part_ml_ptr + slot * 2 + 1, l_sum, mask=mask_g)


@triton.jit
def _combine_kernel(part_o_ptr, part_ml_ptr, out_ptr, pos_ptr, n_splits, stride_ob, n_heads,
                    D: tl.constexpr, BLOCK_SPLITS: tl.constexpr, SPLIT_LEN: tl.constexpr,
                    USE_PDL: tl.constexpr):
    bq = tl.program_id(0)  # b * Hq + head
    b = bq // n_heads
    head = bq % n_heads
    offs = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, D)
    pos = tl.load(pos_ptr + b).to(tl.int32)
    pdl_wait(USE_PDL, True)  # the output projection launches now and streams its weights in meanwhile
    valid = offs < pos // SPLIT_LEN + 1  # the splits the attention kernel wrote
    slot = bq.to(tl.int64) * n_splits + offs
    m = tl.load(part_ml_ptr + slot * 2, mask=valid, other=float("-inf"))
    l_sum = tl.load(part_ml_ptr + slot * 2 + 1, mask=valid, other=0.0)
    o = tl.load(part_o_ptr + slot[:, None] * D + offs_d[None, :], mask=valid[:, None], other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))
    total = tl.sum(l_sum * w, axis=0)
    out = tl.sum(o * w[:, None], axis=0) / total
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + head * D + offs_d, out.to(out_ptr.dtype.element_ty))


def split_len(max_seq_len: int, block_s: int | None = None) -> int:
    """Cache positions per program: ``block_s`` until the grid would pass ``MAX_SPLITS`` splits."""
    block_s = BLOCK_S if block_s is None else block_s
    per = triton.cdiv(max_seq_len, MAX_SPLITS)
    return triton.cdiv(max(per, block_s), block_s) * block_s


def rope_cache_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, positions: torch.Tensor, n_heads: int, *, rope: bool = True,
                         out: torch.Tensor | None = None, block_s: int | None = None,
                         num_warps: int = 4) -> torch.Tensor:
    """``qkv [B, (Hq+2·Hkv)·D]`` of the new tokens at ``positions [B]`` (int) -> attention ``[B, Hq·D]``.

    Writes the rotated key and the value into slot ``positions[b]`` of ``k_cache``/``v_cache``
    (``[B', Hkv, S, D]``, ``B' ≥ B``, last dim contiguous) and attends over slots ``[0, positions[b]]``.
    ``cos``/``sin``: fp32 ``[S, D]`` tables; ``rope=False`` when q and k arrive already rotated.
    ``block_s``/``num_warps``: tuning knobs (cache positions per loop step; warps per program).
    """
    from phase0_prototype.kernels.gemv import launch_options, pdl_enabled

    B = qkv.shape[0]
    n_kv, S, D = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    G = n_heads // n_kv
    if qkv.shape[1] != (n_heads + 2 * n_kv) * D or qkv.stride(1) != 1 or k_cache.stride(3) != 1:
        raise ValueError(f"rope_cache_attention: qkv {tuple(qkv.shape)} does not match {n_heads}+2·{n_kv} "
                         f"heads of {D}")
    block_s = BLOCK_S if block_s is None else block_s
    pdl = pdl_enabled(qkv.device)
    chunk = split_len(S, block_s)
    n_splits = triton.cdiv(S, chunk)
    part_o = torch.empty(B, n_heads, n_splits, D, dtype=torch.float32, device=qkv.device)
    part_ml = torch.empty(B, n_heads, n_splits, 2, dtype=torch.float32, device=qkv.device)
    if out is None:
        out = torch.empty(B, n_heads * D, dtype=qkv.dtype, device=qkv.device)
    _attend_split_kernel[(B * n_kv, n_splits)](
        qkv, k_cache, v_cache, cos, sin, positions, part_o, part_ml,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), n_heads * D, n_kv * D,
        n_kv, n_splits, D ** -0.5, ROPE=rope, G=G, BLOCK_G=max(16, triton.next_power_of_2(G)), D=D,
        SPLIT_LEN=chunk, BLOCK_S=block_s, USE_PDL=pdl, IS_FP32=k_cache.dtype == torch.float32,
        DOT_IN_FP32=k_cache.dtype == torch.float32 or INTERPRETED, num_warps=num_warps, **launch_options(pdl))
    # one single-warp program per query head: the merge reads a few hundred bytes
    _combine_kernel[(B * n_heads,)](part_o, part_ml, out, positions, n_splits, out.stride(0), n_heads,
                                    D=D, BLOCK_SPLITS=triton.next_power_of_2(n_splits), SPLIT_LEN=chunk,
                                    USE_PDL=pdl, num_warps=1, **launch_options(pdl))
    return out
