"""Sequence parallelism for DiT: each of N ranks holds S/N tokens; only attention needs the others.

Every DiT op but attention is per-token, so a token shard runs embed → blocks → final with no communication
except inside attention, where each query must see every key. Two ways to provide that:

- **Ulysses** (DeepSpeed-Ulysses, arXiv 2309.14509): an all-to-all turns ``[B, heads, S/N, d]`` (my tokens,
  all heads) into ``[B, heads/N, S, d]`` (all tokens, my heads); any single-device ``attend`` runs; one
  all-to-all turns it back. Volume per rank falls as 1/N, but N can be at most ``heads`` (N | heads here).
- **Ring** (Ring Attention, arXiv 2310.01889): K/V blocks travel round the ring in N−1 steps while each rank
  attends its queries to the block it holds; partial outputs merge by their log-sum-exp (FlashAttention's
  online softmax). No head limit and the transfer hides behind the block's compute, at N steps of
  latency. xDiT's USP (arXiv 2405.07719) combines both (Ulysses inside a node, ring across); not done here.

Communication uses ``torch.distributed`` on the default group (phase 6's ``TPGroup``: rank, world);
everything is the identity at world 1. Gloo (CPU) and NCCL (CUDA) both run it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist

from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase7_dit_parallel import model
from phase7_dit_parallel.weights import DiTWeights

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
PARALLEL_MODES = ("ulysses", "ring")


class SPError(TPError):
    """A user-facing sequence-parallel error (shapes the split cannot serve): one line, no traceback."""


def check_heads(heads: int, world: int) -> None:
    """Ulysses splits heads across ranks: N must divide the head count (so N ≤ heads)."""
    if heads % world:
        raise SPError(f"Ulysses needs the head count ({heads}) divisible by the sequence-parallel size {world} "
                      f"(at most {heads} ranks): use a size that divides {heads} or parallel='ring'")


def check_tokens(tokens: int, world: int) -> None:
    if tokens % world:
        raise SPError(f"sequence parallelism splits {tokens} tokens into {world} equal shards: "
                      f"use a size that divides {tokens} or another latent size")


# --- Ulysses ---------------------------------------------------------------------------------------

def _all_to_all(x: torch.Tensor) -> torch.Tensor:
    """Chunk i of ``x``'s dim 0 goes to rank i; chunk i of the result came from rank i."""
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x)
    return out


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: TPGroup,
                      attend: Attend) -> torch.Tensor:
    """``attend`` over the whole sequence for this rank's ``[B, heads, S/N, d]`` shard; returns the same shape.

    q, k and v go in ONE all-to-all (stacked): the same bytes as three, one latency instead of three, and the
    stacked buffer costs no extra copy: each tensor is copied once into the head-major layout the
    collective needs, as three separate collectives would need too.
    """
    b, heads, s_local, d = q.shape
    n = group.world
    check_heads(heads, n)
    if n == 1:
        return attend(q, k, v)
    hl = heads // n
    # [B, H, S/N, d] x 3 -> [N (head group = destination rank), 3, B, H/N, S/N, d]: one copy per tensor
    qkv = torch.empty(n, 3, b, hl, s_local, d, dtype=q.dtype, device=q.device)
    for i, x in enumerate((q, k, v)):
        qkv[:, i] = x.unflatten(1, (n, hl)).transpose(0, 1)
    qkv = _all_to_all(qkv)  # dim 0 now: the source rank = which sequence shard
    # [N (seq shard), 3, B, H/N, S/N, d] -> [3, B, H/N, S, d]
    qkv = qkv.permute(1, 2, 3, 0, 4, 5).reshape(3, b, hl, n * s_local, d)
    out = attend(qkv[0], qkv[1], qkv[2])  # [B, H/N, S, d]
    # Back: [B, H/N, N (seq shard = destination), S/N, d] -> [N, B, H/N, S/N, d]
    out = out.reshape(b, hl, n, s_local, d).permute(2, 0, 1, 3, 4).contiguous()
    out = _all_to_all(out)  # dim 0 now: the source rank = which head group
    return out.permute(1, 0, 2, 3, 4).reshape(b, heads, s_local, d)


# --- Ring ------------------------------------------------------------------------------------------

def _explicit_attention_with_lse(q, k, v):
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    row_max = scores.amax(dim=-1, keepdim=True)
    p = torch.exp(scores - row_max)  # max-subtracted: no overflow whatever the scores
    denom = p.sum(dim=-1, keepdim=True)
    out = (p @ v.float()) / denom
    return out.to(q.dtype), (row_max + torch.log(denom)).squeeze(-1)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ/√d)·v and its row log-sum-exp ``[B, heads, S_q]`` (float32, natural log).

    The LSE is what lets two partial attentions over disjoint key blocks be merged exactly. CUDA: the fused
    kernels that return it (flash for fp16/bf16, memory-efficient for fp32; its LSE is padded to a multiple
    of 32 rows, hence the slice). CPU: explicit float32 math with a max-subtracted exp.
    """
    if q.device.type != "cuda":
        return _explicit_attention_with_lse(q, k, v)
    if q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., :q.shape[-2]].float()


def merge_partials(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
                   block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax: two attentions of the same queries over disjoint keys -> the attention over both.

    Each output is rescaled by exp(its LSE − the joint LSE), the share of the joint softmax mass its keys
    hold. In float32: the weights are ratios of exponentials and lose bits in half precision.
    """
    new_lse = torch.logaddexp(lse, block_lse)
    keep, add = torch.exp(lse - new_lse).unsqueeze(-1), torch.exp(block_lse - new_lse).unsqueeze(-1)
    return out * keep + block_out.float() * add, new_lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: TPGroup) -> torch.Tensor:
    """Attention of this rank's ``[B, heads, S/N, d]`` queries over every rank's keys; returns q's shape.

    Step i attends to the K/V block of rank (r − i) mod N while that block is already being passed on to
    rank r + 1 and the next one received from rank r − 1 (one ``batch_isend_irecv`` of K and V stacked),
    so the transfer overlaps the block's attention. N blocks of compute, N − 1 transfers; no head limit.
    """
    n, r = group.world, group.rank
    kv = torch.stack((k, v)).contiguous()
    out, lse = None, None
    for step in range(n):
        pending = []
        if step < n - 1:
            incoming = torch.empty_like(kv)
            pending = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, (r + 1) % n),
                                              dist.P2POp(dist.irecv, incoming, (r - 1) % n)])
        block_out, block_lse = attention_with_lse(q, kv[0], kv[1])
        if out is None:
            out, lse = block_out.float(), block_lse
        else:
            out, lse = merge_partials(out, lse, block_out, block_lse)
        for work in pending:
            work.wait()
        if pending:
            kv = incoming
    return out.to(q.dtype)


# --- the DiT forward on a token shard --------------------------------------------------------------

def sp_attend(parallel: str, group: TPGroup, attend: Attend) -> Attend:
    """The ``attend(q, k, v)`` the blocks call on a shard: Ulysses around ``attend``, or the ring (which
    needs the LSE, so it uses ``attention_with_lse`` and not ``attend``)."""
    if parallel == "ulysses":
        return lambda q, k, v: ulysses_attention(q, k, v, group, attend)
    if parallel == "ring":
        return lambda q, k, v: ring_attention(q, k, v, group)
    raise SPError(f"unknown sequence parallelism {parallel!r}: choose one of {', '.join(PARALLEL_MODES)}")


def gather_tokens(x: torch.Tensor, group: TPGroup) -> torch.Tensor:
    """Every rank's ``[B, S/N, D]`` shard -> ``[B, S, D]`` in rank order, on every rank."""
    if not group.distributed:
        return x
    out = torch.empty(group.world * x.shape[0], *x.shape[1:], dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous())  # rank slices stacked on dim 0: one collective
    b, s_local, dim = x.shape
    return out.view(group.world, b, s_local, dim).transpose(0, 1).reshape(b, group.world * s_local, dim)


def sp_forward(weights: DiTWeights, latents: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor, group: TPGroup,
               parallel: str, attend: Attend) -> torch.Tensor:
    """The DiT forward with the tokens split over ``group``: ``[B, out_channels, H, W]`` on every rank.

    Embedding runs whole on every rank (a patch projection: cheap), then each rank keeps its contiguous
    S/N tokens through the blocks and the final layer; one all-gather rebuilds the sequence to unpatchify.
    Shapes are checked before any collective, so every rank refuses the same way and none hangs.
    """
    config = weights.config
    block_attend = sp_attend(parallel, group, attend)  # refuses an unknown mode first
    height, width = latents.shape[-2:]
    check_tokens((height // config.patch) * (width // config.patch), group.world)
    if parallel == "ulysses":
        check_heads(config.heads, group.world)
    tokens, cond = model.embed(weights, latents, timesteps, labels)
    s_local = tokens.shape[1] // group.world
    x = tokens[:, group.rank * s_local:(group.rank + 1) * s_local]
    for bw in weights.blocks:
        x = model.block(bw, x, cond, block_attend)
    x = gather_tokens(model.final(weights, x, cond), group)
    return model.unpatchify(config, x, height, width)
