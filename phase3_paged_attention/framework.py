"""The framework: correct, readable, slow — the starting point the notebook profiles.

- ``paged_decode_attention``: a naive Triton kernel (``kernels/decode_naive.py``): one program per
  (sequence, q head); the full score row is written to HBM, read back for the softmax, read again
  for ``P·V``; K/V are re-loaded by every q head of a GQA group; no tensor cores; one page per step.
- ``varlen_prefill_attention``: textbook attention per sequence in PyTorch — the whole S×S score
  matrix is materialised in float32 (``Q·Kᵀ``, mask, softmax, ``·V``), GQA by repeating K/V heads.
  At 2048 tokens × 32 heads that is 512 MB of scores per sequence, written and read several times.
- ``write_kv_cache``: the Triton cache-write kernel (it is already as cheap as a copy can be).

What it costs is measured by ``bench.py``; ``solution.py`` removes each of these costs.
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
from phase3_paged_attention.kernels.decode_naive import naive_paged_decode


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    check_cache_write(k, v, k_cache, v_cache, slot_mapping)
    kv_cache_write.write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                           *, max_context_len: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    check_decode(q, k_cache, v_cache, block_tables, context_lens)
    out = torch.empty_like(q) if out is None else out
    return naive_paged_decode(q, k_cache, v_cache, block_tables, context_lens,
                              default_scale(q.shape[-1], scale), max_context_len, out)


def varlen_prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             max_seqlen: int, scale: float | None = None, *, causal: bool = True,
                             k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None,
                             slot_mapping: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    check_prefill(q, k, v, cu_seqlens, max_seqlen)
    if wants_cache_write(k_cache, v_cache, slot_mapping):
        write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    scale = default_scale(q.shape[-1], scale)
    out = torch.empty_like(q) if out is None else out
    group = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == start:
            continue
        qs = q[start:end].transpose(0, 1).float()  # [Hq, S, D]
        ks = k[start:end].transpose(0, 1).float().repeat_interleave(group, dim=0)
        vs = v[start:end].transpose(0, 1).float().repeat_interleave(group, dim=0)
        scores = qs @ ks.transpose(1, 2) * scale  # [Hq, S, S]: the matrix FlashAttention never writes
        if causal:
            n = end - start
            above = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores.masked_fill_(above, float("-inf"))
        out[start:end] = (scores.softmax(dim=-1) @ vs).transpose(0, 1).to(out.dtype)
    return out
