"""Phase 2 acceptance targets (P2.1–P2.5), evaluated on ``bench.run``'s metrics.

All are ratios measured in one run: error over the dtype's tolerance, time over time, bandwidth over
the copy bandwidth measured on the same device. ``P2.1·ref`` checks the PyTorch reference itself
against an independent float64 computation; it is the one target a CPU can evaluate.
"""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times


def _ratio(v: float) -> str:
    return f"{v:.3g} of tol"


TARGETS: list[Target] = [
    Target(
        id="P2.1",
        description="CUDA kernels vs PyTorch reference: random positions, odd sizes, bf16/fp16/fp32, "
        "head_dim 64/128, fused-QKV strides",
        threshold="max err/tol ≤ 1",
        metrics=["p2_1_max_err_ratio"],
        passes=lambda r: r <= 1.0,
        show=_ratio,
    ),
    Target(
        id="P2.1·ref",
        description="PyTorch reference vs float64 complex rotation (RoFormer form), fp32",
        threshold="max err/tol ≤ 1",
        metrics=["reference_err_ratio"],
        passes=lambda r: r <= 1.0,
        show=_ratio,
    ),
    Target(
        id="P2.2",
        description="solution vs framework, 16384 tokens (q 32, k 4 heads, head_dim 64, bf16)",
        threshold="≥ 2×",
        metrics=["p2_2_speedup_vs_framework"],
        passes=lambda s: s >= 2.0,
        show=times,
    ),
    Target(
        id="P2.3",
        description="solution bandwidth (q,k read+write + cos/sin rows read) / measured copy bandwidth",
        threshold="≥ 75 %",
        metrics=["p2_3_fraction_of_copy"],
        passes=lambda f: f >= 0.75,
        show=pct,
    ),
    Target(
        id="P2.4",
        description="solution vs torch.compile of the PyTorch reference",
        threshold="faster (> 1×)",
        metrics=["p2_4_speedup_vs_compile"],
        passes=lambda s: s > 1.0,
        show=times,
    ),
    Target(
        id="P2.4·liger",
        description="solution vs liger-kernel's liger_rotary_pos_emb (Triton), when importable",
        threshold="faster (> 1×)",
        metrics=["p2_4_speedup_vs_liger"],
        passes=lambda s: s > 1.0,
        show=times,
    ),
    Target(
        id="P2.5",
        description="solution throughput / FlashInfer's apply_rope_with_cos_sin_cache (vLLM's rotary contract; "
        "the faster of its out-of-place and in-place calls), main shape, same run; outputs must agree first",
        threshold="≥ 80 % (aim: faster), outputs within tol",
        metrics=["p2_5_fraction_of_flashinfer", "p2_5_flashinfer_err_ratio"],
        passes=lambda f, err: f >= 0.8 and err <= 1.0,
        show=lambda f, err: f"{pct(f)} (outputs {err:.3g} of tol)",
    ),
]
