"""Each CUDA kernel against the PyTorch reference: random positions, odd sizes, every dtype, strides."""

import pytest
import torch

from module0_profiling.impl import impls_under_test
from phase2_rope_cuda import RopeInputError, build_cos_sin_cache, load_impl, reference
from phase2_rope_cuda.integration import phase0_rope_fn
from phase2_rope_cuda.solution import LaunchConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
IMPLS = impls_under_test(["framework", "phase2_rope_cuda.staged", "solution"])

TOL = {torch.float32: (1e-5, 1.3e-6), torch.bfloat16: (1e-5, 1.6e-2), torch.float16: (1e-5, 1e-3)}
MAX_POSITION = 5000


def make_inputs(tokens, hq, hkv, d, dtype, pos_dtype=torch.int64, seed=0, fused=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    positions = torch.randint(0, MAX_POSITION, (tokens,), generator=g, device="cuda").to(pos_dtype)
    if fused:  # q and k as strided views of a [tokens, (hq + 2 hkv) d] QKV projection output
        qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g, device="cuda").to(dtype)
        q = qkv[:, : hq * d].view(tokens, hq, d)
        k = qkv[:, hq * d: (hq + hkv) * d].view(tokens, hkv, d)
        return q, k, positions, qkv
    q = torch.randn(tokens, hq, d, generator=g, device="cuda").to(dtype)
    k = torch.randn(tokens, hkv, d, generator=g, device="cuda").to(dtype)
    return q, k, positions, None


def assert_rope_matches(impl, q, k, positions, cache, **kwargs):
    q_exp, k_exp = reference.apply_rope_reference(q.clone(), k.clone(), positions, cache)
    q_in, k_in = q.clone(), k.clone()
    load_impl(impl).apply_rope_(q, k, positions, cache, **kwargs)
    atol, rtol = TOL[q.dtype]
    torch.testing.assert_close(q, q_exp, atol=atol, rtol=rtol)
    torch.testing.assert_close(k, k_exp, atol=atol, rtol=rtol)
    assert not torch.equal(q, q_in) and not torch.equal(k, k_in)  # something really happened


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("tokens,hq,hkv", [(1, 32, 4), (7, 32, 4), (1001, 8, 8), (4097, 32, 4)])
def test_kernel_matches_reference(impl, dtype, head_dim, tokens, hq, hkv):
    cache = build_cos_sin_cache(head_dim, MAX_POSITION, device="cuda")
    q, k, positions, _ = make_inputs(tokens, hq, hkv, head_dim, dtype, seed=tokens + head_dim)
    assert_rope_matches(impl, q, k, positions, cache)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64])
def test_fused_qkv_views_and_int32_positions(impl, dtype, pos_dtype):
    cache = build_cos_sin_cache(64, MAX_POSITION, device="cuda")
    q, k, positions, qkv = make_inputs(333, 32, 4, 64, dtype, pos_dtype, seed=1, fused=True)
    v_before = qkv[:, (32 + 4) * 64:].clone()
    assert_rope_matches(impl, q, k, positions, cache)
    torch.testing.assert_close(qkv[:, (32 + 4) * 64:], v_before, atol=0, rtol=0)


@pytest.mark.parametrize("config", [LaunchConfig(1, 32), LaunchConfig(2, 256), LaunchConfig(3, 512), LaunchConfig(64, 1024)])
def test_solution_launch_configs(config):
    cache = build_cos_sin_cache(128, MAX_POSITION, device="cuda")
    q, k, positions, _ = make_inputs(515, 12, 3, 128, torch.bfloat16, seed=2)
    assert_rope_matches("solution", q, k, positions, cache, config=config)


def test_framework_handles_other_head_dims_solution_refuses():
    cache = build_cos_sin_cache(96, MAX_POSITION, device="cuda")
    q, k, positions, _ = make_inputs(45, 6, 2, 96, torch.bfloat16, seed=3)
    assert_rope_matches("framework", q, k, positions, cache)
    q2, k2, _, _ = make_inputs(45, 6, 2, 96, torch.bfloat16, seed=4)
    assert_rope_matches("phase2_rope_cuda.staged", q2, k2, positions, cache)  # v2 takes any even head_dim ≤ 256
    with pytest.raises(RopeInputError, match="head_dim"):
        load_impl("solution").apply_rope_(q, k, positions, cache)


def test_solution_refuses_misaligned_views():
    cache = build_cos_sin_cache(64, MAX_POSITION, device="cuda")
    buf = torch.randn(10, 4 * 64 + 1, device="cuda", dtype=torch.bfloat16)
    q = buf[:, 1:].view(10, 4, 64)  # starts 2 bytes into the row
    k = torch.randn(10, 2, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RopeInputError, match="16-byte aligned"):
        load_impl("solution").apply_rope_(q, k, torch.arange(10, device="cuda"), cache)


def test_zero_tokens_is_a_no_op():
    cache = build_cos_sin_cache(64, 16, device="cuda")
    q = torch.empty(0, 4, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.empty(0, 2, 64, device="cuda", dtype=torch.bfloat16)
    for impl in ("framework", "phase2_rope_cuda.staged", "solution"):
        load_impl(impl).apply_rope_(q, k, torch.empty(0, dtype=torch.int64, device="cuda"), cache)


def test_runs_on_a_side_stream():
    """Kernels go on torch's current stream: work queued before them on that stream is seen."""
    cache = build_cos_sin_cache(64, MAX_POSITION, device="cuda")
    q, k, positions, _ = make_inputs(2048, 32, 4, 64, torch.bfloat16, seed=4)
    q_exp, k_exp = reference.apply_rope_reference(q * 2, k * 2, positions, cache)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        q.mul_(2)
        k.mul_(2)
        load_impl("solution").apply_rope_(q, k, positions, cache)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(q, q_exp, atol=1e-5, rtol=1.6e-2)
    torch.testing.assert_close(k, k_exp, atol=1e-5, rtol=1.6e-2)


def test_phase0_adapter_on_gpu():
    B, T, hq, hkv, d = 3, 17, 32, 4, 64
    cache = build_cos_sin_cache(d, 64, device="cuda")
    cos = torch.cat([cache[:, :32], cache[:, :32]], -1)
    sin = torch.cat([cache[:, 32:], cache[:, 32:]], -1)
    q = torch.randn(B, T, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, T, hkv, d, device="cuda", dtype=torch.bfloat16)
    positions = torch.arange(T, device="cuda").expand(B, T)
    q_exp, k_exp = phase0_rope_fn("reference")(q.clone(), k.clone(), cos, sin, positions)
    q_out, k_out = phase0_rope_fn("solution")(q.clone(), k.clone(), cos, sin, positions)
    torch.testing.assert_close(q_out, q_exp, atol=1e-5, rtol=1.6e-2)
    torch.testing.assert_close(k_out, k_exp, atol=1e-5, rtol=1.6e-2)
