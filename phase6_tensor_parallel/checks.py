"""Phase 6 acceptance targets (P6.1–P6.4), evaluated on ``bench.run``'s metrics."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

TARGETS: list[Target] = [
    Target("P6.1", "TP=2 vs TP=1 greedy tokens (fp32)", "identical",
           ["p6_1_greedy_identical", "p6_1_tokens_matched"], lambda ok, n: ok == 1.0,
           lambda ok, n: "identical" if ok == 1.0 else f"diverge after {int(n)} tokens"),
    Target("P6.2", "decode throughput TP=2 vs TP=1 at the best batch ≥ 64", "≥ 1.8×; comm share < 20 %",
           ["p6_2_speedup", "p6_2_comm_share"], lambda r, share: r >= 1.8 and share < 0.20,
           lambda r, share: f"{times(r)}; {pct(share)}"),
    Target("P6.3", "exposed communication time, solution (overlap) vs framework", "≤ 50 %",
           ["p6_3_exposed_comm_ratio"], lambda r: r <= 0.50, pct),
    # The model is NCCL's own: per algorithm, the minimum over the LL / LL128 / Simple α-β lines, each fitted
    # to its NCCL_PROTO-forced sweep, vs the default sweep (NCCL picks); bench.py puts the single line beside it.
    Target("P6.4", "all-reduce α-β model (min over per-protocol lines) vs measured, Ring and Tree, 1 KB–256 MB",
           "within 25 %",
           ["p6_4_model_error_ring", "p6_4_model_error_tree"], lambda ring, tree: ring <= 0.25 and tree <= 0.25,
           lambda ring, tree: f"Ring {pct(ring)}; Tree {pct(tree)}"),
]
