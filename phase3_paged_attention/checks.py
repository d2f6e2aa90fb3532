"""Phase 3 targets (P3.1–P3.4, P3.5: the block-size and batch × context sweeps, P3.6: FlashInfer), on bench.py's metrics."""

from module0_profiling.targets import Target, pct, times

TARGETS = [
    Target(
        id="P3.1",
        description="paged decode (and prefill + cache write) vs SDPA on gathered KV; lengths 1,17,100,1000,4097; blocks 16–128",
        threshold="within bf16 tolerance (worst error / tolerance ≤ 1)",
        metrics=["decode_error_over_tolerance", "prefill_error_over_tolerance"],
        passes=lambda decode, prefill: decode <= 1.0 and prefill <= 1.0,
        show=lambda decode, prefill: f"decode {decode:.2f}, prefill {prefill:.2f}",
    ),
    Target(
        id="P3.2",
        description="decode bs=64 ctx=4096 vs PyTorch paged baseline (gather + SDPA)",
        threshold="≥ 2×",
        metrics=["decode_speedup_vs_paged_baseline"],
        passes=lambda x: x >= 2.0,
        show=times,
    ),
    Target(
        id="P3.3",
        description="decode bs=64 ctx=4096 unique-KV bytes / measured copy BW",
        threshold="≥ 85 %",
        metrics=["decode_copy_bw_fraction"],
        passes=lambda x: x >= 0.85,
        show=pct,
    ),
    Target(
        id="P3.4",
        description="Triton FA2 causal prefill 8×2048 vs SDPA (flash) TFLOP/s",
        threshold="≥ 60 %",
        metrics=["prefill_tflops_vs_sdpa_flash"],
        passes=lambda x: x >= 0.60,
        show=pct,
    ),
    Target(
        id="P3.5",
        description="block-size (16–128) and batch × context sweeps: decode vs PyTorch paged baseline in every cell "
                    "(the sweeps behind P3.1–P3.4)",
        threshold="≥ 1× everywhere",
        metrics=["sweep_min_speedup_vs_paged_baseline"],
        passes=lambda x: x >= 1.0,
        show=times,
    ),
    Target(
        id="P3.6",
        description="vs FlashInfer, same run: BatchDecodeWithPagedKVCacheWrapper (faster of CUDA-core / tensor-core "
                    "kernels) at bs=64 ctx=4096, and its ragged causal prefill at 8×2048 (attention only); "
                    "FlashInfer's outputs within tolerance of the float32 reference first",
        threshold="decode ≥ 80 % (aim ≥ 100 %), prefill ≥ 70 % of its throughput",
        metrics=["p3_6_decode_fraction_of_flashinfer", "p3_6_prefill_fraction_of_flashinfer",
                 "p3_6_flashinfer_error_over_tolerance"],
        passes=lambda decode, prefill, err: decode >= 0.8 and prefill >= 0.7 and err <= 1.0,
        show=lambda decode, prefill, err: f"decode {pct(decode)}, prefill {pct(prefill)} (FlashInfer err {err:.2f})",
    ),
]
