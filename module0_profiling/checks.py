"""Module 0 targets (M0.1–M0.4): thresholds and how each is judged from ``bench.run``'s metrics."""

from module0_profiling.targets import Target, pct, times

TARGETS = [
    Target("M0.1", "measured copy bandwidth vs datasheet", "70–100 %", ["copy_vs_datasheet"],
           lambda r: 0.70 <= r <= 1.00, pct),
    Target("M0.2", "GPU time of a region from the trace vs CUDA-event timing of the same region",
           "agree within 10 %", ["trace_vs_events_error"], lambda e: e <= 0.10,
           lambda e: f"{100 * e:.1f} % apart"),
    Target("M0.3", "Linear(4096,4096) bs=1 loop: CUDA graph vs eager with sync", "≥ 2×",
           ["graph_speedup"], lambda s: s >= 2.0, times),
    Target("M0.4", "the loop's last output vs the framework's (max |diff| / max |framework|)", "≤ 1e-2",
           ["loop_output_error"], lambda e: e <= 1e-2, lambda e: f"{e:.1e}"),
]
