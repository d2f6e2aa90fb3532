"""The load generator's mixed workloads: prompt lengths drawn apart from the arrivals, and clients that hang up
mid-stream — the server must abort them (their KV blocks free) and serve everyone else in full."""

from __future__ import annotations

import asyncio
import random
import time

from phase4_scheduler.loadgen import Workload, run_http


def test_prompt_lengths_and_hangups_leave_the_rest_of_the_workload_unchanged():
    seed = random.randrange(1000)
    plain = Workload(40, 10, 50, rate=20.0, seed=seed)
    mixed = Workload(40, 10, 50, rate=20.0, seed=seed, prompt_words=5, prompt_words_max=90, hangup_fraction=0.25)
    a, b = plain.requests(), mixed.requests()
    assert [(t, n) for t, n, _ in a] == [(t, n) for t, n, _ in b]  # same arrivals and output lengths
    words = [len(p.split()) for _, _, p in b]
    assert all(5 <= w <= 90 for w in words) and len(set(words)) > 5
    hangups = mixed.hangups()
    assert len(hangups) == 10 and hangups <= set(range(40)) and hangups == mixed.hangups() and not plain.hangups()


def test_clients_that_hang_up_are_aborted_and_the_others_complete(server):
    seed = random.randrange(1000)
    while True:  # a workload where some 40-token streams hang up (a short one may end within HANGUP_AFTER chunks)
        w = Workload(12, short_tokens=4, long_tokens=40, prompt_words=6, prompt_words_max=30, hangup_fraction=0.5,
                     seed=seed)
        long_hangups = sum(1 for i, (_, n, _) in enumerate(w.requests()) if i in w.hangups() and n == 40)
        if long_hangups >= 2:
            break
        seed += 1
    out = asyncio.run(run_http(server.url, "kjv-llama-18m", w))
    assert out["failed"] == 0 and out["rejected"] == 0
    assert out["hung_up"] + out["completed"] == 12 and long_hangups <= out["hung_up"] <= len(w.hangups())
    engine = server.loop.engine
    deadline = time.monotonic() + 10  # aborts reach the engine thread between steps
    while engine.blocks.num_free_gpu_blocks != engine.blocks.num_gpu_blocks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
    assert not engine.scheduler.has_unfinished()
