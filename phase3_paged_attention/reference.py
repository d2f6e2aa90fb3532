"""PyTorch paged attention: gather the pages into contiguous K/V, then ``scaled_dot_product_attention``.

This is the correctness oracle of the phase, the "PyTorch paged baseline" of target P3.2, and the
CPU backend of the engine (phase 4). It is what a PyTorch user writes first, and it is correct for
every shape the contract allows. It is slow on a GPU for a reason the kernels remove: the gather
*copies* every sequence's K and V (read + write through HBM) before SDPA reads them again, and the
copy is sized for the longest sequence of the batch, so a decode step moves ≥ 3× the bytes it must.

Inputs are computed in their own dtype (set ``upcast=True`` in the helpers to get the float32 oracle
that the tests compare against).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase3_paged_attention import (
    check_cache_write,
    check_decode,
    check_prefill,
    default_scale,
    wants_cache_write,
)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Scatter rows of k, v into their slots (negative slots are padding and skipped)."""
    check_cache_write(k, v, k_cache, v_cache, slot_mapping)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim)[slots] = k[keep]
    v_cache.view(-1, num_kv_heads, head_dim)[slots] = v[keep]


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first ``num_tokens`` tokens of every sequence, contiguous: [batch, num_kv_heads, num_tokens, head_dim].

    Reads whole pages (``block_tables`` columns up to ``ceil(num_tokens / block_size)``); slots past
    a sequence's own length hold whatever the cache holds there and must be masked by the caller.
    """
    block_size = cache.shape[1]
    num_pages = -(-num_tokens // block_size)
    pages = cache[block_tables[:, :num_pages].long()]  # [batch, pages, block_size, heads, dim]: the copy
    batch, _, _, heads, dim = pages.shape
    return pages.reshape(batch, num_pages * block_size, heads, dim)[:, :num_tokens].transpose(1, 2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """SDPA with grouped-query attention: q [.., Hq, L, D], k/v [.., Hkv, S, D]."""
    group = q.shape[-3] // k.shape[-3]
    if group > 1:
        try:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
        except TypeError:  # torch < 2.5 has no enable_gqa: repeat each kv head for its q heads
            k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                           *, max_context_len: int | None = None, out: torch.Tensor | None = None,
                           upcast: bool = False) -> torch.Tensor:
    """One query token per sequence over its paged cache: gather + SDPA, masked to each length.

    ``upcast=True`` computes in float32 (the oracle); the result is returned in q's dtype.
    """
    check_decode(q, k_cache, v_cache, block_tables, context_lens)
    scale = default_scale(q.shape[-1], scale)
    lens = context_lens.long()
    longest = int(lens.max()) if lens.numel() else 0  # a host sync: acceptable in the baseline
    if max_context_len is not None:
        longest = min(longest, max_context_len)
    result = torch.zeros_like(q) if out is None else out
    if longest == 0 or q.shape[0] == 0:
        return result.zero_()
    dtype = torch.float32 if upcast else q.dtype
    k = gather_kv(k_cache, block_tables, longest).to(dtype)
    v = gather_kv(v_cache, block_tables, longest).to(dtype)
    q4 = q.to(dtype).unsqueeze(2)  # [batch, Hq, 1, D]
    if int(lens.min()) == longest:  # every sequence is full length: no mask, so SDPA may pick flash
        o = _sdpa(q4, k, v, scale=scale)
    else:
        mask = torch.arange(longest, device=q.device)[None, :] < lens[:, None]  # [batch, S]
        o = _sdpa(q4, k, v, attn_mask=mask[:, None, None, :], scale=scale)
        o = torch.where((lens > 0)[:, None, None, None], o, 0.0)  # empty sequences: zeros, not NaN
    result.copy_(o.squeeze(2).to(result.dtype))
    return result


def varlen_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             max_seqlen: int, scale: float | None = None, *, causal: bool = True,
                             k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
                             slot_mapping: torch.Tensor | None = None, out: torch.Tensor | None = None,
                             upcast: bool = False) -> torch.Tensor:
    """Per-sequence SDPA over a packed ragged batch; optionally writes k, v into the paged cache."""
    check_prefill(q, k, v, cu_seqlens, max_seqlen)
    if wants_cache_write(k_cache, v_cache, slot_mapping):
        write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    scale = default_scale(q.shape[-1], scale)
    result = torch.empty_like(q) if out is None else out
    dtype = torch.float32 if upcast else q.dtype
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1).to(dtype) for t in (q, k, v))  # [heads, len, D]
        o = _sdpa(qs, ks, vs, is_causal=causal, scale=scale)
        result[start:end] = o.transpose(0, 1).to(result.dtype)
    return result


def dense_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The upper peer: SDPA on contiguous K/V [batch, num_kv_heads, S, D] (no paging, no gather)."""
    scale = default_scale(q.shape[-1], scale)
    return _sdpa(q.unsqueeze(2), k, v, scale=scale).squeeze(2)
