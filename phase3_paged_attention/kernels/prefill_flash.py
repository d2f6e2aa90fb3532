"""FlashAttention-2 prefill over a ragged batch, writing K/V into the paged cache on the way.

Prefill attention is compute-bound (a 2048-token sequence does ~2048 FLOPs per K/V byte), so the
kernel's job is to keep the tensor cores fed and never write the S×S score matrix:

- One program per (BLOCK_M query rows, sequence, q head) — FlashAttention-2's outer loop over Q
  tiles, parallel over rows as well as heads. Its Q tile stays in registers; K/V tiles stream through
  with the online softmax (running max/sum, accumulator rescaled), one normalisation at the end.
- Causal: tiles wholly below the diagonal run without masks; only the diagonal tile is masked, and
  tiles above it are never loaded (half the work of a dense pass). Query tiles are launched
  longest-first so the heavy tail of the causal triangle does not run last.
- Varlen: sequences are packed along tokens; ``cu_seqlens`` gives each one's rows. Programs whose
  tile starts past their sequence's end exit at once.
- Cache write fused: the program of a kv head's first q head also stores its own BLOCK_M rows of K
  and V into their slots, so every token is written exactly once and no separate launch is needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from phase3_paged_attention.kernels.launch import interpreting, next_pow2, require_runnable, upcast_dot

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(acc, m_i, l_i, q, K, V, kv_rows, offs_n, offs_d, start_n, seqlen, offs_m, stride_kt, stride_vt,
                 scale_log2e, MASK_CAUSAL: tl.constexpr, MASK_N: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One K/V tile of the online softmax (FlashAttention-2 Algorithm 1, lines 8–10)."""
    cols = start_n + offs_n
    if MASK_N:
        k = tl.load(K + (kv_rows + cols)[:, None].to(tl.int64) * stride_kt + offs_d[None, :],
                    mask=(cols < seqlen)[:, None], other=0.0)
        v = tl.load(V + (kv_rows + cols)[:, None].to(tl.int64) * stride_vt + offs_d[None, :],
                    mask=(cols < seqlen)[:, None], other=0.0)
    else:
        k = tl.load(K + (kv_rows + cols)[:, None].to(tl.int64) * stride_kt + offs_d[None, :])
        v = tl.load(V + (kv_rows + cols)[:, None].to(tl.int64) * stride_vt + offs_d[None, :])
    if UPCAST_DOT:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * scale_log2e
    if MASK_CAUSAL:
        s = tl.where(offs_m[:, None] >= cols[None, :], s, -float("inf"))
    if MASK_N:
        s = tl.where((cols < seqlen)[None, :], s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    p = p.to(v.dtype)
    if UPCAST_DOT:
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p, v)
    return acc, m_new, l_i


@triton.jit
def _flash_prefill_kernel(
    Q, K, V, Out, Cu_seqlens, K_cache, V_cache, Slot_mapping,
    scale_log2e,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_cs, stride_ch,  # cache viewed as [slots, kv_heads, head_dim]
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, WRITE_CACHE: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest-first: late query tiles do the most work
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    row0 = tl.load(Cu_seqlens + seq)
    seqlen = tl.load(Cu_seqlens + seq + 1) - row0
    start_m = tile_m * BLOCK_M
    if start_m >= seqlen:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = (offs_m < seqlen)[:, None]
    rows = (row0 + offs_m).to(tl.int64)
    q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=mask_m, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    if WRITE_CACHE:
        if head % GROUP == 0:  # one q head per kv head writes this tile's K/V rows into the cache
            slots = tl.load(Slot_mapping + rows, mask=offs_m < seqlen, other=-1).to(tl.int64)
            keep = (slots >= 0)[:, None]
            k_rows = tl.load(K + rows[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :], mask=keep)
            v_rows = tl.load(V + rows[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :], mask=keep)
            dst = slots[:, None] * stride_cs + kv_head * stride_ch + offs_d[None, :]
            tl.store(K_cache + dst, k_rows, mask=keep)
            tl.store(V_cache + dst, v_rows, mask=keep)

    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    K = K + kv_head * stride_kh
    V = V + kv_head * stride_vh
    if IS_CAUSAL:
        # Tiles wholly below the diagonal: every column < start_m ≤ seqlen, so no mask at all.
        for start_n in range(0, start_m, BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, K, V, row0, offs_n, offs_d, start_n, seqlen, offs_m,
                                         stride_kt, stride_vt, scale_log2e, False, False, UPCAST_DOT)
        # The diagonal tile(s): causal mask and the sequence end.
        for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, seqlen), BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, K, V, row0, offs_n, offs_d, start_n, seqlen, offs_m,
                                         stride_kt, stride_vt, scale_log2e, True, True, UPCAST_DOT)
    else:
        for start_n in range(0, seqlen, BLOCK_N):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, K, V, row0, offs_n, offs_d, start_n, seqlen, offs_m,
                                         stride_kt, stride_vt, scale_log2e, False, True, UPCAST_DOT)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(Out + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=mask_m)


def _configs() -> list[triton.Config]:
    # A short list around the Triton tutorial's H100 choices for head_dim 64: each config costs a compile.
    # Their figures from scripts/tune.py are in NOTES.md.
    shapes = ((64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 3), (64, 32, 4, 4))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


_tuned = None


def _tuned_kernel():
    global _tuned
    if _tuned is None:
        _tuned = triton.autotune(
            configs=_configs(), key=["GROUP", "HEAD_DIM", "IS_CAUSAL", "WRITE_CACHE"], warmup=5, rep=25,
        )(_flash_prefill_kernel)
    return _tuned


def flash_varlen_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                         max_seqlen: int, scale: float, causal: bool, k_cache: torch.Tensor | None,
                         v_cache: torch.Tensor | None, slot_mapping: torch.Tensor | None, out: torch.Tensor,
                         block_m: int | None = None, block_n: int | None = None, num_warps: int = 4,
                         num_stages: int = 2) -> torch.Tensor:
    """Launch the prefill kernel; inputs already validated. head_dim must be a power of two ≥ 16."""
    tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    batch = cu_seqlens.numel() - 1
    if tokens == 0 or max_seqlen == 0:
        return out
    if head_dim != next_pow2(head_dim) or head_dim < 16:
        raise ValueError(f"the Triton prefill needs head_dim a power of two ≥ 16, got {head_dim}; "
                         "use phase3_paged_attention.load_impl('reference') for other sizes")
    require_runnable(q)
    write = k_cache is not None
    if write:
        cache_k = k_cache.view(-1, num_kv_heads, head_dim)
        cache_v = v_cache.view(-1, num_kv_heads, head_dim)
        stride_cs, stride_ch = cache_k.stride(0), cache_k.stride(1)
    else:
        cache_k, cache_v, slot_mapping, stride_cs, stride_ch = q, q, cu_seqlens, 0, 0  # never touched
    args = (
        q, k, v, out, cu_seqlens, cache_k, cache_v, slot_mapping,
        scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        stride_cs, stride_ch,
    )
    meta = dict(GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, IS_CAUSAL=causal, WRITE_CACHE=write,
                UPCAST_DOT=upcast_dot(q.dtype, q.device))
    if block_m is not None or interpreting():
        bm, bn = block_m or 32, block_n or 16
        if bm % bn:
            raise ValueError(f"block_m ({bm}) must be a multiple of block_n ({bn}) for the causal split")
        grid = (triton.cdiv(max_seqlen, bm), batch, num_q_heads)
        _flash_prefill_kernel[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=num_warps, num_stages=num_stages)
    else:
        grid = lambda META: (triton.cdiv(max_seqlen, META["BLOCK_M"]), batch, num_q_heads)  # noqa: E731
        _tuned_kernel()[grid](*args, **meta)
    return out
