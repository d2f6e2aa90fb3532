"""AWQ (activation-aware weight quantization): protect the weights that large activations multiply.

Why it beats RTN: a linear's output error from rounding is ``Σ_c x_c · δw_c``. A few input channels ``c``
carry activations far larger than the rest, so their weights' rounding errors dominate. Multiplying
column ``c`` of W by ``s_c > 1`` (and dividing the activation by ``s_c``, which is free: folded into the
previous RMSNorm weight or the previous linear's rows) leaves the float function unchanged but shrinks
that column's *relative* rounding error. AWQ picks ``s = mean|x|^α`` per input channel, ``α`` from a grid
that minimises the linear's output error on calibration activations, then searches a per-group clipping
ratio of the weight range that minimises the output error again. The result is plain INT4 in the same
layout as RTN: the speed is the kernel's (memory-bound decode reads 4 bits a weight instead of 16), and
AWQ costs nothing at inference.

Where each scale is folded (phase 0's fused layout, ``weights.fuse``):

- ``qkv_proj`` inputs: divide ``input_norm``; ``gate_up_proj`` inputs: divide ``post_norm``;
- ``down_proj`` inputs ``silu(gate)·up``: divide the *up* rows of ``gate_up_proj``;
- ``o_proj`` inputs (attention outputs, linear in v): divide the *v* rows of ``qkv_proj``. With grouped-query
  attention one v head feeds ``Hq/Hkv`` query heads' outputs, so the scales are tied across those heads
  (activation means averaged over the group) — AutoAWQ skips this pair under GQA; tying keeps it exact.

Clipping is not searched for the q and k rows (their errors are amplified by the attention softmax; AutoAWQ
skips them too). Activations come from one pass of the float model over the calibration text (scaling
is exact in real arithmetic, so the scaled model's activations are the same up to rounding).
"""

from __future__ import annotations

import torch

from phase5_quantization.framework import quantize_linears, quantize_weight
from phase5_quantization.model import DenseLinear, LinearLlama, calibration_inputs
from phase5_quantization.packing import GROUP_SIZE, check_divisible, dequantize, group_params, quantize_codes


def fake_quant(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """``dequant(quant(w))`` in fp32: what the INT4 matrix will compute with."""
    scales, zeros = group_params(w, group_size, clip)
    return dequantize(quantize_codes(w, scales, zeros, group_size), scales, zeros, group_size)


def search_scale(w: torch.Tensor, x: torch.Tensor, group_size: int = GROUP_SIZE, grid: int = 20,
                 tie: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, float]:
    """Per-input-channel scales ``s [in]`` minimising ``‖x·Q(w·s)/s ᵀ − x·wᵀ‖²``; also the best α.

    ``tie = (Hkv, groups, D)``: input channels are attention outputs of ``Hkv·groups`` heads; scales are
    shared by the query heads that read the same v head.
    """
    x_mean = x.abs().mean(0)
    if tie is not None:
        hkv, g, d = tie
        x_mean = x_mean.view(hkv, g, d).mean(1, keepdim=True).expand(hkv, g, d).reshape(-1)
    ref = x @ w.t()
    best = (float("inf"), torch.ones_like(x_mean), 0.0)
    for k in range(grid):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (keeps fp16 scales in range)
        err = float((x @ (fake_quant(w * s, group_size) / s).t() - ref).pow(2).mean())
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def search_clip(w: torch.Tensor, x: torch.Tensor, group_size: int = GROUP_SIZE, steps: int = 10,
                max_shrink: float = 0.5, fixed_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per (row, group) range shrink factor in [1 − max_shrink, 1] minimising that group's output error.

    ``fixed_rows`` (bool ``[out]``): rows kept at factor 1 (q and k).
    """
    out, inp = w.shape
    n_groups = inp // group_size
    xg = x.view(-1, n_groups, group_size)
    best_err = torch.full((out, n_groups), float("inf"))
    best = torch.ones(out, n_groups)
    for k in range(steps + 1):
        ratio = 1.0 - max_shrink * k / steps
        clip = torch.full((out, n_groups), ratio)
        delta = (fake_quant(w, group_size, clip) - w).view(out, n_groups, group_size)
        err = torch.einsum("ngk,ogk->nog", xg, delta).pow(2).mean(0)  # [out, groups]
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, clip, best)
    if fixed_rows is not None:
        best[fixed_rows] = 1.0
    return best


def _sample(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every ``k``-th row, ``n`` rows at most (deterministic)."""
    return x if x.shape[0] <= n else x[:: x.shape[0] // n][:n]


def quantize(model: LinearLlama, calibration_ids, *, group_size: int = GROUP_SIZE, grid: int = 20, clip: bool = True,
             search_tokens: int = 2048, clip_tokens: int = 512, quantize_lm_head: bool = False) -> LinearLlama:
    """AWQ every projection of ``model`` (float ``LinearLlama``) with activations over ``calibration_ids``."""
    cfg = model.config
    for i, layer in enumerate(model.linears):
        for name, lin in layer.items():
            check_divisible(f"layers.{i}.{name}", tuple(lin.dense().shape), group_size)
    acts = calibration_inputs(model, calibration_ids)
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    hkv, g, d = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim
    norms, dense, alphas, clips = [], [], {}, {}
    for i, layer in enumerate(model.linears):
        w = {name: lin.dense().float().clone() for name, lin in layer.items()}
        n1, n2 = (n.float().clone() for n in model.norms[i])
        x = {name: _sample(acts[(i, name)], search_tokens) for name in w}

        s, alphas[(i, "qkv_proj")] = search_scale(w["qkv_proj"], x["qkv_proj"], group_size, grid)
        n1 /= s; w["qkv_proj"] *= s; x["qkv_proj"] = x["qkv_proj"] / s
        s, alphas[(i, "o_proj")] = search_scale(w["o_proj"], x["o_proj"], group_size, grid, tie=(hkv, g, d))
        s_v = s.view(hkv, g, d)[:, 0].reshape(-1)  # one scale per v row
        w["qkv_proj"][q + kv:] /= s_v[:, None]; w["o_proj"] *= s; x["o_proj"] = x["o_proj"] / s
        s, alphas[(i, "gate_up_proj")] = search_scale(w["gate_up_proj"], x["gate_up_proj"], group_size, grid)
        n2 /= s; w["gate_up_proj"] *= s; x["gate_up_proj"] = x["gate_up_proj"] / s
        s, alphas[(i, "down_proj")] = search_scale(w["down_proj"], x["down_proj"], group_size, grid)
        w["gate_up_proj"][inter:] /= s[:, None]; w["down_proj"] *= s; x["down_proj"] = x["down_proj"] / s

        if clip:
            qk = torch.zeros(w["qkv_proj"].shape[0], dtype=torch.bool)
            qk[: q + kv] = True
            for name in w:
                clips[(i, name)] = search_clip(w[name], _sample(x[name], clip_tokens), group_size,
                                               fixed_rows=qk if name == "qkv_proj" else None)
        norms.append((n1.to(model.dtype), n2.to(model.dtype)))
        dense.append({name: DenseLinear(t) for name, t in w.items()})
    scaled = LinearLlama(cfg, model.embed_tokens, norms, dense, model.norm, model.lm_head, "awq-scaled")
    out = quantize_linears(scaled, lambda i, name, w: quantize_weight(w, group_size, name=f"layers.{i}.{name}",
                                                                      clip=clips.get((i, name))),
                           method="awq", group_size=group_size, quantize_lm_head=quantize_lm_head)
    out.meta = {"awq_alpha": {f"layers.{i}.{n}": a for (i, n), a in alphas.items()}}
    return out
