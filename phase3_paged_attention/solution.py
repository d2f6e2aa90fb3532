"""The solution: FlashAttention-2-style Triton kernels over the paged cache.

- ``paged_decode_attention`` (``kernels/decode_flash.py``): online softmax, one program per
  (sequence, kv head) serving its whole GQA group through ``tl.dot``, tiles spanning pages,
  split-KV with a combine kernel when batch × kv_heads is too small to fill the SMs, autotuned
  tiles. Decode is bound by HBM bandwidth: it approaches the measured copy bandwidth by reading
  each cached K/V byte exactly once (target P3.3: ≥ 85 % of it).
- ``varlen_prefill_attention`` (``kernels/prefill_flash.py``): FlashAttention-2 causal prefill over a
  ragged batch, bound by tensor-core throughput; it writes K/V into the paged cache in the same launch.
- ``write_kv_cache``: the Triton cache-write kernel.
"""

from __future__ import annotations

import torch

from phase3_paged_attention import (
    check_cache_write,
    check_decode,
    check_prefill,
    default_scale,
    wants_cache_write,
)
from phase3_paged_attention.kernels import kv_cache_write
from phase3_paged_attention.kernels.decode_flash import flash_paged_decode
from phase3_paged_attention.kernels.prefill_flash import flash_varlen_prefill


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    check_cache_write(k, v, k_cache, v_cache, slot_mapping)
    kv_cache_write.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                           *, max_context_len: int | None = None, out: torch.Tensor | None = None,
                           num_splits: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """The contract's decode; ``num_splits`` / ``block_n`` override the heuristic / autotuner (sweeps, tests)."""
    check_decode(q, k_cache, v_cache, block_tables, context_lens)
    out = torch.empty_like(q) if out is None else out
    return flash_paged_decode(q, k_cache, v_cache, block_tables, context_lens, default_scale(q.shape[-1], scale),
                              max_context_len, out, num_splits=num_splits, block_n=block_n)


def decode_launch(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> dict:
    """The heuristic split count and the default tile, so that ``paged_decode_attention`` never autotunes: the
    tuner times candidates with ``triton.testing.do_bench`` (flushing L2 by zeroing 256 MB before every run),
    seconds of stall in the middle of serving."""
    from phase3_paged_attention.kernels.decode_flash import choose_num_splits
    from phase3_paged_attention.kernels.launch import sm_count

    return dict(num_splits=choose_num_splits(num_seqs, num_kv_heads, max(1, max_context), sm_count(device)),
                block_n=128)


def varlen_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             max_seqlen: int, scale: float | None = None, *, causal: bool = True,
                             k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
                             slot_mapping: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    check_prefill(q, k, v, cu_seqlens, max_seqlen)
    if wants_cache_write(k_cache, v_cache, slot_mapping):
        check_cache_write(k, v, k_cache, v_cache, slot_mapping)
    out = torch.empty_like(q) if out is None else out
    return flash_varlen_prefill(q, k, v, cu_seqlens, max_seqlen, default_scale(q.shape[-1], scale), causal,
                                k_cache, v_cache, slot_mapping, out)
