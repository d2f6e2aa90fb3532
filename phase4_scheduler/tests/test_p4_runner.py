"""Model runner + engine: greedy tokens of several concurrent requests of different lengths (chunked
prefill, decodes mixed in, preemption) equal phase 0's solution engine and HF transformers run one
request at a time (fp32); per-request sampling (seed, top-k, stop strings); KV blocks all returned."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype import load_model
from phase0_prototype.hf_peer import build_hf, hf_generate, missing_reason
from phase0_prototype.sampling import SamplingParams
from phase4_scheduler import SchedulerConfig
from phase4_scheduler.engine import BatchingConfig, BatchingEngine


@pytest.fixture(scope="module", params=["random:tiny", "kjv-llama-18m"])
def model(request):
    return load_model(request.param, dtype="fp32")


def _random_prompts(model, lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("sched", [
    dict(max_num_seqs=4, max_num_batched_tokens=16, num_blocks=None),  # chunked prefill mixed with decodes
    dict(max_num_seqs=5, max_num_batched_tokens=64, num_blocks=14),  # a small pool: preemption by recompute
])
def test_concurrent_greedy_equals_one_at_a_time(model, sched):
    prompts = _random_prompts(model, [3, 21, 9, 40, 1], seed=len(model.name) + sched["max_num_batched_tokens"])
    new_tokens = [12, 6, 20, 9, 15]
    cfg = BatchingConfig(SchedulerConfig(sched["max_num_seqs"], sched["max_num_batched_tokens"]),
                       num_blocks=sched["num_blocks"], block_size=4)
    engine = BatchingEngine(model, cfg)
    requests = [engine.make_request(p, n, ignore_eos=True) for p, n in zip(prompts, new_tokens, strict=True)]
    preempted = []
    engine.generate(requests, on_step=lambda e: preempted.extend(e.last_step.plan.preempted))
    ref = phase0_impl("solution").build(model, compile=False)
    for r in requests:
        expected = ref.generate(r.prompt_ids, r.max_tokens, stop_on_eos=False).sequences()[0]
        assert r.output_ids == expected, f"request with a {len(r.prompt_ids)}-token prompt"
    if sched["num_blocks"] is not None:
        assert preempted, "the small pool should have forced a preemption"
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_concurrent_greedy_equals_hf(model):
    prompts = _random_prompts(model, [5, 17, 2], seed=7)
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 12), block_size=8))
    requests = [engine.make_request(p, 10, ignore_eos=True) for p in prompts]
    engine.generate(requests)
    hf = build_hf(model)
    for r in requests:
        assert r.output_ids == hf_generate(hf, torch.tensor([r.prompt_ids]), 10)[0].tolist()


def causal_prefix_attention(q, k_cache, v_cache, table, start):
    """float64 reference: queries of positions [start, start + n) over cached positions [0, start + n)."""
    n, hq, d = q.shape
    bs, hkv, end = k_cache.shape[1], k_cache.shape[2], start + q.shape[0]
    k = torch.stack([k_cache[table[p // bs], p % bs] for p in range(end)]).double().repeat_interleave(hq // hkv, 1)
    v = torch.stack([v_cache[table[p // bs], p % bs] for p in range(end)]).double().repeat_interleave(hq // hkv, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * d ** -0.5
    future = torch.arange(end)[None, :] > torch.arange(start, end)[:, None]
    return torch.einsum("hqk,khd->qhd", scores.masked_fill(future, float("-inf")).softmax(-1), v)


def test_later_chunk_attention_through_varlen_prefill_matches_causal_attention():
    from phase3_paged_attention import load_impl as attention_impl
    from phase4_scheduler.runner import later_chunk_attention

    torch.manual_seed(1)
    bs, hq, hkv, d, start, n = 4, 4, 2, 8, 11, 8
    k_cache, v_cache = torch.randn(8, bs, hkv, d), torch.randn(8, bs, hkv, d)
    table = [5, 2, 7, 0, 3]
    q = torch.randn(n, hq, d)
    want = causal_prefix_attention(q, k_cache, v_cache, table, start)
    got = later_chunk_attention(attention_impl("reference"), q, k_cache, v_cache,
                                torch.tensor(table, dtype=torch.int32), torch.tensor([0, start + n], dtype=torch.int32),
                                start)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch():
    model = load_model("kjv-llama-18m", dtype="fp32")
    prompt = model.tokenizer.encode("And the earth was")
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=1234)

    def run(batch_with):
        engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 32), block_size=8))
        target = engine.make_request(prompt, 12, params, ignore_eos=True)
        others = [engine.make_request(model.tokenizer.encode(t), 8, SamplingParams(1.0, seed=i), ignore_eos=True)
                  for i, t in enumerate(batch_with)]
        engine.generate([target] + others)
        return target.output_ids

    alone, crowded = run([]), run(["In the beginning", "Jesus wept and"])
    assert alone == crowded
    other_seed = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 32), block_size=8))
    r = other_seed.make_request(prompt, 12, SamplingParams(0.9, 40, 0.9, seed=99), ignore_eos=True)
    other_seed.generate([r])
    assert r.output_ids != alone, "a different seed should give a different continuation"


def test_stop_string_ends_the_request_and_is_cut_from_the_text():
    model = load_model("kjv-llama-18m", dtype="fp32")
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(2, 32), block_size=8))
    prompt = model.tokenizer.encode("In the beginning")
    free = engine.make_request(prompt, 30, ignore_eos=True)
    engine.generate([free])
    full = engine.output_text(free)
    stop = full[10:14]  # a piece from the middle of the greedy continuation
    texts = []
    stopped = engine.make_request(prompt, 30, stop=(stop,), ignore_eos=True)
    engine.add(stopped)
    while engine.has_unfinished():
        texts += [ev.text for ev in engine.step() if ev.request is stopped]
    assert stopped.finish_reason == "stop"
    assert "".join(texts) == full[: full.find(stop)]
    assert len(stopped.output_ids) < 30
    assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks


def test_overlapped_steps_give_the_same_tokens_text_and_finish_as_one_step_at_a_time():
    """Overlap (step N launched before step N-1's tokens are read back) vs not: same tokens, the same
    text through the events, the same finish reasons — with chunked prefill, preemption by recompute,
    an EOS, a stop string and a seeded sampled request in the mix; every KV block returned."""
    model = load_model("kjv-llama-18m", dtype="fp32")
    tok = model.tokenizer
    prompts = ["In the beginning God", "And the earth was", "Jesus wept", "And God said, Let there be",
               "The LORD is my shepherd"]
    results = []
    for overlap in (False, True):
        engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(4, 16), num_blocks=11, block_size=4, overlap=overlap))
        free = engine.make_request(tok.encode(prompts[0]), 16, ignore_eos=True)
        engine.generate([free])
        stop = engine.output_text(free)[6:10]
        reqs = [engine.make_request(tok.encode(p), n, ignore_eos=True) for p, n in zip(prompts[1:3], (14, 9), strict=True)]
        reqs.append(engine.make_request(tok.encode(prompts[0]), 16, stop=(stop,), ignore_eos=True))
        reqs.append(engine.make_request(tok.encode(prompts[3]), 12, SamplingParams(0.8, seed=5), ignore_eos=True))
        reqs.append(engine.make_request(tok.encode(prompts[4]), 20))
        texts, preempted = {r.request_id: "" for r in reqs}, []
        for r in reqs:
            engine.add(r)
        while engine.has_unfinished():
            for ev in engine.step():
                texts[ev.request.request_id] += ev.text
            preempted += engine.last_step.plan.preempted
        results.append(([r.output_ids for r in reqs], [r.finish_reason for r in reqs], list(texts.values())))
        assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
        assert all(r.num_in_flight == 0 and r.finished for r in reqs)
        assert preempted, "the small pool should have forced a preemption"
    assert results[0] == results[1]
    assert results[1][1][2] == "stop" and stop not in results[1][2][2]


def test_eos_and_context_limit():
    model = load_model("random:tiny", dtype="fp32")
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(2, 32), block_size=8, max_model_len=64))
    with pytest.raises(ValueError, match="exceeds the context limit of 64 tokens"):
        engine.make_request([5] * 40, 30)
    r = engine.make_request([5, 6, 7], 20, ignore_eos=True)
    engine.generate([r])
    eos = r.output_ids[3]  # pretend the 4th greedy token is the end of sequence
    r2 = engine.make_request([5, 6, 7], 20)
    r2.eos_ids = (eos,)
    engine.streams.clear()
    engine.generate([r2])
    assert r2.finish_reason == "stop" and r2.output_ids == r.output_ids[: r.output_ids.index(eos) + 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decode_equals_eager_on_gpu():
    """Decode graphs (captured lazily mid-run, padded buckets, tokens chained on the device) and the
    fused kernels give the tokens of the eager PyTorch path and of phase 0's solution. fp32: a padded
    bucket changes the matmul shapes, and in bf16 a different cuBLAS kernel may round a near-tie the
    other way; the logic under test is the same in either dtype."""
    model = load_model("random:tiny", dtype="fp32", device="cuda")
    prompts = _random_prompts(model, [3, 30, 9, 17, 1, 12], 5)
    outputs = []
    for graphs, fused, overlap in ((False, False, False), (True, True, True), (True, False, True)):
        engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(8, 64), block_size=16, cuda_graphs=graphs,
                                               overlap=overlap))
        engine.runner.fused = fused
        requests = [engine.make_request(p, 24, ignore_eos=True) for p in prompts]
        engine.generate(requests)
        outputs.append([r.output_ids for r in requests])
        if graphs:
            assert engine.runner.graphs._graphs, "decode-only steps should have replayed a captured graph"
    assert outputs[0] == outputs[1] == outputs[2]
    # Phase 0 on the CPU with the same weights (random weights are drawn with the device's generator,
    # so ``load_model("random:tiny")`` on the CPU is a different model).
    on_cpu = dataclasses.replace(model, state={k: v.cpu() for k, v in model.state.items()})
    ref = phase0_impl("solution").build(on_cpu, compile=False)
    for p, out in zip(prompts, outputs[1], strict=True):
        assert out == ref.generate(p, 24, stop_on_eos=False).sequences()[0]
