"""Phase 6 framework: the starting tensor parallelism — every linear is column-parallel and all-gathers its output.

Correct, and slow for a reason worth seeing: each rank computes only its slice of each projection's
outputs, but then all-gathers the slices so the activations are replicated again. Per layer that is FOUR
all-gathers (qkv, o_proj, gate_up, down) moving the full activation width, attention over ALL heads on every
rank (so the attention work and the KV cache are not split at all: each rank holds the whole cache), and
every collective sits on the critical path. Compare ``solution``: two all-reduces per layer, heads and cache
split, and the all-reduces overlapped with compute.

The layer is phase 0's ``decoder_layer``; this module only decides how its weights are split
(``shard_weights``), for ``TPEngine`` and for phase 4's paged runner (``paged``).
"""

from __future__ import annotations

from dataclasses import replace

from phase0_prototype.sources import LoadedModel
from phase0_prototype.weights import LlamaWeights
from phase6_tensor_parallel.dist_env import TPGroup
from phase6_tensor_parallel.engine import TPEngine
from phase6_tensor_parallel.layers import ColumnParallelLinear

PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def shard_weights(weights: LlamaWeights, group: TPGroup) -> LlamaWeights:
    """Every projection a gathering ``ColumnParallelLinear`` (matrices or phase 5's INT4 layers); the config,
    the embedding, the norms and the lm_head as they were (attention over all heads on every rank).

    A contiguous row shard of the fused q|k|v is fine here: the gather puts the rows back in order."""
    layers = [replace(w, **{name: ColumnParallelLinear(getattr(w, name), group) for name in PROJECTIONS})
              for w in weights.layers]
    return replace(weights, layers=layers)


def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
          overlap: bool = False, kernels: bool | None = None, **_ignored) -> TPEngine:
    """This rank's engine (``overlap`` is ignored: every gather is on the critical path by design);
    ``kernels`` as in ``solution.build``."""
    return TPEngine(model, group or TPGroup(), shard_weights, name="framework",
                    mode="column-parallel everywhere, 4 all-gathers per layer, replicated attention",
                    max_seq_len=max_seq_len, kernels=kernels)
