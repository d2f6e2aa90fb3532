"""Paged decode the FlashAttention way (the solution): online softmax, GQA sharing, split-KV.

Decode attention moves every K and V byte of every sequence once per step and does ~1 FLOP per byte,
so it is bound by HBM bandwidth; the kernel's job is to read each cached byte exactly once, with
enough bytes in flight to keep HBM busy:

- **Online softmax** (FlashAttention-2, Algorithm 1): running max, running sum and un-normalised
  accumulator, rescaled when the max grows, so the score row never leaves registers.
- **One program per (sequence, kv head)** serving every q head of its group as the M dimension of
  ``tl.dot`` (padded to 16): each K/V tile is loaded once for the group (8× fewer bytes at 32 q / 4 kv).
- **Tiles of BLOCK_N tokens across pages** (pages from the block table), large and pipelined.
- **Split-KV (flash-decoding)**: at small batch the context is cut into ranges, each a program writing a
  partial output and its log-sum-exp; ``_combine_splits_kernel`` merges them (weights ``2^(lse_s − max)``).

Traffic per step: K and V once, q and out once, plus negligible split partials. The autotuner picks
BLOCK_N / warps / stages per (group, head_dim, page size, split or not, split length).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from phase3_paged_attention.kernels.launch import (
    interpreting,
    next_pow2,
    require_runnable,
    sm_count,
    upcast_dot,
)

LOG2E = 1.4426950408889634
MIN_TOKENS_PER_SPLIT = 256  # below this a split's fixed cost (q load, partial write) stops paying
SPLIT_ALIGN = 128  # split boundaries fall on whole tiles of every BLOCK_N the autotuner may pick
WAVES = 4  # aim for this many programs per SM (several resident programs keep more loads in flight)


@triton.jit
def _flash_decode_kernel(
    Q, K_cache, V_cache, Block_tables, Context_lens, Out, Part_out, Part_lse,
    scale_log2e, tokens_per_split,
    stride_qb, stride_qh, stride_bt, stride_ob, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, HEADS_FIRST: tl.constexpr,
):
    # Few runtime arguments on purpose: a decode step is short GPU work, and every argument costs
    # host time at launch. The cache is contiguous, so its strides follow from the constexpr shape.
    stride_cs = NUM_KV_HEADS * HEAD_DIM
    stride_cb = PAGE_SIZE * NUM_KV_HEADS * HEAD_DIM
    # HEADS_FIRST launches the kv heads of one sequence next to each other, so the programs that read
    # different slices of the same pages run at the same time (DRAM rows opened once, not per head).
    if HEADS_FIRST:
        kv_head = tl.program_id(0)
        seq = tl.program_id(1)
    else:
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(Context_lens + seq)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, context_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    mask_g = offs_g < GROUP
    if BLOCK_D == HEAD_DIM:
        mask_q = mask_g[:, None]
    else:
        mask_q = mask_g[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=mask_q, other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([GROUP_PAD], -float("inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)
    table = Block_tables + seq * stride_bt
    head_base = kv_head * HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        tok = start_n + offs_n
        mask_n = tok < end
        block = tl.load(table + tok // PAGE_SIZE, mask=mask_n, other=0).to(tl.int64)
        rows = block * stride_cb + (tok % PAGE_SIZE) * stride_cs + head_base
        if BLOCK_D == HEAD_DIM:
            mask_kv = mask_n[:, None]
        else:
            mask_kv = mask_n[:, None] & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(K_cache + rows[:, None] + offs_d[None, :], mask=mask_kv, other=0.0)
        v = tl.load(V_cache + rows[:, None] + offs_d[None, :], mask=mask_kv, other=0.0)
        if UPCAST_DOT:
            s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(mask_n[None, :], s * scale_log2e, -float("inf"))  # [GROUP_PAD, BLOCK_N], log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        p = p.to(v.dtype)  # tensor cores take the cache dtype; FlashAttention rounds P the same way
        if UPCAST_DOT:
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty range gives zeros, not NaN
    if not SPLIT:
        tl.store(Out + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=mask_q)
    else:
        # Partials are contiguous [batch, q_heads, num_splits, BLOCK_D] and [batch, q_heads, num_splits].
        num_splits = tl.num_programs(2)
        row = (seq * (NUM_KV_HEADS * GROUP) + heads) * num_splits + split  # heads: this group's q heads
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), -float("inf"))
        tl.store(Part_out + row[:, None] * BLOCK_D + offs_d[None, :], out, mask=mask_q)
        tl.store(Part_lse + row, lse, mask=mask_g)


@triton.jit
def _combine_splits_kernel(
    Part_out, Part_lse, Out, stride_ob, stride_oh, num_splits,
    SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row0 = (seq * tl.num_programs(1) + head) * num_splits
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < num_splits
    lse = tl.load(Part_lse + row0 + offs_s, mask=mask_s, other=-float("inf"))
    top = tl.max(lse, axis=0)
    top = tl.where(top == -float("inf"), 0.0, top)  # every split empty: weights 0, output 0
    w = tl.exp2(lse - top)
    parts = tl.load(Part_out + (row0 + offs_s[:, None]) * BLOCK_D + offs_d[None, :], mask=mask_s[:, None], other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(w[:, None] * parts, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + seq * stride_ob + head * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


# Launch configurations the tuner tries: (BLOCK_N, num_warps, num_stages, heads_first). Chosen from a manual
# sweep on an H100 (scripts/tune.py): unsplit, 128–256-token tiles keep ~64 KB of K/V in flight per
# program; split, smaller tiles do. Each config costs a compile, so the list stays short.
CONFIGS = [(b, w, s, h) for b, w, s in ((128, 4, 3), (256, 8, 2), (64, 4, 3), (32, 4, 3)) for h in (False, True)]
DEFAULT_CONFIG = (128, 4, 3, False)
TUNE_MIN_BYTES = 1 << 24  # below 16 MB of K/V a step is launch-bound: tuning would only cost compiles
_tuned: dict[tuple, tuple[int, int, int, int, bool]] = {}


def choose_num_splits(batch: int, num_kv_heads: int, longest: int, sms: int) -> int:
    """Splits per sequence so that batch × kv_heads × splits ≈ WAVES × SMs, each ≥ MIN_TOKENS_PER_SPLIT."""
    programs = max(1, batch * num_kv_heads)
    want = -(-WAVES * sms // programs)
    by_length = max(1, longest // MIN_TOKENS_PER_SPLIT)
    return max(1, min(want, by_length, 128))


def _split_candidates(heuristic: int, longest: int) -> list[int]:
    cap = max(1, longest // MIN_TOKENS_PER_SPLIT)
    return sorted({1, min(cap, max(1, heuristic // 2)), min(cap, heuristic), min(cap, 2 * heuristic)})


def _launch(q, k_cache, v_cache, block_tables, context_lens, out, scale, longest, num_splits, block_n, num_warps,
            num_stages, heads_first=False):
    batch, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    per_split = -(-longest // num_splits)
    per_split = -(-per_split // SPLIT_ALIGN) * SPLIT_ALIGN
    num_splits = -(-longest // per_split)
    group = num_q_heads // num_kv_heads
    block_d = max(16, next_pow2(head_dim))
    if num_splits > 1:
        part_out = torch.empty((batch, num_q_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # not touched when the kernel is not split
    grid = (num_kv_heads, batch, num_splits) if heads_first else (batch, num_kv_heads, num_splits)
    _flash_decode_kernel[grid](
        q, k_cache, v_cache, block_tables, context_lens, out, part_out, part_lse,
        scale * LOG2E, per_split,
        q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, next_pow2(group)), NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_D=block_d, PAGE_SIZE=page_size, SPLIT=num_splits > 1, BLOCK_N=block_n,
        UPCAST_DOT=upcast_dot(q.dtype, q.device), HEADS_FIRST=heads_first, num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _combine_splits_kernel[(batch, num_q_heads)](
            part_out, part_lse, out, out.stride(0), out.stride(1), num_splits,
            SPLITS_PAD=next_pow2(num_splits), HEAD_DIM=head_dim, BLOCK_D=block_d, num_warps=1 if head_dim <= 64 else 2,
        )
    return out


def _tune(key: tuple, args: tuple, longest: int, heuristic: int) -> tuple[int, int, int, int, bool]:
    """Time every (splits, BLOCK_N, warps, stages, order) candidate once per shape class; keep the fastest.

    Our own small autotuner rather than ``triton.autotune``: it tunes the split count jointly with the
    tile, and a cached choice costs one dict lookup per call instead of the autotuner's launch wrapper.
    """
    import triton.testing

    best, best_t = None, float("inf")
    for splits in _split_candidates(heuristic, longest):
        for config in CONFIGS:
            choice = (splits, *config)
            try:
                t = triton.testing.do_bench(lambda choice=choice: _launch(*args, longest, *choice), warmup=5, rep=20)
            except Exception:  # e.g. out of shared memory for this tile on this GPU
                continue
            if t < best_t:
                best, best_t = choice, t
    if best is None:
        raise RuntimeError(f"no decode launch configuration runs on this GPU for {key}")
    _tuned[key] = best
    return best


def flash_paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                       context_lens: torch.Tensor, scale: float, max_context_len: int | None, out: torch.Tensor,
                       num_splits: int | None = None, block_n: int | None = None, num_warps: int = 4,
                       num_stages: int = 3, heads_first: bool = False) -> torch.Tensor:
    """Launch the split kernel (and the combine kernel when split); inputs already validated.

    Without overrides the (splits, tile, order) choice is tuned on first use per shape class (batch and
    context rounded up to powers of two) and cached; small problems and untuned shapes under CUDA-graph
    capture use the heuristic. ``num_splits`` / ``block_n`` (with ``num_warps``, ``num_stages``) override it.
    """
    batch, num_q_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    if batch == 0:
        return out
    require_runnable(q)
    longest = max(1, block_tables.shape[1] * page_size if max_context_len is None else max_context_len)
    args = (q, k_cache, v_cache, block_tables, context_lens, out, scale)
    heuristic = choose_num_splits(batch, num_kv_heads, longest, sm_count(q.device))
    if num_splits is not None or block_n is not None or interpreting():
        return _launch(*args, longest, num_splits or heuristic, block_n or (32 if interpreting() else 128),
                       num_warps, num_stages, heads_first)
    if 2 * batch * longest * num_kv_heads * head_dim * q.element_size() < TUNE_MIN_BYTES:
        return _launch(*args, longest, heuristic, *DEFAULT_CONFIG)
    key = (q.device.index, q.dtype, num_q_heads, num_kv_heads, head_dim, page_size, next_pow2(batch),
           next_pow2(longest))
    choice = _tuned.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            choice = (heuristic, *DEFAULT_CONFIG)
        else:
            choice = _tune(key, args, longest, heuristic)
    return _launch(*args, longest, *choice)
