"""The DiT forward in parts, as plain functions of the weights, with attention passed in as ``attend``.

``forward = unpatchify ∘ final ∘ block^depth ∘ embed``. Everything except ``attend`` is per token (the
conditioning ``cond`` is per image), so ``block`` and ``final`` run unchanged on any subset of the tokens:
sequence parallelism only has to wrap ``attend(q, k, v)`` — ``[B, heads, S, head_dim]`` in and out, no
mask — with communication that gives each rank's queries the keys and values of all tokens.

Conventions are the original DiT's (Peebles & Xie; facebookresearch/DiT): adaLN-Zero blocks (shift, scale,
gate for attention and MLP, from ``silu(cond)``), LayerNorm without affine, GELU (tanh), the timestep's
sinusoid as ``[cos, sin]`` with frequencies ``10000^(-i/half)``, and the fixed 2-D sin-cos position
embedding of the actual patch grid (first half encodes the column, second half the row), so any latent
height and width divisible by the patch works. Limit: no learned-position interpolation, no masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from phase7_dit_parallel.config import DiTConfig
from phase7_dit_parallel.weights import BlockWeights, DiTWeights

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v with the ``[B, heads, S, S]`` scores materialised (the framework's):
    S² memory traffic per head, which is what a fused kernel avoids. Softmax in fp32."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention (flash / memory-efficient / cuDNN kernels on CUDA): no S² tensor."""
    return F.scaled_dot_product_attention(q, k, v)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[B] -> [B, dim]`` fp32: ``[cos(t·f), sin(t·f)]``, ``f_i = max_period^(-i/half)`` (DiT's own;
    diffusers' DiT divides by ``half - 1`` instead, see ``oracle``)."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def position_embedding(hidden: int, grid_h: int, grid_w: int, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """``[grid_h·grid_w, hidden]`` fp64, tokens in row-major order: sin-cos of the column index in the
    first half, of the row index in the second (MAE's and DiT's layout)."""
    quarter = hidden // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows = torch.arange(grid_h, dtype=torch.float64, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device).repeat(grid_h)

    def sincos(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([sincos(cols), sincos(rows)], dim=1)


def patchify(config: DiTConfig, latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C·p·p]``: patches row-major, each flattened as (channel, p, q)
    like the stride-p conv's weight, so the patch embedding is one matmul."""
    b, c, height, width = latents.shape
    p = config.patch
    if height % p or width % p:
        raise ValueError(f"latent {height}x{width} is not divisible by the patch size {p}: crop or pad it")
    x = latents.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (height // p) * (width // p), c * p * p)


def embed(w: DiTWeights, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[B, S, H]`` (patch embedding + position) and the conditioning ``cond = t_emb + y_emb``
    ``[B, H]``; one embedder shared by every block, as in DiT."""
    cfg = w.config
    x = F.linear(patchify(cfg, latents.to(w.dtype)), w.patch_w.flatten(1), w.patch_b)
    grid_h, grid_w = latents.shape[-2] // cfg.patch, latents.shape[-1] // cfg.patch
    pos = position_embedding(cfg.hidden, grid_h, grid_w, x.device)
    t_freq = timestep_embedding(timesteps, cfg.frequency_dim).to(w.dtype)
    t_emb = F.linear(F.silu(F.linear(t_freq, w.t_fc1_w, w.t_fc1_b)), w.t_fc2_w, w.t_fc2_b)
    return x + pos.to(x.dtype), t_emb + w.label_table[labels]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def block(bw: BlockWeights, x: torch.Tensor, cond: torch.Tensor, attend: Attend) -> torch.Tensor:
    """One adaLN-Zero block on ``x [B, S_any, H]``; per token except inside ``attend``."""
    cfg = bw.config
    b, s, hidden = x.shape
    mod = F.linear(F.silu(cond), bw.ada_w, bw.ada_b)[:, None]  # [B, 1, 6H]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)

    h = _modulate(F.layer_norm(x, (hidden,), eps=cfg.eps), shift_msa, scale_msa)
    qkv = F.linear(h, bw.qkv_w, bw.qkv_b).view(b, s, 3, cfg.heads, cfg.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, S, d]
    o = attend(q, k, v).transpose(1, 2).reshape(b, s, hidden)
    x = x + gate_msa * F.linear(o, bw.out_w, bw.out_b)

    h = _modulate(F.layer_norm(x, (hidden,), eps=cfg.eps), shift_mlp, scale_mlp)
    h = F.gelu(F.linear(h, bw.fc1_w, bw.fc1_b), approximate="tanh")
    return x + gate_mlp * F.linear(h, bw.fc2_w, bw.fc2_b)


def final(w: DiTWeights, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The final adaLN layer and projection: ``[B, S_any, H] -> [B, S_any, p·p·out_channels]``, per token."""
    shift, scale = F.linear(F.silu(cond), w.final_ada_w, w.final_ada_b)[:, None].chunk(2, dim=-1)
    x = _modulate(F.layer_norm(x, (x.shape[-1],), eps=w.config.eps), shift, scale)
    return F.linear(x, w.final_w, w.final_b)


def unpatchify(config: DiTConfig, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, S, p·p·C_out] -> [B, C_out, height, width]`` for a latent of ``height × width`` (all S tokens,
    in row-major patch order; each token's vector in (p, q, channel) order)."""
    p, c = config.patch, config.out_channels
    x = x.reshape(x.shape[0], height // p, width // p, p, p, c).permute(0, 5, 1, 3, 2, 4)  # n c h p w q
    return x.reshape(x.shape[0], c, height, width)


def forward(w: DiTWeights, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor,
            attend: Attend) -> torch.Tensor:
    """The whole step on one device: ``[B, C, H, W] -> [B, out_channels, H, W]`` in the weights' dtype."""
    x, cond = embed(w, latents, timesteps, labels)
    for bw in w.blocks:
        x = block(bw, x, cond, attend)
    return unpatchify(w.config, final(w, x, cond), latents.shape[-2], latents.shape[-1])


@dataclass
class DiTModel:
    """What ``build`` returns: a name and a one-line ``mode`` for tables, the config, the step."""

    name: str
    config: DiTConfig
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    mode: str = ""

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.step(latents, timesteps, labels)
