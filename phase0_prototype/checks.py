"""Phase 0 acceptance targets (P0.1–P0.5, P0.7), evaluated on ``bench.run``'s metrics.

P0.2's bar sits at the sweep's longest context, not at prompt 512: on an H100 at batch 1 an eager cached
step is launch-bound (~15 kernels per layer), no faster than the framework's recomputation until that
costs more than the launches — past TinyLlama's 2048 positions (0.82× at 512 in the committed report).
"""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times


def _crossover(tokens: float) -> str:
    return f"wins from {int(tokens)} tokens" if tokens else "wins at no swept context"


TARGETS: list[Target] = [
    Target("P0.1", "greedy tokens vs HF transformers, same weights (fp32)", "identical for 64 tokens",
           ["p0_1_greedy_identical", "p0_1_tokens_matched"], lambda ok, n: ok == 1.0,
           lambda ok, n: f"{int(n)}/64 identical"),
    Target("P0.2", "eager KV cache vs eager no cache, per decode token at 8192 tokens of context (the "
           "crossover context and the end-to-end ratio at prompt 512 + 128 shown beside)", "≥ 1.5× at 8192",
           ["p0_2_long_context_speedup", "p0_2_crossover_tokens", "p0_2_kv_cache_speedup"],
           lambda long, cross, e2e: long >= 1.5,
           lambda long, cross, e2e: f"{times(long)}; {_crossover(cross)}; {times(e2e)} at 512 + 128"),
    Target("P0.3", "torch.compile + CUDA graph of the PyTorch step vs the eager KV cache (decode tok/s); the "
           "Triton step's gain beside it", "≥ 1.5×", ["p0_3_compile_speedup", "p0_3_triton_step_speedup"],
           lambda r, triton: r >= 1.5, lambda r, triton: f"{times(r)}; Triton step {times(triton)}"),
    Target("P0.4", "bs=1 decode MBU (weights + KV bytes per token); vs HF static-cache generate",
           "≥ 70 %; ≥ 2×", ["p0_4_decode_mbu", "p0_4_vs_hf_static"],
           lambda mbu, r: mbu >= 0.70 and r >= 2.0, lambda mbu, r: f"{pct(mbu)}; {times(r)}"),
    Target("P0.5", "CUDA basics: tiled vs naive fp32 matmul 4096²; coalesced vs stride-32 copy",
           "≥ 5×; ≥ 8×", ["p0_5_tiled_vs_naive", "p0_5_coalesced_vs_strided"],
           lambda a, b: a >= 5.0 and b >= 8.0, lambda a, b: f"{times(a)}; {times(b)}"),
    Target("P0.7", "speculative decoding (prompt lookup, greedy) vs plain decode tok/s, bundled kjv-llama-18m: "
           "an editing prompt (a passage, then its opening again); random tokens; acceptance on the first",
           "≥ 1.5×; ≥ 0.95×", ["p0_7_lookup_speedup", "p0_7_random_speedup", "p0_7_lookup_acceptance"],
           lambda a, b, acc: a >= 1.5 and b >= 0.95,
           lambda a, b, acc: f"{times(a)}; {times(b)}; {pct(acc)} of drafts accepted"),
]
