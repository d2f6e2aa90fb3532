"""Phase 0 acceptance targets (P0.1–P0.5), evaluated on ``bench.run``'s metrics."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

TARGETS: list[Target] = [
    Target("P0.1", "greedy tokens vs HF transformers, same weights (fp32)", "identical for 64 tokens",
           ["p0_1_greedy_identical", "p0_1_tokens_matched"], lambda ok, n: ok == 1.0,
           lambda ok, n: f"{int(n)}/64 identical"),
    Target("P0.2", "KV cache vs no cache, prompt 512, 128 new tokens (tok/s)", "≥ 10×",
           ["p0_2_kv_cache_speedup"], lambda r: r >= 10.0, times),
    Target("P0.3", "compiled + CUDA graphs vs eager KV cache (decode tok/s)", "≥ 1.5×",
           ["p0_3_compile_speedup"], lambda r: r >= 1.5, times),
    Target("P0.4", "bs=1 decode MBU (weights + KV bytes per token); vs HF static-cache generate",
           "≥ 70 %; ≥ 2×", ["p0_4_decode_mbu", "p0_4_vs_hf_static"],
           lambda mbu, r: mbu >= 0.70 and r >= 2.0, lambda mbu, r: f"{pct(mbu)}; {times(r)}"),
    Target("P0.5", "CUDA basics: tiled vs naive fp32 matmul 4096²; coalesced vs stride-32 copy",
           "≥ 5×; ≥ 8×", ["p0_5_tiled_vs_naive", "p0_5_coalesced_vs_strided"],
           lambda a, b: a >= 5.0 and b >= 8.0, lambda a, b: f"{times(a)}; {times(b)}"),
]
