"""The CUDA-graph decode path and the new measuring code, single process.

The static step (device-side position, full-length masked cache, GQA heads stacked on the query axis) is
checked against the dynamic path's logits; the capture itself needs a GPU (skipped here with a reason).
The exposed-communication arithmetic runs on a hand-made Chrome trace whose answer is known.
"""

from __future__ import annotations

import pytest
import torch
from p6_impls import IMPLS, build_or_skip

from phase0_prototype import load_model
from phase6_tensor_parallel import solution
from phase6_tensor_parallel.static_decode import StaticDecoder, graph_generate
from phase6_tensor_parallel.sweep_tables import allreduce_model_us, exposed_at
from phase6_tensor_parallel.throughput import comm_overlap

SPEC = "random:tiny"


@pytest.fixture(scope="module")
def model():
    return load_model(SPEC, dtype="fp32", seed=4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_static_forward_matches_dynamic_forward(model, impl, chunk):
    """Same prompt, same next tokens: the static forward's logits equal the dynamic one's at every step."""
    g = torch.Generator().manual_seed(11)
    engine = build_or_skip(impl, model)
    prompt = torch.randint(3, model.config.vocab_size, (3, 7), generator=g)
    follow = torch.randint(3, model.config.vocab_size, (3, 4 * chunk), generator=g)
    with torch.inference_mode():
        dyn = engine.new_context(3, 7 + follow.shape[1] + 5)  # the static cache is longer than needed: masked
        static = engine.new_context(3, 7 + follow.shape[1] + 5)
        torch.testing.assert_close(engine.forward(prompt, static), engine.forward(prompt, dyn))
        static.pos = torch.tensor(static.start)
        for i in range(0, follow.shape[1], chunk):
            part = follow[:, i:i + chunk]
            torch.testing.assert_close(engine.forward(part, static), engine.forward(part, dyn), rtol=1e-5, atol=1e-5)
        assert int(static.pos) == dyn.start


def test_static_decoder_greedy_equals_eager_generate(model):
    prompt = torch.randint(3, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))
    engine = solution.build(model)
    with torch.inference_mode():
        assert torch.equal(graph_generate(engine, prompt, 9, capture=False), engine.generate(prompt, 9, graph=False))


def test_static_decoder_position_bookkeeping(model):
    engine = solution.build(model)
    with torch.inference_mode():
        decoder = StaticDecoder(engine, 2, max_len=12)
        decoder.fill_cache_randomly(5)
        assert int(decoder.ctx.pos) == 5 and decoder.ctx.cache_k[0][:, :, :5].abs().sum() > 0
        assert decoder.ctx.cache_k[0][:, :, 5:].abs().sum() == 0
        decoder()
        decoder()
        assert int(decoder.ctx.pos) == 7 and decoder.ctx.cache_k[0][:, :, 5:7].abs().sum() > 0
    with pytest.raises(ValueError, match="position 12 is outside the cache"):
        decoder.set_position(12)
    with pytest.raises(ValueError, match="needs max_len"):
        StaticDecoder(engine, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_capture_on_cpu_is_refused_with_a_reason(model):
    decoder = StaticDecoder(solution.build(model), 1, max_len=4)
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA device"):
        decoder.capture()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA-graph capture)")
@pytest.mark.parametrize("impl", IMPLS)
def test_graph_generate_equals_eager_on_gpu(impl):
    m = load_model(SPEC, dtype="fp32", device="cuda", seed=4)
    prompt = torch.randint(3, m.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(8))
    engine = build_or_skip(impl, m)
    assert torch.equal(engine.generate(prompt, 12), engine.generate(prompt, 12, graph=False)), impl


def _kernel(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_comm_overlap_counts_only_nccl_time_no_compute_covers():
    # µs: compute [0,10) and [20,30); NCCL [5,25) (10 µs exposed: [10,20)) and [40,44) (all exposed).
    trace = {"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "titaninfer_region", "ts": 0, "dur": 50},
        _kernel("gemm", 0, 10), _kernel("gemm", 20, 10),
        _kernel("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 5, 20), _kernel("ncclKernel_AllGather", 40, 4),
        _kernel("before_region", -100, 5),
    ]}
    out = comm_overlap(trace)
    assert out["comm_kernels"] == 2
    assert out["nccl_s"] == pytest.approx(24e-6) and out["compute_s"] == pytest.approx(20e-6)
    assert out["exposed_s"] == pytest.approx(14e-6)


def _rank(step, nocomm, exposed=None, kernels=None):
    rows = {"step_s": step, "nocomm_step_s": nocomm}
    if exposed is not None:
        rows.update(exposed_s=exposed, comm_kernels=kernels)
    return rows


def test_exposed_prefers_the_profiler_and_falls_back_to_the_ablation():
    ranks = [{"a": _rank([4.0], [1.0], [2.0], [10]), "b": _rank([3.0], [2.0], [1.0], [10])},
             {"a": _rank([6.0], [1.0], [4.0], [10]), "b": _rank([3.0], [2.0], [3.0], [10])}]
    got = exposed_at(ranks, ["a", "b"], 0)
    assert (got["a"].seconds, got["a"].source, got["b"].seconds) == (3.0, "profiler", 2.0)
    ranks[1]["b"]["comm_kernels"] = [0]  # a trace without NCCL kernels: both configs use the ablation
    got = exposed_at(ranks, ["a", "b"], 0)
    assert (got["a"].seconds, got["a"].source, got["b"].seconds) == (4.0, "ablation", 1.0)


def test_allreduce_model_counts_two_per_layer_or_four_half_size():
    per = lambda n: 1e-6 + n * 1e-12  # noqa: E731  (seconds)
    assert allreduce_model_us(per, 64, 2048, 22, 2, halves=False) == pytest.approx(44 * (1 + 64 * 2048 * 2e-6))
    assert allreduce_model_us(per, 64, 2048, 22, 2, halves=True) == pytest.approx(88 * (1 + 32 * 2048 * 2e-6))
    assert allreduce_model_us(per, 1, 2048, 22, 2, halves=True) == pytest.approx(44 * (1 + 2048 * 2e-6))
