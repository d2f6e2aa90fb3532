"""Timing against known work, and the roofline arithmetic against hand computations."""

import random
import time

import numpy as np
import pytest
import torch

from module0_profiling import roofline
from module0_profiling.targets import RooflinePoint
from module0_profiling.timing import Timing, format_seconds, time_fn, time_graph, time_region


def test_time_fn_measures_known_sleep():
    t = time_fn(lambda: time.sleep(0.02), warmup=1, iters=5, device="cpu")
    assert 0.018 <= t.median <= 0.06
    assert t.p10 <= t.median <= t.p90
    assert t.n == 5


def test_calls_per_sample_divides():
    t = time_fn(lambda: time.sleep(0.005), warmup=0, iters=3, device="cpu", calls_per_sample=4)
    assert 0.004 <= t.median <= 0.03


def test_rotation_visits_every_input_in_order():
    seen = []
    inputs = [random.random() for _ in range(3)]
    time_fn(seen.append, inputs=inputs, warmup=2, iters=4, device="cpu")
    assert seen == [inputs[i % 3] for i in range(6)]


def test_timing_quantiles_match_numpy():
    samples = [random.uniform(1e-6, 1e-3) for _ in range(37)]
    t = Timing.from_samples(samples)
    assert t.median == pytest.approx(np.median(samples))
    assert t.p10 == pytest.approx(np.percentile(samples, 10))
    assert t.p90 == pytest.approx(np.percentile(samples, 90))
    assert t.spread == pytest.approx((t.p90 - t.p10) / t.median)
    assert t.best == pytest.approx(np.min(samples))


def test_time_region_counts_whole_region():
    t = time_region(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert t.median >= 0.009


def test_format_seconds():
    assert format_seconds(2.5) == "2.500 s"
    assert format_seconds(0.0025) == "2.500 ms"
    assert format_seconds(2.5e-6) == "2.5 µs"


def test_matmul_counts_by_hand():
    m, n, k = random.randint(1, 64), random.randint(1, 64), random.randint(1, 64)
    assert roofline.matmul_flops(m, n, k) == 2 * m * n * k
    assert roofline.matmul_bytes(m, n, k, 2) == 2 * (m * k + k * n + m * n)
    assert roofline.matmul_bytes(m, n, k, 0.5, out_bytes=2) == 0.5 * (m * k + k * n) + 2 * m * n


def test_gemv_intensity_is_about_one_in_bf16():
    flops = roofline.gemv_flops(4096, 4096)
    nbytes = roofline.gemv_bytes(4096, 4096)
    assert flops / nbytes == pytest.approx(2 * 4096 * 4096 / (2 * 4096 * 4096 + 2 * 8192))
    assert 0.99 < flops / nbytes < 1.0


def test_attention_decode_counts():
    b, hq, hkv, d, ctx = 2, 8, 2, 64, 100
    assert roofline.attention_decode_flops(b, hq, d, ctx) == 4 * b * hq * d * ctx
    # K and V of each kv head read once, q read and out written
    kv_bytes, q_out_bytes = 2 * b * hkv * ctx * d * 2, 2 * b * hq * d * 2
    assert roofline.attention_decode_bytes(b, hq, hkv, d, ctx, 2) == kv_bytes + q_out_bytes
    causal = roofline.attention_prefill_flops(1, 1, 64, 128)
    assert roofline.attention_prefill_flops(1, 1, 64, 128, causal=False) == 2 * causal


def test_ceiling_ridge_and_attainable():
    c = roofline.Ceiling("h100", tflops=989.0, gbps=3350.0)
    assert c.ridge == pytest.approx(989e12 / 3350e9)  # ≈ 295 FLOP/byte
    assert c.attainable_tflops(1.0) == pytest.approx(3.35)
    assert c.attainable_tflops(1e4) == pytest.approx(989.0)


def test_position_classifies_bound_and_fraction():
    c = roofline.Ceiling("x", tflops=100.0, gbps=1000.0)  # ridge 100
    mem = RooflinePoint("gemv", flops=2e9, bytes=2e9, seconds=4e-3)  # AI 1, 0.5 TFLOP/s of 1 attainable
    pos = roofline.position(mem, c)
    assert pos["bound"] == "memory"
    assert pos["fraction_of_roof"] == pytest.approx(0.5)
    cmp_ = RooflinePoint("gemm", flops=1e12, bytes=1e9, seconds=0.02)  # AI 1000, 50 of 100
    assert roofline.position(cmp_, c)["bound"] == "compute"
    assert roofline.position(cmp_, c)["fraction_of_roof"] == pytest.approx(0.5)


def test_plot_writes_png(tmp_path):
    c = [roofline.Ceiling("measured", 781, 2935), roofline.Ceiling("datasheet", 989, 3350)]
    pts = [RooflinePoint("gemv", 3.3e7, 3.3e7, 2e-5)]
    path = roofline.plot_roofline(str(tmp_path / "r.png"), c, pts)
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cpu_timing_of_real_matmul_is_positive():
    a = torch.randn(128, 128)
    t = time_fn(lambda: a @ a, warmup=1, iters=3, device="cpu")
    assert t.median > 0


def test_time_graph_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU test below covers time_graph")
    with pytest.raises(RuntimeError, match="CUDA graphs need a CUDA GPU"):
        time_graph(lambda: None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_time_graph_times_the_captured_work():
    """A graph of 8 copies of 64 MB takes several times a graph of 1 (per replay), and the replay really ran
    it."""
    src = torch.randn(16 << 20, device="cuda")
    dst = torch.zeros_like(src)
    one = time_graph(lambda: dst.copy_(src), calls_per_sample=5, iters=5)
    eight = time_graph(lambda: [dst.copy_(src) for _ in range(8)], calls_per_sample=5, iters=5)
    assert torch.equal(dst, src)
    assert 4 < eight.median / one.median < 12
