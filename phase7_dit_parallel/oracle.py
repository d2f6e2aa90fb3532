"""The same weights as ``diffusers``' ``DiTTransformer2DModel``: the independent reference of the phase.

Mapping (read from diffusers 0.42's ``dit_transformer_2d.py``, ``attention.BasicTransformerBlock``,
``normalization.AdaLayerNormZero`` and ``embeddings``): the fused q|k|v splits into ``to_q/to_k/to_v``;
every block's ``norm1.emb`` gets a copy of our ONE timestep/label embedder (diffusers gives each block its
own); the adaLN chunk order (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) and the final
``proj_out_1`` order (shift, scale) are the same as ours, so those weights copy as they are.

One deliberate change: diffusers' DiT embeds the timestep with ``downscale_freq_shift=1`` (frequencies
``10000^(-i/(half-1))``), the original DiT with ``/half``; we follow the original (the trained checkpoints
were made with it), so the oracle's ``time_proj`` is set to shift 0 — everything else is diffusers' code.
Limits: diffusers' DiT takes square latents only (its unpatchify assumes it) and its position embedding is
for ``sample_size``: build it with the latent side you will feed.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel

from phase7_dit_parallel.weights import DiTWeights


def _check_supported(w: DiTWeights) -> None:
    cfg = w.config
    fixed = {"mlp_ratio": (cfg.mlp_ratio, 4.0), "frequency_dim": (cfg.frequency_dim, 256),
             "eps": (cfg.eps, 1e-6)}
    for name, (ours, theirs) in fixed.items():
        if ours != theirs:
            raise ValueError(f"diffusers' DiT hard-codes {name}={theirs} (this config has {ours}): "
                             "no oracle for this config")


def to_diffusers(w: DiTWeights, latent_size: int) -> DiTTransformer2DModel:
    """A ``DiTTransformer2DModel`` (eval mode, fp32, on ``w.device``) computing our ``forward`` for
    square latents of side ``latent_size``."""
    _check_supported(w)
    cfg = w.config
    model = DiTTransformer2DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.out_channels, num_layers=cfg.depth, sample_size=latent_size, patch_size=cfg.patch,
        activation_fn="gelu-approximate", num_embeds_ada_norm=cfg.num_classes, norm_eps=cfg.eps,
    )
    w = w.to(torch.float32)
    state = {
        "pos_embed.proj.weight": w.patch_w, "pos_embed.proj.bias": w.patch_b,
        "proj_out_1.weight": w.final_ada_w, "proj_out_1.bias": w.final_ada_b,
        "proj_out_2.weight": w.final_w, "proj_out_2.bias": w.final_b,
    }
    for i, bw in enumerate(w.blocks):
        pre = f"transformer_blocks.{i}."
        q, k, v = bw.qkv_w.chunk(3, dim=0)
        qb, kb, vb = bw.qkv_b.chunk(3, dim=0)
        state.update({
            pre + "norm1.emb.timestep_embedder.linear_1.weight": w.t_fc1_w,
            pre + "norm1.emb.timestep_embedder.linear_1.bias": w.t_fc1_b,
            pre + "norm1.emb.timestep_embedder.linear_2.weight": w.t_fc2_w,
            pre + "norm1.emb.timestep_embedder.linear_2.bias": w.t_fc2_b,
            pre + "norm1.emb.class_embedder.embedding_table.weight": w.label_table,
            pre + "norm1.linear.weight": bw.ada_w, pre + "norm1.linear.bias": bw.ada_b,
            pre + "attn1.to_q.weight": q, pre + "attn1.to_q.bias": qb,
            pre + "attn1.to_k.weight": k, pre + "attn1.to_k.bias": kb,
            pre + "attn1.to_v.weight": v, pre + "attn1.to_v.bias": vb,
            pre + "attn1.to_out.0.weight": bw.out_w, pre + "attn1.to_out.0.bias": bw.out_b,
            pre + "ff.net.0.proj.weight": bw.fc1_w, pre + "ff.net.0.proj.bias": bw.fc1_b,
            pre + "ff.net.2.weight": bw.fc2_w, pre + "ff.net.2.bias": bw.fc2_b,
        })
    model.load_state_dict({k: t.contiguous() for k, t in state.items()}, strict=True)
    for blk in model.transformer_blocks:
        blk.norm1.emb.time_proj.downscale_freq_shift = 0  # the original DiT's frequencies (module docstring)
    return model.to(w.device).eval()
