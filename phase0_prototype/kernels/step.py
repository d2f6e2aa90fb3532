"""The decode step as hand-written Triton kernels: six launches per layer, all bandwidth-bound.

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

``fused_decode_step`` is the one fused spelling of ``model.decoder_layer``, parametrised by its projection
kernel (phase 5 passes its W4A16 layers) and its attention (phase 4 passes the paged cache).
"""

from __future__ import annotations

from typing import Callable

import torch

from phase0_prototype.kernels.decode_attention import rope_cache_attention
from phase0_prototype.kernels.gemv import MAX_BATCH, fused_gemv

# (x [B, in], a projection as the weights hold it, *, norm_weight, eps, residual, swiglu, out) -> [B, out]:
# RMSNorm prologue and residual / SwiGLU epilogue fused into the projection (``gemv.fused_gemv``'s contract).
FusedLinear = Callable[..., torch.Tensor]
# (layer, qkv [B, q+2kv] straight from the projection) -> attention output [B, q]
FusedAttend = Callable[[int, torch.Tensor], torch.Tensor]


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


def fused_decode_step(weights, x: torch.Tensor, eps: float, attend: FusedAttend,
                      gemv: FusedLinear = fused_gemv) -> torch.Tensor:
    """The decode step of ``model.decoder_layer`` fused into bandwidth-bound kernels: ``x [B, hidden]`` (the
    tokens' embeddings, updated in place as the residual stream) -> logits ``[B, vocab]``.

    ``weights``: fused ``LlamaWeights`` whose projections ``gemv`` understands — phase 0's ``fused_gemv``
    over matrices, phase 5's W4A16 kernels over INT4 layers. ``attend(i, qkv [B, q+2kv]) -> [B, q]``
    applies RoPE, writes K/V to the cache (contiguous here, paged in phase 4) and attends.
    """
    for i, w in enumerate(weights.layers):
        qkv = gemv(x, w.qkv_proj, norm_weight=w.input_norm, eps=eps)
        gemv(attend(i, qkv), w.o_proj, residual=x, out=x)
        act = gemv(x, w.gate_up_proj, norm_weight=w.post_norm, eps=eps, swiglu=True)
        gemv(act, w.down_proj, residual=x, out=x)
    return gemv(x, weights.lm_head, norm_weight=weights.norm, eps=eps)


def static_cache_attention(engine, positions: torch.Tensor) -> FusedAttend:
    """``attend`` over a ``SolutionEngine``'s contiguous cache: RoPE (fused in the attention kernel unless
    ``rope_fn`` is a plug-in, which then runs first), K/V into slot ``position``, split-K attention."""
    cfg = engine.config
    n_heads, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
        if not engine.fused_rope:
            B = qkv.shape[0]
            q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
            q, k = engine.rope_fn(q.view(B, 1, n_heads, d), k.view(B, 1, n_kv, d), engine.cos, engine.sin,
                                  positions[:, None])
            qkv = torch.cat([q.reshape(B, -1), k.reshape(B, -1), v], dim=-1)
        return rope_cache_attention(qkv, engine.kv_cache[i, 0], engine.kv_cache[i, 1], engine.cos, engine.sin,
                                    positions, n_heads, rope=engine.fused_rope)

    return attend


def triton_decode_step(engine, tokens: torch.Tensor, positions: torch.Tensor,
                       gemv: FusedLinear = fused_gemv) -> torch.Tensor:
    """``tokens [B]`` at ``positions [B]`` -> logits ``[B, vocab]`` (activation dtype), cache updated:
    ``fused_decode_step`` over a ``SolutionEngine``'s weights and static cache."""
    x = engine.weights.embed_tokens[tokens]
    return fused_decode_step(engine.weights, x, engine.config.rms_norm_eps,
                             static_cache_attention(engine, positions), gemv)
