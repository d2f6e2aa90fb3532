"""Phase 4 acceptance targets (P4.1–P4.12), evaluated on ``bench.run``'s metrics.

P4.1 compares continuous batching with the phase's own static batching (the framework) on the same requests
and seats — the gain the lesson is about; HF ``generate_batch``'s ratio (``throughput_vs_hf``, GPU) is
reported in the before/after and offline tables, not judged. The engine-steps ratio is shown beside it: with
every seat's request fitting the KV pool, it is at most about 2 · 200 / (10 + 200) ≈ 1.9× on this workload
(static batching pays each batch's long request; continuous batching, the tokens spread over the seats), so
the bar is 1.5×, not 2×.
P4.4 counts engine steps, so its verdict is the same on every machine.
P4.9 sets the same offline run (max_num_seqs 256) against its roofline: per step, max(bytes / measured copy
bandwidth, FLOPs / measured matmul peak), summed over the steps the scheduler ran (``step_roofline``), over the
run's wall time. P4.10 is the host's part of a full step (schedule + the runner's launch) over the step's wall
time. Both are judged on a CUDA GPU; on a CPU they SKIP and their figures are in the report's roofline table.
P4.11 and P4.12 serve the mixed workload over HTTP (``online_bench``): the default flags against the best
scheduler setting tried, and against the same engine offline, at saturation; GPU only, like P4.9.
"""

from module0_profiling.targets import Target, pct, times

TARGETS = [
    Target("P4.1", "offline throughput, mixed 50 % 10-token / 50 % 200-token outputs: continuous batching vs "
           "static batching (the framework), same requests and max_num_seqs, one run (HF generate_batch reported)",
           "≥ 1.5×", ["throughput_vs_static", "steps_vs_static"], lambda r, _steps: r >= 1.5,
           lambda r, steps: f"{r:.2f}× (steps {steps:.2f}×)"),
    Target("P4.2", "GPU busy under saturating load", "≥ 80 %", ["gpu_busy"], lambda b: b >= 0.8, pct),
    Target("P4.3", "TTFT p50 via HTTP streaming at light load; inter-token p50 at 32 streams", "< 100 ms; < 20 ms",
           ["ttft_p50_light", "tpot_p50_32_streams"], lambda a, b: a < 0.1 and b < 0.02,
           lambda a, b: f"{a * 1e3:.1f} ms; {b * 1e3:.1f} ms"),
    Target("P4.4", "SJF vs FCFS: short requests' mean latency in engine steps; long job's wait with aging (steps)",
           "≥ 2× better; bounded",
           ["short_latency_speedup", "aged_max_wait", "wait_bound"], lambda s, w, b: s >= 2.0 and w <= b,
           lambda s, w, b: f"{s:.2f}×; wait {w:.0f} ≤ {b:.0f} steps" if w <= b else f"{s:.2f}×; wait {w:.0f} > {b:.0f}"),
    Target("P4.5", "10× overload: accepted all complete, rejected get 429, KV all free after", "0 lost",
           ["overload_lost", "overload_rejected", "kv_free_after"], lambda lost, rej, free: lost == 0 and rej > 0 and free == 1.0,
           lambda lost, rej, free: f"{lost:.0f} lost, {rej:.0f} × 429, KV free {free * 100:.0f} %"),
    Target("P4.6", "PD disaggregation: KV transfer bandwidth (read + write of the gather and scatter) vs the "
           "measured copy bandwidth, one GPU", "≥ 50 %", ["p4_6_kv_transfer_vs_copy"], lambda r: r >= 0.5, pct),
    Target("P4.7", "PD disaggregation: decode TPOT p99 under a prefill-heavy Poisson load vs the colocated engine",
           "≤ 0.7×", ["p4_7_tpot_p99_ratio"], lambda r: r <= 0.7, times),
    Target("P4.8", "prefix caching on a shared-prefix workload (requests sharing a long system prompt + few-shot "
           "examples, short suffixes and outputs; repeated sampling of one prompt): throughput with vs without "
           "the cache, one process; hit rate reported; greedy tokens identical", "≥ 3×; identical",
           ["p4_8_prefix_speedup", "prefix_hit_rate", "prefix_greedy_identical"],
           lambda s, _h, same: s >= 3.0 and same == 1.0,
           lambda s, h, same: f"{s:.2f}×, hit rate {h * 100:.0f} %, greedy {'identical' if same else 'DIFFERENT'}"),
    Target("P4.9", "offline mixed workload at max_num_seqs 256 vs its roofline: the sum over its steps of max(bytes "
           "/ copy bandwidth, FLOPs / matmul peak), measured peaks, over the run's wall time", "≥ 70 %",
           ["roofline_fraction"], lambda f: f >= 0.7, pct),
    Target("P4.10", "host time of a full step (scheduler + the runner's launch) over the step's wall time, same run",
           "< 20 %", ["host_share"], lambda s: s < 0.2, pct),
    Target("P4.11", "online serving at saturation (HTTP + SSE, mixed prompts and outputs): the default flags' output "
           "throughput vs the best scheduler setting tried, same requests", "≥ 0.9×", ["online_default_vs_best"],
           lambda r: r >= 0.9, times),
    Target("P4.12", "online serving at saturation with the default flags vs the same engine offline on the same "
           "requests (does the host path keep up with the GPU?)", "≥ 0.5×", ["online_vs_offline"],
           lambda r: r >= 0.5, times),
]
