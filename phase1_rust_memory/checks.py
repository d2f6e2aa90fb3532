"""Phase 1 acceptance targets (P1.1–P1.3), evaluated on ``bench.run``'s metrics.

P1.3a and P1.3b split P1.3's stress by capability: contiguous runs (a buddy allocator) and
fork with copy-on-write. An implementation without the capability shows SKIP with its own reason.
"""

from module0_profiling.targets import Target, pct, times

TARGETS = [
    Target("P1.1", "Rust vs Python, same 1000-request growth trace (batched per-step API)", "≥ 10× ops/s",
           ["speedup_batched"], lambda s: s >= 10.0, times),
    Target("P1.2", "KV slots allocated but unused, steady state, block 16", "< 5 %",
           ["unused_slot_fraction"], lambda f: f < 0.05, pct),
    Target("P1.3", "10^5+ random ops: no double allocation, no leak, all free at end", "0 violations",
           ["stress_violations", "stress_ops"], lambda v, n: v == 0 and n >= 100_000,
           lambda v, n: f"{v:.0f} in {n:.0f} ops"),
    Target("P1.3a", "contiguous runs allocate(1–64) under churn: in range, disjoint, merged back", "0 violations",
           ["run_violations"], lambda v: v == 0, lambda v: f"{v:.0f}"),
    Target("P1.3b", "fork + copy-on-write under random ops: shared blocks counted, copies correct", "0 violations",
           ["fork_violations"], lambda v: v == 0, lambda v: f"{v:.0f}"),
    Target("P1.3c", "trace answers identical to the Python reference", "0 differing steps",
           ["trace_mismatches"], lambda v: v == 0, lambda v: f"{v:.0f}"),
]
