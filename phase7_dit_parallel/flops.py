"""Matmul FLOPs of one DiT step (one ``forward`` of ``batch`` latents of ``tokens`` tokens), by part.

A matmul ``[m, k] @ [k, n]`` is ``2·m·n·k`` FLOPs; elementwise work (LayerNorm, GELU, softmax, modulation)
is left out, as in the roofline and in ``torch.utils.flop_counter``. Per block, with ``H = hidden``:
attention ``4·B·S²·H`` (QKᵀ and PV over all heads), MLP ``4·B·S·H·M``, projections ``8·B·S·H²`` (q|k|v and
out), adaLN ``12·B·H²`` (per image, not per token). ``attention`` grows with S², everything else with S —
which is why the attention share of a step climbs with resolution (and frames) and why sequence
parallelism has to split attention, not just the MLP. Limit: a dense count (no causal or sparse masks).
"""

from __future__ import annotations

from phase7_dit_parallel.config import DiTConfig


def step_flops(config: DiTConfig, batch: int, tokens: int) -> dict[str, int]:
    """``attention`` (QKᵀ, PV), ``mlp`` (fc1, fc2), ``other`` (q|k|v and out projections, adaLN, patch and
    timestep embeddings, final layer; ``projections`` is its q|k|v and out part) and ``total``, in FLOPs."""
    b, s, h, m = batch, tokens, config.hidden, config.mlp_hidden
    patch_in = config.in_channels * config.patch ** 2
    patch_out = config.out_channels * config.patch ** 2
    attention = config.depth * 4 * b * s * s * h
    mlp = config.depth * 2 * (2 * b * s * h * m)
    projections = config.depth * 2 * b * s * h * (3 * h + h)
    adaln = config.depth * 2 * b * h * 6 * h + 2 * b * h * 2 * h
    embeddings = 2 * b * s * patch_in * h + 2 * b * (config.frequency_dim * h + h * h)
    final = 2 * b * s * h * patch_out
    other = projections + adaln + embeddings + final
    return {"attention": attention, "mlp": mlp, "other": other, "projections": projections,
            "total": attention + mlp + other}
