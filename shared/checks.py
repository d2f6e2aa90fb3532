"""The assembled engine's acceptance targets, each in two rows so each half shows on its own:
E.1a bs=1 decode MBU of the engine under test; E.1b its offline throughput over HF ``generate_batch``
on the same requests; E.2a INT4 (phase 5) over bf16 offline throughput under continuous batching at
max_num_seqs 256; E.2b INT4 over bf16 inter-token latency p50 at 16 concurrent streams (``bench.run``,
``bench_int4``)."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

TARGETS: list[Target] = [
    Target("E.1a", "assembled engine: bs=1 decode MBU (weights + KV bytes per token / measured copy BW)", "≥ 75 %",
           ["e1_decode_mbu"], lambda mbu: mbu >= 0.75, pct),
    Target("E.1b", "assembled engine: offline throughput vs HF transformers generate_batch, same requests", "≥ 3×",
           ["e1_throughput_vs_hf"], lambda r: r >= 3.0, times),
    Target("E.2a", "INT4 under continuous batching: offline mixed throughput vs bf16 at max_num_seqs 256",
           "≥ 0.9×", ["e2_throughput_int4_vs_bf16"], lambda r: r >= 0.9, times),
    Target("E.2b", "INT4 under continuous batching: inter-token p50 at 16 concurrent streams vs bf16", "≤ 0.75×",
           ["e2_itl_p50_int4_vs_bf16"], lambda r: r <= 0.75, times),
]
