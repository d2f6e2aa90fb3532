"""Phase 5 acceptance targets (P5.1–P5.3), evaluated on ``bench.run``'s metrics."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

TARGETS: list[Target] = [
    Target("P5.1", "AWQ top-1 accuracy drop vs float (rel.) on held-out text; AWQ ppl / RTN ppl",
           "< 2 %; < 1", ["p5_1_awq_top1_drop_rel", "p5_1_awq_ppl_over_rtn"],
           lambda drop, r: drop < 0.02 and r < 1.0, lambda drop, r: f"{pct(drop)}; {r:.4f}"),
    Target("P5.1b", "AWQ ppl vs AutoAWQ's, same model and calibration text", "≤ 1.01×",
           ["p5_1_awq_ppl_over_autoawq"], lambda r: r <= 1.01, times),
    Target("P5.2",
           "W4A16 kernel vs bf16 F.linear at M=1 / M=16 (worse MLP shape), and vs _weight_int4pack_mm",
           "≥ 2.5× / ≥ 1.5×; ≥ 1×",
           ["p5_2_kernel_vs_linear_m1", "p5_2_kernel_vs_linear_m16", "p5_2_kernel_vs_int4pack"], lambda a, b,
           c: a >= 2.5 and b >= 1.5 and c >= 1.0, lambda a, b, c: f"{times(a)} / {times(b)}; {times(c)}"),
    Target("P5.3", "INT4 decode bs=1 vs phase 0 solution; projection weight memory vs bf16", "≥ 1.5×; ≥ 3.3×",
           ["p5_3_decode_speedup", "p5_3_weight_memory_ratio"], lambda a, b: a >= 1.5 and b >= 3.3,
           lambda a, b: f"{times(a)}; {times(b)}"),
]
