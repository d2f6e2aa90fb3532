"""The assembled engine's acceptance target (E.1), in two rows so each half shows on its own:
E.1a bs=1 decode MBU of the engine under test; E.1b its offline throughput over HF ``generate_batch``
on the same requests (``bench.run``)."""

from __future__ import annotations

from module0_profiling.targets import Target, pct, times

TARGETS: list[Target] = [
    Target("E.1a", "assembled engine: bs=1 decode MBU (weights + KV bytes per token / measured copy BW)", "≥ 75 %",
           ["e1_decode_mbu"], lambda mbu: mbu >= 0.75, pct),
    Target("E.1b", "assembled engine: offline throughput vs HF transformers generate_batch, same requests", "≥ 3×",
           ["e1_throughput_vs_hf"], lambda r: r >= 3.0, times),
]
