"""The Triton W4A16 kernels over the original ``[K/8, N]`` layout (CPU interpreter, small shapes) against float64
products with the dequantized matrix (the row layout's GEMV: ``test_p5_row_gemv``)."""

import os

import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.framework import quantize_weight
from phase5_quantization.kernels.layout import from_kernel_layout, to_kernel_layout
from phase5_quantization.linear import QuantLinear

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase5_quantization.kernels import w4a16_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _weight(n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 5] *= 8  # an outlier column: its groups get wide ranges and small codes elsewhere
    qw = quantize_weight(w, 128)
    return qw, to_kernel_layout(qw, DEVICE, layout="col"), qw.dequantize(torch.float64).to(DEVICE)


def _x(m, k, seed, dtype=torch.float32):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def test_kernel_layout_round_trip_and_code_positions():
    qw, kw, _ = _weight(24, 256, 0)
    codes = qw.codes()
    g, w, j, n = 1, 5, 6, 17  # word (16g + w, n), nibble j holds input feature 128g + 16j + w
    word = int(kw.qweight[16 * g + w, n]) & 0xFFFFFFFF
    assert (word >> (4 * j)) & 0xF == int(codes[n, 128 * g + 16 * j + w])
    back = from_kernel_layout(kw)
    assert torch.equal(back.qweight.cpu(), qw.qweight) and torch.equal(back.scales.cpu(), qw.scales)
    assert torch.equal(back.zeros.cpu(), qw.zeros)


@pytest.mark.parametrize("m", [1, 5, 17])
@pytest.mark.parametrize("split", [1, 2])
def test_matches_dequantized_matmul_fp32(m, split):
    """fp32 activations: every code, zero-point and scale must land where the float64 reference puts it."""
    qw, kw, deq = _weight(40, 384, m + split)  # 40 outputs: the last tile is partly masked; 3 groups
    x = _x(m, 384, 7 * m + split)
    config = {"SPLIT_K": split, "BLOCK_KW": 16} if m == 1 else {"SPLIT_K": split}
    y = w4a16_linear(x, kw, config=config)
    ref = x.double() @ deq.t()
    assert y.shape == (m, 40) and y.dtype == torch.float32
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4), float((y.double() - ref).abs().max())


@pytest.mark.parametrize("m", [1, 16])
def test_bf16_activations_within_output_rounding(m):
    qw, kw, deq = _weight(32, 256, 11)
    x = _x(m, 256, 12, torch.bfloat16)
    y = w4a16_linear(x, kw)
    ref = x.double() @ deq.t()
    assert y.dtype == torch.bfloat16
    # fp32 accumulation of exact products: only the final bf16 rounding remains — half a unit (2^-8 relative)
    # on a GPU, one unit (2^-7) in the CPU interpreter, whose fp32 -> bf16 conversion truncates
    ulps = 0.5 if torch.cuda.is_available() else 1.0
    assert ((y.double() - ref).abs() <= ref.abs() * ulps * 2 ** -7 + 1e-6).all()


@pytest.mark.parametrize("m", [1, 4])
def test_fused_norm_residual_swiglu_match_unfused(m):
    """RMSNorm prologue, in-place residual epilogue and SwiGLU, vs the same steps in float64."""
    k, inter = 256, 64
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    g = (1 + 0.1 * torch.randn(k, generator=gen)).to(DEVICE)
    qw_gu, kw_gu, deq_gu = _weight(2 * inter, k, 21)
    h = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * g.double()
    gate, up = (h @ deq_gu.t()).chunk(2, -1)
    ref = torch.nn.functional.silu(gate) * up
    act = w4a16_linear(x, kw_gu, norm_weight=g, eps=1e-5, swiglu=True)
    assert act.shape == (m, inter)
    assert torch.allclose(act.double(), ref, atol=1e-4, rtol=1e-3)
    qw_o, kw_o, deq_o = _weight(k, k, 23)
    res = torch.randn(m, k, generator=gen).to(DEVICE)
    expect = res.double() + x.double() @ deq_o.t()
    out = w4a16_linear(x, kw_o, residual=res, out=res)  # in place
    assert out.data_ptr() == res.data_ptr()
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)


def test_split_k_leaves_workspace_clean_for_the_next_call():
    qw, kw, deq = _weight(32, 512, 31)
    for seed in (1, 2, 3):  # a stale partial or ticket would corrupt the next call
        x = _x(1, 512, seed)
        y = w4a16_linear(x, kw, config={"SPLIT_K": 4, "BLOCK_KW": 16})
        assert torch.allclose(y.double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


def test_quantlinear_kernel_path_equals_fallback():
    qw, _, _ = _weight(48, 256, 41)
    x = _x(3, 256, 42).view(1, 3, 256)
    fast, slow = QuantLinear(qw, use_kernel=True), QuantLinear(qw, use_kernel=False)
    assert torch.allclose(fast(x.to(DEVICE)).cpu(), slow(x.cpu()), atol=1e-4, rtol=1e-4)


def test_bad_inputs_name_the_problem():
    qw, kw, _ = _weight(16, 256, 51)
    with pytest.raises(ModelError, match="input has 128 features, the weight expects 256"):
        w4a16_linear(_x(1, 128, 0), kw)
    qw64 = quantize_weight(torch.randn(16, 256), 64)
    with pytest.raises(ModelError, match=r"layers\.2\.o_proj: the W4A16 kernel takes groups of 128.*groups of 64"):
        to_kernel_layout(qw64, name="layers.2.o_proj")
