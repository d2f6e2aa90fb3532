"""Phase 6 solution: Megatron pairing — two all-reduces per layer, heads and KV cache split, comm overlapped.

- QKV and gate/up are column-parallel WITHOUT gather: rank r keeps its q heads, the kv heads those q heads
  attend to (GQA groups are contiguous), and its slice of the intermediate features. The fused weights are
  split per block (``layers.shard_fused``), not as one contiguous range.
- o_proj and down_proj are row-parallel: their input is exactly the slice rank r produced, so no
  communication is needed in between; their partial outputs are summed by one all-reduce each.
- Attention runs on Hq/N heads and the KV cache holds Hkv/N heads per rank: the cache's memory and
  bandwidth are split too. N must divide the kv heads (TinyLlama: 4, so TP ∈ {1, 2, 4}).
- With ``overlap=True`` (default) and batch ≥ 2 the engine splits the batch in two halves and alternates them,
  so one half's all-reduce (``dist.all_reduce(async_op=True)``) runs while the other half computes.

Limit approached: per decode step each rank reads 1/N of the weights and of the cache (HBM bandwidth / N)
plus 2·layers all-reduces of ``batch × hidden`` elements, each costing at least NCCL's latency however
small (α of ``allreduce_study``). For a model as small as TinyLlama those 44 latencies add up to more than
TP=1's whole weight read (the arithmetic: ``NOTES.md``). On a GPU the step is one CUDA graph with the NCCL
collectives inside (``static_decode``), with the attention as fused kernels (``ops``).

The layer is phase 0's ``decoder_layer``; this module decides how its weights are split (``shard_weights``,
for ``TPEngine`` and phase 4's paged runner). The overlap runs it as ``engine.overlapped_layer``.
"""

from __future__ import annotations

from dataclasses import replace

from phase0_prototype.config import LlamaConfig
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase6_tensor_parallel.engine import TPEngine
from phase6_tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear, shard_fused


def check_tp_size(config: LlamaConfig, world: int) -> None:
    """Megatron shards whole KV heads: the TP size must divide the kv heads (and so the q heads)."""
    if config.num_key_value_heads % world:
        ok = [n for n in range(1, config.num_key_value_heads + 1) if config.num_key_value_heads % n == 0]
        raise TPError(f"--tp {world} does not divide num_key_value_heads={config.num_key_value_heads}: "
                      f"the solution shards whole KV heads; use --tp in {ok}")
    if config.intermediate_size % world:
        raise TPError(f"--tp {world} does not divide intermediate_size={config.intermediate_size}")


def shard_weights(weights: LlamaWeights, group: TPGroup) -> LlamaWeights:
    """Megatron pairing of every layer's projections (matrices or phase 5's INT4 layers), and a config with
    this rank's Hq/N and Hkv/N heads (its KV cache holds Hkv/N heads). Embedding, norms, lm_head unchanged.

    qkv and gate/up: ``ColumnParallelLinear`` without gather, each fused block sharded on its own
    (``shard_fused``); o_proj and down: ``RowParallelLinear``, whose call all-reduces its partial sum
    (``partial`` leaves it to the caller: the overlapped engine)."""
    cfg = weights.config
    check_tp_size(cfg, group.world)
    i, kv = cfg.intermediate_size, "num_key_value_heads·head_dim"
    layers = []
    for w in weights.layers:
        qkv = shard_fused(w.qkv_proj, [cfg.q_size, cfg.kv_size, cfg.kv_size], group,
                          ["num_attention_heads·head_dim", kv, kv])
        gate_up = shard_fused(w.gate_up_proj, [i, i], group, ["intermediate_size", "intermediate_size"])
        layers.append(replace(
            w, qkv_proj=ColumnParallelLinear(w.qkv_proj, group, gather_output=False, shard_weight=qkv),
            gate_up_proj=ColumnParallelLinear(w.gate_up_proj, group, gather_output=False, shard_weight=gate_up),
            o_proj=RowParallelLinear(w.o_proj, group), down_proj=RowParallelLinear(w.down_proj, group)))
    config = cfg.with_(num_attention_heads=cfg.num_attention_heads // group.world,
                       num_key_value_heads=cfg.num_key_value_heads // group.world)
    return replace(weights, config=config, layers=layers)


def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
          overlap: bool = True, kernels: bool | None = None, **_ignored) -> TPEngine:
    """This rank's engine; ``overlap`` alternates two half batches between compute and async all-reduce;
    ``kernels``: the final norm and the one-token attention as Triton kernels (default: on CUDA)."""
    group = group or TPGroup()
    check_tp_size(model.config, group.world)
    mode = "Megatron column/row pairing, 2 all-reduces per layer" + (", half-batch overlap" if overlap else "")
    return TPEngine(model, group, shard_weights, name="solution", mode=mode, overlap=overlap,
                    max_seq_len=max_seq_len, kernels=kernels)

