"""Prefix caching in the engine: same greedy tokens, less prefill, every block back, eviction still correct.

Engine level (``random:tiny``, fp32, fresh random prompts every run): requests sharing a long prefix and
repeated sampling of one prompt give the greedy tokens of the engine without the cache and of each request
run alone (phase 0's engine); the prefill tokens the plans computed drop by exactly the tokens the cache
served; after the requests finish every GPU block is free again (cached ones evictable). A small pool
forces evictions and preemption (by recompute or swap) and the tokens stay the same. Scheduler level
(``p4_sim``'s stubbed model, random workloads whose prompts share prefixes): invariants every step, a hit
starts the first chunk after the cached blocks and never at the prompt's last block, all blocks free.
"""

from __future__ import annotations

import random
from functools import partial

import p4_sim
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p4_sim import build_workload, drive, expected_tokens, workloads

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype import load_model
from phase4_scheduler import SchedulerConfig
from phase4_scheduler.blocks import make_block_manager
from phase4_scheduler.engine import BatchingConfig, BatchingEngine

BS, NEW = 4, 5


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny", dtype="fp32")


@pytest.fixture(scope="module")
def prompts(model):
    """Six requests sharing a 45-token prefix (short distinct suffixes), then one prompt three times."""
    gen = torch.Generator().manual_seed(random.randrange(2**31))  # fresh every run
    rand = lambda n: torch.randint(3, model.config.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    prefix, repeated = rand(45), rand(23)
    return [prefix + rand(n) for n in (1, 3, 6, 2, 9, 4)] + [repeated] * 3


@pytest.fixture(scope="module")
def alone(model, prompts):
    ref = phase0_impl("solution").build(model, compile=False)
    return [ref.generate(p, NEW, stop_on_eos=False).sequences()[0] for p in prompts]


def run(model, prompts, *, cache: bool, overlap=True, num_blocks=None, preemption="recompute", num_cpu_blocks=None,
        new=NEW):
    """(outputs, prefill tokens computed, the engine) after generating ``prompts`` in one engine."""
    cfg = BatchingConfig(SchedulerConfig(3, 32, preemption=preemption), num_blocks=num_blocks, block_size=BS,
                         overlap=overlap, enable_prefix_caching=cache, num_cpu_blocks=num_cpu_blocks)
    engine = BatchingEngine(model, cfg)
    record = dict(prefill=0, problems=[], preempted=0)

    def on_step(e):
        plan = e.last_step.plan
        record["prefill"] += plan.num_prefill_tokens
        record["preempted"] += len(plan.preempted)
        record["problems"] += e.blocks.check_invariants()

    requests = [engine.make_request(p, new, ignore_eos=True) for p in prompts]
    engine.generate(requests, on_step=on_step)
    assert record["problems"] == []
    blocks = engine.blocks
    assert blocks.seq_ids() == [] and blocks.num_free_gpu_blocks == blocks.num_gpu_blocks
    return [r.output_ids for r in requests], record, engine


@pytest.mark.parametrize("overlap", [True, False])
def test_greedy_tokens_identical_and_prefill_drops_by_the_hits(model, prompts, alone, overlap):
    plain, rec_plain, _ = run(model, prompts, cache=False, overlap=overlap)
    cached, rec, engine = run(model, prompts, cache=True, overlap=overlap)
    assert cached == plain == alone
    stats = engine.prefix_cache_stats()
    assert rec_plain["prefill"] == sum(map(len, prompts)) and rec["preempted"] == rec_plain["preempted"] == 0
    assert stats["prefix_hits"] > 0 and rec["prefill"] == rec_plain["prefill"] - stats["prefix_hits"]
    assert stats["prefix_queries"] == sum(map(len, prompts))
    # Finished: nothing referenced, every cached block evictable (and counted free, checked in ``run``).
    assert stats["evictable_blocks"] == stats["cached_blocks"] > 0 and stats["evictions"] == 0
    assert BatchingEngine(model, BatchingConfig(num_blocks=8, block_size=BS)).prefix_cache_stats() is None


def test_requests_admitted_in_one_step_share_the_first_ones_blocks(model, prompts, alone):
    """Repeated sampling (``n`` > 1): copies of one prompt admitted together in the first step reuse the blocks the
    first copy's chunk computes in that same step, all but the block of the last token (recomputed by each)."""
    repeated = prompts[-3:]
    cfg = BatchingConfig(SchedulerConfig(3, 128), block_size=BS, enable_prefix_caching=True)
    engine = BatchingEngine(model, cfg)
    requests = [engine.make_request(p, NEW, ignore_eos=True) for p in repeated]
    first = []
    engine.generate(requests, on_step=lambda e: first or first.append(e.last_step.plan.num_prefill_tokens))
    shared = (len(repeated[0]) - 1) // BS * BS
    assert engine.prefix_cache_stats()["prefix_hits"] == 2 * shared
    assert first == [3 * len(repeated[0]) - 2 * shared]  # one step, the shared blocks computed once
    assert [r.output_ids for r in requests] == alone[-3:]


@pytest.mark.parametrize("preemption, num_cpu_blocks", [("recompute", None), ("swap", 32)])
def test_a_small_pool_evicts_and_preempts_with_the_same_tokens(model, prompts, alone, preemption, num_cpu_blocks):
    # Other prefixes first, so the shared one's blocks are evicted and recomputed under pressure.
    gen = torch.Generator().manual_seed(random.randrange(2**31))
    others = [torch.randint(3, model.config.vocab_size, (n,), generator=gen).tolist() for n in (30, 26)]
    work = [others[0], *prompts[:3], others[1], *prompts[3:]]
    plain, _, _ = run(model, work, cache=False, new=12)
    cached, rec, engine = run(model, work, cache=True, num_blocks=26, preemption=preemption,
                              num_cpu_blocks=num_cpu_blocks, new=12)
    assert cached == plain and [cached[i][:NEW] for i in (1, 2, 3, 5, 6, 7, 8, 9, 10)] == alone
    stats = engine.prefix_cache_stats()
    assert stats["evictions"] > 0 and stats["prefix_hits"] > 0 and rec["preempted"] > 0, (stats, rec)
    assert (engine.blocks.stats()["swapped_out_blocks"] > 0) == (preemption == "swap")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workloads(), seqs=st.integers(1, 4), budget=st.integers(4, 16), num_blocks=st.integers(8, 24),
       overlap=st.booleans(), bm_impl=st.sampled_from([None, "reference"]), swap=st.booleans())
def test_scheduler_with_prefix_caching_keeps_its_books(spec, seqs, budget, num_blocks, overlap, bm_impl, swap):
    work, eos_at = build_workload(spec)  # every prompt is range(5, 5 + n): all share prefixes
    if any(r.max_total_tokens > num_blocks * BS for _, r in work):
        return
    cfg = SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=max(budget, seqs),
                          preemption="swap" if swap else "recompute")
    first_chunks = {}

    def record_first_chunk(sched, plan):
        for c in plan.chunks:
            first_chunks.setdefault(c.request.request_id, (c.start, len(c.request.prompt_ids)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(p4_sim, "make_block_manager", partial(make_block_manager, prefix_caching=True))
        sched, requests, _ = drive("solution", work, num_blocks=num_blocks, block_size=BS, config=cfg, eos_at=eos_at,
                                   overlap=overlap, bm_impl=bm_impl, on_plan=record_first_chunk,
                                   num_cpu_blocks=16 if swap else 0)
    for r in requests:
        assert r.finished and r.output_ids == expected_tokens(r, eos_at)
        start, prompt_len = first_chunks[r.request_id]
        assert start % BS == 0 and start <= (prompt_len - 1) // BS * BS, "reused the last token's block"
    bm = sched.blocks
    stats = bm.stats()
    assert bm.num_free_gpu_blocks == bm.num_gpu_blocks and bm.num_free_cpu_blocks == bm.num_cpu_blocks
    assert bm.seq_ids() == [] and bm.check_invariants() == []
    assert stats["evictable_blocks"] == stats["cached_blocks"]
    assert sum(start for start, _ in first_chunks.values()) <= stats["prefix_hits"]


def test_prefix_bench_reports_identical_tokens_and_its_hit_rate():
    from phase4_scheduler import prefix_bench

    tiny = dict(prefix_bench.SIZES["small"], prefix=64, shared=6, suffix=(1, 8), repeated=4, repeated_len=40,
                max_tokens=2, seqs=4, budget=64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(prefix_bench.SIZES, "small", tiny)
        m = prefix_bench.run_prefix_bench("small", seed=random.randrange(1000))
    assert m["prefix_greedy_identical"] == 1.0 and m["prefix_requests"] == 10
    assert 6 * 65 + 4 * 40 <= m["prefix_prompt_tokens"] <= 6 * 72 + 4 * 40
    # At most every prompt but the first of each group, served up to its last token's block (16-token blocks).
    assert 0 < m["prefix_hit_rate"] <= (5 * 64 + 3 * 32) / m["prefix_prompt_tokens"]
