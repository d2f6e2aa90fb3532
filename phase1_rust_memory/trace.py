"""The benchmark's workload: a Poisson stream of requests that grow token by token, served by a
minimal continuous-batching loop, recorded as the exact sequence of block-manager calls.

``simulate`` drives one manager the way phase 4's scheduler will (FCFS admission while
``can_allocate``; one batched ``step`` per decode step; preempted sequences re-queued for recompute;
``free`` when a request has produced its output) and records every call, grouped by step. ``replay``
then issues that same call sequence to any implementation — the Python reference or Rust, through
the batched API or one ``append_slot`` per token — so every implementation does identical work.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    id: int
    arrival_step: int
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class TraceSpec:
    num_requests: int = 1000
    prompt_range: tuple[int, int] = (16, 1024)
    output_range: tuple[int, int] = (16, 2048)
    arrivals_per_step: float = 0.25  # Poisson rate, in requests per decode step
    block_size: int = 16
    num_gpu_blocks: int = 8192
    max_batch: int = 256
    seed: int = 0


def make_requests(spec: TraceSpec) -> list[Request]:
    """Uniform prompt and output lengths; exponential inter-arrival gaps (a Poisson process)."""
    rng = random.Random(spec.seed)
    t, out = 0.0, []
    for i in range(spec.num_requests):
        t += rng.expovariate(spec.arrivals_per_step)
        out.append(Request(i, int(t), rng.randint(*spec.prompt_range), rng.randint(*spec.output_range)))
    return out


@dataclass
class Simulation:
    """The recorded calls (``steps[i]`` = the calls of decode step i) and what the run observed."""

    steps: list[list[tuple[str, tuple]]] = field(default_factory=list)
    step_results: list[tuple] = field(default_factory=list)  # (slots, new_blocks, copies, preempted)
    samples: list[dict] = field(default_factory=list)  # stats() at steady state, plus context
    num_tokens_appended: int = 0
    num_calls: int = 0
    preemptions: int = 0
    peak_memory_bytes: int = 0
    finished: int = 0

    @property
    def work_items(self) -> int:
        """Token slots appended + allocate/free/can_allocate calls: the same for every API."""
        return self.num_tokens_appended + sum(1 for ops in self.steps for name, _ in ops if name != "step")


def simulate(manager, spec: TraceSpec, requests: list[Request], *, sample_every: int = 20,
             max_context: int | None = None) -> Simulation:
    """Serve ``requests`` with ``manager`` (a fresh BlockManager of ``spec.num_gpu_blocks``, policy
    "preempt") and record every call. ``stats()`` is sampled every ``sample_every`` steps between the
    arrival of the 25th and the 75th percentile request (steady state)."""
    max_context = max_context or spec.prompt_range[1] + spec.output_range[1]
    sim = Simulation()
    pending = deque(requests)
    waiting: deque[Request] = deque()
    running: list[int] = []
    generated = {r.id: 0 for r in requests}
    by_id = {r.id: r for r in requests}
    steady = (requests[len(requests) // 4].arrival_step, requests[3 * len(requests) // 4].arrival_step)
    step_no = 0
    while pending or waiting or running:
        ops: list[tuple[str, tuple]] = []
        while pending and pending[0].arrival_step <= step_no:
            waiting.append(pending.popleft())
        while waiting and len(running) < spec.max_batch:
            req = waiting[0]
            context = req.prompt_tokens + generated[req.id]  # a re-queued request recomputes its output so far
            ops.append(("can_allocate", (context,)))
            if not manager.can_allocate(context):
                break
            waiting.popleft()
            manager.allocate(req.id, context)
            ops.append(("allocate", (req.id, context)))
            running.append(req.id)
        if running:
            batch = list(running)
            result = manager.step(batch)
            ops.append(("step", (batch,)))
            sim.step_results.append((result.slots, result.new_blocks, result.copies, result.preempted))
            if result.preempted:
                victims = set(result.preempted)
                sim.preemptions += len(victims)
                running = [s for s in running if s not in victims]
                for v in reversed(result.preempted):  # back to the head of the queue, oldest first
                    waiting.appendleft(by_id[v])
            sim.num_tokens_appended += len(result.slots)
            still = []
            for sid in running:
                generated[sid] += 1
                if generated[sid] >= by_id[sid].output_tokens:
                    manager.free(sid)
                    ops.append(("free", (sid,)))
                    sim.finished += 1
                else:
                    still.append(sid)
            running = still
        if steady[0] <= step_no <= steady[1] and step_no % sample_every == 0:
            s = dict(manager.stats())
            s["step"] = step_no
            s["contiguous_reserved_slots"] = s["num_running"] * max_context
            sim.samples.append(s)
            if hasattr(manager, "memory_bytes"):
                sim.peak_memory_bytes = max(sim.peak_memory_bytes, manager.memory_bytes())
        sim.steps.append(ops)
        sim.num_calls += len(ops)
        step_no += 1
    return sim


def bind(manager, steps: list[list[tuple[str, tuple]]], api: str) -> list[list[tuple]]:
    """The recorded calls as (bound method, args) pairs for ``manager``; ``api="per_call"`` turns
    each ``step(batch)`` into one ``append_slot`` per sequence (victims freed first, by the
    recorded preemption), ``api="batched"`` keeps it."""
    if api not in ("batched", "per_call"):
        raise ValueError(f"api must be 'batched' or 'per_call', got '{api}'")
    can, alloc, step, free, append = (manager.can_allocate, manager.allocate, manager.step,
                                      manager.free, manager.append_slot)
    methods = {"can_allocate": can, "allocate": alloc, "free": free}
    bound = []
    for ops in steps:
        calls = []
        for name, args in ops:
            if name != "step":
                calls.append((methods[name], args))
            elif api == "batched":
                calls.append((step, args))
            else:
                calls.extend((append, (sid,)) for sid in args[0])
        bound.append(calls)
    return bound


def per_call_steps(sim: Simulation) -> list[list[tuple[str, tuple]]]:
    """The per-call version of the recorded trace: preemption victims become explicit ``free`` calls
    before the step's appends, so both APIs end each step in the same state."""
    out, results = [], iter(sim.step_results)
    for ops in sim.steps:
        new_ops = []
        for name, args in ops:
            if name == "step":
                preempted = next(results)[3]
                new_ops.extend(("free", (v,)) for v in preempted)
                live = [s for s in args[0] if s not in set(preempted)]
                new_ops.append(("step", (live,)))
            else:
                new_ops.append((name, args))
        out.append(new_ops)
    return out


def replay(bound_steps: list[list[tuple]]) -> list[float]:
    """Issue the calls; return the seconds each step's calls took (the scheduler's time per step)."""
    clock = time.perf_counter
    per_step = []
    for calls in bound_steps:
        t0 = clock()
        for fn, args in calls:
            fn(*args)
        per_step.append(clock() - t0)
    return per_step
