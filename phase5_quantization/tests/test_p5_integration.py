"""The INT4 engine (phase 0's contract over QuantLinear), ``quantize_for_generate`` and checkpoints, on
CPU."""

import json
import os

import pytest
import torch

from phase0_prototype.config import TINY
from phase0_prototype.errors import ModelError
from phase0_prototype.kernels.step import triton_decode_step
from phase0_prototype.sources import LoadedModel
from phase0_prototype.tokenizer import load_tokenizer
from phase0_prototype.weights import random_state_dict
from phase5_quantization import framework
from phase5_quantization.integration import Int4Engine, build_engine, call_fused, quantize_for_generate
from phase5_quantization.model import LinearLlama


def small_model(layers: int = 2, seed: int = 0) -> LoadedModel:
    """random:tiny with an intermediate size that divides into groups of 128."""
    cfg = TINY.with_(intermediate_size=256, num_hidden_layers=layers)
    return LoadedModel("random:tiny-int4", cfg, random_state_dict(cfg, seed=seed),
                       load_tokenizer(None, vocab_size=cfg.vocab_size), None)


def prompt(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def test_engine_greedy_equals_recomputed_int4_model():
    m = small_model()
    q = framework.quantize(LinearLlama.from_loaded(m))
    engine = Int4Engine(m, q, compile=False)
    ids = prompt(12, m.config.vocab_size)
    got = engine.generate(ids, 10, stop_on_eos=False).tokens[0].tolist()
    assert got == q.greedy(ids[0].tolist(), 10)
    assert torch.allclose(engine.forward_logits(ids), q.forward_logits(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported")
def test_triton_decode_step_matches_eager_step():
    """The W4A16 step (fused norm / residual / SwiGLU GEMVs + phase 0's attention kernel) vs the eager
    step."""
    m = small_model(layers=1, seed=3)
    q = framework.quantize(LinearLlama.from_loaded(m))
    engine = Int4Engine(m, q, compile=False)
    ids = prompt(9, m.config.vocab_size, seed=1)
    engine.prefill(ids)
    token, position = torch.tensor([5]), torch.tensor([9])
    cache = engine.kv_cache.clone()
    eager = engine.decode_step(token, position)
    engine.kv_cache.copy_(cache)
    for lin in engine.quantized.linears[0].values():
        lin.use_kernel = True  # the kernels, in the interpreter
    fused = triton_decode_step(engine, token, position, gemv=call_fused)
    assert torch.allclose(fused, eager, atol=1e-3, rtol=1e-3), float((fused - eager).abs().max())


def test_quantize_for_generate_saves_and_loads(tmp_path):
    m = small_model()
    q = quantize_for_generate(m, "rtn")
    assert q.method == "rtn"
    back = quantize_for_generate(m, str(q.save(tmp_path / "int4")))
    ids = prompt(7, m.config.vocab_size)
    assert torch.equal(back.forward_logits(ids), q.forward_logits(ids))
    engine = build_engine(m, str(tmp_path / "int4"), compile=False)
    assert engine.generate(ids, 4, stop_on_eos=False).tokens.shape == (1, 4)
    other = small_model(layers=3)
    with pytest.raises(ModelError,
                       match="quantized from another model: num_hidden_layers is 2 there, 3 in --model"):
        quantize_for_generate(other, str(tmp_path / "int4"))


def test_bad_quantization_inputs_are_one_clear_error(tmp_path):
    tiny = LoadedModel("random:tiny", TINY, random_state_dict(TINY),
                       load_tokenizer(None, vocab_size=TINY.vocab_size), None)
    with pytest.raises(ModelError,
                       match=r"layers\.0\.down_proj: in_features 352 is not a multiple of the group size 128"):
        quantize_for_generate(tiny, "rtn")
    m = small_model()
    with pytest.raises(ModelError, match="unknown --quant 'int3'"):
        quantize_for_generate(m, "int3")
    q = quantize_for_generate(m, "rtn")
    path = q.save(tmp_path / "q")
    from safetensors.torch import load_file, save_file

    t = load_file(str(path / "model.safetensors"))
    eight_bit = dict(t,
                     # 4 inputs per word
                     **{"layers.1.o_proj.qweight": torch.zeros(128, 32, dtype=torch.int32)})
    save_file(eight_bit, str(path / "model.safetensors"))
    with pytest.raises(ModelError,
                       match=r"layers\.1\.o_proj\.qweight has shape \(128, 32\): expected \(128, 16\).*8-bit"):
        LinearLlama.load(path)
    save_file(dict(t, **{"layers.0.qkv_proj.scales": t["layers.0.qkv_proj.scales"].float()}),
              str(path / "model.safetensors"))
    with pytest.raises(ModelError, match=r"layers\.0\.qkv_proj\.scales is torch\.float32.*expected float16"):
        LinearLlama.load(path)
    meta = json.loads((path / "quant_config.json").read_text())
    (path / "quant_config.json").write_text(json.dumps(dict(meta, bits=8)))
    with pytest.raises(ModelError, match="expected 'titaninfer-int4-v1' with 4 bits"):
        LinearLlama.load(path)
