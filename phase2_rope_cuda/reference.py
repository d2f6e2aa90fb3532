"""The PyTorch reference RoPE: HF ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``, on any device.

This is the oracle the CUDA kernels are tested against and the "eager PyTorch" peer of the bench.
It uses the phase's cos/sin cache (see ``build_cos_sin_cache``) and computes in fp32, rounding once
to the input dtype, as the kernels do. With fp32 inputs it equals HF exactly (same inv_freq, same
fp32 angles, same formula); with bf16/fp16 inputs HF first rounds cos/sin to the input dtype and
multiplies in it, so the two differ by a rounding or two: within the dtype's tolerance.
"""

from __future__ import annotations

import torch

from phase2_rope_cuda.shapes import check_rope_inputs


def inverse_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """θ_i = base^(−2i/D) for i < D/2, computed exactly as HF's default RoPE does (fp32)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def build_cos_sin_cache(
    head_dim: int,
    max_position: int,
    base: float = 10000.0,
    *,
    inv_freq: torch.Tensor | None = None,
    scaling: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The cos/sin cache ``[max_position, head_dim]`` fp32: row p = [cos(p·θ), sin(p·θ)].

    Each row holds the D/2 cosines then the D/2 sines of position p (vLLM's layout): HF's cos/sin are
    ``cat(freqs, freqs)``, so their second halves repeat the first and are not stored. Pass
    ``inv_freq`` (and ``scaling``, HF's ``attention_scaling``) to reproduce a model's rotary module,
    e.g. ``build_cos_sin_cache(D, N, inv_freq=model.rotary_emb.inv_freq, scaling=model.rotary_emb.attention_scaling)``.
    """
    if max_position <= 0:
        raise ValueError(f"max_position must be positive, got {max_position}")
    if inv_freq is None:
        inv_freq = inverse_frequencies(head_dim, base)
    inv_freq = inv_freq.detach().float().cpu()
    if inv_freq.numel() != head_dim // 2:
        raise ValueError(f"inv_freq has {inv_freq.numel()} entries; head_dim {head_dim} needs {head_dim // 2}")
    # Same expression as HF's forward: position (as fp32) times inv_freq, in fp32.
    freqs = torch.arange(max_position, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    cache = torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)
    return cache.to(device) if device is not None else cache


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] → [−x2, x1] along the last dimension (HF / GPT-NeoX convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def cos_sin_for_positions(cos_sin_cache: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-shaped ``cos, sin`` ``[tokens, head_dim]`` (halves duplicated) for the given positions."""
    rows = cos_sin_cache.index_select(0, positions.reshape(-1).long())
    cos, sin = rows.chunk(2, dim=-1)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated copies of ``q`` [tokens, q_heads, D] and ``k`` [tokens, kv_heads, D]; inputs untouched."""
    check_rope_inputs(q, k, positions, cos_sin_cache)
    return rope_math(q, k, positions, cos_sin_cache)


def rope_math(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of ``apply_rope_reference`` without the checks (what the bench compiles)."""
    cos, sin = cos_sin_for_positions(cos_sin_cache, positions)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    qf, kf = q.float(), k.float()
    q_out = qf * cos + rotate_half(qf) * sin
    k_out = kf * cos + rotate_half(kf) * sin
    return q_out.to(q.dtype), k_out.to(k.dtype)


def apply_rope_(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place form of the reference, with the phase contract's signature (works on CPU and GPU)."""
    q_out, k_out = apply_rope_reference(q, k, positions, cos_sin_cache)
    q.copy_(q_out)
    k.copy_(k_out)
    return q, k


def apply_rope_complex_f64(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0
) -> torch.Tensor:
    """An independent float64 RoPE for one tensor [tokens, heads, D]: RoFormer's complex rotation.

    Pairs (x_i, x_{i+D/2}) are the complex number x_i + j·x_{i+D/2}, multiplied by e^{j·angle}. No
    cache, no rotate_half: a different route to the same numbers, used to check the reference. The
    angle is HF's definition, ``fp32(position) × inv_freq`` rounded to fp32 (at position 2000 that
    rounding is ~1e-4 rad: it is part of the model, not an error of the kernels); everything after
    it is float64.
    """
    half = x.shape[-1] // 2
    xd = x.double()
    z = torch.complex(xd[..., :half], xd[..., half:])
    angle = (positions.float()[:, None] * inv_freq.float()[None, :]).double()
    rot = torch.polar(torch.full_like(angle, float(scaling)), angle)[:, None, :]
    out = z * rot
    return torch.cat((out.real, out.imag), dim=-1)
