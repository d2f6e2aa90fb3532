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


def assert_near_greedy(reference, prompt: list[int], tokens: list[int], rel: float = 0.03) -> None:
    """Every generated token is the reference's argmax, or within ``rel`` of the row's largest |logit| of it
    (a bf16 near-tie that another kernel's rounding may flip); a wrong kernel picks tokens far below."""
    ids = torch.tensor([prompt + tokens[:-1]], device="cuda")
    logits = reference.forward_logits(ids)[0, len(prompt) - 1:].float()
    chosen = logits.gather(-1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0]
    gap = logits.max(-1).values - chosen
    assert (gap <= rel * logits.abs().max(-1).values).all(), (tokens, gap.tolist())


def test_int4_under_continuous_batching_on_the_gpu():
    """Phase 5's W4A16 kernels inside phase 4's paged runner (decode graphs captured over them), at batch 1
    (phase 0's fused step over the INT4 GEMVs) and batched, against phase 5's single-request engine on the
    same INT4 weights, teacher-forced: the kernels differ (row GEMV vs small-batch MMA, paged vs contiguous
    attention), so bf16 roundings differ and a near-tie may flip; every token must be a near-argmax."""
    model = load_model("kjv-llama-18m", dtype="bf16", device="cuda")
    prompts = random_prompts(model, [7, 30, 3, 12], seed=32)
    e = LLMEngine(EngineConfig(model="kjv-llama-18m", quant="rtn", max_num_seqs=4, max_num_batched_tokens=32),
                  model=model)
    e.warmup()
    for p in prompts:  # batch 1 through the loop
        assert_near_greedy(e.single, p, e.generate([p], max_tokens=10, ignore_eos=True)[0].token_ids)
    batched = [o.token_ids for o in e.generate(prompts, max_tokens=10, ignore_eos=True)]
    assert "INT4 (rtn)" in e.last_run.path and e.batched.runner.graphs is not None
    for p, tokens in zip(prompts, batched, strict=True):
        assert len(tokens) == 10
        assert_near_greedy(e.single, p, tokens)
