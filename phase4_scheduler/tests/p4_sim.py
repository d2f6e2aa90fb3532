"""A scheduler driven without a model: tokens are a function of (request, position), so recompute
after preemption reproduces them, and an EOS arrives where ``eos_at`` says. Shared by the tests."""

from __future__ import annotations

from phase4_scheduler import SchedulerConfig, load_impl
from phase4_scheduler.blocks import make_block_manager
from phase4_scheduler.request import Request

EOS = 2


def fake_token(request: Request, eos_at: dict[int, int]) -> int:
    n = len(request.output_ids)
    if eos_at.get(request.request_id) == n:
        return EOS
    return 3 + (request.request_id * 31 + n * 7) % 50


def check_plan(sched, plan) -> None:
    cfg, bm = sched.config, sched.blocks
    assert plan.num_batched_tokens <= max(cfg.max_num_batched_tokens, 0) or sched.name == "framework"
    assert len(sched.running) <= cfg.max_num_seqs
    ids = [c.request.request_id for c in plan.chunks]
    assert len(ids) == len(set(ids)), "a request scheduled twice in one step"
    for c in plan.chunks:
        assert c.start == c.request.num_computed and c.num_tokens >= 1
        assert c.end <= c.request.num_tokens
        assert len(c.block_table) * bm.block_size >= c.end, "chunk past its reserved slots"
    assert bm.check_invariants() == []
    held = {b for r in sched.running for b in bm.block_table(r.request_id)}
    assert len(held) == bm.num_gpu_blocks - bm.num_free_gpu_blocks, "blocks held outside running requests"


def drive(impl: str, workload, *, num_blocks=64, block_size=4, config=None, eos_at=None, max_steps=5000,
          bm_impl=None, on_plan=None):
    """``workload``: list of (arrival_step, Request). Returns (scheduler, requests, plans)."""
    config = config or SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16)
    sched = load_impl(impl).build(config, make_block_manager(num_blocks, block_size, impl=bm_impl))
    eos_at = eos_at or {}
    pending = sorted(workload, key=lambda x: x[0])
    requests = [r for _, r in pending]
    plans, step = [], 0
    while pending or sched.has_unfinished():
        while pending and pending[0][0] <= step:
            sched.add(pending.pop(0)[1])
        plan = sched.schedule()
        check_plan(sched, plan)
        if on_plan:
            on_plan(sched, plan)
        sampled = {c.request.request_id: fake_token(c.request, eos_at) for c in plan.chunks if c.sample}
        sched.update(plan, sampled)
        plans.append(plan)
        step += 1
        assert step < max_steps, "the scheduler stopped making progress"
    return sched, requests, plans
