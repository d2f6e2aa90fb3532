"""Decode-step timing for P6.2/P6.3: CUDA-graph steps, the profiler's exposed communication, a no-comm ablation.

Every step is a ``static_decode.StaticDecoder`` replayed from a CUDA graph (NCCL inside), so the figures are
GPU time, not Python. Two views of the communication a step pays for:

- **profiler** (``comm_overlap``): the NCCL kernels' time on the trace that no compute kernel overlaps,
  ``|NCCL ∪ compute| − |compute|`` — the communication the step actually waits for. An NCCL kernel that
  waits for the slower rank counts too: that wait is a cost of splitting the model.
- **ablation** (``NoCommGroup``): the same shards and shapes with every collective a local no-op, so
  ``step − no-comm step`` is what communication adds, including what it slows down by sharing the SMs.
  (The numbers a ``NoCommGroup`` engine computes are wrong on purpose; only its time is used.)

bench.py takes the profiler's figure and falls back to the ablation when the trace shows no NCCL kernel.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import torch

from phase6_tensor_parallel.dist_env import TPGroup


@dataclass(frozen=True)
class NoCommGroup(TPGroup):
    """The rank's shard bookkeeping without any communication (timing ablation only)."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_async(self, x: torch.Tensor):
        return None

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * self.world, dim=-1) if self.world > 1 else x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return x


def is_comm_kernel(name: str) -> bool:
    return "nccl" in name.lower()


def comm_overlap(trace: dict) -> dict[str, float]:
    """Seconds of GPU activity in a Chrome trace's marked region: NCCL, compute, and NCCL not hidden.

    ``exposed_s = |NCCL ∪ compute| − |compute|`` (interval unions): the time only communication ran.
    """
    from module0_profiling.trace import GPU_CATEGORIES, REGION, union_length

    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    marks = [e for e in events if e.get("name") == REGION]
    r0 = min((e["ts"] for e in marks), default=float("-inf"))
    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES and e["ts"] + e["dur"] > r0]
    comm = [(e["ts"], e["ts"] + e["dur"]) for e in gpu if is_comm_kernel(e.get("name", ""))]
    compute = [(e["ts"], e["ts"] + e["dur"]) for e in gpu if not is_comm_kernel(e.get("name", ""))]
    busy_compute = union_length(compute)
    return {"nccl_s": union_length(comm) / 1e6, "compute_s": busy_compute / 1e6,
            "exposed_s": (union_length(comm + compute) - busy_compute) / 1e6, "comm_kernels": len(comm)}


def profile_steps(decoder, iters: int) -> dict:
    """Profile ``iters`` replays; per-step NCCL / compute / exposed seconds and the module0 trace summary."""
    from module0_profiling.trace import profile_region

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        summary = profile_region(decoder, iters=iters, warmup=1, chrome_trace=path)
        with open(path) as f:
            overlap = comm_overlap(json.load(f))
    finally:
        os.unlink(path)
    summary.chrome_trace = None
    per_step = {k: v / iters for k, v in overlap.items() if k.endswith("_s")}
    return {**per_step, "comm_kernels": overlap["comm_kernels"] / iters, "summary": summary}


def time_steps(decoder, context: int, *, iters: int, warmup: int = 3, profile_iters: int = 0) -> dict:
    """Median seconds of one decode step after ``context`` cached tokens (+ profiler figures on CUDA)."""
    from module0_profiling.timing import time_fn

    decoder.set_position(context)
    step_s = time_fn(decoder, warmup=warmup, iters=iters, device=decoder.engine.device.type).median
    out = {"step_s": step_s}
    if profile_iters:
        decoder.set_position(context)
        out.update(profile_steps(decoder, profile_iters))
    return out


def sweep_rank(group: TPGroup, configs: list[tuple[str, str, bool]], spec: str, dtype: str, device: str,
               batches: list[int], context: int, steps: int, *, ablation: bool = True,
               profile_iters: int = 10) -> dict:
    """Per config ``(label, impl, overlap)`` and batch: graph-replayed step time with real communication,
    the profiler's comm figures (CUDA), and the ``NoCommGroup`` step time.

    Every rank runs the same loop (the collectives inside the graphs pair them up); each returns its own
    figures. On CPU the steps run eagerly over gloo and nothing is profiled (the tests' smoke of this code).
    """
    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import load_impl
    from phase6_tensor_parallel.dist_env import local_device
    from phase6_tensor_parallel.static_decode import StaticDecoder

    model = load_model(spec, dtype=dtype, device=local_device(device, group), seed=0)
    cuda = model.device.type == "cuda"
    length = context + max(steps + 3, profile_iters + 1) + 1
    c = model.config
    out: dict = {"batches": batches, "rank": group.rank,
                 "config": {"hidden": c.hidden_size, "layers": c.num_hidden_layers}}
    groups = [("", group)] + ([("nocomm_", NoCommGroup(group.rank, group.world))] if ablation and group.distributed else [])
    for label, impl, overlap in configs:
        rows: dict = {}
        for prefix, g in groups:
            engine = load_impl(impl).build(model, group=g, max_seq_len=length, overlap=overlap)
            for b in batches:
                with torch.inference_mode():
                    decoder = StaticDecoder(engine, b, max_len=length)
                    decoder.fill_cache_randomly(context)
                    if cuda:
                        decoder.capture()
                    r = time_steps(decoder, context, iters=steps,
                                   profile_iters=profile_iters if cuda and not prefix else 0)
                for k, v in r.items():
                    rows.setdefault(prefix + k, []).append(v)
                del decoder
                if group.distributed:
                    torch.distributed.barrier()  # the ranks start the next batch together
                if cuda:
                    torch.cuda.empty_cache()
            out.setdefault("mode", {})[label] = engine.mode
            del engine
        out[label] = rows
    return out
