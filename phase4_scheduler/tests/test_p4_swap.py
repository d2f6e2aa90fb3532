"""Preemption by swap: victims' KV blocks go to the block manager's CPU pool and come back, the request
keeps its tokens and progress. Engine level (``random:tiny``, fp32, fresh random prompts): greedy
tokens equal recompute mode and each request run alone (phase 0's engine), the blocks really moved
(manager counters, runner bytes), every copied-back block is bit-identical to a copy taken before it
left, a CPU pool too small falls back to recompute; scheduler level (the stubbed model of ``p4_sim``,
random workloads): every step's invariants hold, GPU and CPU blocks are all free at the end."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p4_sim import build_workload, drive, expected_tokens, workloads

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype import load_model
from phase4_scheduler import SchedulerConfig
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.request import Status

BS = 4
LENGTHS, NEW = [3, 21, 9, 40, 1, 14], [12, 6, 20, 9, 15, 11]


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny", dtype="fp32")


@pytest.fixture(scope="module")
def prompts(model):
    gen = torch.Generator().manual_seed(random.randrange(2**31))  # fresh every run
    return [torch.randint(3, model.config.vocab_size, (n,), generator=gen).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def alone(model, prompts):
    ref = phase0_impl("solution").build(model, compile=False)
    return [ref.generate(p, n, stop_on_eos=False).sequences()[0] for p, n in zip(prompts, NEW, strict=True)]


def run(model, prompts, *, preemption="recompute", num_cpu_blocks=None, overlap=True, num_blocks=14):
    """Generate ``prompts`` in one engine with a small KV pool; (outputs, engine, record)."""
    cfg = BatchingConfig(SchedulerConfig(5, 64, preemption=preemption), num_blocks=num_blocks, block_size=BS,
                       overlap=overlap, num_cpu_blocks=num_cpu_blocks)
    engine = BatchingEngine(model, cfg)
    record = dict(swapped=0, recomputed=0, checked_blocks=0, problems=[])
    sched, space = engine.scheduler, engine.runner.swap_space
    preempt = sched._preempt

    def counting_preempt(r, plan):
        preempt(r, plan)
        record["swapped" if r.status is Status.SWAPPED else "recomputed"] += 1

    sched._preempt = counting_preempt
    if space is not None:  # every swapped-in block must come back as it left
        snapshots, apply = {}, space.apply

        def checked_apply(swap_out, swap_in):
            for gpu, cpu in swap_out:
                snapshots[cpu] = [(k[gpu].clone(), v[gpu].clone()) for k, v in space.kv]
            apply(swap_out, swap_in)
            written = False  # (a block reserved past a chunked prompt's computed part may hold nothing yet)
            for cpu, gpu in swap_in:
                before = snapshots.pop(cpu)
                assert all(torch.equal(k[gpu], k0) and torch.equal(v[gpu], v0)
                           for (k, v), (k0, v0) in zip(space.kv, before, strict=True)), "a block changed in the CPU pool"
                written = written or any(k0.abs().sum() > 0 for k0, _ in before)
                record["checked_blocks"] += 1
            assert written or not swap_in, "the swapped-in blocks held no KV: the check would be vacuous"

        space.apply = checked_apply

    def check(e):
        record["problems"] += e.blocks.check_invariants()

    requests = [engine.make_request(p, n, ignore_eos=True) for p, n in zip(prompts, NEW, strict=True)]
    engine.generate(requests, on_step=check)
    assert record["problems"] == []
    assert all(r.finished and r.num_in_flight == 0 for r in requests)
    blocks = engine.blocks
    assert blocks.num_free_gpu_blocks == blocks.num_gpu_blocks and blocks.num_free_cpu_blocks == blocks.num_cpu_blocks
    assert blocks.seq_ids() == [] and blocks.check_invariants() == []
    return [r.output_ids for r in requests], engine, record


@pytest.mark.parametrize("overlap", [True, False])
def test_swap_gives_the_tokens_of_recompute_and_of_each_request_alone(model, prompts, alone, overlap):
    recomputed, _, rec = run(model, prompts, overlap=overlap)
    assert rec["recomputed"] > 0, "the small pool should have forced a preemption"
    swapped, engine, rec = run(model, prompts, preemption="swap", num_cpu_blocks=64, overlap=overlap)
    assert swapped == recomputed == alone
    stats, space = engine.blocks.stats(), engine.runner.swap_space
    assert rec["swapped"] > 0 and rec["recomputed"] == 0, rec
    assert stats["swapped_out_blocks"] > 0 and stats["swapped_in_blocks"] > 0
    assert space.bytes_out == stats["swapped_out_blocks"] * space.block_bytes
    assert space.bytes_in == stats["swapped_in_blocks"] * space.block_bytes
    assert rec["checked_blocks"] == stats["swapped_in_blocks"] > 0
    if not overlap:  # (overlapped, a victim whose last token is in flight finishes in the CPU pool)
        assert space.bytes_in == space.bytes_out


@pytest.mark.parametrize("num_blocks, num_cpu_blocks", [(14, 3), (16, 4)])
def test_a_cpu_pool_too_small_falls_back_to_recompute(model, prompts, alone, num_blocks, num_cpu_blocks):
    outputs, engine, rec = run(model, prompts, preemption="swap", num_cpu_blocks=num_cpu_blocks, num_blocks=num_blocks)
    assert outputs == alone
    assert rec["recomputed"] > 0, "victims larger than the CPU pool must be recomputed"
    if num_blocks == 16:  # this pool is short twice: one victim fits the CPU pool, the others do not
        assert rec["swapped"] > 0 and rec["checked_blocks"] == engine.blocks.stats()["swapped_in_blocks"] > 0


def test_swap_configuration_errors_are_one_line():
    with pytest.raises(ValueError, match="preemption must be one of recompute, swap"):
        SchedulerConfig(preemption="spill")
    with pytest.raises(ValueError, match="needs a CPU pool"):
        BatchingConfig(SchedulerConfig(preemption="swap"), swap_space=0)
    with pytest.raises(ValueError, match="swap_space must be >= 0"):
        BatchingConfig(swap_space=-1.0)
    with pytest.raises(ValueError, match="num_cpu_blocks must be >= 0"):
        BatchingConfig(num_cpu_blocks=-3)
    cfg = BatchingConfig(SchedulerConfig(preemption="swap"), swap_space=1e-9)
    with pytest.raises(ValueError, match="holds no KV block"):
        cfg.cpu_blocks(4096)
    assert BatchingConfig(swap_space=4.0).cpu_blocks(4096) == 0, "recompute mode allocates no pool"
    assert BatchingConfig(SchedulerConfig(preemption="swap"), swap_space=1.0).cpu_blocks(2**20) == 1024


def test_serve_cli_rejects_a_bad_swap_space(capsys):
    from phase4_scheduler.__main__ import main

    assert main(["serve", "--preemption", "swap", "--swap-space", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: swap_space must be >= 0 GiB, got -2.0"]


# ---------------------------------------------------------------------- scheduler level (stubbed model)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workloads(), seqs=st.integers(1, 4), budget=st.integers(4, 16), num_blocks=st.integers(8, 20),
       num_cpu_blocks=st.integers(0, 24), overlap=st.booleans(), bm_impl=st.sampled_from([None, "reference"]))
def test_swap_scheduler_keeps_progress_and_frees_every_block(spec, seqs, budget, num_blocks, num_cpu_blocks, overlap,
                                                             bm_impl):
    work, eos_at = build_workload(spec)
    if any(r.max_total_tokens > num_blocks * BS for _, r in work):
        return
    cfg = SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=max(budget, seqs), preemption="swap")
    restarts = []

    def no_restart_after_swap(sched, plan):
        # a request brought back from the CPU pool continues where it stopped (no recompute)
        restarts.extend(c for c in plan.chunks if c.request in plan.swapped_in and c.start == 0)
        assert not set(map(id, plan.swapped_in)) & set(map(id, plan.preempted)), "swapped in and out in one step"

    sched, requests, plans = drive("solution", work, num_blocks=num_blocks, block_size=BS, config=cfg, eos_at=eos_at,
                                   overlap=overlap, num_cpu_blocks=num_cpu_blocks, on_plan=no_restart_after_swap,
                                   bm_impl=bm_impl)
    assert not restarts
    for r in requests:
        assert r.finished and r.output_ids == expected_tokens(r, eos_at)
    bm = sched.blocks
    assert bm.num_free_gpu_blocks == bm.num_gpu_blocks and bm.num_free_cpu_blocks == bm.num_cpu_blocks
    assert bm.seq_ids() == [] and not sched.swapped and bm.check_invariants() == []
    if num_cpu_blocks == 0:
        assert bm.stats()["swapped_out_blocks"] == 0
