"""``dequantize_rows`` (the large-M path's float matrix) against storage's float64 dequantization."""

import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.kernels.dequant import dequantize_rows
from phase5_quantization.tests.p5_kernel_helpers import weight


@pytest.mark.parametrize("n,k,seed", [(48, 256, 0), (70, 384, 1)])  # 70: a partial block of rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_rows_matches_storage(n, k, seed, dtype):
    _, kw, ref = weight(n, k, seed)
    out = dequantize_rows(kw, dtype)
    assert out.shape == (n, k) and out.dtype == dtype
    tol = 0 if dtype == torch.float32 else 2 ** -7  # one bf16 step (the interpreter truncates, CUDA rounds)
    assert torch.allclose(out.double(), ref, rtol=tol, atol=1e-6)


def test_dequantize_rows_refuses_the_col_layout():
    _, kw, _ = weight(16, 128, 2, layout="col")
    with pytest.raises(ModelError, match="row layout"):
        dequantize_rows(kw, torch.float32)


@pytest.mark.parametrize("fusion", ["none", "norm", "residual", "swiglu"])
def test_large_m_route_dequantizes_then_multiplies(fusion):
    """``KERNEL="dequant"`` (the route from ``DEQUANT_MIN_ROWS`` rows on a GPU) with each fusion, in float64 terms."""
    from phase5_quantization.kernels import w4a16_linear
    from phase5_quantization.tests.p5_kernel_helpers import act, rms

    n, k = 64, 256
    _, kw, deq = weight(n, k, 7)
    x = act(5, k, 8)
    kwargs, h = {}, x.double()
    if fusion == "norm":
        g = act(1, k, 9)[0]
        kwargs.update(norm_weight=g, eps=1e-5)
        h = rms(x, g)
    ref = h @ deq.t()
    if fusion == "swiglu":
        kwargs["swiglu"] = True
        gate, up = ref.chunk(2, dim=-1)
        ref = torch.nn.functional.silu(gate) * up
    if fusion == "residual":
        res = act(5, n, 10)
        kwargs["residual"] = res
        ref = ref + res.double()
    y = w4a16_linear(x, kw, config={"KERNEL": "dequant"}, **kwargs)
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4)
