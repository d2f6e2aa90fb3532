"""Phase 7 on a GPU: the compiled solution (SDPA, inductor, CUDA graphs) against float64 math on the same
weights, across a shape change (a fresh graph) and repeated calls (replays must not overwrite an earlier
output); the CUDA kernels that return a log-sum-exp (the ring's per-block attention) against float64."""

from __future__ import annotations

import pytest
import torch

from phase7_dit_parallel import PRESETS, load_impl, model
from phase7_dit_parallel.sequence_parallel import attention_with_lse
from phase7_dit_parallel.testing import random_inputs, relative_error
from phase7_dit_parallel.weights import random_weights

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", autouse=True)
def _stop_compile_workers():
    """torch.compile starts inductor's compile-worker pool and its timer thread: end them with the module."""
    yield
    from torch._inductor.async_compile import shutdown_compile_workers

    shutdown_compile_workers()


def test_compiled_solution_matches_float64_and_keeps_its_outputs():
    config = PRESETS["s2"]
    weights = random_weights(config, seed=21, dtype=torch.bfloat16, device="cuda")
    reference_weights = random_weights(config, seed=21, dtype=torch.float64, device="cuda")
    compiled = load_impl("solution").build(weights)  # compile on by default on CUDA
    outputs, expected = [], []
    for latent in (16, 32, 16):
        inputs = random_inputs(config, 2, latent, seed=latent, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            outputs.append(compiled(*inputs))
            expected.append(model.forward(reference_weights, inputs[0].double(), inputs[1], inputs[2],
                                          model.explicit_attention))
    for got, want in zip(outputs, expected, strict=True):
        assert relative_error(got, want) < 3e-2  # bf16 through 12 blocks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_with_lse_on_cuda_matches_float64(dtype):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 6, 40, 72, generator=g) for _ in range(3))
    out, lse = attention_with_lse(*(x.to("cuda", dtype) for x in (q, k, v)))
    scores = q.double() @ k.double().transpose(-2, -1) / 72 ** 0.5
    torch.testing.assert_close(lse.double().cpu(), torch.logsumexp(scores, dim=-1), rtol=1e-2, atol=1e-2)
    assert relative_error(out, torch.softmax(scores, dim=-1) @ v.double()) < 2e-2
