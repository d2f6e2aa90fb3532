"""Two gloo processes on CPU: every layer type vs its unsharded twin; TP=2 vs TP=1 logits and greedy tokens of
each implementation under test (``IMPL``: ``p6_impls``), with and without the overlap.

Each test spawns 2 ranks once (a few seconds of imports) and checks many things from what they return.
"""

from __future__ import annotations

import pytest
import torch
from p6_impls import IMPLS, build_or_skip, impl_outputs, skip_if_refused

from phase0_prototype import load_impl as load_p0
from phase0_prototype import load_model
from phase6_tensor_parallel import solution
from phase6_tensor_parallel.dist_env import TPError, TPGroup, spawn
from phase6_tensor_parallel.testing import failing_rank, layer_errors, measurement_smoke

SPEC = "random:tiny"  # kv heads 2, vocab 320, intermediate 352: all divisible by 2


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1234)
    vocab = load_model(SPEC, dtype="fp32").config.vocab_size
    return {"tokens": torch.randint(3, vocab, (4, 11), generator=g),
            "prompt": torch.randint(3, vocab, (2, 6), generator=g), "new": 12}


@pytest.fixture(scope="module")
def tp2(inputs):
    return spawn(impl_outputs, 2, SPEC, inputs["tokens"], inputs["prompt"], inputs["new"], IMPLS, timeout_s=150)


@pytest.fixture(scope="module")
def reference(inputs):
    """Phase 0's framework engine (its own attention, no TP code) on the same fp32 weights."""
    engine = load_p0("framework").build(load_model(SPEC, dtype="fp32", seed=1))
    logits = engine.forward_logits(inputs["tokens"])
    greedy = engine.generate(inputs["prompt"], inputs["new"], stop_on_eos=False).tokens
    return {"logits": logits, "greedy": greedy}


def test_every_layer_matches_its_unsharded_twin():
    per_rank = spawn(layer_errors, 2, 7, timeout_s=90)
    for rank, errors in enumerate(per_rank):
        for name, err in errors.items():
            assert err < 1e-5, f"rank {rank} {name}: max error {err}"


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("impl", IMPLS)
def test_tp2_equals_tp1_and_phase0(tp2, reference, inputs, impl, overlap):
    name = impl if overlap else f"{impl}_no_overlap"
    for out in tp2:
        skip_if_refused(out[name])
    tp1 = build_or_skip(impl, load_model(SPEC, dtype="fp32", seed=1), overlap=overlap)
    tp1_logits = tp1.forward_logits(inputs["tokens"])
    torch.testing.assert_close(tp1_logits, reference["logits"], rtol=1e-5, atol=1e-5)
    for rank, out in enumerate(tp2):
        torch.testing.assert_close(out[name]["logits"], tp1_logits, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, rank=rank: f"rank {rank} {name}: {m}")
        assert torch.equal(out[name]["greedy"], reference["greedy"][:, :inputs["new"]]), f"rank {rank} {name}"
        # The CUDA-graph-shaped step (device-side position, full-length masked cache), run eagerly here.
        assert torch.equal(out[name]["static_greedy"], out[name]["greedy"]), f"rank {rank} {name} static step"
    # Both ranks hold the same gathered logits, bit for bit.
    assert torch.equal(tp2[0][name]["logits"], tp2[1][name]["logits"])


@pytest.mark.parametrize("impl", IMPLS)
def test_overlap_equals_no_overlap(tp2, impl):
    for out in tp2:
        skip_if_refused(out[impl])
        skip_if_refused(out[f"{impl}_no_overlap"])
        torch.testing.assert_close(out[impl]["logits"], out[f"{impl}_no_overlap"]["logits"], rtol=1e-5, atol=1e-6)
        assert torch.equal(out[impl]["greedy"], out[f"{impl}_no_overlap"]["greedy"])


def test_failing_rank_ends_the_group_with_a_clear_error():
    with pytest.raises(TPError, match="rank 1: ValueError: deliberate failure"):
        spawn(failing_rank, 2, 1, timeout_s=60, collective_timeout_s=10)


def test_measurement_code_runs_over_gloo():
    ranks = spawn(measurement_smoke, 2, [1024, 4096, 16384], timeout_s=90)
    run = ranks[0]["allreduce"]
    assert run["world"] == 2 and len(run["seconds"]) == 3 and all(t > 0 for t in run["seconds"])
    assert run["method"] == "k eager calls per sample"  # no CUDA graphs over gloo
    for rank in ranks:
        sweep = rank["sweep"]
        cfg = load_model(SPEC, dtype="fp32").config
        assert sweep["config"] == {"hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers}
        for label in ("framework", "solution"):
            rows = sweep[label]
            assert len(rows["step_s"]) == len(rows["nocomm_step_s"]) == 2
            assert all(t > 0 for t in rows["step_s"] + rows["nocomm_step_s"])
            assert "exposed_s" not in rows  # the profiler's view needs CUDA kernels


def test_solution_refuses_a_tp_size_that_does_not_divide_kv_heads():
    model = load_model(SPEC, dtype="fp32")
    with pytest.raises(TPError, match="num_key_value_heads=2"):
        solution.build(model, group=TPGroup(0, 4))


def test_bench_throughput_path_runs_over_gloo():
    """P6.2/P6.3's code path (written for 2 GPUs) on CPU at toy sizes: the metrics exist and are sane."""
    from module0_profiling.targets import BenchResult
    from phase6_tensor_parallel.bench import throughput_targets

    result = BenchResult()
    sweep = dict(model="random:tiny", dtype="fp32", batches=[2, 64], context=4, steps=2, p6_3_batch=64)
    throughput_targets("solution", result, device="cpu", sweep=sweep)
    assert result.metrics["p6_2_speedup"] > 0 and 0 <= result.metrics["p6_2_comm_share"] <= 1
    assert "p6_3_exposed_comm_ratio" in result.metrics or "p6_3_exposed_comm_ratio" in result.skipped
    table = result.tables["decode throughput, TP=1 vs TP=2 (static steps run eagerly over gloo)"]
    assert "| 64 |" in table and "TP=2 framework tok/s" in table and "faster mode" in table
    assert result.context["p6_2_best"] in {f"batch 64, {m} (comm share from the ablation)"
                                           for m in ("solution", "solution_no_overlap")}
    assert "batch 64" in result.tables["communication per TP=2 decode step"]
    names = [c.name for c in result.comparisons]
    assert names == ["TP=1 decode step, batch 64"] + [f"TP=2 {n} decode step, batch 64"
                                                      for n in ("framework", "solution", "solution_no_overlap")]
