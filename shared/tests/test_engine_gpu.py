"""On a CUDA GPU: the compiled paths (phase 0's Triton step in a CUDA graph, phase 3's Triton kernels,
phase 4's decode graphs, phase 2's CUDA RoPE) give HF's greedy tokens in fp32."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_prompts, reference_tokens

from phase0_prototype import load_model
from shared.engine import EngineConfig, LLMEngine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def kjv():
    return load_model("kjv-llama-18m", dtype="fp32", device="cuda")


@pytest.mark.parametrize("spec,bs1", [("solution", "phase0"), ("solution", "phase4"), ("phase2=solution", "phase0"),
                                      ("phase3=framework", "phase4")])
def test_compiled_paths_equal_hf(kjv, spec, bs1):
    prompts = random_prompts(kjv, [7, 30, 3], seed=31)
    new = [12, 5, 9]
    expected = reference_tokens(kjv, prompts, new)
    e = LLMEngine(EngineConfig(model="kjv-llama-18m", impl=spec, bs1_decode=bs1, max_num_seqs=4,
                               max_num_batched_tokens=32), model=kjv)
    e.warmup(batched=True)
    assert e.generate(prompts[:1], max_tokens=new[:1], ignore_eos=True)[0].token_ids == expected[0]
    assert [o.token_ids for o in e.generate(prompts, max_tokens=new, ignore_eos=True)] == expected
