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
