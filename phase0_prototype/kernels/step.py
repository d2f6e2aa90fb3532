"""The solution's decode step as hand-written Triton kernels: six launches per layer, all bandwidth-bound.

Per layer (``B ≤ 8`` tokens, one per sequence):

1. ``qkv = gemv(rmsnorm(x), W_qkv)``                        norm fused as a prologue
2. RoPE(q, k), k/v → cache slot ``position``, attention      one kernel over splits of the cache
3. merge of the splits' partial softmaxes                    a few hundred bytes per head
4. ``x += gemv(attn, W_o)``                                 residual fused, in place
5. ``act = silu(gate) · up``, ``[gate; up] = gemv(rmsnorm(x), W_gate_up)``
6. ``x += gemv(act, W_down)``

then ``logits = gemv(rmsnorm(x), W_lm_head)``. That is ~135 kernels per token for TinyLlama instead of the
~360 inductor emits, and each GEMV streams its weight at close to copy bandwidth. The step reads no host
state and allocates the same buffers every call, so it captures in one CUDA graph.
"""

from __future__ import annotations

import torch

from phase0_prototype.kernels.decode_attention import rope_cache_attention
from phase0_prototype.kernels.gemv import MAX_BATCH, fused_gemv


def unsupported_reason(config, batch: int, weights) -> str | None:
    """Why these kernels cannot run this model/batch (None when they can). ``weights``: ``LlamaWeights``."""
    import os

    d = config.head_dim
    if batch > MAX_BATCH:
        return f"batch {batch} > {MAX_BATCH} (a GEMM, not a GEMV)"
    if d & (d - 1) or d < 16:
        return f"head_dim {d} is not a power of two ≥ 16"
    if weights.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {weights.dtype}"
    if weights.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels on a CPU need TRITON_INTERPRET=1"
    mats = [weights.lm_head] + [m for w in weights.layers
                                for m in (w.qkv_proj, w.o_proj, w.gate_up_proj, w.down_proj)]
    if not all(m.is_contiguous() for m in mats):
        return "a weight matrix is not contiguous"
    return None


def triton_decode_step(engine, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``tokens [B]`` at ``positions [B]`` -> logits ``[B, vocab]`` (activation dtype), cache updated.

    ``engine``: a ``SolutionEngine`` (its fused ``weights``, ``kv_cache``, rotary tables and ``rope_fn``).
    A ``rope_fn`` other than the reference runs between the projection and the attention kernel.
    """
    cfg, weights = engine.config, engine.weights
    B = tokens.shape[0]
    eps, n_heads, n_kv, d = cfg.rms_norm_eps, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    fused_rope = engine.fused_rope
    x = weights.embed_tokens[tokens]  # [B, hidden], the residual stream (updated in place below)
    for i, w in enumerate(weights.layers):
        qkv = fused_gemv(x, w.qkv_proj, norm_weight=w.input_norm, eps=eps)
        if not fused_rope:
            q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q, k = engine.rope_fn(q.view(B, 1, n_heads, d), k.view(B, 1, n_kv, d), engine.cos, engine.sin,
                                  positions[:, None])
            qkv = torch.cat([q.reshape(B, -1), k.reshape(B, -1), v], dim=-1)
        attn = rope_cache_attention(qkv, engine.kv_cache[i, 0], engine.kv_cache[i, 1], engine.cos, engine.sin,
                                    positions, n_heads, rope=fused_rope)
        fused_gemv(attn, w.o_proj, residual=x, out=x)
        act = fused_gemv(x, w.gate_up_proj, norm_weight=w.post_norm, eps=eps, swiglu=True)
        fused_gemv(act, w.down_proj, residual=x, out=x)
    return fused_gemv(x, weights.lm_head, norm_weight=weights.norm, eps=eps)
