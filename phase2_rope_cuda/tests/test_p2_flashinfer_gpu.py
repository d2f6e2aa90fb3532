"""Our RoPE kernels against FlashInfer's ``apply_rope_with_cos_sin_cache`` (vLLM's contract), same inputs."""

import pytest
import torch

from phase2_rope_cuda import build_cos_sin_cache, load_impl
from phase2_rope_cuda.workload import TOLERANCE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def flashinfer_rope():
    return pytest.importorskip("flashinfer.rope", reason="flashinfer is not importable (carry its wheels, see NOTES.md)")


@pytest.mark.parametrize("impl", ["phase2_rope_cuda.staged", "solution"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32])
def test_matches_flashinfer(flashinfer_rope, impl, dtype, head_dim, pos_dtype):
    tokens, hq, hkv = 1003, 32, 4
    g = torch.Generator(device="cuda").manual_seed(head_dim + tokens)
    q = torch.randn(tokens, hq, head_dim, generator=g, device="cuda").to(dtype)
    k = torch.randn(tokens, hkv, head_dim, generator=g, device="cuda").to(dtype)
    positions = torch.randint(0, 8192, (tokens,), generator=g, device="cuda").to(pos_dtype)
    cache = build_cos_sin_cache(head_dim, 8192, device="cuda")
    q_fi, k_fi = flashinfer_rope.apply_rope_with_cos_sin_cache(positions, q.view(tokens, -1), k.view(tokens, -1),
                                                               head_dim, cache, is_neox=True)
    load_impl(impl).apply_rope_(q, k, positions, cache)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(q, q_fi.view_as(q), atol=atol, rtol=rtol)
    torch.testing.assert_close(k, k_fi.view_as(k), atol=atol, rtol=rtol)
