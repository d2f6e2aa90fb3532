"""Phase 6 — tensor parallelism: Megatron column/row layers, communication overlap, all-reduce α-β study.

Public contract (``framework``, ``solution`` and a learner's module provide)::

    def build(model: LoadedModel, *, group: TPGroup | None = None, max_seq_len: int | None = None,
              overlap: bool = ...) -> TPEngine
        # this rank's engine, built from its shard of the full checkpoint (group = rank + world size)

    class TPEngine:
        name: str; mode: str
        def forward_logits(self, tokens: LongTensor[B, T]) -> FloatTensor[B, T, vocab]   # fp32, same on every rank
        def generate(self, prompt_ids: LongTensor[B, T] | list[int], max_new_tokens: int) -> LongTensor[B, new]
            # greedy with a KV cache; the same ids on every rank

- ``layers``: ``ColumnParallelLinear`` (optionally gathering), ``RowParallelLinear`` (all-reduce of partial sums),
  ``VocabParallelEmbedding`` (masked lookup + all-reduce), ``ParallelLMHead`` (column-parallel + all-gather).
- ``framework``: every linear column-parallel + all-gather (the seed's version, replicated activations);
  ``solution``: Megatron pairing (qkv, gate/up column; o_proj, down row: two all-reduces per layer), KV heads
  sharded, the two half batches alternating compute and async all-reduce.
- ``dist_env``: ``TPGroup``, ``init_distributed`` (NCCL on GPU, gloo on CPU, short timeouts), ``spawn``.
- ``allreduce_study``: all-reduce timings 1 KB–256 MB, α-β least-squares fit, Ring/Tree models, bus bandwidth.
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
