"""The assembled engine: every phase's solution (``make check-engine`` measures this preset).

- phase 0: the model with fused projections, and the small-batch decode step as Triton GEMV kernels —
  what phase 4's loop replays for a lone request (its bucket-1 CUDA graph);
- phase 1: the Rust block manager (``auto``: the Python reference, same answers, when the extension is
  not built — e.g. a GPU machine that runs from the source tree);
- phase 2: ``off`` — phase 0's decode kernel applies RoPE inside its attention kernel (one launch fewer
  per layer than calling phase 2's kernel between the projection and attention); ``phase2=solution``
  plugs phase 2's CUDA kernel in instead;
- phase 3: Triton paged decode attention and FA-2 prefill on CUDA (``auto``: PyTorch reference on CPU);
- phase 4: continuous batching with chunked prefill, SJF with aging, preemption by recompute;
- phase 5: off (bf16 weights) — ``--quant awq`` turns INT4 on;
- phase 6: Megatron layers with communication overlap, used when ``tp > 1``.
"""

IMPLS = {
    "phase0": "solution",
    "phase1": "auto",
    "phase2": "off",
    "phase3": "auto",
    "phase4": "solution",
    "phase5": "off",
    "phase6": "solution",
}
