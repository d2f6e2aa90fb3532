"""The engine's per-step host path (columnar decodes, block-table rows kept in place, rows found by
seat, tokens applied in bulk, lazy events) against a row-by-row restatement, on random workloads with
chunked prefill, preemption by recompute, EOS, length limits and 1-token prompts, with and without
overlapped steps. The model is stubbed: a sampled token is a function of (request, output index), so
every request's output is known in closed form and recompute after preemption reproduces it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from p4_sim import EOS, expected_tokens, fake_token

from phase0_prototype import load_model
from phase4_scheduler import SchedulerConfig
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.request import PENDING
from phase4_scheduler.step_inputs import HostStep
from phase4_scheduler.table_rows import BlockTableRows

BS = 4


def expected_rows(plan, blocks, prev_sampled):
    """The step's rows restated one by one from the chunks, the block manager's tables and the requests."""
    chunks = [(r, s, 1) for r, s in zip(plan.decode_requests, plan.decode_starts, strict=True)]
    chunks += [(c.request, c.start, c.num_tokens) for c in plan.explicit_chunks]
    decodes = [c for c in chunks if c[2] == 1 and c[1] > 0]
    rest = [c for c in chunks if not (c[2] == 1 and c[1] > 0)]
    order = decodes + [c for c in rest if c[1] == 0] + [c for c in rest if c[1] > 0]
    prev_row = {r.request_id: i for i, r in enumerate(prev_sampled)}
    rows = dict(tokens=[], src=[], positions=[], slots=[], sample_rows=[])
    sampled = []
    for r, start, n in order:
        table = blocks.block_table(r.request_id)
        for p in range(start, start + n):
            t = r.all_ids[p]
            rows["tokens"].append(0 if t == PENDING else t)
            rows["src"].append(prev_row[r.request_id] if t == PENDING else -1)
            rows["positions"].append(p)
            rows["slots"].append(table[p // BS] * BS + p % BS)
        if start + n == r.num_tokens:
            rows["sample_rows"].append(len(rows["tokens"]) - 1)
            sampled.append(r)
    rows["context_lens"] = [s + 1 for _, s, _ in decodes]
    rows["tables"] = [blocks.block_table(r.request_id) for r, _, _ in decodes]
    fresh = [n for _, s, n in rest if s == 0]
    rows["cu_seqlens"] = np.cumsum([0] + fresh).tolist() if fresh else []
    return rows, sampled


def check_device_step(inputs, want, sampled, host):
    assert [r.request_id for r in host.sampled] == [r.request_id for r in sampled]
    n = len(want["tokens"])
    assert inputs.tokens[:n].tolist() == want["tokens"]
    assert inputs.src[:n].tolist() == want["src"]
    assert inputs.positions[:n].tolist() == want["positions"]
    assert inputs.slots[:n].tolist() == want["slots"]
    nd = len(want["context_lens"])
    assert inputs.context_lens[:nd].tolist() == want["context_lens"]
    if nd:
        got = inputs.block_tables[:nd].tolist()
        assert [row[: len(t)] for row, t in zip(got, want["tables"], strict=True)] == want["tables"]
        assert all(not any(row[len(t):]) for row, t in zip(got, want["tables"], strict=True)), "stale table entries"
    if inputs.sample_rows is None:
        assert want["sample_rows"] == list(range(n))
    else:
        assert inputs.sample_rows.tolist() == want["sample_rows"]
    assert inputs.cu_seqlens.tolist() == want["cu_seqlens"]


def run_engine(model, overlap: bool, seed: int):
    rng = random.Random(seed)
    cfg = BatchingConfig(SchedulerConfig(max_num_seqs=rng.choice([3, 6]), max_num_batched_tokens=rng.choice([8, 24])),
                       num_blocks=rng.choice([14, 40]), block_size=BS, overlap=overlap, cuda_graphs=False)
    engine = BatchingEngine(model, cfg)
    runner, vocab = engine.runner, model.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.choice([1, 2, 5, 9, 17]))] for _ in range(10)]
    new = [rng.randrange(1, 14) for _ in prompts]
    requests = [engine.make_request(p, n) for p, n in zip(prompts, new, strict=True)]
    eos_at = {r.request_id: rng.randrange(0, 20) for r in requests if rng.random() < 0.4}
    state = dict(prev=[], steps=0, graph_checked=0)

    def forward(inputs):
        """Check the packed rows against the restatement, then return logits choosing the fake tokens."""
        host, plan = inputs.host, engine.last_plan
        want, sampled = expected_rows(plan, engine.blocks, state["prev"])
        check_device_step(inputs, want, sampled, host)
        if host.all_rows_sample and not host.graph and host.num_decode_tokens:
            # the padded graph-bucket layout of the same plan: the real rows equal, padding is inert
            pad = HostStep(plan, BS, runner.prev_rows, pad_to=host.num_decode_tokens + 3,
                           width=runner.max_blocks_per_seq, prev_seat_rows=runner._seat_rows())
            out = np.zeros(pad.size, dtype=np.int32)
            pad.fill(out)
            for name in ("tokens", "src", "positions", "slots", "context_lens"):
                start, n = pad.offsets[name]
                real = want[name] if name != "context_lens" else want["context_lens"]
                assert out[start:start + len(real)].tolist() == real
                tail = out[start + len(real):start + n].tolist()
                assert tail == [{"src": -1, "slots": -1}.get(name, 0)] * 3
            state["graph_checked"] += 1
        state["prev"] = sampled
        state["steps"] += 1
        logits = torch.zeros(len(sampled), vocab)
        for i, r in enumerate(sampled):
            logits[i, fake_token(r, eos_at, len(r.output_ids) + r.num_in_flight)] = 1.0
        return logits

    runner.forward = forward
    schedule = engine.scheduler.schedule

    def remember_plan():
        engine.last_plan = schedule()
        return engine.last_plan

    engine.scheduler.schedule = remember_plan
    engine.generate(requests)
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
    assert state["steps"] > 0
    for r in requests:  # the closed form: fake tokens until EOS or max_tokens
        want = expected_tokens(r, eos_at)
        assert r.output_ids == want and r.num_in_flight == 0
        assert r.finish_reason == ("stop" if want[-1] == EOS else "length")
    return engine, state


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny", dtype="fp32")


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_step_inputs_equal_a_row_by_row_restatement(model, overlap, seed):
    engine, state = run_engine(model, overlap, seed)
    assert state["graph_checked"] > 0


def test_the_random_workloads_preempt_and_mix_prefill_with_decodes(model):
    """The workloads above are not all easy: some preempt, some mix prefill chunks with decodes."""
    preempted = mixed = 0

    def count(e):
        nonlocal preempted, mixed
        plan = e.last_step.plan
        preempted += len(plan.preempted)
        mixed += bool(plan.num_decodes and plan.num_prefill_tokens)

    # (the same configurations and prompts as ``run_engine``'s seeds)
    for seed in range(6):
        rng = random.Random(seed)
        cfg = BatchingConfig(SchedulerConfig(max_num_seqs=rng.choice([3, 6]), max_num_batched_tokens=rng.choice([8, 24])),
                           num_blocks=rng.choice([14, 40]), block_size=BS, cuda_graphs=False)
        e = BatchingEngine(model, cfg)
        vocab = model.config.vocab_size
        prompts = [[rng.randrange(3, vocab) for _ in range(rng.choice([1, 2, 5, 9, 17]))] for _ in range(10)]
        new = [rng.randrange(1, 14) for _ in prompts]
        e.generate([e.make_request(p, n, ignore_eos=True) for p, n in zip(prompts, new, strict=True)], on_step=count)
    assert preempted > 0 and mixed > 0


def test_block_table_rows_follow_a_dict_of_lists():
    rng = random.Random(11)
    rows, model_tables, seats = BlockTableRows(capacity=2, width=2), {}, {}
    for step in range(400):
        op = rng.random()
        if op < 0.3 or not seats:
            key = step
            blocks = [rng.randrange(1000) for _ in range(rng.randrange(1, 6))]
            seats[key], model_tables[key] = rows.add(blocks), list(blocks)
        elif op < 0.5:
            key = rng.choice(list(seats))
            rows.remove(seats.pop(key))
            del model_tables[key]
        elif op < 0.7:
            key = rng.choice(list(seats))
            b = rng.randrange(1000)
            rows.append_many([seats[key]], [b])
            model_tables[key].append(b)
        else:
            keys = rng.sample(list(seats), rng.randrange(1, len(seats) + 1))
            new = [rng.randrange(1000) for _ in keys]
            rows.append_many([seats[k] for k in keys], new)
            for k, b in zip(keys, new, strict=True):
                model_tables[k].append(b)
        assert len(set(seats.values())) == len(seats), "two requests in one seat"
        for key, seat in seats.items():
            assert rows.row(seat) == model_tables[key]
            assert not rows.table[seat, len(model_tables[key]):].any()


def test_events_are_built_only_when_read(model):
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 32), block_size=BS, cuda_graphs=False))
    rng = random.Random(5)
    reqs = [engine.make_request([rng.randrange(3, 300) for _ in range(6)], 5, ignore_eos=True) for _ in range(3)]
    for r in reqs:
        engine.add(r)
    unread, texts = [], {r.request_id: "" for r in reqs}
    while engine.has_unfinished():
        events = engine.step()
        unread.append(events)
        if len(unread) % 2:  # read every other step's events; the rest stay unbuilt
            for ev in events:
                texts[ev.request.request_id] += ev.text
    assert any(ev._events is None and len(ev) for ev in unread)
    for ev in unread:  # a late reader still gets each event's own state (finished flag, token count)
        for e in ev:
            if e.finished:
                assert e.request.finished
    assert all(r.finished and len(r.output_ids) == 5 for r in reqs)
    # text read from a subset of the events is the prefix ending at the last read event
    for r in reqs:
        assert engine.tokenizer.decode(r.output_ids).startswith(texts[r.request_id])
