"""One rank's shard of a model for phase 4's paged runner: ``(shard model, weights, linear)``.

Phase 4's ``PagedModelRunner`` runs every projection as ``linear(x, w)``; here the projection fields of
phase 0's fused ``LlamaWeights`` become this module's parallel layers and ``linear`` calls them, so the
scheduler, the paged KV cache and attention do not change (``shared.tp_workers`` runs one runner a rank).

- ``solution`` (Megatron pairing, as ``solution.MegatronLayer``): qkv and gate/up column-parallel without
  gather (this rank's heads and intermediate slice, each fused block sharded: ``layers.shard_fused``),
  o_proj and down row-parallel, each all-reducing its output — 2 all-reduces a layer. The shard model's
  config has Hq/N and Hkv/N heads, so the runner's KV cache holds this rank's kv heads only.
- ``framework``: every projection column-parallel with its output all-gathered (4 collectives a layer);
  activations and the KV cache replicated — the seed's layout.

Limit: the embedding, the norms and the lm_head stay whole on every rank (each rank computes the full
logits, rank 0 alone uses them): the simplest correct choice, at vocab × hidden of memory per rank.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from phase0_prototype.config import LlamaConfig
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights, fuse
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase6_tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear, shard_fused
from phase6_tensor_parallel.solution import check_tp_size

LAYOUTS = ("solution", "framework")


def check_layout(config: LlamaConfig, world: int, layout: str) -> None:
    """``TPError`` (one line) when ``layout`` cannot split ``config`` over ``world`` ranks."""
    if layout not in LAYOUTS:
        raise TPError(f"phase6={layout}: the paged tensor-parallel workers shard as {' or '.join(LAYOUTS)}; "
                      "choose one of them")
    if layout == "solution":
        check_tp_size(config, world)
        return
    rows = {"hidden_size": config.hidden_size, "q+k+v rows": config.q_size + 2 * config.kv_size,
            "2·intermediate_size": 2 * config.intermediate_size}
    for what, n in rows.items():
        if n % world:
            raise TPError(f"--tp {world} does not divide {what}={n}: choose a --tp that divides it")


def parallel_linear(x: torch.Tensor, w) -> torch.Tensor:
    """The runner's ``linear``: a parallel layer calls itself; a replicated matrix (lm_head): ``F.linear``."""
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)


def shard(model: LoadedModel, group: TPGroup,
          layout: str = "solution") -> tuple[LoadedModel, LlamaWeights, object]:
    """This rank's ``(model, weights, linear)`` for ``PagedModelRunner`` / phase 4's ``LLMEngine``.

    The returned model keeps the tokenizer and a config with this rank's head counts (``solution``), and
    no state dict but the embedding (the runner reads dtype and device from it)."""
    cfg = model.config
    check_layout(cfg, group.world, layout)
    full = fuse(model.state, cfg)
    layers = []
    if layout == "solution":
        config = cfg.with_(num_attention_heads=cfg.num_attention_heads // group.world,
                           num_key_value_heads=cfg.num_key_value_heads // group.world)
        i = cfg.intermediate_size
        for w in full.layers:
            qkv = shard_fused(w.qkv_proj, [cfg.q_size, cfg.kv_size, cfg.kv_size], group,
                              ["num_attention_heads·head_dim", "num_key_value_heads·head_dim",
                               "num_key_value_heads·head_dim"])
            gate_up = shard_fused(w.gate_up_proj, [i, i], group, ["intermediate_size", "intermediate_size"])
            layers.append(replace(
                w, qkv_proj=ColumnParallelLinear(w.qkv_proj, group, gather_output=False, shard_weight=qkv),
                gate_up_proj=ColumnParallelLinear(w.gate_up_proj, group, gather_output=False,
                                                  shard_weight=gate_up),
                o_proj=RowParallelLinear(w.o_proj, group), down_proj=RowParallelLinear(w.down_proj, group)))
    else:
        config = cfg
        for w in full.layers:
            layers.append(replace(w, **{name: ColumnParallelLinear(getattr(w, name), group)
                                        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")}))
    weights = replace(full, config=config, layers=layers)
    shard_model = replace(model, config=config, state={"model.embed_tokens.weight": full.embed_tokens})
    return shard_model, weights, parallel_linear
