"""Ulysses or ring? Phase 6's α-β model applied to the attention of one DiT block on N ranks.

A collective costs ``α + bytes/β`` (``phase6_tensor_parallel.allreduce_study``: α the per-message latency,
β the link bandwidth; ``link_from_fit`` takes both from that study's fit). Per block and rank, with
``unit = B·(S/N)·hidden·bytes`` (one of q, k, v, out on this rank's tokens):

- **Ulysses** (``sequence_parallel.ulysses_attention``): q, k, v stacked in one all-to-all, out in another,
  each moving (N−1)/N of its buffer, on the critical path: ``2α + 4·(N−1)/N·unit/β`` + the attention.
- **Ring**: N−1 steps each passing K and V (``2·unit``) while the step's block attention (FLOPs
  ``4·B·(S/N)²·hidden``) runs: ``(N−1)·max(compute, α + 2·unit/β) + compute`` (the last block has no
  transfer to hide). Its compute grows as (S/N)² and its transfer as S/N, so long sequences hide it all.

Limits: one α per collective whatever N (a switch: NVSwitch), no merge or per-block kernel-efficiency
cost for the ring, the rest of the block (MLP, projections: identical for both) left out. Ulysses needs
N | heads ("ring only" otherwise). Defaults are assumptions, not measurements: pass your own figures.
"""

from __future__ import annotations

from phase6_tensor_parallel.allreduce_study import AlphaBeta
from phase7_dit_parallel.config import LATENT_SIZES, DiTConfig

# Assumptions (datasheet-like, not measured): NCCL's per-collective latency on NVLink is of the order of
# 10 µs; NVLink 4 on an H100 SXM is 900 GB/s bidirectional = 450 GB/s per direction per GPU; attention
# kernels reach about half of the H100 SXM dense BF16 peak (989 TFLOP/s on the datasheet).
ALPHA_S_ASSUMED = 10e-6
BETA_BYTES_PER_S_ASSUMED = 450e9
ATTN_TFLOPS_ASSUMED = 500.0
WORLDS = (2, 4, 8)


def link_from_fit(fit: dict) -> tuple[float, float]:
    """``(alpha_s, beta_bytes_per_s)`` from a phase 6 α-β fit (``analyse(run)["fit"]``, one link's figures)."""
    line = AlphaBeta(**fit)
    return line.alpha_s, 1.0 / line.beta_s_per_byte


def all_to_all_s(n_bytes: float, world: int, alpha_s: float, beta_bytes_per_s: float) -> float:
    """One all-to-all of an ``n_bytes`` buffer per rank: (N−1)/N of it leaves the rank; free at N = 1."""
    return alpha_s + (world - 1) / world * n_bytes / beta_bytes_per_s if world > 1 else 0.0


def attention_flops(batch: int, q_tokens: int, kv_tokens: int, hidden: int) -> float:
    """Q·Kᵀ and P·V over all heads: 2 matmuls of 2·B·Sq·Skv·hidden FLOPs."""
    return 4.0 * batch * q_tokens * kv_tokens * hidden


def predict(config: DiTConfig, batch: int, tokens: int, world: int, alpha_s: float = ALPHA_S_ASSUMED,
            beta_bytes_per_s: float = BETA_BYTES_PER_S_ASSUMED, attn_tflops: float = ATTN_TFLOPS_ASSUMED,
            dtype_bytes: int = 2) -> dict:
    """Seconds of one block's attention + its communication for each mode, and the winner.

    ``ulysses_s`` is None where ``world`` does not divide the heads (winner "ring only"). The details
    (bytes per rank, per-step compute and transfer, exposed communication) come along for the tables.
    """
    if tokens % world:
        raise ValueError(f"{tokens} tokens do not split into {world} equal shards: pick N dividing {tokens}")
    shard = tokens // world
    unit = batch * shard * config.hidden * dtype_bytes
    step_compute_s = attention_flops(batch, shard, shard, config.hidden) / (attn_tflops * 1e12)
    compute_s = world * step_compute_s  # the same FLOPs in both modes: S/N queries against S keys
    ulysses_comm_s = all_to_all_s(3 * unit, world, alpha_s, beta_bytes_per_s) + all_to_all_s(
        unit, world, alpha_s, beta_bytes_per_s)
    step_transfer_s = alpha_s + 2 * unit / beta_bytes_per_s if world > 1 else 0.0
    ring_s = (world - 1) * max(step_compute_s, step_transfer_s) + step_compute_s
    ulysses_ok = config.heads % world == 0
    ulysses_s = compute_s + ulysses_comm_s if ulysses_ok else None
    winner = "ring only" if not ulysses_ok else "ulysses" if ulysses_s <= ring_s else "ring"
    return {"ulysses_s": ulysses_s, "ring_s": ring_s, "winner": winner, "compute_s": compute_s,
            "ulysses_comm_s": ulysses_comm_s, "ulysses_bytes_moved": 4 * unit * (world - 1) / world,
            "ring_step_bytes": 2 * unit if world > 1 else 0, "step_compute_s": step_compute_s,
            "step_transfer_s": step_transfer_s, "ring_exposed_s": ring_s - compute_s}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def crossover_table(config: DiTConfig, batch: int, worlds: tuple[int, ...] = WORLDS,
                    latent_sizes: dict[str, int] = LATENT_SIZES, alpha_s: float = ALPHA_S_ASSUMED,
                    beta_bytes_per_s: float = BETA_BYTES_PER_S_ASSUMED, attn_tflops: float = ATTN_TFLOPS_ASSUMED,
                    dtype_bytes: int = 2) -> str:
    """Markdown: per latent size (rows) and N (columns) the predicted winner and both times per block.

    The link and compute figures are parameters (defaults: the assumptions above), printed under the table.
    """
    head = "| latent | tokens | " + " | ".join(f"N = {n}" for n in worlds) + " |"
    lines = [head, "|" + " --- |" * (2 + len(worlds))]
    for name, side in latent_sizes.items():
        tokens = config.tokens(side)
        cells = []
        for n in worlds:
            p = predict(config, batch, tokens, n, alpha_s, beta_bytes_per_s, attn_tflops, dtype_bytes)
            if p["ulysses_s"] is None:
                cells.append(f"ring only: heads = {config.heads} (— / {_ms(p['ring_s'])})")
            else:
                cells.append(f"{p['winner']} ({_ms(p['ulysses_s'])} / {_ms(p['ring_s'])})")
        lines.append(f"| {name} | {tokens:,} | " + " | ".join(cells) + " |")
    lines.append(f"\nCells: winner (Ulysses / ring: one block's attention and its communication). Batch {batch}, "
                 f"hidden {config.hidden}, {dtype_bytes}-byte elements; α = {alpha_s * 1e6:.3g} µs, "
                 f"β = {beta_bytes_per_s / 1e9:.3g} GB/s per direction, attention at {attn_tflops:.3g} TFLOP/s. "
                 f"Ulysses needs N | heads ({config.heads}).")
    return "\n".join(lines)
