"""Phase 7 acceptance targets (P7.1–P7.4), evaluated on ``bench.run``'s metrics."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

# fp32 on both sides; the reference's own rounding (a different summation order) is ~1e-6 relative.
FP32_TOLERANCE = 1e-4


def _rel(err: float) -> str:
    return f"{err:.1e} relative"


def _sp(err: float) -> str:
    return "refused (one device only)" if err == float("inf") else f"{err:.1e}"


TARGETS: list[Target] = [
    Target("P7.1", "our DiT vs diffusers' DiTTransformer2DModel, same weights, fp32", f"≤ {FP32_TOLERANCE:.0e}",
           ["p7_1_rel_err"], lambda e: e <= FP32_TOLERANCE, _rel),
    Target("P7.2", "Ulysses and ring attention, SP = 2 and 4 (gloo) vs SP = 1, fp32", f"≤ {FP32_TOLERANCE:.0e}",
           ["p7_2_ulysses_rel_err", "p7_2_ring_rel_err"],
           lambda u, r: u <= FP32_TOLERANCE and r <= FP32_TOLERANCE,
           lambda u, r: f"Ulysses {_sp(u)}; ring {_sp(r)}"),
    Target("P7.3", "denoising step at 4,096 tokens vs the framework; its matmul + attention kernels vs the measured bf16 matmul peak",
           "≥ 1.5×; ≥ 60 %", ["p7_3_step_speedup", "p7_3_attn_mlp_of_peak"],
           lambda s, e: s >= 1.5 and e >= 0.60, lambda s, e: f"{times(s)}; {pct(e)}"),
    Target("P7.4", "Ulysses SP = 2 vs SP = 1 at 4,096 tokens (two GPUs)", "≥ 1.7×",
           ["p7_4_ulysses_speedup"], lambda s: s >= 1.7, times),
]
