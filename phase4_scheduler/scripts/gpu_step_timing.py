"""Where a step's time goes on a GPU: decode-graph replay time per bucket, offline throughput with and
without overlapped steps, host time per step, and GPU busy over the P4.2 region.

``PYTHONPATH=$PWD python3 -m phase4_scheduler.scripts.gpu_step_timing [--quick]`` (CUDA only). Prints
one JSON object per measurement (the check's report is the reference; this is the diagnostic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.loadgen import Workload, run_offline
from phase4_scheduler.plan import SchedulerConfig


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def engine_for(model, overlap: bool = True, impl: str = "solution", budget: int = 8192) -> BatchingEngine:
    e = BatchingEngine(model, BatchingConfig(SchedulerConfig(256, budget, "sjf", 64), impl, overlap=overlap))
    t0 = time.perf_counter()
    e.runner.graphs.warmup()
    emit(what="graph warmup", seconds=round(time.perf_counter() - t0, 2), buckets=list(e.runner.graphs.batch_sizes))
    run_offline(e, Workload(8, 4, 8))
    return e


def replay_times(engine: BatchingEngine) -> None:
    g = engine.runner.graphs
    for b in (32, 64, 128, 256):
        graph = g._graphs[b][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        emit(what="decode graph replay", bucket=b, ms=round(start.elapsed_time(end) / 20, 3))


def offline(engine: BatchingEngine, w: Workload, label: str) -> None:
    host, steps = [], []

    def on_step(e):
        host.append(e.last_step.seconds)
        steps.append(e.last_step.plan.num_batched_tokens)

    torch.cuda.synchronize()
    tok = engine.tokenizer
    reqs = [engine.make_request(tok.encode(p), n, ignore_eos=True) for _, n, p in w.requests()]
    t0 = time.perf_counter()
    engine.generate(reqs, on_step=on_step)
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    tokens = sum(len(r.output_ids) for r in reqs)
    emit(what="offline", label=label, seconds=round(sec, 3), tok_s=round(tokens / sec), steps=len(host),
         step_ms_median=round(statistics.median(host) * 1e3, 3), step_ms_mean=round(sec / len(host) * 1e3, 3),
         decode_only_steps=sum(1 for s, h in zip(steps, host, strict=True) if s <= 256))


def busy(engine: BatchingEngine, requests: int = 256) -> None:
    from module0_profiling.trace import profile_region

    t = profile_region(lambda: run_offline(engine, Workload(requests, long_tokens=64)), iters=1, warmup=0)
    emit(what="trace", requests=requests, gpu_busy=t.gpu_busy, wall_s=t.wall_s, launches=t.launches, mean_gap_us=(t.mean_gap_s or 0) * 1e6,
         top=[(k.name[:60], k.calls, round(k.mean_s * 1e6, 1), round(k.share, 3)) for k in t.top(8)])


def host_profile(engine: BatchingEngine, w: Workload) -> None:
    """cProfile of the engine's host side over an offline run (the GPU work is asynchronous)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    offline(engine, w, "overlap, under cProfile")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(22)
    print("\n".join(line[:150] for line in out.getvalue().strip().splitlines()[:30]), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    model = load_model("random:tinyllama", dtype="bf16", device="cuda")
    e = engine_for(model)
    replay_times(e)
    w = Workload(512, long_tokens=200)
    offline(e, w, "overlap")
    offline(e, w, "overlap, again")
    for n in (256, 512, 1024):
        busy(e, n)
    host_profile(e, w)
    del e
    e2 = engine_for(model, overlap=False)
    offline(e2, w, "no overlap")
    if not args.quick:
        e2.runner.graphs = None
        offline(e2, w, "no overlap, no graphs")


if __name__ == "__main__":
    main()
