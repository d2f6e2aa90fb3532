"""Framework and solution agree with each other and with HF's RoPE; EOS, streaming and plug-ins."""

from __future__ import annotations

import pytest
import torch

from module0_profiling.impl import impls_under_test
from phase0_prototype import SamplingParams, apply_rope, load_impl, load_model
from phase0_prototype.config import TINY, LlamaConfig
from phase0_prototype.model import rope_cache

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny", dtype="fp32", device="cpu", seed=3)


def random_prompts(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, TINY.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 128}])
def test_apply_rope_matches_hf(scaling):
    from transformers import LlamaConfig as HFConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = TINY.with_(rope_scaling=scaling, rope_theta=500000.0)
    hf_cfg = HFConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                      head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rope_scaling=scaling,
                      max_position_embeddings=1024)
    positions = torch.randint(0, 1000, (2, 9))
    q = torch.randn(2, 9, cfg.num_attention_heads, cfg.head_dim)
    k = torch.randn(2, 9, cfg.num_key_value_heads, cfg.head_dim)
    cos, sin = rope_cache(cfg, 1000)
    q1, k1 = apply_rope(q, k, cos, sin, positions)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf_cfg)(q, positions)
    q2, k2 = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), hf_cos, hf_sin)
    torch.testing.assert_close(q1, q2.transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k1, k2.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_config_reads_both_transformers_spellings():
    base = TINY.to_hf_dict()
    v4 = {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    v5 = {**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}}
    v5.pop("rope_theta")
    a, b = LlamaConfig.from_hf_dict(v4), LlamaConfig.from_hf_dict(v5)
    assert a.rope_theta == b.rope_theta == 5e5
    assert a.rope_scaling["rope_type"] == b.rope_scaling["rope_type"] == "linear"


def test_batched_greedy_agrees_and_batch_rows_are_independent(tiny):
    prompts = random_prompts(3, 12, 0)
    fw = load_impl("framework").build(tiny).generate(prompts, 24, stop_on_eos=False)
    so = load_impl("solution").build(tiny, max_batch_size=3, max_seq_len=64).generate(prompts, 24,
                                                                                     stop_on_eos=False)
    assert torch.equal(fw.tokens, so.tokens)
    single = load_impl("solution").build(tiny, max_seq_len=64).generate(prompts[1:2], 24, stop_on_eos=False)
    assert torch.equal(single.tokens[0], so.tokens[1])


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
def test_eos_stops_and_pads(tiny, impl):
    engine = load_impl(impl).build(tiny, max_batch_size=2, max_seq_len=64)
    prompts = random_prompts(2, 8, 1)
    free = engine.generate(prompts, 40, stop_on_eos=False).tokens
    eos = int(free[0, 5])  # a token row 0 really produces: make it the EOS
    first = [int((free[b] == eos).nonzero()[0]) if (free[b] == eos).any() else 40 for b in range(2)]
    out = engine.generate(prompts, 40, eos_ids=(eos,))
    assert out.lengths == [min(f + 1, 40) for f in first]
    for b in range(2):
        assert out.tokens[b, : out.lengths[b]].tolist() == free[b, : out.lengths[b]].tolist()
        assert (out.tokens[b, out.lengths[b]:] == eos).all()


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
def test_streaming_chunks_concatenate_to_the_output(tiny, impl):
    engine = load_impl(impl).build(tiny, max_seq_len=128)
    chunks = []
    out = engine.generate(random_prompts(1, 5, 2), 37, on_tokens=chunks.append, stop_on_eos=False)
    assert torch.equal(torch.cat(chunks, dim=1), out.tokens)
    assert chunks[0].shape[1] == 1  # the first token is streamed as soon as the prompt is processed


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
def test_on_tokens_returning_true_ends_the_generation_there(tiny, impl):
    engine = load_impl(impl).build(tiny, max_seq_len=128)
    prompt = random_prompts(1, 5, 4)
    full = engine.generate(prompt, 30, stop_on_eos=False).tokens
    chunks = []
    out = engine.generate(prompt, 30, on_tokens=lambda c: chunks.append(c) or sum(x.shape[1] for x in chunks) >= 3,
                          stop_on_eos=False)
    seen = torch.cat(chunks, dim=1)
    assert 3 <= seen.shape[1] < 30 and torch.equal(out.tokens, seen) and torch.equal(seen, full[:, : seen.shape[1]])


def test_seeded_sampling_same_in_both_engines(tiny):
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=7)
    prompts = random_prompts(1, 6, 3)
    a = load_impl("framework").build(tiny).generate(prompts, 30, params, stop_on_eos=False)
    b = load_impl("solution").build(tiny, max_seq_len=64).generate(prompts, 30, params, stop_on_eos=False)
    c = load_impl("solution").build(tiny, max_seq_len=64).generate(prompts, 30, params, stop_on_eos=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(b.tokens, c.tokens)


def test_rope_fn_plug_in_is_used_and_keeps_tokens(tiny):
    calls = []

    def float64_rope(q, k, cos, sin, positions):  # an independent implementation: complex rotation in fp64
        calls.append(q.shape)
        half = q.shape[-1] // 2
        angle = torch.polar(torch.ones_like(cos[positions][..., :half]).double(), torch.atan2(
            sin[positions][..., :half].double(), cos[positions][..., :half].double())).unsqueeze(-2)

        def rot(x):
            z = torch.complex(x[..., :half].double(), x[..., half:].double()) * angle
            return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)

        return rot(q), rot(k)

    prompts = random_prompts(1, 10, 4)
    ref = load_impl("solution").build(tiny, max_seq_len=64).generate(prompts, 32, stop_on_eos=False)
    engine = load_impl("solution").build(tiny, max_seq_len=64, rope_fn=float64_rope)
    got = engine.generate(prompts, 32, stop_on_eos=False)
    assert len(calls) == TINY.num_hidden_layers * 32  # prefill + 31 decode steps, every layer
    assert torch.equal(ref.tokens, got.tokens)
