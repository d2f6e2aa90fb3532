"""Phase 6 framework: the seed's tensor parallelism — every linear is column-parallel and all-gathers its output.

Correct, and slow for a reason worth seeing: each rank computes only its slice of each projection's
outputs, but then all-gathers the slices so the activations are replicated again. Per layer that is FOUR
all-gathers (qkv, o_proj, gate_up, down) moving the full activation width, attention over ALL heads on every
rank (so the attention work and the KV cache are not split at all: each rank holds the whole cache), and
every collective sits on the critical path. Compare ``solution``: two all-reduces per layer, heads and cache
split, and the all-reduces overlapped with compute.
"""

from __future__ import annotations

import torch

from phase0_prototype.config import LlamaConfig
from phase0_prototype.model import swiglu
from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LayerWeights
from phase6_tensor_parallel.dist_env import TPGroup
from phase6_tensor_parallel.engine import AttnContext, TPEngine, qkv_attention
from phase6_tensor_parallel.layers import ColumnParallelLinear
from phase6_tensor_parallel.ops import rms_norm


class GatheringLayer:
    """A decoder layer whose four linears each shard output rows and all-gather (replicated activations)."""

    def __init__(self, w: LayerWeights, config: LlamaConfig, group: TPGroup):
        self.config = config
        self.input_norm, self.post_norm = w.input_norm, w.post_norm
        # A contiguous row shard of the fused q|k|v is fine here: the gather puts the rows back in order.
        self.qkv = ColumnParallelLinear(w.qkv_proj, group, gather_output=True)
        self.o_proj = ColumnParallelLinear(w.o_proj, group, gather_output=True)
        self.gate_up = ColumnParallelLinear(w.gate_up_proj, group, gather_output=True)
        self.down = ColumnParallelLinear(w.down_proj, group, gather_output=True)
        self.n_q_local, self.n_kv_local = config.num_attention_heads, config.num_key_value_heads

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        c = self.config
        qkv = self.qkv(rms_norm(x, self.input_norm, c.rms_norm_eps, ctx.kernels))
        x = x + self.o_proj(qkv_attention(qkv, self.n_q_local, self.n_kv_local, ctx))
        gate, up = self.gate_up(rms_norm(x, self.post_norm, c.rms_norm_eps, ctx.kernels)).chunk(2, dim=-1)
        return x + self.down(swiglu(gate, up))


def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
          overlap: bool = False, kernels: bool | None = None, **_ignored) -> TPEngine:
    """This rank's engine (``overlap`` is ignored: every gather is on the critical path by design);
    ``kernels`` as in ``solution.build``."""
    return TPEngine(model, group or TPGroup(), GatheringLayer, name="framework",
                    mode="column-parallel everywhere, 4 all-gathers per layer, replicated attention",
                    max_seq_len=max_seq_len, kernels=kernels)
