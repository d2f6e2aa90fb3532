"""The assembled engine's greedy tokens equal HF transformers' (same fp32 weights, one request at a time)
for every implementation of every phase that runs on a CPU, and for the pairings of phases that exchange
data: block manager × scheduler (block tables), attention kernels × scheduler (step layouts), block
manager × attention kernels (the tables the kernels read). Phase 3's Triton kernels run interpreted."""

from __future__ import annotations

import pytest
from engine_helpers import random_prompts, tiny_model

import phase1_rust_memory
from phase0_prototype.hf_peer import greedy_reference
from shared.engine import EngineConfig, LLMEngine

NATIVE = phase1_rust_memory.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="phase 1's Rust extension is not built (make setup)")
LENGTHS, NEW = [5, 13, 2], [7, 4, 9]  # ragged prompts and outputs: prefill and decode mix in one step
SHORT_LENGTHS, SHORT_NEW = [6, 3], [4, 5]  # for the interpreted Triton kernels (seconds per call)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cases(model):
    prompts = random_prompts(model, LENGTHS, seed=11)
    short = random_prompts(model, SHORT_LENGTHS, seed=12)
    return {"full": (prompts, NEW, greedy_reference(model, prompts, NEW)),
            "short": (short, SHORT_NEW, greedy_reference(model, short, SHORT_NEW))}


def engine(model, spec: str, **kw) -> LLMEngine:
    # a small pool and budget: chunked prefill, several requests per step
    kw = {"max_num_seqs": 3, "max_num_batched_tokens": 8, "block_size": 4, **kw}
    return LLMEngine(EngineConfig(model="random:tiny", impl=spec, **kw), model=model)


def run(e: LLMEngine, prompts, new) -> list[list[int]]:
    return [o.token_ids for o in e.generate(prompts, max_tokens=new, ignore_eos=True)]


@pytest.mark.parametrize("phase0", ["framework", "solution"])
@pytest.mark.parametrize("phase2", ["off", "reference"])
def test_single_request_engine_equals_hf(model, cases, phase0, phase2):
    prompts, new, expected = cases["full"]
    e = engine(model, f"phase0={phase0},phase2={phase2},phase4=off")
    assert run(e, prompts, new) == expected
    assert e.last_run.path.startswith(f"phase 0 {phase0}")


@pytest.mark.parametrize("phase1", ["reference", pytest.param("framework", marks=needs_native),
                                    pytest.param("solution", marks=needs_native)])
@pytest.mark.parametrize("phase4", ["solution", "framework"])
def test_batched_engine_equals_hf(model, cases, phase1, phase4):
    prompts, new, expected = cases["full"]
    e = engine(model, f"phase1={phase1},phase3=reference,phase4={phase4}")
    assert run(e, prompts, new) == expected
    assert e.last_run.path.startswith("phase 4")
    assert e.batched.blocks.num_free_gpu_blocks == e.batched.blocks.num_gpu_blocks  # every block returned


def test_phase2_rope_in_the_loop_equals_hf(model, cases):
    """Phase 2's RoPE (its PyTorch reference on a CPU) plugged into phase 4's runner: the one model's ``rope``."""
    prompts, new, expected = cases["full"]
    e = engine(model, "phase1=reference,phase2=reference,phase3=reference")
    assert run(e, prompts, new) == expected
    assert "phase 2 RoPE (reference)" in e.last_run.path


@pytest.mark.parametrize("phase3", ["framework", "solution"])
@pytest.mark.parametrize("phase4", ["solution", "framework"])
def test_triton_attention_in_the_engine_equals_hf(model, cases, phase3, phase4):
    prompts, new, expected = cases["short"]
    assert run(engine(model, f"phase3={phase3},phase4={phase4}"), prompts, new) == expected


@pytest.mark.parametrize("phase1", ["reference", pytest.param("framework", marks=needs_native)])
def test_block_tables_of_each_manager_read_by_the_triton_kernel(model, cases, phase1):
    prompts, new, expected = cases["short"]
    assert run(engine(model, f"phase1={phase1},phase3=solution"), prompts, new) == expected


def test_lone_request_is_batch_1_of_the_loop(model, cases):
    prompts, new, expected = cases["full"]
    e = engine(model, "solution")
    assert run(e, prompts[:1], new[:1]) == expected[:1]
    assert e.last_run.path.startswith("phase 4") and e._single is None, "no second engine built"


def test_framework_preset_is_the_seed_prototype(model, cases):
    prompts, new, expected = cases["full"]
    e = engine(model, "framework")
    assert e.impls["phase0"] == "framework" and e.impls["phase4"] == "off"
    assert run(e, prompts, new) == expected
    assert e.last_run.kv_utilisation is None  # no KV cache at all


@pytest.mark.parametrize("phase6", ["solution", "framework"])
def test_tensor_parallel_2_ranks_equals_hf(model, cases, phase6):
    """Two gloo ranks (``shared.tp_workers``: this process and one worker, which re-creates the weights from
    the same spec and seed) under phase 4's continuous batching."""
    prompts, new, expected = cases["full"]
    cpu = tiny_model(device="cpu")  # gloo ranks on the CPU, whatever this machine has
    e = LLMEngine(EngineConfig(model="random:tiny", seed=3, tp=2, impl=f"phase6={phase6}", device="cpu"), model=cpu)
    try:
        assert run(e, prompts[:2], new[:2]) == expected[:2]
        assert f"phase 6 tensor parallel tp=2 ({phase6})" in e.last_run.path
    finally:
        e.close()


def test_eos_ends_a_request_like_phase0(model, cases):
    """Without ignore_eos, a request ends at its first EOS on every path (the EOS id is the last token)."""
    prompts, new, expected = cases["full"]
    ref0 = expected[0]
    eos = next(t for j, t in enumerate(ref0) if j and t not in ref0[:j])  # pretend a later greedy token is EOS
    for spec in ("phase4=off", "solution"):
        e = engine(model, spec)
        e.model.tokenizer.eos_ids = (eos,)
        try:
            outs = e.generate(prompts, max_tokens=new)
        finally:
            e.model.tokenizer.eos_ids = (2,)
        first = outs[0]
        assert first.token_ids == ref0[: ref0.index(eos) + 1] and first.finish_reason == "stop", spec
        for o, ref, n in zip(outs, expected, new, strict=True):
            cut = ref[: ref.index(eos) + 1] if eos in ref else ref[:n]
            assert o.token_ids == cut, spec


def test_phase0_yardstick_shares_the_loops_fused_weights(model):
    e = engine(model, "solution")
    e.warmup()
    assert e.single.weights is e.batched.runner.weights


def test_batched_engine_preempting_by_swap_equals_hf(model):
    """A KV pool too small for the batch: victims go to the host pool and come back; tokens still equal HF's."""
    prompts = random_prompts(model, [9, 11, 7, 10], seed=13)
    new = [12, 10, 14, 9]
    expected = greedy_reference(model, prompts, new)
    e = engine(model, "phase1=reference,phase3=reference,phase4=solution", max_num_seqs=4, num_blocks=14,
               preemption="swap", num_cpu_blocks=32)
    assert run(e, prompts, new) == expected
    stats = e.batched.blocks.stats()
    assert stats["swapped_out_blocks"] > 0 and stats["swapped_in_blocks"] == stats["swapped_out_blocks"]
    assert e.batched.blocks.num_free_gpu_blocks == e.batched.blocks.num_gpu_blocks


def test_swap_without_a_host_pool_is_one_clear_error(model):
    from phase0_prototype.errors import ModelError

    e = engine(model, "phase4=solution", preemption="swap", num_cpu_blocks=0)
    with pytest.raises(ModelError, match="CPU pool"):
        _ = e.batched
