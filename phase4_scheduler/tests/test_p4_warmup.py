"""The server's warm-up (``serve.warm_up``) on CPU: it runs every shape class (a prefill chunk at the full
token budget, decode at batch 1 and at ``max_num_seqs``), before the app exists, leaves no request or KV
block behind, and changes no answer: a warmed engine's outputs equal a cold one's on fresh requests."""

from __future__ import annotations

import random

import httpx
import pytest

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype.sampling import SamplingParams
from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.logits_processing import LogitsProcessing
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.serve import ServerThread, build_app, warm_up

MODEL = "kjv-llama-18m"
SEQS, BUDGET = 4, 48


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL, dtype="fp32", device="cpu")


def _engine(model) -> BatchingEngine:
    return BatchingEngine(model, BatchingConfig(SchedulerConfig(SEQS, BUDGET), num_blocks=64))


def _requests(engine, rng: random.Random):
    vocab = engine.model.config.vocab_size
    kinds = [{}, {"sampling": SamplingParams(1.0, 20, 0.9, seed=rng.randrange(2**31))},
             {"processing": LogitsProcessing(0.4, 0.3, 1.1), "logprobs": 3}]
    return [engine.make_request([rng.randrange(vocab) for _ in range(rng.randint(3, 70))], 6, ignore_eos=True,
                                **kind) for kind in kinds]


def test_warm_up_covers_the_shapes_and_leaves_nothing_behind(model):
    engine, lines, steps = _engine(model), [], []
    launch = engine.runner.launch

    def recording(plan, sampler):
        steps.append((plan.num_prefill_tokens, plan.num_decodes))
        return launch(plan, sampler)

    engine.runner.launch = recording
    warm_up(engine, say=lines.append)
    assert lines[0].startswith("warming up: ") and lines[-1].startswith("warmed up in ")
    assert (BUDGET, 0) in steps  # a prefill chunk at the full budget
    assert (0, 1) in steps and (0, SEQS) in steps  # decode alone and at max_num_seqs
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
    assert not engine.has_unfinished() and engine.scheduler.num_running == engine.scheduler.num_waiting == 0
    assert not engine.streams


def test_a_warmed_engine_answers_as_a_cold_one(model):
    seed = random.randrange(2**31)
    warm, cold = _engine(model), _engine(model)
    warm_up(warm, say=lambda line: None)
    got = warm.generate(_requests(warm, random.Random(seed)))
    want = cold.generate(_requests(cold, random.Random(seed)))
    assert [r.output_ids for r in got] == [r.output_ids for r in want]
    assert [round(lp, 4) for lp, _ in got[2].token_logprobs] == [round(lp, 4) for lp, _ in want[2].token_logprobs]


def test_build_app_warms_up_before_the_server_starts():
    """The warm-up runs inside ``build_app``: it has finished (KV free) before any socket is bound, and the
    first request through HTTP is the reference's greedy text."""
    lines = []
    app, loop = build_app(MODEL, scheduler=SchedulerConfig(SEQS, BUDGET), say=lines.append)
    assert lines[-1].startswith("warmed up in ")
    assert loop.engine.blocks.num_free_gpu_blocks == loop.engine.blocks.num_gpu_blocks
    tok = loop.engine.tokenizer
    prompt = "And the earth was without form"
    ref = phase0_impl("solution").build(loop.engine.model, compile=False).generate(tok.encode(prompt), 8)
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/completions", timeout=60,
                       json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert r.json()["choices"][0]["text"] == tok.decode([t for t in ref.sequences()[0] if t not in tok.eos_ids])
