"""Our loader and both engines against transformers' LlamaForCausalLM on the same checkpoint (fp32, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from p0_helpers import hf_greedy, rel_err, save_hf_checkpoint

from module0_profiling.impl import impls_under_test
from phase0_prototype import load_impl, load_model
from phase0_prototype.config import LlamaConfig

torch.set_num_threads(1)  # the tiny shapes gain nothing from threads; contention makes timings erratic
IMPLS = impls_under_test(["framework", "solution"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    hf = save_hf_checkpoint(path, seed=1)
    return path, hf


def prompt_ids(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist()


def test_config_read_from_transformers_output(checkpoint):
    path, hf = checkpoint
    cfg = LlamaConfig.from_hf_dir(path)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (
        hf.config.hidden_size, hf.config.num_hidden_layers, hf.config.num_key_value_heads)
    assert cfg.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("impl", IMPLS)
def test_logits_match_hf(checkpoint, impl):
    path, hf = checkpoint
    model = load_model(str(path), dtype="fp32", device="cpu")
    engine = load_impl(impl).build(model, max_batch_size=2)
    vocab = model.config.vocab_size
    ids = torch.tensor([prompt_ids(37, 5, vocab), prompt_ids(37, 6, vocab)])
    with torch.no_grad():
        expected = hf(ids).logits
    got = engine.forward_logits(ids)
    assert got.shape == expected.shape
    assert rel_err(got, expected) < 1e-4


def test_greedy_64_tokens_identical_to_hf(checkpoint):
    path, hf = checkpoint
    model = load_model(str(path), dtype="fp32", device="cpu")
    ids = prompt_ids(20, 7, model.config.vocab_size)
    expected = hf_greedy(hf, ids, 64)
    assert len(set(expected)) > 3, "degenerate continuation: the test would prove little"
    for impl in IMPLS:
        engine = load_impl(impl).build(model, max_seq_len=128)
        out = engine.generate(ids, 64, stop_on_eos=False)
        assert out.tokens[0].tolist() == expected, impl


def test_sharded_checkpoint_loads_the_same_tensors(tmp_path):
    hf = save_hf_checkpoint(tmp_path, seed=2, max_shard_size="200KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = load_model(str(tmp_path), dtype="fp32", device="cpu")
    for name, p in hf.state_dict().items():
        assert torch.equal(model.state[name], p), name


def test_tied_embeddings_and_dtype_cast(tmp_path):
    hf = save_hf_checkpoint(tmp_path, seed=3, tie=True)
    model = load_model(str(tmp_path), dtype="bf16", device="cpu")
    assert model.config.tie_word_embeddings
    assert model.state["lm_head.weight"] is model.state["model.embed_tokens.weight"]
    assert model.dtype == torch.bfloat16
    ref = hf.model.layers[0].self_attn.k_proj.weight.detach().to(torch.bfloat16)
    assert torch.equal(model.state["model.layers.0.self_attn.k_proj.weight"], ref)
    fp32 = load_model(str(tmp_path), dtype="fp32", device="cpu")
    ids = torch.tensor([prompt_ids(16, 9, fp32.config.vocab_size)])
    with torch.no_grad():
        assert rel_err(load_impl("solution").build(fp32).forward_logits(ids), hf(ids).logits) < 1e-4


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_rope_scaling_matches_hf(tmp_path, scaling):
    hf = save_hf_checkpoint(tmp_path, seed=4, rope_scaling=scaling)
    model = load_model(str(tmp_path), dtype="fp32", device="cpu")
    assert model.config.rope_scaling["rope_type"] == scaling["rope_type"]
    ids = torch.tensor([prompt_ids(90, 11, model.config.vocab_size)])
    with torch.no_grad():
        assert rel_err(load_impl("framework").build(model).forward_logits(ids), hf(ids).logits) < 1e-4
