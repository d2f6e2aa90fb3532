"""Phase 6 — tensor parallelism: Megatron column/row layers, communication overlap, all-reduce α-β study.

Public contract (``framework``, ``solution`` and a learner's module provide)::

    def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
              overlap: bool = ..., kernels: bool | None = None) -> TPEngine
        # this rank's engine, built from its shard of the full checkpoint (group = rank + world size)

    class TPEngine:
        name: str; mode: str
        def forward_logits(self, tokens: LongTensor[B, T]) -> FloatTensor[B, T, vocab]   # fp32, same on every rank
        def generate(self, prompt_ids: LongTensor[B, T] | list[int], max_new_tokens: int, *,
                     graph: bool | None = None) -> LongTensor[B, new]
            # greedy with a KV cache; the same ids on every rank; graph (default on CUDA): one replay per token

- ``layers``: ``ColumnParallelLinear`` (optionally gathering), ``RowParallelLinear`` (all-reduce of partial sums),
  ``VocabParallelEmbedding`` (masked lookup + all-reduce), ``ParallelLMHead`` (column-parallel + all-gather).
- ``framework``: every linear column-parallel + all-gather (the starting version, replicated activations);
  ``solution``: Megatron pairing (qkv, gate/up column; o_proj, down row: two all-reduces per layer), KV heads
  sharded, the two half batches alternating compute and async all-reduce. Each is a ``shard_weights`` of
  phase 0's fused weights (matrices or phase 5's INT4 layers); every layer runs phase 0's ``decoder_layer``.
- ``paged``: the same shards for phase 4's paged runner (``shared.tp_workers``: TP under continuous batching).
- ``static_decode``: the decode step with static shapes (device-side position, full-length masked cache),
  captured in one CUDA graph with its NCCL collectives; ``generate`` uses it on a GPU (``graph=False``: eager).
- ``ops`` / ``kernels``: a fused Triton RMSNorm (the final norm) and phase 0's RoPE + cache-write + attention
  kernels for that step on a GPU (PyTorch on a CPU; ``build(kernels=...)`` chooses otherwise).
- ``dist_env``: ``TPGroup``, ``init_distributed`` (NCCL on GPU, gloo on CPU, short timeouts), ``spawn``.
- ``allreduce_study``: all-reduce timings 1 KB–256 MB (k calls per CUDA-graph replay), minimax and least-squares
  α-β fits, Ring/Tree models, bus bandwidth.
- ``throughput`` / ``sweep_tables``: graph-replayed decode-step sweeps, exposed communication from the profiler
  (and a no-communication ablation), the P6.2/P6.3 tables.
- CLI: ``torchrun --nproc-per-node N -m phase6_tensor_parallel generate --model random:tiny --prompt "..."``
  or ``python -m phase6_tensor_parallel generate --tp N ...`` (spawns N local processes).
"""

from __future__ import annotations

from types import ModuleType

from phase6_tensor_parallel.dist_env import TPError, TPGroup, init_distributed, spawn
from phase6_tensor_parallel.engine import TPEngine
from phase6_tensor_parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
)

__all__ = ["TPError", "TPGroup", "init_distributed", "spawn", "TPEngine", "ColumnParallelLinear",
           "RowParallelLinear", "VocabParallelEmbedding", "ParallelLMHead", "load_impl"]


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution`` or a module path exposing ``build(model, **options) -> TPEngine``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase6_tensor_parallel", name)
