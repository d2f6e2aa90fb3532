"""Phase 5 in the engine: with ``quant`` set, the engine decodes with phase 5's INT4 weights (quantized by the
method asked for) and its greedy tokens are those of phase 5's own model run by recomputation
(``LinearLlama.greedy``: no KV cache, no CUDA graph — a different decode path on the same weights), for a
lone request and under continuous batching (phase 4's paged runner over the ``QuantLinear`` objects), and
with ``phase4=off`` (phase 5's ``Int4Engine``: phase 0's engine over them); bad group sizes are one-line errors."""

from __future__ import annotations

import pytest
from engine_helpers import random_prompts, tiny_model

from phase0_prototype.errors import ModelError
from phase5_quantization.model import LinearLlama
from shared.engine import EngineConfig, LLMEngine


@pytest.fixture(scope="module")
def model():
    return tiny_model(device="cpu")  # phase 5's quantizers and its CPU path


@pytest.mark.parametrize("method,impl", [("rtn", "solution"), ("gptq", "solution"), ("awq", "phase4=off")])
def test_int4_engine_equals_phase5_model(model, method, impl):
    prompt = random_prompts(model, [9], seed=21)[0]
    e = LLMEngine(EngineConfig(model="random:tiny", impl=impl, quant=method, quant_group_size=32), model=model)
    got = e.generate([prompt], max_tokens=6, ignore_eos=True)[0].token_ids
    quantized = e.quantized
    assert quantized.method == method
    assert got == quantized.greedy(prompt, 6)
    assert f"INT4 ({method})" in e.last_run.path
    # INT4 really changed the numbers: the float model's logits differ
    assert not bool((quantized.forward_logits([prompt]) == LinearLlama.from_loaded(model).forward_logits([prompt])).all())


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_int4_under_continuous_batching_equals_phase5_model(model, method):
    prompts = random_prompts(model, [9, 4, 13, 6, 11], seed=22)
    e = LLMEngine(EngineConfig(model="random:tiny", quant=method, quant_group_size=32, max_num_seqs=3,
                               max_num_batched_tokens=16), model=model)
    outputs = e.generate(prompts, max_tokens=[7, 3, 5, 8, 4], ignore_eos=True)
    assert e.last_run.path.startswith("phase 4 continuous batching") and f"INT4 ({method})" in e.last_run.path
    quantized = e.quantized
    for p, n, out in zip(prompts, [7, 3, 5, 8, 4], outputs, strict=True):
        assert out.token_ids == quantized.greedy(p, n)
    assert e.batched.runner.weights.layers[0].qkv_proj is quantized.linears[0]["qkv_proj"], "one INT4 copy"


def test_group_size_that_does_not_divide_is_one_line(model):
    e = LLMEngine(EngineConfig(model="random:tiny", quant="rtn"), model=model)  # 352 % 128 != 0
    with pytest.raises(ModelError, match="--quant rtn") as info:
        e.generate("hello", max_tokens=2)
    assert "\n" not in str(info.value) and "group size" in str(info.value)


def test_quantize_once_then_serve_the_checkpoint(tmp_path, capsys):
    """``titaninfer quantize`` writes an AutoAWQ checkpoint (+ tokenizer); ``--model DIR`` (alone: no float
    weights loaded) and ``--model M --quant DIR`` decode exactly as quantizing in memory does, on both paths;
    an existing folder is refused in one line."""
    from shared.cli import main

    out = tmp_path / "kjv-rtn"
    assert main(["quantize", "--model", "kjv-llama-18m", "--method", "rtn", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["kjv-rtn"], "no staging folder left behind"
    prompts = ["And God said", "In the beginning", "Blessed are"]
    options = dict(max_num_seqs=2, max_num_batched_tokens=16)
    beside = LLMEngine(EngineConfig(model="kjv-llama-18m", quant=str(out), **options))
    fresh = LLMEngine(EngineConfig(model="kjv-llama-18m", quant="rtn", **options), model=beside.model)
    alone = LLMEngine(EngineConfig(model=str(out), **options))  # no float model at all
    assert sorted(alone.model.state) == ["model.embed_tokens.weight", "model.norm.weight"]
    for many in (False, True):  # one request (batch 1 of the loop), several
        batch = prompts if many else prompts[:1]
        want = [o.token_ids for o in fresh.generate(batch, max_tokens=8, ignore_eos=True)]
        for engine in (beside, alone):
            assert [o.token_ids for o in engine.generate(batch, max_tokens=8, ignore_eos=True)] == want
    assert alone.generate(prompts[0], max_tokens=8)[0].text == fresh.generate(prompts[0], max_tokens=8)[0].text
    with pytest.raises(ModelError, match="holds INT4 weights already"):
        LLMEngine(EngineConfig(model=str(out), quant="rtn"))
    capsys.readouterr()
    assert main(["quantize", "--model", "kjv-llama-18m", "--method", "rtn", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not an empty folder" in err[0]
