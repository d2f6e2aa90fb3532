"""The packed step inputs (one buffer, one copy) against a row-by-row restatement; a graph bucket's
padded layout gives the real rows the same logits as the eager layout; incremental detokenization
equals decoding the whole output; lazy event text equals eager text."""

from __future__ import annotations

import random

import pytest
import torch

from phase0_prototype import load_model
from phase4_scheduler.plan import ScheduledChunk, StepPlan
from phase4_scheduler.request import PENDING, Request
from phase4_scheduler.runner import PagedModelRunner
from phase4_scheduler.step_inputs import HostStep, upload
from phase4_scheduler.text_stream import IncrementalDecoder, TextStream

BS = 4


def _request(rng, prompt_len, outputs, in_flight=0):
    r = Request([rng.randrange(3, 300) for _ in range(prompt_len)], 50)
    r.output_ids = [rng.randrange(3, 300) for _ in range(outputs)]
    r.num_in_flight = in_flight
    return r


def _table(rng, n_tokens, pool):
    """Blocks drawn without replacement: requests own disjoint blocks, as the block manager guarantees."""
    return [pool.pop(rng.randrange(len(pool))) for _ in range(-(-n_tokens // BS))]


def _mixed_plan(seed=0):
    """Decodes (one with its token in flight), a middle 1-token prefill piece, a fresh prompt, a later chunk."""
    rng = random.Random(seed)
    pool = list(range(1, 200))
    chunks = []
    for outputs, in_flight in ((3, 0), (5, 1), (1, 0)):
        r = _request(rng, rng.randrange(2, 20), outputs, in_flight)
        r.num_computed = r.num_tokens - 1
        chunks.append(ScheduledChunk(r, r.num_computed, 1, _table(rng, r.num_tokens, pool)))
    r = _request(rng, 9, 0)  # a 1-token piece in the middle of a chunked prompt: no sample
    chunks.append(ScheduledChunk(r, 4, 1, _table(rng, 9, pool)))
    r = _request(rng, 7, 0)
    chunks.append(ScheduledChunk(r, 0, 7, _table(rng, 7, pool)))
    r = _request(rng, 13, 0)
    chunks.append(ScheduledChunk(r, 6, 7, _table(rng, 13, pool)))
    prev_rows = {chunks[1].request.request_id: 5}
    return StepPlan(1, chunks), prev_rows


def test_packed_sections_equal_a_row_by_row_restatement():
    plan, prev_rows = _mixed_plan()
    host = HostStep(plan, BS, prev_rows)
    dev = upload(host, torch.device("cpu"), block_size=BS)
    decodes = [c for c in plan.chunks if c.num_tokens == 1 and c.start > 0]
    rest = [c for c in plan.chunks if c not in decodes]
    order = decodes + [c for c in rest if c.start == 0] + [c for c in rest if c.start > 0]
    tokens, src, positions, slots, sample_rows = [], [], [], [], []
    for c in order:
        for p in range(c.start, c.end):
            t = c.request.all_ids[p]
            src.append(prev_rows[c.request.request_id] if t == PENDING else -1)
            tokens.append(0 if t == PENDING else t)
            positions.append(p)
            slots.append(c.block_table[p // BS] * BS + p % BS)
        if c.sample:
            sample_rows.append(len(tokens) - 1)
    assert dev.tokens.tolist() == tokens and dev.src.tolist() == src
    assert dev.positions.tolist() == positions and dev.slots.tolist() == slots
    assert dev.sample_rows.tolist() == sample_rows
    assert [r.request_id for r in host.sampled] == [c.request.request_id for c in order if c.sample]
    assert dev.context_lens.tolist() == [c.end for c in decodes]
    width = -(-max(len(c.block_table) for c in decodes) // 16) * 16  # one kernel specialisation
    assert dev.block_tables.tolist() == [c.block_table + [0] * (width - len(c.block_table)) for c in decodes]
    assert dev.cu_seqlens.tolist() == [0, 7] and dev.resolve_pending
    assert all(start % 32 == 0 for start, _ in host.offsets.values()), "sections start 128-byte aligned"
    (row, n, start, pages, cu), = dev.later
    later = order[-1]
    assert (row, n, start) == (len(tokens) - 7, 7, 6) and pages.tolist() == later.block_table[: -(-13 // BS)]
    assert cu.tolist() == [0, 13]


@pytest.fixture(scope="module")
def runner():
    model = load_model("random:tiny", dtype="fp32")
    return PagedModelRunner(model, num_blocks=64, block_size=BS, cuda_graphs=False)


def test_graph_bucket_layout_gives_the_real_rows_the_same_logits(runner):
    """The padded layout a CUDA graph replays (bucket rows, full-width tables, slot -1 padding), run
    eagerly on CPU: the real rows' logits equal the unpadded layout's, padding writes no cache slot."""
    rng = random.Random(3)
    for k, v in runner.kv:
        k.normal_()
        v.normal_()
    pool = list(range(1, 64))
    chunks = []
    for n_prompt in (5, 11, 2):
        r = _request(rng, n_prompt, 2)
        r.num_computed = r.num_tokens - 1
        chunks.append(ScheduledChunk(r, r.num_computed, 1, _table(rng, r.num_tokens, pool)))
    plan = StepPlan(1, chunks)
    runner.last_tokens.random_(3, 300)
    eager_host = HostStep(plan, BS, {})
    assert eager_host.all_rows_sample
    before = [k.clone() for k, _ in runner.kv]
    eager = runner.forward(upload(eager_host, runner.device, block_size=BS))
    padded_host = HostStep(plan, BS, {}, pad_to=8, width=runner.max_blocks_per_seq)
    padded = runner.forward(upload(padded_host, runner.device, block_size=BS))
    assert padded.shape[0] == 8
    torch.testing.assert_close(padded[:3], eager, atol=1e-5, rtol=1e-5)
    written = [(k != b).any(dim=(1, 2, 3)).nonzero().flatten().tolist() for (k, _), b in zip(runner.kv, before, strict=True)]
    assert all(set(w) <= {c.block_table[c.start // BS] for c in chunks} for w in written)


@pytest.mark.parametrize("name", ["random:tiny", "kjv-llama-18m"])
def test_incremental_decoding_equals_decoding_the_whole_output(name):
    tok = load_model(name, dtype="fp32").tokenizer
    rng = random.Random(7)
    text = "In the beginning — naïve café, 東京, emoji 🙂 and the end."
    ids = tok.encode(text, add_special_tokens=False) + [rng.randrange(3, 300) for _ in range(40)]
    for trial in range(3):
        seq = ids[:] if trial == 0 else rng.sample(ids, len(ids))
        dec, pieces = IncrementalDecoder(tok), []
        for i in seq:
            pieces.append(dec.push([i]))
        pieces.append(dec.flush())
        assert "".join(pieces) == tok.decode(seq)


def test_lazy_text_equals_eager_text_and_includes_unread_events():
    tok = load_model("kjv-llama-18m", dtype="fp32").tokenizer
    ids = tok.encode("And God said, Let there be light: and there was light.", add_special_tokens=False)
    eager, lazy = TextStream(tok), TextStream(tok)
    want = [eager.push(t, final=i == len(ids) - 1)[0] for i, t in enumerate(ids)]
    got = [lazy.catch_up(ids, i + 1, final=i == len(ids) - 1) for i in range(len(ids))]
    assert got == want
    skipping = TextStream(tok)  # a reader that skips events still gets all the text from the later ones
    assert skipping.catch_up(ids, 5, False) + skipping.catch_up(ids, len(ids), True) == "".join(want)
