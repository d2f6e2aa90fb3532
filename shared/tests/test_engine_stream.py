"""Streaming (``LLMEngine.stream``) gives the same tokens and text as offline ``generate`` on both paths
(phase 4's loop; phase 0's engine with ``phase4=off``); stop strings cut the text like OpenAI's (the stop string excluded) whichever way
it arrives; leaving a stream early frees what the request held and leaves the engine usable."""

from __future__ import annotations

import threading

import pytest

from phase0_prototype import load_model
from phase0_prototype.sampling import SamplingParams
from shared.engine import EngineConfig, LLMEngine

PROMPT = "And God said unto Moses,"


@pytest.fixture(scope="module")
def kjv():
    return load_model("kjv-llama-18m", dtype="fp32")


@pytest.fixture(scope="module", params=["solution", "phase4=off"])
def engine(request, kjv):
    return LLMEngine(EngineConfig(model="kjv-llama-18m", impl=request.param, max_num_seqs=4,
                                  max_num_batched_tokens=64), model=kjv)


def joined(deltas):
    deltas = list(deltas)
    return "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids], deltas[-1].finish_reason


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(0.9, 40, 0.95, seed=5)])
def test_stream_equals_generate(engine, sampling):
    out = engine.generate(PROMPT, sampling, max_tokens=16, ignore_eos=True)[0]
    text, ids, reason = joined(engine.stream(PROMPT, sampling, max_tokens=16, ignore_eos=True))
    assert (text, ids, reason) == (out.text, out.token_ids, out.finish_reason)
    assert len(ids) == 16 and reason == "length"
    assert text == engine.tokenizer.decode(ids)


def test_stop_string_cuts_text_in_both_modes(engine):
    full = engine.generate(PROMPT, max_tokens=32, ignore_eos=True)[0].text
    words = full.split()
    stop = " " + words[len(words) // 2]  # a stop string that arrives in the middle, over several tokens
    expected = full[: full.index(stop)]
    out = engine.generate(PROMPT, max_tokens=32, stop=[stop], ignore_eos=True)[0]
    text, ids, reason = joined(engine.stream(PROMPT, max_tokens=32, stop=[stop], ignore_eos=True))
    assert out.text == text == expected
    assert out.finish_reason == reason == "stop"
    assert out.token_ids == ids and len(ids) < 32


def test_leaving_a_stream_early_frees_the_request(engine):
    stream = engine.stream(PROMPT, max_tokens=40, ignore_eos=True)
    next(stream)
    stream.close()
    if engine._batched is not None:
        blocks = engine.batched.blocks
        assert blocks.num_free_gpu_blocks == blocks.num_gpu_blocks
        assert not engine.batched.has_unfinished()
    assert not [t for t in threading.enumerate() if t.name == "titaninfer-generate"]
    again = engine.generate(PROMPT, max_tokens=8, ignore_eos=True)[0]  # still usable, same answer as before
    assert again.token_ids == engine.generate(PROMPT, max_tokens=8, ignore_eos=True)[0].token_ids


def test_batch_text_equals_one_at_a_time(kjv):
    """Several prompts through continuous batching give each the text it gets alone."""
    prompts = [PROMPT, "In the beginning", "Blessed are"]
    batched = LLMEngine(EngineConfig(model="kjv-llama-18m", max_num_seqs=3, max_num_batched_tokens=16), model=kjv)
    alone = LLMEngine(EngineConfig(model="kjv-llama-18m", impl="phase4=off"), model=kjv)
    outs = batched.generate(prompts, max_tokens=[12, 20, 6], ignore_eos=True)
    assert batched.last_run.path.startswith("phase 4")
    for p, n, o in zip(prompts, [12, 20, 6], outs, strict=True):
        ref = alone.generate(p, max_tokens=n, ignore_eos=True)[0]
        assert (o.token_ids, o.text) == (ref.token_ids, ref.text)
    assert 0 < batched.last_run.kv_utilisation <= 1
