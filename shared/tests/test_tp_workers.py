"""Tensor parallelism as persistent workers under phase 4's continuous batching (``shared.tp_workers``).

Two gloo ranks on the CPU: the calling process (rank 0: scheduler, sampling, text) and one worker process
started with the engine's batched path. Every result is compared with the same engine at tp=1 (phase 4's
paged runner over the whole model), on prompts of different lengths queued past ``max_num_seqs`` and
prefilled in chunks, so decodes, fresh chunks, later chunks and overlapped steps all cross the ranks.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SamplingParams
from shared.engine import EngineConfig, LLMEngine

PROMPTS = ["In the beginning God created the heaven and the earth. And the earth was without form, and void",
           "And God said", "Blessed are the meek: for they shall", "Jesus wept.",
           "The LORD is my shepherd; I shall"]
MAX_TOKENS = [6, 10, 4, 8, 5]


def config(tp: int) -> EngineConfig:
    # 3 sequences at a time for 5 prompts, 16 tokens a step: queueing and chunked prefill
    return EngineConfig(model="kjv-llama-18m", device="cpu", tp=tp, max_model_len=96, max_num_seqs=3,
                        max_num_batched_tokens=16)


@pytest.fixture(scope="module")
def tp1():
    return LLMEngine(config(1))


def ids(outputs) -> list[list[int]]:
    return [o.token_ids for o in outputs]


def test_workers_serve_many_calls_like_tp1_and_end_on_close(tp1):
    engine = LLMEngine(config(2))
    try:
        got = engine.generate(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert ids(got) == ids(tp1.generate(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True))
        assert "tensor parallel tp=2" in engine.last_run.path
        workers = list(engine.tp_workers.processes)
        pids = engine.tp_workers.pids
        assert len(pids) == 1 and workers[0].is_alive()
        # a lone request (streamed) and a sampled batch: the same worker process every time
        streamed = [t for d in engine.stream(PROMPTS[3], max_tokens=7, ignore_eos=True) for t in d.token_ids]
        assert streamed == tp1.generate(PROMPTS[3], max_tokens=7, ignore_eos=True)[0].token_ids
        sampling = SamplingParams(temperature=0.8, top_k=50, seed=11)  # rank 0 samples
        sampled = engine.generate(PROMPTS[1:3], sampling, max_tokens=6, ignore_eos=True)
        assert ids(sampled) == ids(tp1.generate(PROMPTS[1:3], sampling, max_tokens=6, ignore_eos=True))
        assert engine.tp_workers.pids == pids and workers[0].is_alive()
    finally:
        engine.close()
    assert engine.tp_workers is None and not dist.is_initialized()
    assert not workers[0].is_alive() and workers[0].exitcode == 0  # left its loop, not terminated


def served_texts(engine: LLMEngine, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy completions of ``prompts`` from ``titaninfer serve``'s app over ``engine``, by the openai client."""
    import openai

    from phase4_scheduler.serve import ServerThread
    from shared.serve import build_app

    app, _ = build_app(engine.config, engine=engine)
    try:
        with ServerThread(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            texts = [client.completions.create(model=engine.config.model, prompt=p, max_tokens=max_tokens,
                                               temperature=0, extra_body={"ignore_eos": True}).choices[0].text
                     for p in prompts]
            client.close()
            return texts
    finally:
        app.state.loop.shutdown()


def test_serve_with_tp2_answers_like_tp1(tp1):
    expected = [tp1.generate(p, max_tokens=10, ignore_eos=True)[0].text for p in PROMPTS[:2]]
    engine = LLMEngine(config(2))
    try:
        assert served_texts(engine, PROMPTS[:2], 10) == expected
    finally:
        engine.close()
    assert not dist.is_initialized()


@pytest.mark.parametrize("changes,needle", [
    (dict(tp=4), "does not divide num_key_value_heads=2"),
    (dict(impl="phase4=off"), "drop phase4=off or use --tp 1"),
    # a learner's module (any importable one)
    (dict(impl="phase6=phase6_tensor_parallel.testing"), "shard as solution or framework"),
])
def test_refused_before_any_process_starts(changes, needle):
    from dataclasses import replace

    with pytest.raises(ModelError, match=needle):
        LLMEngine(replace(config(2), **changes))
    assert not dist.is_initialized()


def test_preemption_by_swap_is_refused_before_any_process_starts():
    from dataclasses import replace

    engine = LLMEngine(replace(config(2), preemption="swap", num_cpu_blocks=8))
    with pytest.raises(ModelError, match="preemption by swap with tensor parallelism is not built"):
        engine.generate(PROMPTS[:2], max_tokens=4)
    assert engine.tp_workers is None and not dist.is_initialized()


def test_serve_int4_awq_with_tp2_answers_like_tp1(tmp_path):
    """Quantization and TP are two transforms of one model: an AWQ checkpoint written once
    (``titaninfer quantize``) served with ``--tp 2`` (every rank cuts the INT4 layers, whole groups) answers
    with the greedy text of the same checkpoint at tp=1, and of phase 5's own model (no KV cache)."""
    from dataclasses import replace

    from shared.cli import main

    out = tmp_path / "kjv-awq"
    assert main(["quantize", "--model", "kjv-llama-18m", "--method", "awq", "--out", str(out), "--device", "cpu"]) == 0
    tp1 = LLMEngine(replace(config(1), model=str(out)))
    expected = [tp1.generate(p, max_tokens=8, ignore_eos=True)[0] for p in PROMPTS[:2]]
    assert [o.token_ids for o in expected] == [tp1.quantized.greedy(o.prompt_ids, 8) for o in expected]
    engine = LLMEngine(replace(config(2), model=str(out)))
    try:
        assert served_texts(engine, PROMPTS[:2], 8) == [o.text for o in expected]
        assert "INT4 (" in engine.path_name() and "tp=2" in engine.path_name()
    finally:
        engine.close()
    assert not dist.is_initialized()


def test_int4_group_split_by_a_shard_is_refused_before_any_process_starts():
    from dataclasses import replace

    # kjv: o_proj has 512 inputs, 256 a rank at tp=2; groups of 512 would be cut in half
    with pytest.raises(ModelError, match="whole INT4 groups") as info:
        LLMEngine(replace(config(2), quant="rtn", quant_group_size=512))
    assert "\n" not in str(info.value)
    assert not dist.is_initialized()
