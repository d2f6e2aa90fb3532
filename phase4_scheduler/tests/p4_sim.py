"""A scheduler driven without a model: tokens are a function of (request, position), so recompute
after preemption reproduces them, and an EOS arrives where ``eos_at`` says. Shared by the tests."""

from __future__ import annotations

from phase4_scheduler import SchedulerConfig, load_impl
from phase4_scheduler.blocks import make_block_manager
from phase4_scheduler.request import Request

EOS = 2


def fake_token(request: Request, eos_at: dict[int, int], index: int | None = None) -> int:
    """The token at output ``index`` (default: the next one) of ``request``."""
    n = len(request.output_ids) if index is None else index
    if eos_at.get(request.request_id) == n:
        return EOS
    return 3 + (request.request_id * 31 + n * 7) % 50


def expected_tokens(request: Request, eos_at: dict[int, int]) -> list[int]:
    """What ``request`` must end with: ``fake_token`` at each index up to its EOS or ``max_tokens``."""
    out = []
    while len(out) < request.max_tokens and (not out or out[-1] != EOS):
        out.append(fake_token(request, eos_at, len(out)))
    return out


def workloads(max_requests: int = 10):
    """Hypothesis: lists of (arrival step, prompt length, max_tokens, priority, EOS index or None)."""
    from hypothesis import strategies as st

    req = st.tuples(st.integers(0, 12), st.integers(1, 20), st.integers(1, 16), st.integers(0, 2),
                    st.one_of(st.none(), st.integers(0, 15)))
    return st.lists(req, min_size=1, max_size=max_requests)


def build_workload(spec) -> tuple[list[tuple[int, Request]], dict[int, int]]:
    """``workloads`` items as (arrival, Request) pairs and the EOS index of each request that has one."""
    work, eos_at = [], {}
    for arrival, prompt_len, max_tokens, prio, eos in spec:
        r = Request(list(range(5, 5 + prompt_len)), max_tokens, priority=prio, eos_ids=(EOS,))
        if eos is not None:
            eos_at[r.request_id] = eos
        work.append((arrival, r))
    return work, eos_at


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
        assert list(c.block_table) == bm.block_table(c.request.request_id), "stale block table"
    assert bm.check_invariants() == []
    if sched.name == "solution":  # the bookkeeping that spares a manager call per request per step
        one = {c.request.request_id for c in plan.chunks if c.num_tokens == 1}  # a slot taken this step
        for r in sched.running:
            want = max(r.kv_slots, r.num_computed + (r.request_id in one))
            assert bm.num_tokens(r.request_id) == want, "slot bookkeeping drifted from the manager"
            assert sched.table_rows.row(r.kv_seat) == bm.block_table(r.request_id), "stale table row"
    held = {b for r in sched.running for b in bm.block_table(r.request_id)}
    assert len(held) == bm.num_gpu_blocks - bm.num_free_gpu_blocks, "blocks held outside running requests"
    # Preemption by swap: a swapped request holds CPU blocks only, and keeps its progress.
    swapped = getattr(sched, "swapped", ())
    on_cpu = {b for r in swapped for b in bm.block_table(r.request_id)}
    assert len(on_cpu) == bm.num_cpu_blocks - bm.num_free_cpu_blocks, "CPU blocks held outside swapped requests"
    for r in swapped:
        assert bm.is_swapped(r.request_id) and r.kv_seat < 0 and r.kv_table is None
        assert len(bm.block_table(r.request_id)) * bm.block_size >= r.num_computed
    assert all(not bm.is_swapped(r.request_id) for r in sched.running)
    out = dict(plan.swap_out)  # copies of this step: GPU blocks now free, CPU blocks now held
    assert all(bm.ref_count(g) == 0 or g in held for g in out), "a swapped-out GPU block still held elsewhere"
    assert {c for _, c in plan.swap_out} <= on_cpu | {c for c, _ in plan.swap_in}
    assert {g for _, g in plan.swap_in} <= held, "a swapped-in block not in a running table"


def drive(impl: str, workload, *, num_blocks=64, block_size=4, config=None, eos_at=None, max_steps=5000,
          bm_impl=None, on_plan=None, overlap=False, num_cpu_blocks=0):
    """``workload``: list of (arrival_step, Request). Returns (scheduler, requests, plans).

    ``overlap``: the engine's overlapped protocol — step N is planned and ``advance``d before step N-1's
    tokens are ``apply``'d (each request's last token is in flight while the next step is planned)."""
    config = config or SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16)
    sched = load_impl(impl).build(config, make_block_manager(num_blocks, block_size, impl=bm_impl,
                                                             num_cpu_blocks=num_cpu_blocks))
    eos_at = eos_at or {}
    pending = sorted(workload, key=lambda x: x[0])
    requests = [r for _, r in pending]
    plans, step, in_flight = [], 0, None
    while pending or sched.has_unfinished() or in_flight is not None:
        while pending and pending[0][0] <= step:
            sched.add(pending.pop(0)[1])
        plan = sched.schedule()
        check_plan(sched, plan)
        if on_plan:
            on_plan(sched, plan)
        # The token a step samples depends only on (request, output index), as a model's would.
        sampled = {c.request.request_id: fake_token(c.request, eos_at, len(c.request.output_ids) + c.request.num_in_flight)
                   for c in plan.chunks if c.sample}
        if overlap:
            sched.advance(plan)
            if in_flight is not None:
                sched.apply(*in_flight)
            in_flight = (plan, sampled) if plan.chunks else None
        else:
            sched.update(plan, sampled)
        plans.append(plan)
        step += 1
        assert step < max_steps, "the scheduler stopped making progress"
    return sched, requests, plans
