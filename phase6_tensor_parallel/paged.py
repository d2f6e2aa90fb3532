"""One rank's shard of a model for phase 4's paged runner: ``(shard model, weights, linear)``.

Phase 4's ``PagedModelRunner`` runs every projection as ``linear(x, w)``; here the projection fields of
phase 0's fused ``LlamaWeights`` become ``layers``' parallel layers (``solution.shard_weights`` or
``framework.shard_weights``, the lesson engine's own layouts) and ``linear`` is ``layers.project``, so the
scheduler, the paged KV cache and attention do not change (``shared.tp_workers`` runs one runner a rank).
The weights may be phase 5's INT4 layers (``QuantLinear``): each is cut like a matrix, by output rows or by
input columns — whole quantization groups (``check_layout`` refuses a ``--tp`` that would split one).

- ``solution`` (Megatron pairing): qkv and gate/up column-parallel without gather (this rank's heads and
  intermediate slice), o_proj and down row-parallel, each all-reducing its output — 2 all-reduces a layer.
  The shard model's config has Hq/N and Hkv/N heads, so the runner's KV cache holds this rank's kv heads only.
- ``framework``: every projection column-parallel with its output all-gathered (4 collectives a layer);
  activations and the KV cache replicated — the starting layout.

Limit: the embedding, the norms and the lm_head stay whole on every rank (each rank computes the full
logits, rank 0 alone uses them): the simplest correct choice, at vocab × hidden of memory per rank.
"""

from __future__ import annotations

from dataclasses import replace

from phase0_prototype.config import LlamaConfig
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights, fuse
from phase6_tensor_parallel import framework, solution
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase6_tensor_parallel.layers import check_whole_groups, project

LAYOUTS = {"solution": solution.shard_weights, "framework": framework.shard_weights}


def check_layout(config: LlamaConfig, world: int, layout: str, group_size: int | None = None) -> None:
    """``TPError`` (one line) when ``layout`` cannot split ``config`` over ``world`` ranks; ``group_size``:
    the projections' INT4 group size, which each row-parallel shard of input columns must respect."""
    if layout not in LAYOUTS:
        raise TPError(f"phase6={layout}: the paged tensor-parallel workers shard as {' or '.join(LAYOUTS)}; "
                      "choose one of them")
    if layout == "solution":
        solution.check_tp_size(config, world)
        if group_size is not None:
            check_whole_groups(config.q_size // world, group_size, world, "o_proj inputs (attention heads)")
            check_whole_groups(config.intermediate_size // world, group_size, world, "down_proj inputs")
        return
    rows = {"hidden_size": config.hidden_size, "q+k+v rows": config.q_size + 2 * config.kv_size,
            "2·intermediate_size": 2 * config.intermediate_size}
    for what, n in rows.items():
        if n % world:
            raise TPError(f"--tp {world} does not divide {what}={n}: choose a --tp that divides it")


def shard(model: LoadedModel, group: TPGroup, layout: str = "solution",
          weights: LlamaWeights | None = None) -> tuple[LoadedModel, LlamaWeights, object]:
    """This rank's ``(model, weights, linear)`` for ``PagedModelRunner`` / phase 4's ``BatchingEngine``.

    ``weights``: the model in phase 0's fused layout with other projection objects (phase 5's INT4
    ``int4_weights``); by default ``fuse(model.state)``. The returned model keeps the tokenizer and a config
    with this rank's head counts (``solution``), and no state dict but the embedding (the runner reads dtype
    and device from it)."""
    check_layout(model.config, group.world, layout)
    full = weights if weights is not None else fuse(model.state, model.config)
    sharded = LAYOUTS[layout](full, group)
    shard_model = replace(model, config=sharded.config, state={"model.embed_tokens.weight": full.embed_tokens})
    return shard_model, sharded, project
