"""Plug a phase-2 RoPE into phase 0's model: an adapter to its ``RopeFn`` signature.

Phase 0 calls ``rope_fn(q [B,T,Hq,D], k [B,T,Hkv,D], cos [P,D], sin [P,D], positions [B,T] or [T])``
and uses the returned ``(q, k)``. Its ``cos``/``sin`` tables hold each frequency twice (HF's
``cat(freqs, freqs)``), so the adapter keeps their first halves, side by side, as this phase's
``cos_sin_cache`` — built once per pair of tables and reused for every layer and step.

Usage (phase 0's engine takes ``rope_fn=``)::

    from phase2_rope_cuda.integration import phase0_rope_fn
    engine = Engine(model, rope_fn=phase0_rope_fn("solution"))   # CUDA kernel; "reference" on CPU
"""

from __future__ import annotations

from typing import Callable

import torch


def cache_from_tables(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[P, D]`` duplicated-half cos/sin tables → ``[P, D]`` cos|sin cache (fp32, contiguous)."""
    half = cos.shape[-1] // 2
    return torch.cat([cos[:, :half], sin[:, :half]], dim=-1).float().contiguous()


def phase0_rope_fn(impl: str = "solution") -> Callable:
    """A phase-0 ``RopeFn`` running ``impl`` (``framework``, ``solution``, ``reference``, a module path)."""
    from phase2_rope_cuda import load_impl

    apply = load_impl(impl).apply_rope_
    memo: dict[tuple, torch.Tensor] = {}

    def rope_fn(q, k, cos, sin, positions):
        key = (cos.data_ptr(), sin.data_ptr(), tuple(cos.shape), str(cos.device))
        cache = memo.get(key)
        if cache is None:
            memo.clear()  # one model's tables at a time
            cache = memo[key] = cache_from_tables(cos, sin)
        *lead, hq, d = q.shape
        tokens = q[..., 0, 0].numel()
        flat_pos = positions.expand(*lead).reshape(tokens)
        q3 = q.reshape(tokens, hq, d)  # a view when q comes straight from a projection
        k3 = k.reshape(tokens, k.shape[-2], d)
        apply(q3, k3, flat_pos, cache)
        return q3.view(*lead, hq, d), k3.view(*lead, k.shape[-2], d)

    return rope_fn
