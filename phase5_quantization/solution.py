"""AWQ (activation-aware weight quantization): protect the weights that large activations multiply.

Why it beats RTN: a linear's output error from rounding is ``Σ_c x_c · δw_c``. Input channels ``c`` with
large activations make their weights' rounding errors count more, so multiplying column ``c`` of W by
``s_c > 1`` (and dividing the activation by ``s_c``, which is free: folded into the previous RMSNorm weight or
the previous linear's rows) leaves the float function unchanged but shrinks that column's *relative* rounding
error, at the expense of the other columns of its group (the group's range grows). AWQ picks
``s = mean|x|^α`` per input channel, ``α`` from a grid, and then a per-group clipping of the weight range;
both searches minimise an *output* error on calibration activations. The result is plain INT4 in the same
layout as RTN: the speed is the kernel's, and AWQ costs nothing at inference.

What is searched against what (AutoAWQ's choices, one decoder layer at a time, float activations):

==================  ======================  =============================  =========================================
scales for          folded into             error minimised over α          inputs
==================  ======================  =============================  =========================================
``qkv_proj`` inputs ``input_norm``          attention block output          RMSNorm(x) → q, k, v → RoPE → SDPA → o_proj
``o_proj`` inputs   v rows of ``qkv_proj``  o_proj output                   attention output (tied per v head, GQA)
``gate_up`` inputs  ``post_norm``           MLP block output                RMSNorm(x) → gate, up → SwiGLU → down_proj
``down_proj`` in.   up rows of ``gate_up``  down_proj output                silu(gate) · up
==================  ======================  =============================  =========================================

With grouped-query attention one v head feeds ``Hq/Hkv`` query heads' outputs, so ``o_proj``'s scales are tied
across those heads (activation means averaged over the group) — AutoAWQ skips this pair under GQA; tying
keeps the fold exact. Clipping (per (row, group) range shrink, each group's own output error) is not searched
for the q and k rows: their errors are amplified by the softmax (AutoAWQ skips them too).

Calibration: ``search_tokens`` tokens in windows of ``seq_len`` spread evenly over the calibration text (text
the model was trained on, never the held-out text); the searches cost a few forward passes of one layer per
grid point, seconds for the bundled model on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase0_prototype.model import apply_rope, repeat_kv, rms_norm, rope_cache, swiglu
from phase5_quantization.framework import quantize_linears, quantize_weight
from phase5_quantization.linear import DenseLinear
from phase5_quantization.model import LinearLlama
from phase5_quantization.packing import GROUP_SIZE, QMAX, check_divisible, group_params
from phase0_prototype.errors import ModelError


def fake_quant(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None) -> torch.Tensor:
    """``dequant(quant(w))`` in fp32: what the INT4 matrix will compute with (``packing``'s arithmetic,
    ``(clamp(round(w/s) + z, 0, 15) − z)·s = clamp(round(w/s), −z, 15 − z)·s``, without the uint8 round trips:
    the searches call it hundreds of times)."""
    out, inp = w.shape
    scales, zeros = group_params(w, group_size, clip)
    s = scales.float().unsqueeze(-1)
    z = zeros.float().unsqueeze(-1)
    q = torch.round(w.float().view(out, inp // group_size, group_size) / s)
    return torch.clamp(q, -z, QMAX - z).mul_(s).view(out, inp)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def search_scale(w: torch.Tensor, x: torch.Tensor, group_size: int = GROUP_SIZE, grid: int = 20,
                 tie: tuple[int, int, int] | None = None, loss=None) -> tuple[torch.Tensor, float]:
    """Per-input-channel scales ``s [in]`` and the best α: ``s = mean|x|^α`` minimising ``loss(Q(w·s)/s)``.

    ``loss(w_hat) -> float`` defaults to the linear's own output error ``‖x·w_hatᵀ − x·wᵀ‖²``; the block
    searches pass the error of the block's output. ``tie = (Hkv, groups, D)``: input channels are attention
    outputs of ``Hkv·groups`` heads; scales are shared by the query heads that read the same v head.
    """
    x_mean = x.abs().reshape(-1, x.shape[-1]).mean(0)
    if tie is not None:
        hkv, g, d = tie
        x_mean = x_mean.view(hkv, g, d).mean(1, keepdim=True).expand(hkv, g, d).reshape(-1)
    if loss is None:
        ref = x @ w.t()
        loss = lambda w_hat: _mse(x @ w_hat.t(), ref)  # noqa: E731
    best = (loss(fake_quant(w, group_size)), torch.ones_like(x_mean), 0.0)  # α = 0: plain RTN
    for k in range(1, grid + 1):
        alpha = k / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 (keeps fp16 scales in range)
        err = loss(fake_quant(w * s, group_size) / s)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def search_clip(w: torch.Tensor, x: torch.Tensor, group_size: int = GROUP_SIZE, steps: int = 20,
                max_shrink: float = 0.5, fixed_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per (row, group) range shrink factor in [1 − max_shrink, 1] minimising that group's output error.

    ``fixed_rows`` (bool ``[out]``): rows kept at factor 1 (q and k).
    """
    out, inp = w.shape
    n_groups = inp // group_size
    xg = x.view(-1, n_groups, group_size)
    best_err = torch.full((out, n_groups), float("inf"), device=w.device)
    best = torch.ones(out, n_groups, device=w.device)
    for k in range(steps + 1):
        clip = torch.full((out, n_groups), 1.0 - max_shrink * k / steps, device=w.device)
        delta = (fake_quant(w, group_size, clip) - w).view(out, n_groups, group_size)
        err = torch.einsum("ngk,ogk->nog", xg, delta).pow(2).mean(0)  # [out, groups]
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, clip, best)
    if fixed_rows is not None:
        best[fixed_rows] = 1.0
    return best


def calibration_windows(ids, n_tokens: int, seq_len: int) -> torch.Tensor:
    """``[n, seq_len]`` windows spread evenly over ``ids`` (``n = n_tokens // seq_len``, fewer if the text is short)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    available = ids.numel() // seq_len
    if available == 0:
        raise ModelError(f"calibration text has {ids.numel()} tokens: need at least {seq_len}")
    n = max(1, min(n_tokens // seq_len, available))
    starts = torch.linspace(0, ids.numel() - seq_len, n).long()
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def _attention(cfg, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention of ``qkv [S, T, q+2kv]`` -> ``[S, T, Hq·D]`` (what ``o_proj`` reads)."""
    S, T, _ = qkv.shape
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], -1)
    q, k = apply_rope(q.view(S, T, Hq, D), k.view(S, T, Hkv, D), cos, sin, torch.arange(T, device=qkv.device).expand(S, T))
    g = Hq // Hkv
    o = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k.transpose(1, 2), g),
                                       repeat_kv(v.view(S, T, Hkv, D).transpose(1, 2), g), is_causal=True)
    return o.transpose(1, 2).reshape(S, T, Hq * D)


def _sample(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every ``k``-th row of ``x`` flattened to ``[rows, features]``, ``n`` rows at most (deterministic)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.shape[0] <= n else x[:: x.shape[0] // n][:n]


@torch.inference_mode()
def quantize(model: LinearLlama, calibration_ids, *, group_size: int = GROUP_SIZE, grid: int = 20, clip: bool = True,
             search_tokens: int = 2048, clip_tokens: int = 512, seq_len: int = 256,
             quantize_lm_head: bool = False) -> LinearLlama:
    """AWQ every projection of ``model`` (float ``LinearLlama``) with activations over ``calibration_ids``."""
    cfg = model.config
    if calibration_ids is None:
        raise ModelError("AWQ needs calibration text (token ids): pass calibration_ids, or use RTN")
    for i, layer in enumerate(model.linears):
        for name, lin in layer.items():
            check_divisible(f"layers.{i}.{name}", tuple(lin.dense().shape), group_size)
    dev = model.embed_tokens.device
    windows = calibration_windows(calibration_ids, search_tokens, min(seq_len, cfg.max_position_embeddings)).to(dev)
    cos, sin = rope_cache(cfg, windows.shape[1], dev)
    eps, q, kv, inter = cfg.rms_norm_eps, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    tie = (cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim)
    x = model.embed_tokens[windows].float()  # the residual stream entering layer i: [S, T, hidden]
    norms, dense, alphas, clips = [], [], {}, {}
    for i, layer in enumerate(model.linears):
        w = {name: lin.dense().float().clone() for name, lin in layer.items()}
        n1, n2 = (n.float().clone() for n in model.norms[i])
        # the float layer, once: every search compares against these outputs
        h = rms_norm(x, n1, eps)
        a_in = _attention(cfg, h @ w["qkv_proj"].t(), cos, sin)
        a_out = a_in @ w["o_proj"].t()
        h2 = rms_norm(x + a_out, n2, eps)
        act = swiglu(*(h2 @ w["gate_up_proj"].t()).chunk(2, -1))
        m_out = act @ w["down_proj"].t()

        o_w = w["o_proj"]
        s, alphas[(i, "qkv_proj")] = search_scale(
            w["qkv_proj"], h, group_size, grid, loss=lambda wq: _mse(_attention(cfg, h @ wq.t(), cos, sin) @ o_w.t(), a_out))
        n1 /= s
        w["qkv_proj"] *= s
        h = h / s
        s, alphas[(i, "o_proj")] = search_scale(o_w, _sample(a_in, 4 * search_tokens), group_size, grid, tie=tie)
        w["qkv_proj"][q + kv:] /= s.view(tie)[:, 0].reshape(-1)[:, None]  # one scale per v row
        w["o_proj"] = o_w * s
        a_in = a_in / s
        d_w = w["down_proj"]
        s, alphas[(i, "gate_up_proj")] = search_scale(
            w["gate_up_proj"], h2, group_size, grid, loss=lambda wq: _mse(swiglu(*(h2 @ wq.t()).chunk(2, -1)) @ d_w.t(), m_out))
        n2 /= s
        w["gate_up_proj"] *= s
        h2 = h2 / s
        s, alphas[(i, "down_proj")] = search_scale(d_w, _sample(act, 4 * search_tokens), group_size, grid)
        w["gate_up_proj"][inter:] /= s[:, None]
        w["down_proj"] = d_w * s
        act = act / s

        if clip:
            qk = torch.zeros(w["qkv_proj"].shape[0], dtype=torch.bool, device=dev)
            qk[: q + kv] = True
            inputs = {"qkv_proj": h, "o_proj": a_in, "gate_up_proj": h2, "down_proj": act}
            for name in w:
                clips[(i, name)] = search_clip(w[name], _sample(inputs[name], clip_tokens), group_size,
                                               fixed_rows=qk if name == "qkv_proj" else None)
        norms.append((n1.to(model.dtype), n2.to(model.dtype)))
        dense.append({name: DenseLinear(t) for name, t in w.items()})
        x = x + a_out + m_out  # next layer's input, from the float layer (scaling does not change it)
    scaled = LinearLlama(cfg, model.embed_tokens, norms, dense, model.norm, model.lm_head, "awq-scaled")
    out = quantize_linears(scaled, lambda i, name, w: quantize_weight(w, group_size, name=f"layers.{i}.{name}",
                                                                      clip=clips.get((i, name))),
                           method="awq", group_size=group_size, quantize_lm_head=quantize_lm_head)
    out.meta = {"awq_alpha": {f"layers.{i}.{n}": a for (i, n), a in alphas.items()}}
    return out
