"""Prefill-heavy load through the colocated engine and the disaggregated one, in one process-run.

Workload: long prompts, short outputs, Poisson arrivals, greedy with ``ignore_eos`` (the workload fixes
the lengths), the same requests and arrival times for both engines. Colocated (framework): one
``BatchingEngine`` with chunked prefill, so decode steps carry prompt chunks. Disaggregated (solution):
a prefill and a decode worker (on one GPU they share it by time slicing; ``decode_device`` splits them).

Figures: TTFT / TPOT p50 and p99; goodput (DistServe): requests per second that meet both SLOs
(TTFT <= ``slo_ttft`` and TPOT <= ``slo_tpot``) over the run; KV transfer bandwidth counted as the copy
bandwidth is (read + write bytes: a transfer copies the KV twice, gather then scatter, so 4 x its bytes
over the copies' device time); greedy equality of the two engines' tokens. ``p4_6_kv_transfer_vs_copy``:
that bandwidth / module 0's measured copy bandwidth (GPU; None on CPU); ``p4_7_tpot_p99_ratio``:
disaggregated TPOT p99 / colocated TPOT p99. Size "small": random:tiny on CPU, seconds; "full":
TinyLlama shapes in bf16 on a GPU.
"""

from __future__ import annotations

import random

import torch

from phase0_prototype.sources import load_model
from phase4_scheduler.disagg.router import Completion, DisaggregatedEngine, generate_colocated
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.loadgen import percentile
from phase4_scheduler.plan import SchedulerConfig

SIZES = {
    "small": dict(model="random:tiny", dtype="fp32", device="cpu", requests=16, prompt=(96, 192), output=6, rate=40.0,
                  seqs=8, budget=64, block_size=16, slo_ttft=0.5, slo_tpot=0.05, threads=1),
    # 1-1.5k-token prompts for 32 tokens each: ~40k prompt tokens/s of load at rate 32.
    "full": dict(model="random:tinyllama", dtype="bf16", device="cuda", requests=256, prompt=(1024, 1536), output=32,
                 rate=32.0, seqs=64, budget=512, block_size=16, slo_ttft=0.2, slo_tpot=0.02, threads=1),
}


def workload(s: dict, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[float]]:
    """Random prompts of lengths uniform in ``s["prompt"]`` and Poisson arrival offsets at ``s["rate"]``."""
    rng = random.Random(seed)
    lo, hi = s["prompt"]
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(s["requests"])]
    t, arrivals = 0.0, []
    for _ in prompts:
        t += rng.expovariate(s["rate"])
        arrivals.append(t)
    return prompts, arrivals


def configs(s: dict) -> tuple[BatchingConfig, BatchingConfig, BatchingConfig]:
    """Colocated, prefill and decode engines: the same pool each; decode's budget is its seats."""
    blocks = s["seqs"] * -(-(s["prompt"][1] + s["output"]) // s["block_size"]) + 1
    common = dict(num_blocks=blocks, block_size=s["block_size"])
    colocated = BatchingConfig(SchedulerConfig(s["seqs"], s["budget"]), **common)
    return colocated, colocated, BatchingConfig(SchedulerConfig(s["seqs"], s["seqs"]), **common)


def summarize(done: list[Completion], s: dict) -> dict[str, float]:
    ttft = [c.ttft for c in done if c.ttft is not None]
    tpot = [c.tpot for c in done if c.tpot is not None]
    ok = sum(1 for c in done if c.ttft is not None and c.ttft <= s["slo_ttft"]
             and (c.tpot is None or c.tpot <= s["slo_tpot"]))
    span = max(c.finish_time for c in done) - min(c.arrival_time for c in done)
    return {"ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99), "tpot_p50": percentile(tpot, 50),
            "tpot_p99": percentile(tpot, 99), "goodput": ok / span, "slo_met": ok / len(done)}


def copy_gbps(device: str) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    from module0_profiling.hardware import detect_device, measured_peaks

    return measured_peaks(detect_device()).copy_gbps


def run(size: str = "small", s: dict | None = None, decode_device: str | None = None) -> dict[str, float | None]:
    """Both engines on the same requests; ``s`` overrides the size's settings (tests run a smaller one)."""
    s = dict(SIZES[size]) if s is None else s
    if torch.device(s["device"]).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("size 'full' needs a CUDA GPU: use size 'small' on a CPU")
    model = load_model(s["model"], dtype=s["dtype"], device=s["device"])
    prompts, arrivals = workload(s, model.config.vocab_size)
    colocated_cfg, prefill_cfg, decode_cfg = configs(s)
    warm = prompts[:2], [2, 2]  # first-call costs (Triton compiles, allocator) outside the timing

    engine = BatchingEngine(model, colocated_cfg)
    if engine.runner.graphs is not None:
        engine.runner.graphs.warmup()
    generate_colocated(engine, *warm, ignore_eos=True)
    colocated = generate_colocated(engine, prompts, s["output"], arrivals=arrivals, ignore_eos=True)
    del engine, model  # the workers load their own copies
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with DisaggregatedEngine(s["model"], prefill=prefill_cfg, decode=decode_cfg, dtype=s["dtype"], device=s["device"],
                             decode_device=decode_device, threads=s["threads"]) as disagg:
        disagg.generate(*warm, ignore_eos=True)
        split = disagg.generate(prompts, s["output"], arrivals=arrivals, ignore_eos=True)

    col, dis = summarize(colocated, s), summarize(split, s)
    kv_bytes = sum(c.kv_bytes for c in split)
    transfer_s = sum(c.transfer_s for c in split)
    traffic_gbps = 4 * kv_bytes / transfer_s / 1e9 if transfer_s else None
    peak = copy_gbps(s["device"])
    metrics: dict[str, float | None] = {f"colocated_{k}": v for k, v in col.items()}
    metrics |= {f"disagg_{k}": v for k, v in dis.items()}
    equal = sum(a.output_ids == b.output_ids for a, b in zip(colocated, split, strict=True))
    metrics |= {
        "kv_bytes": float(kv_bytes), "kv_transfer_s": transfer_s, "kv_transfer_gbps": traffic_gbps,
        "copy_gbps": peak, "greedy_equal": equal / len(prompts),
        "p4_6_kv_transfer_vs_copy": traffic_gbps / peak if peak and traffic_gbps else None,
        "p4_7_tpot_p99_ratio": dis["tpot_p99"] / col["tpot_p99"],
    }
    return metrics


def table(m: dict[str, float | None], s: dict) -> str:
    """The markdown table of ``run``'s figures."""
    rows = "".join(f"| {name} | {m[p + 'ttft_p50'] * 1e3:.1f} / {m[p + 'ttft_p99'] * 1e3:.1f} ms | "
                   f"{m[p + 'tpot_p50'] * 1e3:.2f} / {m[p + 'tpot_p99'] * 1e3:.2f} ms | {m[p + 'goodput']:.2f} req/s "
                   f"({m[p + 'slo_met'] * 100:.0f} %) |\n" for name, p in (("colocated (chunked prefill)", "colocated_"),
                                                                         ("disaggregated", "disagg_")))
    bw = f"{m['kv_transfer_gbps']:.1f} GB/s (read + write)" if m["kv_transfer_gbps"] else "—"
    return ("| engine | TTFT p50 / p99 | TPOT p50 / p99 | goodput (SLO met) |\n|---|---|---|---|\n" + rows
            + f"\nSLO: TTFT ≤ {s['slo_ttft'] * 1e3:.0f} ms, TPOT ≤ {s['slo_tpot'] * 1e3:.0f} ms. KV moved: "
            f"{m['kv_bytes'] / 2**20:.1f} MiB, transfer {bw}. Greedy tokens equal: {m['greedy_equal'] * 100:.0f} %.\n")


def measure_disaggregation(result, size: str) -> None:
    """Phase 4's bench: P4.6 and P4.7 into ``result`` (a ``BenchResult``), SKIP on CPU with the reason."""
    s = SIZES[size]
    m = run(size)
    result.tables["Prefill/decode disaggregation (prefill-heavy Poisson load)"] = (
        table(m, s) + f"TPOT p99 disaggregated / colocated: {m['p4_7_tpot_p99_ratio']:.2f}×.\n")
    skips = {} if s["device"] == "cuda" else {
        "p4_6_kv_transfer_vs_copy": "the KV transfer is measured against the copy bandwidth of a GPU",
        "p4_7_tpot_p99_ratio": "the TPOT target is set for one GPU; on CPU the instances share the cores"}
    for name, value in m.items():
        if name in skips:
            result.skip(name, skips[name])
        elif value is not None:
            result.metrics[name] = value
