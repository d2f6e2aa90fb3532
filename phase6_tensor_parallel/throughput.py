"""Decode-step timing for P6.2/P6.3, and the "no communication" ablation that prices the collectives.

``NoCommGroup`` keeps a rank's shards and shapes but turns every collective into a local no-op (an all-gather
repeats the local slice). An engine built with it does exactly the rank's compute and no communication, so

    exposed communication = step time (real group) − step time (NoCommGroup)

is the communication time that compute did not hide — what overlap is meant to shrink (P6.3), and over the
step time the communication share of P6.2. (The numbers a NoCommGroup engine computes are wrong on purpose;
only its time is used.) This ablation is how bench.py measures the share; the profiler's NCCL-kernel share
is a second view not built here.
"""

from __future__ import annotations

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


def decode_step_seconds(engine, batch: int, context: int, steps: int, *, seed: int = 0) -> float:
    """Median seconds of one decode step (``batch`` sequences, one new token each) after ``context`` tokens."""
    from module0_profiling.timing import time_fn

    g = torch.Generator().manual_seed(seed)
    vocab = engine.config.vocab_size
    prompt = torch.randint(3, vocab, (batch, context), generator=g).to(engine.device)
    warmup = 2
    with torch.inference_mode():
        ctx = engine.new_context(batch, context + warmup + steps)
        engine.forward(prompt, ctx)
        token = prompt[:, -1:]
        step = lambda: engine.forward(token, ctx)  # noqa: E731  (each call appends one position)
        return time_fn(step, warmup=warmup, iters=steps, device=engine.device.type).median


def sweep_rank(group: TPGroup, impl: str, spec: str, dtype: str, device: str, batches: list[int],
               context: int, steps: int) -> dict:
    """Per batch: decode step seconds with real communication and with ``NoCommGroup`` (same shards)."""
    from phase0_prototype.sources import load_model
    from phase6_tensor_parallel import load_impl
    from phase6_tensor_parallel.dist_env import local_device

    model = load_model(spec, dtype=dtype, device=local_device(device, group), seed=0)
    build = load_impl(impl).build
    length = context + steps + 2
    out = {"batches": batches, "step_s": [], "nocomm_step_s": []}
    for real, key in ((group, "step_s"), (NoCommGroup(group.rank, group.world), "nocomm_step_s")):
        engine = build(model, group=real, max_seq_len=length)
        for b in batches:
            out[key].append(decode_step_seconds(engine, b, context, steps))
            if group.distributed:
                torch.distributed.barrier()  # the ranks start the next batch together
        del engine
    return out
