"""Host (Python) cost of one engine step, the model's forward pass stubbed out.

On a GPU the forward pass of a decode step is a graph replay of ~1 ms; everything else the engine does
per step (schedule, build the inputs, sample, apply tokens, detokenize) is host time that either
overlaps it or leaves the GPU idle. This script measures that host time on any machine:
``python -m phase4_scheduler.scripts.host_profile [--requests 256] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.host_costs import meta_tinyllama, stub_forward
from phase4_scheduler.loadgen import Workload
from phase4_scheduler.plan import SchedulerConfig


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--long", type=int, default=64)
    p.add_argument("--model", default="random:tinyllama")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    model = meta_tinyllama() if args.model == "random:tinyllama" else load_model(args.model, dtype="fp32", device="cpu")
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(256, 2048), num_blocks=256 * 128, cuda_graphs=False))
    stub_forward(engine.runner)
    tok = engine.tokenizer
    w = Workload(args.requests, long_tokens=args.long)
    requests = [engine.make_request(tok.encode(pr), n, ignore_eos=True) for _, n, pr in w.requests()]
    steps = []
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for r in requests:
        engine.add(r)
    while engine.has_unfinished():
        s = time.perf_counter()
        engine.step()
        steps.append((time.perf_counter() - s, engine.last_step.plan.num_decodes if engine.last_step else 0))
    if prof:
        prof.disable()
    total = time.perf_counter() - t0
    dec = [t for t, d in steps if d >= 100]
    print(f"{len(steps)} steps in {total * 1e3:.1f} ms; steps with >= 100 decodes: {len(dec)}, "
          f"median {sorted(dec)[len(dec) // 2] * 1e6 if dec else float('nan'):.0f} µs")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
