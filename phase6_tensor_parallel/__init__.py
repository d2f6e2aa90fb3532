"""Phase 6 — tensor parallelism.

Contract (issue 10; not built yet): ``ColumnParallelLinear``, ``RowParallelLinear``,
``VocabParallelEmbedding`` and a parallel lm_head (framework: every linear all-gathers; solution:
Megatron pairing with two all-reduces per layer and communication overlapped with compute), launched
with ``torchrun`` (NCCL on GPU, gloo on CPU), and an all-reduce α-β study. Targets P6.1–P6.4.
"""
