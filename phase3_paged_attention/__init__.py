"""Phase 3 — paged attention: the contract every implementation meets.

The KV cache is *paged* (vLLM's PagedAttention): memory is a pool of fixed-size blocks, and each
sequence owns a list of block numbers (its row of the block table), so sequences grow without
reserving their maximum length up front. Layout, shared by every implementation::

    k_cache, v_cache   [num_blocks, block_size, num_kv_heads, head_dim]   contiguous, bf16/fp16/fp32
    block_tables       [batch, max_blocks]  int32   block number of the i-th page of each sequence
    context_lens       [batch]              int32   tokens in the cache per sequence (0 → zero output)
    slot_mapping       [tokens]             int64   slot = block * block_size + offset; < 0 → skip

Token ``t`` of sequence ``b`` lives at ``k_cache[block_tables[b, t // block_size], t % block_size]``.
Entries of a block table past ``ceil(context_len / block_size)`` are never read.

An implementation (a module) provides three functions::

    write_kv_cache(k, v, k_cache, v_cache, slot_mapping) -> None
        k, v [tokens, num_kv_heads, head_dim]; writes row i into slot slot_mapping[i] (in place).

    paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale=None,
                           *, max_context_len=None, out=None) -> out
        q [batch, num_q_heads, head_dim], one new token per sequence, attending to its whole cache
        (the new token's K/V must already be written). num_q_heads is a multiple of num_kv_heads
        (grouped-query attention: q head h reads kv head h // (num_q_heads // num_kv_heads)).
        scale defaults to head_dim ** -0.5. max_context_len is a host-side upper bound of
        context_lens (saves a device sync; defaults to max_blocks * block_size). Returns q's shape.

    varlen_prefill_attention(q, k, v, cu_seqlens, max_seqlen, scale=None, *, causal=True,
                             k_cache=None, v_cache=None, slot_mapping=None, out=None) -> out
        A ragged batch packed along tokens: q [tokens, num_q_heads, head_dim], k, v
        [tokens, num_kv_heads, head_dim]; sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]
        (cu_seqlens [batch + 1] int32, starting at 0); max_seqlen is a host int ≥ every length.
        Each sequence attends to itself only (causal: token j sees tokens ≤ j). When k_cache,
        v_cache and slot_mapping are given, k and v are also written into the paged cache.

An implementation may also provide ``decode_launch(num_seqs, num_kv_heads, max_context, device) -> dict``:
keyword arguments for ``paged_decode_attention`` that an engine passes on every step instead of letting the
implementation tune on the first call of each shape (a serving engine must never stall mid-step).

Implementations: ``reference`` (PyTorch: gather the pages, then ``scaled_dot_product_attention``;
runs on CPU and is the correctness oracle and the "PyTorch paged baseline"), ``framework`` (naive
Triton decode), ``solution`` (FlashAttention-2-style Triton decode and prefill). Pick one with
``load_impl(name)``; ``default_impl(device)`` is what the engine uses (solution on CUDA, reference
on CPU).
"""

from __future__ import annotations

from types import ModuleType

import torch

from module0_profiling.impl import load_impl as _load_impl

PHASE = "phase3_paged_attention"
IMPLS = ("reference", "framework", "solution")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances for outputs compared with a float32 reference computed from the same (rounded) inputs.
# bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.004); the kernels also round the softmax
# probabilities to the cache dtype before the P·V product (as FlashAttention does), hence ~4 steps.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


class PagedAttentionInputError(ValueError):
    """Inputs that break the contract above; the message names the problem and the fix."""


def load_impl(name: str) -> ModuleType:
    """``"reference"``, ``"framework"``, ``"solution"`` or a module path (``phase3_paged_attention.mine``)."""
    if name == "reference":
        name = f"{PHASE}.reference"
    return _load_impl(PHASE, name)


def default_impl(device: torch.device | str) -> ModuleType:
    """The backend the engine should use on ``device``: Triton on CUDA, PyTorch on CPU."""
    return load_impl("solution" if torch.device(device).type == "cuda" else "reference")


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for comparing an output of ``dtype`` with the float32 reference."""
    return TOLERANCES[dtype]


def allocate_kv_cache(
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty (uninitialised) paged K and V cache in the contract's layout."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)


def slot_mapping_for(block_tables: torch.Tensor, seq_ids: torch.Tensor, positions: torch.Tensor,
                     block_size: int) -> torch.Tensor:
    """Slots of token ``positions`` of sequences ``seq_ids``: block_tables[seq, pos // bs] * bs + pos % bs."""
    seq_ids, positions = seq_ids.long(), positions.long()
    blocks = block_tables[seq_ids, positions // block_size].long()
    return blocks * block_size + positions % block_size


def _fail(message: str) -> None:
    raise PagedAttentionInputError(message)


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4:
        _fail(f"k_cache must be [num_blocks, block_size, num_kv_heads, head_dim], got shape {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype or v_cache.device != k_cache.device:
        _fail(f"v_cache must match k_cache (shape {tuple(k_cache.shape)}, {k_cache.dtype}, {k_cache.device}); "
              f"got {tuple(v_cache.shape)}, {v_cache.dtype}, {v_cache.device}")
    if k_cache.dtype not in SUPPORTED_DTYPES:
        _fail(f"cache dtype {k_cache.dtype} is not supported; use one of bfloat16, float16, float32")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        _fail("k_cache and v_cache must be contiguous; allocate them with allocate_kv_cache()")


def check_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    check_cache(k_cache, v_cache)
    if k.dim() != 3 or k.shape != v.shape or k.shape[1:] != k_cache.shape[2:]:
        _fail(f"k and v must both be [tokens, {k_cache.shape[2]}, {k_cache.shape[3]}] to match the cache; "
              f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.dtype != k_cache.dtype or v.dtype != k_cache.dtype:
        _fail(f"k/v dtype ({k.dtype}, {v.dtype}) must equal the cache dtype {k_cache.dtype}; cast them first")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        _fail(f"slot_mapping must be 1-D with one slot per token ({k.shape[0]}), got shape {tuple(slot_mapping.shape)}")
    if slot_mapping.dtype not in (torch.int64, torch.int32):
        _fail(f"slot_mapping must be int64 (or int32), got {slot_mapping.dtype}")
    _same_device(k_cache, k=k, v=v, slot_mapping=slot_mapping)


def check_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor) -> None:
    check_cache(k_cache, v_cache)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if q.dim() != 3 or q.shape[2] != head_dim:
        _fail(f"q must be [batch, num_q_heads, {head_dim}] (one token per sequence), got shape {tuple(q.shape)}")
    if q.shape[1] % num_kv_heads:
        _fail(f"num_q_heads ({q.shape[1]}) must be a multiple of num_kv_heads ({num_kv_heads}) for GQA")
    if q.dtype != k_cache.dtype:
        _fail(f"q dtype {q.dtype} must equal the cache dtype {k_cache.dtype}; cast q first")
    if q.stride(2) != 1:
        _fail("q's last dimension (head_dim) must be contiguous; call q.contiguous()")
    batch = q.shape[0]
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or block_tables.dtype != torch.int32:
        _fail(f"block_tables must be int32 [batch={batch}, max_blocks], got {block_tables.dtype} {tuple(block_tables.shape)}")
    if context_lens.shape != (batch,) or context_lens.dtype != torch.int32:
        _fail(f"context_lens must be int32 [batch={batch}], got {context_lens.dtype} {tuple(context_lens.shape)}")
    _same_device(k_cache, q=q, block_tables=block_tables, context_lens=context_lens)


def check_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                  max_seqlen: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        _fail(f"q must be [tokens, num_q_heads, head_dim] and k, v [tokens, num_kv_heads, head_dim]; "
              f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        _fail(f"num_q_heads ({q.shape[1]}) must be a multiple of num_kv_heads ({k.shape[1]}) for GQA")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        _fail(f"q, k, v must share one dtype of bfloat16/float16/float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.stride(2) != 1 or k.stride(2) != 1 or v.stride(2) != 1:
        _fail("q, k, v must be contiguous in head_dim; call .contiguous()")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32 or cu_seqlens.numel() < 2:
        _fail(f"cu_seqlens must be int32 [batch + 1] starting at 0, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        _fail(f"max_seqlen must be a Python int ≥ the longest sequence, got {max_seqlen!r}")
    _same_device(q, k=k, v=v, cu_seqlens=cu_seqlens)


def _same_device(anchor: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.device != anchor.device:
            _fail(f"{name} is on {t.device} but the other tensors are on {anchor.device}; move it with .to()")


def wants_cache_write(k_cache: torch.Tensor | None, v_cache: torch.Tensor | None,
                      slot_mapping: torch.Tensor | None) -> bool:
    """Whether a prefill call also writes K/V into the paged cache: all three arguments or none."""
    given = [t is not None for t in (k_cache, v_cache, slot_mapping)]
    if any(given) and not all(given):
        raise ValueError("pass k_cache, v_cache and slot_mapping together (or none of them)")
    return all(given)


def default_scale(head_dim: int, scale: float | None) -> float:
    return head_dim ** -0.5 if scale is None else float(scale)


__all__ = [
    "IMPLS", "PagedAttentionInputError", "load_impl", "default_impl", "tolerance", "allocate_kv_cache",
    "slot_mapping_for", "check_cache", "check_cache_write", "check_decode", "check_prefill", "default_scale",
    "wants_cache_write",
]
