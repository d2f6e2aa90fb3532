"""Scheduler tests: a Python model of the solution's decisions (step by step, on random workloads),
invariants for both implementations (every request finishes, no block leak, budget respected),
static batching's semantics, preemption by recompute, and aging's bound on waiting."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p4_sim import build_workload, drive, expected_tokens, workloads

from module0_profiling.impl import impls_under_test
from phase0_prototype.sampling import SamplingParams
from phase4_scheduler import Request, SchedulerConfig


class ModelScheduler:
    """The solution's rules restated over plain integers: block counts are arithmetic, not a manager."""

    def __init__(self, cfg: SchedulerConfig, num_blocks: int, block_size: int, watermark_blocks: int):
        self.cfg, self.N, self.bs, self.wm = cfg, num_blocks, block_size, watermark_blocks
        self.req, self.waiting, self.running, self.step = {}, [], [], 0

    def add(self, r: Request) -> None:
        self.req[r.request_id] = dict(prompt=len(r.prompt_ids), max=r.max_tokens, prio=r.priority, out=0,
                                      done=0, arrival=self.step, pre=0, slots=0)
        self.waiting.append(r.request_id)

    def total(self, rid):
        return self.req[rid]["prompt"] + self.req[rid]["out"]

    def free(self):
        return self.N - sum(math.ceil(self.req[rid]["slots"] / self.bs) for rid in self.running)

    def key(self, rid):
        q = self.req[rid]
        if q["pre"] or (self.cfg.max_wait_steps is not None and self.step - q["arrival"] >= self.cfg.max_wait_steps):
            return (0, q["arrival"], rid)
        prio = 0 if self.cfg.policy == "fcfs" else q["prio"]
        length = q["max"] if self.cfg.policy == "sjf" else 0
        return (1, prio, length, q["arrival"], rid)

    def schedule(self):
        self.step += 1
        budget, chunks, preempted = self.cfg.max_num_batched_tokens, [], []
        dec = [rid for rid in self.running if self.total(rid) - self.req[rid]["done"] == 1]
        while True:
            need = [rid for rid in dec if self.req[rid]["slots"] < self.total(rid)]
            if sum(1 for rid in need if self.req[rid]["slots"] % self.bs == 0) <= self.free():
                break
            victim = max(self.running, key=lambda rid: (self.req[rid]["prio"], self.running.index(rid)))
            self.running.remove(victim)
            self.req[victim].update(done=0, slots=0, pre=self.req[victim]["pre"] + 1)
            self.waiting.append(victim)
            preempted.append(victim)
            dec = [rid for rid in dec if rid != victim]
        for rid in need:
            self.req[rid]["slots"] += 1
        chunks += [(rid, self.req[rid]["done"], 1) for rid in dec]
        budget -= len(dec)
        for rid in self.running:
            pending = self.total(rid) - self.req[rid]["done"]
            if rid not in dec and pending > 1 and budget > 0:
                chunks.append((rid, self.req[rid]["done"], min(pending, budget)))
                budget -= chunks[-1][2]
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            rid = min(self.waiting, key=self.key)
            if self.free() - math.ceil(self.total(rid) / self.bs) < self.wm:
                break
            self.waiting.remove(rid)
            self.running.append(rid)
            self.req[rid]["slots"] = self.total(rid)
            chunks.append((rid, 0, min(self.total(rid), budget)))
            budget -= chunks[-1][2]
        return chunks, preempted

    def update(self, chunks, eos_at):
        for rid, start, n in chunks:
            q = self.req[rid]
            q["done"] = start + n
            if q["done"] == self.total(rid):
                q["out"] += 1
                if q["out"] >= q["max"] or eos_at.get(rid) == q["out"] - 1:
                    self.running.remove(rid)


configs = st.builds(
    SchedulerConfig, max_num_seqs=st.integers(1, 4), max_num_batched_tokens=st.integers(4, 16),
    policy=st.sampled_from(["fcfs", "priority", "sjf"]), max_wait_steps=st.one_of(st.none(), st.integers(1, 12)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workloads(), cfg=configs, num_blocks=st.integers(12, 30), block_size=st.integers(2, 4))
def test_solution_matches_python_model_step_by_step(spec, cfg, num_blocks, block_size):
    work, eos_at = build_workload(spec)
    if any(r.max_total_tokens > num_blocks * block_size for _, r in work):
        return
    model = ModelScheduler(cfg, num_blocks, block_size, math.floor(0.01 * num_blocks))
    arrivals = sorted(work, key=lambda x: x[0])

    def compare(sched, plan):
        while arrivals and arrivals[0][0] <= sched.step_count - 1:
            model.add(arrivals.pop(0)[1])
        chunks, preempted = model.schedule()
        got = [(c.request.request_id, c.start, c.num_tokens) for c in plan.chunks]
        assert got == chunks, f"step {plan.step}"
        assert [r.request_id for r in plan.preempted] == preempted
        model.update(chunks, eos_at)

    sched, requests, _ = drive("solution", work, num_blocks=num_blocks, block_size=block_size, config=cfg,
                               eos_at=eos_at, on_plan=compare)
    _check_all_finished(sched, requests, eos_at)


def _check_all_finished(sched, requests, eos_at):
    for r in requests:
        assert r.finished and r.finish_reason in ("stop", "length")
        assert r.output_ids == expected_tokens(r, eos_at)
    assert sched.blocks.num_free_gpu_blocks == sched.blocks.num_gpu_blocks, "KV blocks leaked"
    assert sched.blocks.seq_ids() == []


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
@settings(max_examples=40, deadline=None)
@given(spec=workloads(12), cfg=configs, num_blocks=st.integers(10, 40))
def test_every_scheduler_finishes_everything(impl, spec, cfg, num_blocks):
    """The contract on random workloads: every plan within the budget and seats (``check_plan``), every request
    finished with its tokens, every KV block returned — for the implementations under test (``IMPL``)."""
    work, eos_at = build_workload(spec)
    if any(r.max_total_tokens > num_blocks * 4 for _, r in work):
        return
    bm_impl = "reference" if impl == "solution" else None  # the solution also over the Python reference manager
    sched, requests, _ = drive(impl, work, num_blocks=num_blocks, config=cfg, eos_at=eos_at, bm_impl=bm_impl)
    _check_all_finished(sched, requests, eos_at)


@settings(max_examples=40, deadline=None)
@given(spec=workloads(12), wait=st.integers(1, 8))
def test_aged_request_is_never_overtaken(spec, wait):
    work, eos_at = build_workload(spec)
    cfg = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=8, policy="sjf", max_wait_steps=wait)

    def check(sched, plan):
        admitted = [c.request for c in plan.chunks if c.start == 0 and c.request.first_scheduled_step == plan.step]
        for x in admitted:
            for y in sched.waiting:
                if sched.is_aged(y):
                    assert sched.is_aged(x) and (x.arrival_step, x.request_id) < (y.arrival_step, y.request_id)

    if all(r.max_total_tokens <= 64 * 4 for _, r in work):
        sched, requests, _ = drive("solution", work, config=cfg, eos_at=eos_at, on_plan=check)
        _check_all_finished(sched, requests, eos_at)


def _stream_with_one_long(stream_steps=80):
    work = [(0, Request([7] * 4, 60))]  # the long job arrives first
    work += [(s, Request([9] * 2, 2)) for s in range(stream_steps)]  # one short job every step
    return work


@pytest.mark.parametrize("max_wait", [None, 10])
def test_aging_bounds_the_wait_of_a_long_job_under_a_stream_of_short_ones(max_wait):
    cfg = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=8, policy="sjf", max_wait_steps=max_wait)
    work = _stream_with_one_long()
    work.insert(1, (0, Request([8] * 2, 2)))  # a second short one takes the other seat at step 0
    long_job = work[0][1]
    drive("solution", work, num_blocks=64, config=cfg)
    wait = long_job.first_scheduled_step - long_job.arrival_step
    if max_wait is None:
        assert wait >= 70, "without aging SJF should starve the long job while short ones keep coming"
    else:
        assert wait <= max_wait + 3, f"aged job waited {wait} steps (bound {max_wait} + one short job)"


def test_sjf_serves_short_requests_faster_than_fcfs():
    latency = {}
    for policy in ("fcfs", "sjf"):
        work = [(0, Request([5] * 3, 40 if i % 2 == 0 else 3)) for i in range(24)]
        cfg = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16, policy=policy, max_wait_steps=None)
        finished_at = {}
        def record(sched, plan, finished_at=finished_at):
            for c in plan.chunks:
                if c.sample and len(c.request.output_ids) + 1 >= c.request.max_tokens:
                    finished_at[c.request.request_id] = plan.step
        drive("solution", work, config=cfg, num_blocks=128, on_plan=record)
        shorts = [finished_at[r.request_id] for _, r in work if r.max_tokens == 3]
        latency[policy] = sum(shorts) / len(shorts)
    assert latency["sjf"] * 2 <= latency["fcfs"], latency


def test_framework_is_static_batching():
    work = [(0, Request([5] * 3, n)) for n in (2, 30, 2, 2)]
    cfg = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=8)

    def check(sched, plan):
        if plan.step > 1 and plan.step < 30:  # the first batch (2 and 30 new tokens) holds the seats
            assert {c.request.request_id for c in plan.chunks} <= {work[0][1].request_id, work[1][1].request_id}

    drive("framework", work, config=cfg, num_blocks=64, on_plan=check)
    assert work[2][1].first_scheduled_step == 31


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workloads(12), cfg=configs, num_blocks=st.integers(10, 40))
def test_overlapped_protocol_gives_the_same_tokens_and_frees_everything(spec, cfg, num_blocks):
    """Planning step N before step N-1's tokens are applied (the overlapped engine): every request still
    ends with exactly its tokens (EOS, length), preemption and recompute included, and no block leaks;
    a request never has more than one token in flight when a step is planned."""
    if any(r.max_total_tokens > num_blocks * 4 for _, r in build_workload(spec)[0]):
        return
    for impl in ("solution", "framework"):
        work, eos_at = build_workload(spec)

        def one_in_flight(sched, plan):
            assert all(r.num_in_flight <= 1 for r in sched.running + list(sched.waiting))
            assert all(c.num_tokens >= 1 for c in plan.chunks)

        sched, requests, _ = drive(impl, work, num_blocks=num_blocks, config=cfg, eos_at=eos_at, overlap=True,
                                   on_plan=one_in_flight)
        _check_all_finished(sched, requests, eos_at)
        assert all(r.num_in_flight == 0 for r in requests)


def test_preemption_by_recompute_when_blocks_run_out():
    work = [(0, Request([5] * 6, 30, priority=p)) for p in (0, 0, 1)]
    cfg = SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=32, max_wait_steps=None)
    sched, requests, plans = drive("solution", work, config=cfg, num_blocks=16, block_size=4)
    victims = [r for p in plans for r in p.preempted]
    assert victims and victims[0] is work[2][1], "the lowest class is preempted first"
    restart = [c for p in plans for c in p.chunks if c.request is victims[0] and c.start == 0]
    assert len(restart) >= 2, "a preempted request is recomputed from position 0"
    _check_all_finished(sched, requests, {})


def test_request_larger_than_the_pool_is_refused_with_the_limit():
    sched, _, _ = drive("solution", [], num_blocks=8, block_size=4)
    with pytest.raises(ValueError, match="exceeds the KV cache capacity of 32 tokens"):
        sched.add(Request([1] * 20, 20, sampling=SamplingParams()))
