"""A float64 attention oracle written independently of the package (per-token slot arithmetic, explicit softmax)."""

from __future__ import annotations

import torch


def decode_oracle(q, k_cache, v_cache, block_tables, context_lens, scale):
    """out[b, h] = softmax(q·K_bᵀ·scale)·V_b over sequence b's tokens, in float64."""
    batch, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_q_heads // num_kv_heads
    flat_k = k_cache.reshape(-1, num_kv_heads, head_dim).double().cpu()
    flat_v = v_cache.reshape(-1, num_kv_heads, head_dim).double().cpu()
    out = torch.zeros(batch, num_q_heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        n = int(context_lens[b])
        if n == 0:
            continue
        t = torch.arange(n)
        slots = block_tables[b].cpu().long()[t // block_size] * block_size + t % block_size
        for h in range(num_q_heads):
            keys, values = flat_k[slots, h // group], flat_v[slots, h // group]  # [n, D]
            s = keys @ q[b, h].double().cpu() * scale
            p = torch.exp(s - s.max())
            out[b, h] = (p / p.sum()) @ values
    return out


def prefill_oracle(q, k, v, cu_seqlens, scale, causal=True):
    tokens, num_q_heads, head_dim = q.shape
    group = num_q_heads // k.shape[1]
    out = torch.zeros(tokens, num_q_heads, head_dim, dtype=torch.float64)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        n = end - start
        for h in range(num_q_heads):
            qs, ks, vs = (x[start:end, hh].double().cpu() for x, hh in ((q, h), (k, h // group), (v, h // group)))
            s = qs @ ks.T * scale
            if causal:
                s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            out[start:end, h] = torch.softmax(s, dim=-1) @ vs
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max |err| {err.max().item():.3g} is {worst:.2f}× the tolerance"
