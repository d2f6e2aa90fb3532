"""The decode step's Triton kernels (fused RMSNorm; phase 0's attention through ``AttnContext.attend``) against
the PyTorch path they replace. On a CPU they run in Triton's interpreter at small shapes."""

from __future__ import annotations

import os

import pytest
import torch
from p6_impls import IMPLS, build_or_skip

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase0_prototype import load_model  # noqa: E402
from phase0_prototype.model import rms_norm as reference_rms_norm  # noqa: E402
from phase0_prototype.model import rope_cache  # noqa: E402
from phase6_tensor_parallel import solution  # noqa: E402
from phase6_tensor_parallel.engine import AttnContext  # noqa: E402
from phase6_tensor_parallel.kernels.rmsnorm import triton_rms_norm  # noqa: E402
from phase6_tensor_parallel.static_decode import graph_generate  # noqa: E402

torch.set_num_threads(1)


def rand(*shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])  # bf16: 1–2 ulp (two roundings)
@pytest.mark.parametrize("width", [96, 128])
def test_rms_norm_kernel_matches_the_reference(dtype, tol, width):
    x, w = rand(5, 3, width, seed=1, dtype=dtype) * 3, rand(width, seed=2, dtype=dtype)
    torch.testing.assert_close(triton_rms_norm(x, w, 1e-5), reference_rms_norm(x, w, 1e-5), rtol=tol, atol=tol)
    half = x.reshape(15, width)[7:]  # a row block of a larger batch (the overlap's half batch): a view
    torch.testing.assert_close(triton_rms_norm(half, w, 1e-5), reference_rms_norm(half, w, 1e-5), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="does not match the last dim"):
        triton_rms_norm(x, w[:-1], 1e-5)


@pytest.mark.parametrize("n_q,n_kv", [(8, 2), (4, 1)])  # random:tiny unsharded, and one rank of TP=2
def test_attention_kernel_matches_the_pytorch_path(n_q, n_kv):
    """decoder_layer's rope then attend, as the context chooses them: the kernel (which rotates q and k
    itself) and the PyTorch static path give the same output and cache."""
    d, b, length = 16, 3, 40
    cfg = load_model("random:tiny", dtype="fp32").config
    cos, sin = rope_cache(cfg, length, DEVICE)
    q, k, v = rand(b, 1, (n_q + 2 * n_kv) * d, seed=3).split([n_q * d, n_kv * d, n_kv * d], dim=-1)

    def run(use):
        ctx = AttnContext([rand(b + 1, n_kv, length, d, seed=4)], [rand(b + 1, n_kv, length, d, seed=5)], 0,
                          cos, sin, rows=slice(1, b + 1), pos=torch.tensor(23, device=DEVICE), kernels=use)
        assert ctx.fused_step(1) == use
        qr, kr = ctx.rope(1)(q.view(b, 1, n_q, d), k.view(b, 1, n_kv, d), cos, sin, ctx.token_positions(b, 1))
        out = ctx.attend(0, qr, kr, v.view(b, 1, n_kv, d))
        return out, ctx.cache_k[0], ctx.cache_v[0]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_static_greedy_with_kernels_equals_eager_generate():
    model = load_model("random:tiny", dtype="fp32", device=DEVICE, seed=3)
    prompt = torch.randint(3, model.config.vocab_size, (2, 4), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        fused = graph_generate(solution.build(model, kernels=True), prompt.to(DEVICE), 5, capture=DEVICE == "cuda")
        eager = solution.build(model, kernels=False).generate(prompt, 5, graph=False)
    assert torch.equal(fused, eager)


@pytest.mark.parametrize("impl", IMPLS)
def test_kernels_in_the_overlapped_half_batches(impl):
    """One rank's shard (world 2, collectives as no-ops) with the half-batch overlap: each half's attention
    kernel gets its rows of the cache and of the positions; same logits as the PyTorch static step."""
    from phase6_tensor_parallel.static_decode import StaticDecoder
    from phase6_tensor_parallel.throughput import NoCommGroup

    model = load_model("random:tiny", dtype="fp32", device=DEVICE, seed=9)
    logits = {}
    for use in (True, False):
        engine = build_or_skip(impl, model, group=NoCommGroup(1, 2), overlap=True, kernels=use)
        with torch.inference_mode():
            decoder = StaticDecoder(engine, 4, max_len=12)
            decoder.fill_cache_randomly(6, seed=2)
            decoder.tokens.copy_(torch.arange(10, 14, device=DEVICE)[:, None])
            logits[use] = engine.forward(decoder.tokens, decoder.ctx)
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-4, atol=1e-4)
