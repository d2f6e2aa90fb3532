"""Phase 5 in the engine: with ``quant`` set, the engine decodes with phase 5's INT4 weights (quantized by the
method asked for) and its greedy tokens are those of phase 5's own model run by recomputation
(``LinearLlama.greedy``: no KV cache, no CUDA graph — a different decode path on the same weights);
bad group sizes are one-line errors."""

from __future__ import annotations

import pytest
from engine_helpers import random_prompts, tiny_model

from phase0_prototype.errors import ModelError
from phase5_quantization.model import LinearLlama
from shared.engine import EngineConfig, LLMEngine


@pytest.fixture(scope="module")
def model():
    return tiny_model(device="cpu")  # phase 5's quantizers and its CPU path


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_int4_engine_equals_phase5_model(model, method):
    prompt = random_prompts(model, [9], seed=21)[0]
    e = LLMEngine(EngineConfig(model="random:tiny", quant=method, quant_group_size=32), model=model)
    got = e.generate([prompt], max_tokens=6, ignore_eos=True)[0].token_ids
    quantized = e.single.quantized
    assert quantized.method == method
    assert got == quantized.greedy(prompt, 6)
    assert e.last_run.path.startswith(f"phase 5 INT4 ({method})")
    # INT4 really changed the numbers: the float model's logits differ
    assert not bool((quantized.forward_logits([prompt]) == LinearLlama.from_loaded(model).forward_logits([prompt])).all())


def test_group_size_that_does_not_divide_is_one_line(model):
    e = LLMEngine(EngineConfig(model="random:tiny", quant="rtn"), model=model)  # 352 % 128 != 0
    with pytest.raises(ModelError, match="--quant rtn") as info:
        e.generate("hello", max_tokens=2)
    assert "\n" not in str(info.value) and "group size" in str(info.value)
