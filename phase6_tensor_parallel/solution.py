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
collectives inside (``static_decode``), with the norm and the attention as fused kernels (``ops``).
"""

from __future__ import annotations

import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.model import swiglu
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LayerWeights
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase6_tensor_parallel.engine import AttnContext, TPEngine, qkv_attention
from phase6_tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear, shard_fused
from phase6_tensor_parallel.ops import rms_norm


def check_tp_size(config: LlamaConfig, world: int) -> None:
    """Megatron shards whole KV heads: the TP size must divide the kv heads (and so the q heads)."""
    if config.num_key_value_heads % world:
        ok = [n for n in range(1, config.num_key_value_heads + 1) if config.num_key_value_heads % n == 0]
        raise TPError(f"--tp {world} does not divide num_key_value_heads={config.num_key_value_heads}: "
                      f"the solution shards whole KV heads; use --tp in {ok}")
    if config.intermediate_size % world:
        raise TPError(f"--tp {world} does not divide intermediate_size={config.intermediate_size}")


class MegatronLayer:
    """Column-parallel qkv/gate_up (no gather) paired with row-parallel o_proj/down (partial sums)."""

    def __init__(self, w: LayerWeights, config: LlamaConfig, group: TPGroup):
        check_tp_size(config, group.world)
        self.config, self.group = config, group
        self.input_norm, self.post_norm = w.input_norm, w.post_norm
        self.n_q_local = config.num_attention_heads // group.world
        self.n_kv_local = config.num_key_value_heads // group.world
        qkv = shard_fused(w.qkv_proj, [config.q_size, config.kv_size, config.kv_size], group,
                          ["num_attention_heads·head_dim", "num_key_value_heads·head_dim", "num_key_value_heads·head_dim"])
        self.qkv = ColumnParallelLinear(w.qkv_proj, group, gather_output=False, shard_weight=qkv)
        i = config.intermediate_size
        gate_up = shard_fused(w.gate_up_proj, [i, i], group, ["intermediate_size", "intermediate_size"])
        self.gate_up = ColumnParallelLinear(w.gate_up_proj, group, gather_output=False, shard_weight=gate_up)
        self.o_proj = RowParallelLinear(w.o_proj, group, reduce_output=False)
        self.down = RowParallelLinear(w.down_proj, group, reduce_output=False)

    def attn_partial(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """This rank's partial o_proj output: all-reduce it and add to the residual."""
        qkv = self.qkv(rms_norm(x, self.input_norm, self.config.rms_norm_eps, ctx.kernels))
        return self.o_proj(qkv_attention(qkv, self.n_q_local, self.n_kv_local, ctx))

    def mlp_partial(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """This rank's partial down_proj output."""
        gate, up = self.gate_up(rms_norm(x, self.post_norm, self.config.rms_norm_eps, ctx.kernels)).chunk(2, dim=-1)
        return self.down(swiglu(gate, up))

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        x = x + self.group.all_reduce(self.attn_partial(x, ctx))
        return x + self.group.all_reduce(self.mlp_partial(x, ctx))


def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
          overlap: bool = True, kernels: bool | None = None, **_ignored) -> TPEngine:
    """This rank's engine; ``overlap`` alternates two half batches between compute and async all-reduce;
    ``kernels``: Triton norms and attention in the decode step (default: on CUDA)."""
    group = group or TPGroup()
    check_tp_size(model.config, group.world)
    mode = "Megatron column/row pairing, 2 all-reduces per layer" + (", half-batch overlap" if overlap else "")
    return TPEngine(model, group, MegatronLayer, name="solution", mode=mode, overlap=overlap,
                    max_seq_len=max_seq_len, kernels=kernels)

