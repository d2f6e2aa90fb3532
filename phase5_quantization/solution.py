"""AWQ (activation-aware weight quantization): protect the weights that large activations multiply.

A linear's rounding error is ``Σ_c x_c · δw_c``: channels with large activations make their weights' errors
count more. Scaling column ``c`` of W by ``s_c > 1`` and the activation by ``1/s_c`` (folded into the previous
RMSNorm weight or linear's rows: free) leaves the float function unchanged but shrinks that column's relative
rounding error. Scales are AutoAWQ's "duo" form ``s = mean|x|^α / mean|ŵ|^(1−α)`` with ``α`` from a grid, then
a per (row, group) clip of the range to ``±r·max|w|``, ``r ∈ [0.5, 1]``; both searches minimise an *output*
error on calibration activations, one decoder layer at a time (AutoAWQ's choices):

===================  ======================  ==========================  ====================================
scales for           folded into             error minimised over α      inputs
===================  ======================  ==========================  ====================================
``qkv_proj`` inputs  ``input_norm``          attention block output      RMSNorm(x) → q, k, v → RoPE → SDPA
                                                                         → o_proj
``gate_up`` inputs   ``post_norm``           MLP block output            RMSNorm(x) → gate, up → SwiGLU
                                                                         → down_proj
``down_proj`` inputs up rows of ``gate_up``  down_proj output            silu(gate) · up
``o_proj`` inputs    v rows of ``qkv_proj``  o_proj output               only with ``scale_o``
===================  ======================  ==========================  ====================================

Clipping skips the q and k rows (the softmax amplifies their errors). ``o_proj`` stays RTN by default: under
grouped-query attention its scales would be tied across query heads, and on the bundled model that raised the
loss on held-out chapters (``scale_o=True`` / ``no_clip=()`` turn it on; NOTES.md). Calibration windows start
with ``<s>`` like training: that position carries the largest activations, exactly the channels AWQ protects.
The result is plain INT4 in RTN's layout: AWQ costs nothing at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phase0_prototype.errors import ModelError
from phase0_prototype.model import apply_rope, repeat_kv, rms_norm, rope_cache, swiglu
from phase5_quantization.framework import quantize_linears, quantize_weight
from phase5_quantization.linear import DenseLinear
from phase5_quantization.model import LinearLlama, calibration_windows
from phase5_quantization.packing import GROUP_SIZE, QMAX, check_divisible, group_params


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
                 tie: tuple[int, int, int] | None = None, loss=None,
                 duo: bool = False) -> tuple[torch.Tensor, float]:
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
    w_mean = None
    if duo:  # AutoAWQ's duo scaling: s = mean|x|^α / mean|w/max|w||^(1−α) (large weights are scaled down too)
        g = w.abs().view(w.shape[0], -1, group_size)
        w_mean = (g / g.amax(-1, keepdim=True).clamp(min=1e-8)).view_as(w).mean(0)
        if tie is not None:
            w_mean = w_mean.view(tie).mean(1, keepdim=True).expand(tie).reshape(-1)
    best = (loss(fake_quant(w, group_size)), torch.ones_like(x_mean), 0.0)  # α = 0: plain RTN
    for k in range(1, grid + 1):
        alpha = k / grid
        s = x_mean.pow(alpha) if w_mean is None else x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
        s = s.clamp(min=1e-4)
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


def _attention(cfg, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention of ``qkv [S, T, q+2kv]`` -> ``[S, T, Hq·D]`` (what ``o_proj`` reads)."""
    S, T, _ = qkv.shape
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], -1)
    q, k = apply_rope(q.view(S, T, Hq, D), k.view(S, T, Hkv, D), cos, sin,
                      torch.arange(T, device=qkv.device).expand(S, T))
    g = Hq // Hkv
    o = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k.transpose(1, 2), g),
                                       repeat_kv(v.view(S, T, Hkv, D).transpose(1, 2), g), is_causal=True)
    return o.transpose(1, 2).reshape(S, T, Hq * D)


def _sample(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every ``k``-th row of ``x`` flattened to ``[rows, features]``, ``n`` rows at most (deterministic)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.shape[0] <= n else x[:: x.shape[0] // n][:n]


def _block_losses(cfg, w: dict, x: dict, ref: dict, cos, sin) -> dict:
    """Output error of each linear's block with that linear replaced: ``name -> loss(w_hat)``.

    ``w``: the (scaled) float weights, ``x``: their (scaled) inputs ``[S, T, F]``, ``ref``: the float block
    outputs.
    """
    h, a_in, h2, act = (x[n] for n in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))
    a_out, m_out = ref["attn"], ref["mlp"]
    o_w, d_w = w["o_proj"], w["down_proj"]
    return {"qkv_proj": lambda wq: _mse(_attention(cfg, h @ wq.t(), cos, sin) @ o_w.t(), a_out),
            "o_proj": lambda wq: _mse(a_in @ wq.t(), a_out),
            "gate_up_proj": lambda wq: _mse(swiglu(*(h2 @ wq.t()).chunk(2, -1)) @ d_w.t(), m_out),
            "down_proj": lambda wq: _mse(act @ wq.t(), m_out)}


def _search_layer(cfg, w: dict, n1, n2, x: torch.Tensor, cos, sin, group_size: int, grid: int, clip: bool,
                  clip_tokens: int, scale_o: bool, no_clip: tuple, no_scale: tuple = (),
                  duo: bool = False) -> tuple[dict, dict, torch.Tensor]:
    """One decoder layer: scales (folded into ``w``, ``n1``, ``n2`` in place), then clips. Returns
    ``(alphas, clips, float layer output)``."""
    eps, q, kv, inter = cfg.rms_norm_eps, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    tie = (cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, cfg.head_dim)
    # the float layer, once: every search compares against these outputs
    h = rms_norm(x, n1, eps)
    a_in = _attention(cfg, h @ w["qkv_proj"].t(), cos, sin)
    ref = {"attn": a_in @ w["o_proj"].t()}
    h2 = rms_norm(x + ref["attn"], n2, eps)
    act = swiglu(*(h2 @ w["gate_up_proj"].t()).chunk(2, -1))
    ref["mlp"] = act @ w["down_proj"].t()
    inputs = {"qkv_proj": h, "o_proj": a_in, "gate_up_proj": h2, "down_proj": act}
    alphas = {}

    def scale_for(name, **kw):
        loss = _block_losses(cfg, w, inputs, ref, cos, sin)[name]
        s, alphas[name] = search_scale(w[name], inputs[name], group_size, 0 if name in no_scale else grid,
                                       loss=loss, duo=duo, **kw)
        inputs[name] = inputs[name] / s
        return s

    s = scale_for("qkv_proj")
    n1 /= s
    w["qkv_proj"] *= s
    if scale_o or tie[1] == 1:
        s = scale_for("o_proj", tie=tie)
        w["qkv_proj"][q + kv:] /= s.view(tie)[:, 0].reshape(-1)[:, None]  # one scale per v row
        w["o_proj"] *= s
    s = scale_for("gate_up_proj")
    n2 /= s
    w["gate_up_proj"] *= s
    s = scale_for("down_proj")
    w["gate_up_proj"][inter:] /= s[:, None]
    w["down_proj"] *= s

    clips = {}
    if clip:
        qk = torch.zeros(w["qkv_proj"].shape[0], dtype=torch.bool, device=w["qkv_proj"].device)
        qk[: q + kv] = True
        for name in (n for n in w if n not in no_clip):
            clips[name] = search_clip(w[name], _sample(inputs[name], clip_tokens), group_size,
                                      fixed_rows=qk if name == "qkv_proj" else None)
    return alphas, clips, x + ref["attn"] + ref["mlp"]


@torch.inference_mode()
def quantize(model: LinearLlama, calibration_ids, *, group_size: int = GROUP_SIZE, grid: int = 20,
             clip: bool = True, search_tokens: int = 4096, clip_tokens: int = 512, seq_len: int = 256,
             scale_o: bool = False, no_clip: tuple = ("o_proj",), no_scale: tuple = (), duo: bool = True,
             quantize_lm_head: bool = False, keep_scaled: bool = False) -> LinearLlama:
    """AWQ every projection of ``model`` (float ``LinearLlama``) with activations over ``calibration_ids``.

    ``scale_o``: also scale o_proj's inputs under GQA (scales tied per v head); ``no_clip``: linears whose
    range is not clipped; ``duo``: AutoAWQ's default "duo" scales ``mean|x|^α / mean|ŵ|^(1−α)`` (``ŵ``:
    weights over their group's max) instead of ``mean|x|^α`` alone. ``keep_scaled``: keep the scaled float
    weights in ``meta["scaled"]`` (diagnostics).
    """
    cfg = model.config
    if calibration_ids is None:
        raise ModelError("AWQ needs calibration text (token ids): pass calibration_ids, or use RTN")
    for i, layer in enumerate(model.linears):
        for name, lin in layer.items():
            check_divisible(f"layers.{i}.{name}", tuple(lin.dense().shape), group_size)
    dev = model.embed_tokens.device
    windows = calibration_windows(calibration_ids, search_tokens, min(seq_len, cfg.max_position_embeddings),
                                  cfg.bos_token_id).to(dev)
    cos, sin = rope_cache(cfg, windows.shape[1], dev)
    x = model.embed_tokens[windows].float()  # the residual stream entering layer i: [S, T, hidden]
    norms, dense, alphas, clips = [], [], {}, {}
    from tqdm.auto import tqdm  # a progress bar on a terminal (stderr); silent in logs and tests

    for i, layer in enumerate(tqdm(model.linears, desc="AWQ search", unit="layer", disable=None)):
        w = {name: lin.dense().float().clone() for name, lin in layer.items()}
        n1, n2 = (n.float().clone() for n in model.norms[i])
        layer_alphas, layer_clips, x = _search_layer(cfg, w, n1, n2, x, cos, sin, group_size, grid, clip,
                                                     clip_tokens, scale_o, no_clip, no_scale, duo)
        alphas.update({(i, n): a for n, a in layer_alphas.items()})
        clips.update({(i, n): c for n, c in layer_clips.items()})
        norms.append((n1.to(model.dtype), n2.to(model.dtype)))
        dense.append({name: DenseLinear(t) for name, t in w.items()})
    scaled = LinearLlama(cfg, model.embed_tokens, norms, dense, model.norm, model.lm_head, "awq-scaled")
    out = quantize_linears(scaled, lambda i, name,
                           w: quantize_weight(w, group_size, name=f"layers.{i}.{name}",
                                                                      clip=clips.get((i, name))),
                           method="awq", group_size=group_size, quantize_lm_head=quantize_lm_head)
    out.meta = {"awq_alpha": {f"layers.{i}.{n}": a for (i, n), a in alphas.items()},
                "awq_clipped": sorted(f"layers.{i}.{n}" for i, n in clips)}
    if keep_scaled:  # the scaled float weights (diagnostics: which quantized matrix costs what)
        out.meta["scaled"] = [{n: lin.dense() for n, lin in layer.items()} for layer in dense]
    return out
