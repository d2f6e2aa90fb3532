"""Single-process tests: the α-β fitting math on synthetic timings, shard bookkeeping without collectives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phase6_tensor_parallel.allreduce_report import table
from phase6_tensor_parallel.allreduce_study import (
    AlphaBeta,
    analyse,
    bus_bandwidth_gbps,
    fit,
    fit_minimax,
    model_error,
    model_terms,
    sizes_bytes,
)
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase6_tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear, shard_fused, shard_rows


def test_sizes_span_1kb_to_256mb():
    s = sizes_bytes()
    assert s[0] == 1024 and s[-1] == 256 * 1024 * 1024 and all(b == 4 * a for a, b in zip(s, s[1:], strict=False))


@pytest.mark.parametrize("algo,world", [("Ring", 2), ("Ring", 8), ("Tree", 2), ("Tree", 8)])
def test_fit_recovers_alpha_beta_from_synthetic_timings(algo, world):
    rng = np.random.default_rng(world)
    alpha, beta = rng.uniform(2e-6, 2e-5), 1 / rng.uniform(50e9, 400e9)
    sizes = sizes_bytes()
    seconds = [AlphaBeta(algo, world, alpha, beta).predict(n) for n in sizes]
    ab = fit(algo, world, sizes, seconds)
    assert math.isclose(ab.alpha_s, alpha, rel_tol=1e-6) and math.isclose(ab.beta_s_per_byte, beta, rel_tol=1e-6)
    assert model_error(ab, sizes, seconds) < 1e-6
    noisy = [t * (1 + rng.uniform(-0.05, 0.05)) for t in seconds]
    ab = fit(algo, world, sizes, noisy)
    assert math.isclose(ab.alpha_s, alpha, rel_tol=0.15) and math.isclose(ab.beta_s_per_byte, beta, rel_tol=0.15)
    assert model_error(ab, sizes, noisy) < 0.12


@pytest.mark.parametrize("algo,world", [("Ring", 2), ("Tree", 2), ("Ring", 8)])
def test_minimax_fit_recovers_alpha_beta_and_bounds_the_worst_error(algo, world):
    rng = np.random.default_rng(17 + world)
    alpha, beta = rng.uniform(2e-6, 2e-5), 1 / rng.uniform(50e9, 400e9)
    true = AlphaBeta(algo, world, alpha, beta)
    sizes = sizes_bytes()
    exact = [true.predict(n) for n in sizes]
    ab = fit_minimax(algo, world, sizes, exact)
    assert math.isclose(ab.alpha_s, alpha, rel_tol=1e-4) and math.isclose(ab.beta_s_per_byte, beta, rel_tol=1e-4)
    assert model_error(ab, sizes, exact) < 1e-4
    noisy = [t * (1 + rng.uniform(-0.08, 0.08)) for t in exact]
    ab, lsq = fit_minimax(algo, world, sizes, noisy), fit(algo, world, sizes, noisy)
    # The true line is within the noise of every point, so the best worst-case line is at least as good,
    # and no other fit (least squares) can have a smaller worst error.
    assert model_error(ab, sizes, noisy) <= model_error(true, sizes, noisy) + 1e-6
    assert model_error(ab, sizes, noisy) <= model_error(lsq, sizes, noisy) + 1e-6
    assert math.isclose(ab.alpha_s, alpha, rel_tol=0.3) and math.isclose(ab.beta_s_per_byte, beta, rel_tol=0.3)


def test_one_line_cannot_follow_a_protocol_switch():
    # NCCL-like lower envelope of three protocols (LL, LL128, Simple): the best line misses the hand-over.
    sizes = sizes_bytes()
    protos = [AlphaBeta("Ring", 2, 3e-6, 1 / 60e9), AlphaBeta("Ring", 2, 5e-6, 1 / 200e9),
              AlphaBeta("Ring", 2, 8e-6, 1 / 340e9)]
    seconds = [min(p.predict(n) for p in protos) for n in sizes]
    run = analyse({"algo": "Ring", "world": 2, "sizes": sizes, "seconds": seconds})
    assert 0.1 < run["model_error"] < run["model_error_lsq"]
    errors = [(AlphaBeta(**run["fit"]).predict(n) - t) / t for n, t in zip(sizes, seconds, strict=True)]
    # Minimax equioscillates: the worst error is reached with both signs.
    assert max(errors) == pytest.approx(run["model_error"], rel=1e-3)
    assert min(errors) == pytest.approx(-run["model_error"], rel=1e-3)


def test_ring_and_tree_formulas():
    # Ring on N ranks: 2(N-1) hops of n/N bytes; Tree: 2·ceil(log2 N) hops, 2n bytes through each link.
    assert model_terms("Ring", 1000, 4) == (6.0, 1500.0)
    assert model_terms("Tree", 1000, 8) == (6.0, 2000.0)
    assert model_terms("Tree", 1000, 5) == (6.0, 2000.0)
    with pytest.raises(ValueError, match="unknown all-reduce algorithm"):
        model_terms("CollNet", 1, 2)


def test_relative_fit_is_not_dominated_by_large_messages():
    # An absolute least-squares fit would get α wrong by orders of magnitude; the relative one holds
    # at small sizes when the large sizes deviate (e.g. a bandwidth cliff).
    sizes = sizes_bytes()
    true = AlphaBeta("Ring", 2, 1e-5, 1 / 100e9)
    seconds = [true.predict(n) * (1.3 if n > 64 * 2**20 else 1.0) for n in sizes]
    ab = fit("Ring", 2, sizes, seconds)
    assert abs(ab.predict(1024) - seconds[0]) / seconds[0] < 0.1


def test_bus_bandwidth_is_nccl_tests_definition():
    # 1 GB in 10 ms on 8 ranks: algbw 100 GB/s, busbw = 100 · 2·7/8 = 175 GB/s.
    assert math.isclose(bus_bandwidth_gbps(1e9, 0.01, 8), 175.0)
    assert math.isclose(bus_bandwidth_gbps(1e9, 0.01, 2), 100.0)


def test_table_renders_every_size():
    sizes = [1024, 4096]
    run = analyse({"algo": "Ring", "world": 2, "sizes": sizes, "seconds": [1e-5, 2e-5], "method": "k calls"})
    text = table([run])
    assert "| 1 KB |" in text and "| 4 KB |" in text and "(minimax fit); least squares: α =" in text
    assert "Timing: k calls." in text


def test_sharded_layers_rebuild_the_full_product_without_collectives():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 7, 12, generator=g), torch.randn(18, 12, generator=g)
    world = 3
    cols = [ColumnParallelLinear(w, TPGroup(r, world), gather_output=False)(x) for r in range(world)]
    torch.testing.assert_close(torch.cat(cols, -1), F.linear(x, w))
    rows = [RowParallelLinear(w, TPGroup(r, world), input_is_parallel=False, reduce_output=False)(x)
            for r in range(world)]
    torch.testing.assert_close(sum(rows), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_fused_shard_keeps_each_block_together():
    w = torch.arange(12.0)[:, None]  # q rows 0..5, k rows 6..8, v rows 9..11
    assert shard_fused(w, [6, 3, 3], TPGroup(1, 3), "qkv")[:, 0].tolist() == [2, 3, 7, 10]


def test_indivisible_sizes_give_a_clear_error():
    with pytest.raises(TPError, match="vocab_size=10 is not divisible by the tensor-parallel size 3"):
        shard_rows(torch.zeros(10, 2), TPGroup(0, 3), "vocab_size")


def test_nocomm_group_keeps_shapes_and_a_world1_engine_unchanged():
    from phase0_prototype import load_model
    from phase6_tensor_parallel import solution
    from phase6_tensor_parallel.static_decode import StaticDecoder
    from phase6_tensor_parallel.throughput import NoCommGroup, time_steps

    x = torch.randn(2, 3)
    assert NoCommGroup(0, 2).all_gather_last(x).shape == (2, 6) and NoCommGroup(0, 2).all_reduce_async(x) is None
    model = load_model("random:tiny", dtype="fp32", seed=2)
    tokens = torch.randint(3, 320, (2, 5), generator=torch.Generator().manual_seed(5))
    real, ablated = solution.build(model), solution.build(model, group=NoCommGroup(0, 1))
    torch.testing.assert_close(ablated.forward_logits(tokens), real.forward_logits(tokens))
    with torch.inference_mode():
        decoder = StaticDecoder(real, 2, max_len=10)
        decoder.fill_cache_randomly(4)
        timing = time_steps(decoder, 4, iters=3, warmup=1)
    assert timing["step_s"] > 0 and set(timing) == {"step_s"}  # no profiler figures off CUDA


def test_alpha_beta_figure_lands_beside_the_report_and_is_linked(tmp_path):
    """The check runner's report folder gets ``<stem>.allreduce_alpha_beta.png``; the report links that name."""
    import dataclasses

    from module0_profiling.targets import BenchResult
    from phase6_tensor_parallel.bench import alpha_beta_figure

    pytest.importorskip("matplotlib")
    sizes = [2 ** k for k in range(10, 20, 2)]
    runs = []
    for algo, alpha, beta in (("Ring", 9e-6, 3e-12), ("Tree", 11e-6, 4e-12)):
        truth = AlphaBeta(algo, 2, alpha, beta)
        rng = np.random.default_rng(len(algo))
        seconds = [truth.predict(n) * (1 + 0.02 * rng.standard_normal()) for n in sizes]
        runs.append({"algo": algo, "sizes": sizes, "seconds": seconds,
                     "fit": dataclasses.asdict(fit(algo, 2, sizes, seconds))})
    result = BenchResult()
    png = alpha_beta_figure(runs, result, tmp_path / "phase6_tensor_parallel", "h200")
    assert png == tmp_path / "phase6_tensor_parallel" / "h200.allreduce_alpha_beta.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert any(f"({png.name})" in t for t in result.tables.values())


def test_the_engine_chooses_the_kernels_by_device_unless_told(monkeypatch):
    from phase6_tensor_parallel.ops import choose_kernels

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert choose_kernels(gpu, None) and not choose_kernels(cpu, None)
    assert not choose_kernels(gpu, False) and choose_kernels(gpu, True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_kernels(cpu, True)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        choose_kernels(cpu, True)
