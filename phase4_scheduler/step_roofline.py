"""Serving against its roofline: the least time the steps a scheduler ran could take, and host time per step.

A step reads every weight once (the embedding table one row per token), the cached K/V its requests attend
to, and writes the K/V of its tokens; it computes 2 FLOPs per matrix weight per token (``lm_head`` only for
the rows that sample) plus attention's QK and PV over every (query, key) pair, causal within a chunk. Its
floor is ``Ceiling.min_seconds``: max(bytes / measured copy bandwidth, FLOPs / measured matmul peak). A run's
floor is the sum over its steps; achieved fraction = floor / wall time (= throughput / roofline throughput).
Activations and logits are left out (a fused step keeps them on chip): the floor is a lower bound.

``StepRecorder`` (opt-in, for a bench) wraps one engine's ``scheduler.schedule``, ``runner.launch`` and
``step`` as instance attributes: each step's shape from the plan's columns (a sum over the decodes' starts,
a loop over the few explicit chunks; never ``plan.chunks``, which rewrites the plan) and the host seconds of
schedule and launch beside the step's wall time. ``launch`` never waits for the GPU, so on CUDA its time is
the runner's host work (inputs, kernel launches); on a CPU it includes the forward pass itself.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from module0_profiling.roofline import Ceiling
from module0_profiling.timing import format_seconds, time_region
from phase0_prototype.config import LlamaConfig
from phase4_scheduler.plan import StepPlan


class StepShape(NamedTuple):
    """What one step computed (a tuple: one is made per step)."""

    tokens: int  # rows of the packed forward pass: decodes + prefill chunk tokens
    sampled: int  # rows whose logits are computed
    cached: int  # cached positions read by attention, summed over the step's requests
    pairs: int  # (query, key) pairs scored by attention, causal
    requests: int  # requests in the step


def shape_of_spans(spans: Iterable[tuple[int, int, bool]]) -> StepShape:
    """A step of chunks ``(start, num_tokens, samples)``: positions ``[start, start + n)`` after ``start`` cached."""
    tokens = sampled = cached = pairs = requests = 0
    for start, n, sample in spans:
        tokens += n
        sampled += sample
        cached += start
        pairs += n * start + n * (n + 1) // 2
        requests += 1
    return StepShape(tokens, sampled, cached, pairs, requests)


def shape_of(plan: StepPlan) -> StepShape:
    """``plan``'s shape from its columnar decodes (one token each, each samples) and its explicit chunks."""
    d = len(plan.decode_requests)
    rest = shape_of_spans((c.start, c.num_tokens, c.sample) for c in plan.explicit_chunks)
    if not d:
        return rest
    s = sum(plan.decode_starts)
    return StepShape(rest.tokens + d, rest.sampled + d, rest.cached + s, rest.pairs + s + d, rest.requests + d)


def step_bytes(cfg: LlamaConfig, elem_bytes: float, shape: StepShape) -> float:
    """Weights once (embedding rows per token; lm_head whole, tied or not) + cached K/V read + new K/V written."""
    table = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size  # a tied one is lm_head's
    weights = cfg.num_parameters() - table + shape.tokens * cfg.hidden_size
    kv = 2 * cfg.num_hidden_layers * cfg.kv_size * (shape.cached + shape.tokens)
    return float(weights + kv) * elem_bytes


def step_flops(cfg: LlamaConfig, shape: StepShape) -> float:
    """2 per matrix weight per row (lm_head per sampled row) + 4 · q heads · head_dim per attended pair per layer."""
    h = cfg.hidden_size
    layer = h * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * h + 3 * h * cfg.intermediate_size
    return (2.0 * (cfg.num_hidden_layers * layer * shape.tokens + cfg.vocab_size * h * shape.sampled)
            + 4.0 * cfg.num_hidden_layers * cfg.q_size * shape.pairs)


class StepRecorder:
    """Per step of one engine: its shape, the host seconds of ``schedule`` and ``launch``, its wall seconds."""

    def __init__(self):
        self.shapes: list[StepShape] = []
        self.schedule_s: list[float] = []
        self.launch_s: list[float] = []
        self.step_s: list[float] = []

    @contextmanager
    def attached(self, engine):
        """Record ``engine``'s steps while inside; its own methods are back afterwards."""
        sched, runner, clock = engine.scheduler, engine.runner, time.perf_counter
        schedule, launch, step = sched.schedule, runner.launch, engine.step

        def timed_schedule():
            t0 = clock()
            plan = schedule()
            self.schedule_s.append(clock() - t0)
            self.shapes.append(shape_of(plan))  # now: the runner may list the plan's chunks (rewriting it)
            return plan

        def timed_launch(plan, sampler):
            t0 = clock()
            pending = launch(plan, sampler)
            self.launch_s.append(clock() - t0)
            return pending

        def timed_step():
            t0 = clock()
            events = step()
            self.step_s.append(clock() - t0)
            return events

        patched = [(sched, "schedule", timed_schedule), (runner, "launch", timed_launch), (engine, "step", timed_step)]
        for obj, name, fn in patched:
            setattr(obj, name, fn)
        try:
            yield self
        finally:
            for obj, name, _ in patched:
                delattr(obj, name)  # the class's method again


@dataclass
class ServingRoofline:
    """One recorded run against its floor."""

    steps: int
    tokens: int
    floor_s: float
    memory_bound_steps: int  # steps whose floor is their bytes
    wall_s: float
    flops: float
    bytes: float
    full_steps: int  # steps with at least ``full_rows`` requests (host share is taken over these)
    full_rows: int
    host_s: float  # schedule + launch per full step
    schedule_s: float
    full_step_s: float  # wall seconds per full step

    @property
    def fraction(self) -> float:
        return self.floor_s / self.wall_s

    @property
    def host_share(self) -> float:
        return self.host_s / self.full_step_s


def roofline_of(rec: StepRecorder, cfg: LlamaConfig, elem_bytes: float, ceiling: Ceiling, wall_s: float,
                full_rows: int) -> ServingRoofline:
    """``rec``'s steps against ``ceiling``; host share over the steps with ``full_rows`` requests (every step
    that ran tokens when none is that full)."""
    floor = flops = nbytes = 0.0
    memory = 0
    for shape in rec.shapes:
        if shape.tokens:
            f, b = step_flops(cfg, shape), step_bytes(cfg, elem_bytes, shape)
            floor += ceiling.min_seconds(f, b)
            if b / (ceiling.gbps * 1e9) >= f / (ceiling.tflops * 1e12):
                memory += 1
            flops, nbytes = flops + f, nbytes + b
    rows = full_rows if any(s.requests >= full_rows for s in rec.shapes) else 1
    full = [i for i, s in enumerate(rec.shapes) if s.requests >= rows]
    n = max(len(full), 1)
    sched = sum(rec.schedule_s[i] for i in full) / n
    return ServingRoofline(
        steps=len(rec.shapes), tokens=sum(s.tokens for s in rec.shapes), floor_s=floor, memory_bound_steps=memory,
        wall_s=wall_s, flops=flops, bytes=nbytes, full_steps=len(full), full_rows=rows,
        host_s=sched + sum(rec.launch_s[i] for i in full) / n, schedule_s=sched,
        full_step_s=sum(rec.step_s[i] for i in full) / n)


def measure(engine, run: Callable[[], object], ceiling: Ceiling, full_rows: int) -> ServingRoofline:
    """One timed ``run()`` of ``engine`` (a ``BatchingEngine``) under a recorder, against ``ceiling``."""
    rec = StepRecorder()
    with rec.attached(engine):
        wall = time_region(run, repeats=1, warmup=0).median
    return roofline_of(rec, engine.model.config, engine.model.dtype.itemsize, ceiling, wall, full_rows)


def table(r: ServingRoofline, what: str, on_cuda: bool) -> str:
    """The report's table: floor, wall, fraction, and host time per full step."""
    host_note = "" if on_cuda else " (CPU: the forward pass runs inside launch, so this is not the host's share)"
    return (
        f"{what}: {r.steps} steps, {r.tokens} tokens computed; per step, floor = max((weights + cached K/V read + "
        "new K/V written) / measured copy bandwidth, FLOPs / measured matmul peak), summed over the steps.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| floor (sum over steps) | {format_seconds(r.floor_s)} ({r.memory_bound_steps} of {r.steps} steps "
        "bandwidth-bound) |\n"
        f"| wall time | {format_seconds(r.wall_s)} |\n"
        f"| achieved fraction of the roofline | {100 * r.fraction:.1f} % |\n"
        f"| run's work | {r.flops / 1e12:.3f} TFLOP, {r.bytes / 1e9:.2f} GB |\n"
        f"| steps with ≥ {r.full_rows} requests | {r.full_steps}: {format_seconds(r.full_step_s)} wall each |\n"
        f"| host per such step (schedule + launch) | {format_seconds(r.host_s)} (schedule "
        f"{format_seconds(r.schedule_s)}): {100 * r.host_share:.1f} % of the step{host_note} |\n")
