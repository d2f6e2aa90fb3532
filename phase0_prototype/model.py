"""The Llama building blocks both engines share, written to match transformers' arithmetic.

Matching HF is the point: the same weights must give the same greedy tokens, so every cast happens
where ``modeling_llama`` does it — RMSNorm in fp32 then back to the activation dtype before the weight,
the rotary table computed in fp32 and cast to the activation dtype before it multiplies q and k.

Layout conventions (later phases rely on them):

- activations after a projection are ``[batch, tokens, heads, head_dim]``;
- the rotary tables ``cos``/``sin`` are fp32 ``[max_positions, head_dim]`` (the first and second halves
  repeat the same frequencies: the "rotate-half" / GPT-NeoX pairing HF uses for Llama);
- ``positions`` are int64 ``[batch, tokens]`` (or ``[tokens]`` for every row).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from phase0_prototype.config import LlamaConfig

# A RoPE implementation: (q [B,T,Hq,D], k [B,T,Hkv,D], cos [P,D] fp32, sin [P,D] fp32, positions [B,T])
# -> (q_rotated, k_rotated), same shapes and dtype as q and k. Phase 2's CUDA kernel plugs in here.
RopeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalise in fp32, cast back, then scale by the weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope_inv_freq(config: LlamaConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse frequencies ``[head_dim / 2]`` (fp32), with linear or llama3 scaling when configured."""
    dim = config.head_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    inv_freq = 1.0 / (config.rope_theta ** exponent)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cache(config: LlamaConfig, max_positions: int, device: torch.device | str = "cpu") -> tuple:
    """``(cos, sin)``, fp32 ``[max_positions, head_dim]``: angle = position × inverse frequency."""
    inv_freq = rope_inv_freq(config, device)
    positions = torch.arange(max_positions, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference RoPE (``RopeFn``): rotate each (i, i + D/2) pair of q and k by its position's angle."""
    c = cos[positions].to(q.dtype).unsqueeze(-2)  # [B, T, 1, D]: one angle per position, all heads
    s = sin[positions].to(q.dtype).unsqueeze(-2)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, Hkv, T, D]`` -> ``[B, Hkv·groups, T, D]``: each key/value head serves ``groups`` query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


# Attention over a KV store: (layer, q [B,T,Hq,D], k [B,T,Hkv,D] with RoPE applied, v [B,T,Hkv,D])
# -> [B, T, Hq·D]. It owns the cache: a contiguous one (phase 0), pages (phase 3), or none (no cache).
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# A projection: (x [..., in], the weight as the engine holds it) -> [..., out]. ``F.linear`` for a matrix;
# phase 5's INT4 layers and phase 6's parallel layers are other implementations.
Linear = Callable[[torch.Tensor, object], torch.Tensor]


def decoder_layer(config: LlamaConfig, i: int, w, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, attend: Attend, *, linear: Linear = F.linear,
                  rope: RopeFn = apply_rope) -> torch.Tensor:
    """Layer ``i`` of Llama over fused weights ``w`` (``weights.LayerWeights``): ``x [B, T, hidden]`` at
    ``positions [B, T]`` -> ``[B, T, hidden]``.

    The one definition of the layer's math every engine runs; what differs between engines is passed in:
    where K/V live (``attend``), how a projection is computed (``linear``) and the RoPE kernel (``rope``).
    ``config`` gives the head counts this process computes (a tensor-parallel rank's share of them).
    Fused decode kernels (``kernels.step``) are the one other spelling of it, checked against this one.
    """
    B, T = x.shape[0], x.shape[1]
    Hq, Hkv, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    h = rms_norm(x, w.input_norm, config.rms_norm_eps)
    q, k, v = linear(h, w.qkv_proj).split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    q, k = rope(q.view(B, T, Hq, D), k.view(B, T, Hkv, D), cos, sin, positions)
    x = x + linear(attend(i, q, k, v.view(B, T, Hkv, D)), w.o_proj)
    h = rms_norm(x, w.post_norm, config.rms_norm_eps)
    gate, up = linear(h, w.gate_up_proj).chunk(2, dim=-1)
    return x + linear(swiglu(gate, up), w.down_proj)
