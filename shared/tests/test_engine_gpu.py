"""On a CUDA GPU: the compiled paths (phase 0's Triton step in phase 4's decode graphs and in its own engine,
phase 3's Triton kernels, phase 2's CUDA RoPE) give HF's greedy tokens in fp32."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_prompts

from phase0_prototype import load_model
from phase0_prototype.hf_peer import greedy_reference
from shared.engine import EngineConfig, LLMEngine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def kjv():
    return load_model("kjv-llama-18m", dtype="fp32", device="cuda")


@pytest.mark.parametrize("spec", ["solution", "phase0=framework", "phase2=solution", "phase3=framework",
                                  "phase4=off", "phase4=off,phase2=solution"])
def test_compiled_paths_equal_hf(kjv, spec):
    prompts = random_prompts(kjv, [7, 30, 3], seed=31)
    new = [12, 5, 9]
    expected = greedy_reference(kjv, prompts, new)
    e = LLMEngine(EngineConfig(model="kjv-llama-18m", impl=spec, max_num_seqs=4, max_num_batched_tokens=32),
                  model=kjv)
    e.warmup()
    assert e.generate(prompts[:1], max_tokens=new[:1], ignore_eos=True)[0].token_ids == expected[0]
    assert [o.token_ids for o in e.generate(prompts, max_tokens=new, ignore_eos=True)] == expected


def test_int4_under_continuous_batching_on_the_gpu():
    """Phase 5's W4A16 kernels inside phase 4's paged runner (decode graphs captured over them) against phase
    5's single-request engine on the same INT4 weights (batched, the kernels differ: row GEMV vs small-batch
    MMA, so bf16 roundings differ and a late token may flip; the first tokens of every prompt must agree)."""
    model = load_model("kjv-llama-18m", dtype="bf16", device="cuda")
    prompts = random_prompts(model, [7, 30, 3, 12], seed=32)
    e = LLMEngine(EngineConfig(model="kjv-llama-18m", quant="rtn", max_num_seqs=4, max_num_batched_tokens=32),
                  model=model)
    e.warmup()
    alone = [e.single.generate(p, 10, stop_on_eos=False).sequences()[0] for p in prompts]  # phase 5's engine
    loop_alone = [e.generate([p], max_tokens=10, ignore_eos=True)[0].token_ids for p in prompts]  # batch 1
    assert all(a[:4] == b[:4] for a, b in zip(alone, loop_alone, strict=True)), (alone, loop_alone)
    batched = [o.token_ids for o in e.generate(prompts, max_tokens=10, ignore_eos=True)]
    assert "INT4 (rtn)" in e.last_run.path and e.batched.runner.graphs is not None
    assert all(a[:4] == b[:4] for a, b in zip(alone, batched, strict=True)), (alone, batched)
    agree = sum(x == y for a, b in zip(alone, batched, strict=True) for x, y in zip(a, b, strict=True))
    assert agree >= 0.9 * 40, (alone, batched)
