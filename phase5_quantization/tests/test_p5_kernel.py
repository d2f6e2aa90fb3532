"""The Triton W4A16 kernels over both layouts — ``col`` (``[K/8, N]``: the original GEMV and the GEMM) and
``row`` (the decode GEMV for 1–8 rows, the GEMM beyond) — in the CPU interpreter at small shapes, against
float64 products with the dequantized matrix. Row-layout specifics: ``test_p5_row_gemv``."""

import os

import pytest
import torch
from p5_kernel_helpers import DEVICE, act, rms, weight

from phase0_prototype.errors import ModelError
from phase5_quantization.framework import quantize_weight
from phase5_quantization.kernels.layout import from_kernel_layout, to_kernel_layout
from phase5_quantization.linear import QuantLinear

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase5_quantization.kernels import w4a16_linear  # noqa: E402

LAYOUTS = ["col", "row"]
# where nibble j of the word for (group g, word w) of output n sits in each layout's qweight
WORD = {"col": lambda q, g, w, n: q[16 * g + w, n], "row": lambda q, g, w, n: q[n, 16 * g + w]}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_layout_round_trip_and_code_positions(layout):
    qw, kw, _ = weight(24, 256, 0, layout)
    assert kw.row_major == (layout == "row") and (kw.n, kw.k) == (24, 256)
    g, w, j, n = 1, 5, 6, 17  # nibble j of word 16g + w holds input feature 128g + 16j + w
    word = int(WORD[layout](kw.qweight, g, w, n)) & 0xFFFFFFFF
    assert (word >> (4 * j)) & 0xF == int(qw.codes()[n, 128 * g + 16 * j + w])
    back = from_kernel_layout(kw)
    assert torch.equal(back.qweight.cpu(), qw.qweight) and torch.equal(back.scales.cpu(), qw.scales)
    assert torch.equal(back.zeros.cpu(), qw.zeros)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [1, 5, 17])
@pytest.mark.parametrize("split", [1, 2])
def test_matches_dequantized_matmul_fp32(m, split, layout):
    """fp32 activations: every code, zero-point and scale must land where the float64 reference puts it."""
    qw, kw, deq = weight(40, 384, m + split, layout)  # 40 outputs: the last tile is partly masked; 3 groups
    x = act(m, 384, 7 * m + split)
    config = {"SPLIT_K": split, "BLOCK_KW": 16} if m == 1 else {"SPLIT_K": split}
    y = w4a16_linear(x, kw, config=config)
    ref = x.double() @ deq.t()
    assert y.shape == (m, 40) and y.dtype == torch.float32
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4), float((y.double() - ref).abs().max())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [1, 8, 16])
def test_bf16_activations_within_output_rounding(m, layout):
    qw, kw, deq = weight(32, 256, 11, layout)
    x = act(m, 256, 12, torch.bfloat16)
    y = w4a16_linear(x, kw)
    ref = x.double() @ deq.t()
    assert y.dtype == torch.bfloat16
    # fp32 accumulation of exact products: only the final bf16 rounding remains — half a unit (2^-8 relative)
    # on a GPU, one unit (2^-7) in the CPU interpreter, whose fp32 -> bf16 conversion truncates
    ulps = 0.5 if torch.cuda.is_available() else 1.0
    assert ((y.double() - ref).abs() <= ref.abs() * ulps * 2 ** -7 + 1e-6).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [1, 4])
def test_fused_norm_residual_swiglu_match_unfused(m, layout):
    """RMSNorm prologue, in-place residual epilogue and SwiGLU, vs the same steps in float64."""
    k, inter = 256, 64
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(m, k, generator=gen).to(DEVICE)
    g = (1 + 0.1 * torch.randn(k, generator=gen)).to(DEVICE)
    qw_gu, kw_gu, deq_gu = weight(2 * inter, k, 21, layout)
    gate, up = (rms(x, g) @ deq_gu.t()).chunk(2, -1)
    ref = torch.nn.functional.silu(gate) * up
    a = w4a16_linear(x, kw_gu, norm_weight=g, eps=1e-5, swiglu=True)
    assert a.shape == (m, inter)
    assert torch.allclose(a.double(), ref, atol=1e-4, rtol=1e-3)
    qw_o, kw_o, deq_o = weight(k, k, 23, layout)
    res = torch.randn(m, k, generator=gen).to(DEVICE)
    expect = res.double() + x.double() @ deq_o.t()
    out = w4a16_linear(x, kw_o, residual=res, out=res)  # in place
    assert out.data_ptr() == res.data_ptr()
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_split_k_leaves_workspace_clean_for_the_next_call(layout):
    qw, kw, deq = weight(32, 512, 31, layout)
    for seed in (1, 2, 3):  # a stale partial or ticket would corrupt the next call
        x = act(2 if layout == "row" else 1, 512, seed)
        y = w4a16_linear(x, kw, config={"SPLIT_K": 4, "BLOCK_KW": 16})
        assert torch.allclose(y.double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


def test_quantlinear_kernel_path_equals_fallback():
    qw, _, _ = weight(48, 256, 41, "col")
    x = act(3, 256, 42).view(1, 3, 256)
    fast, slow = QuantLinear(qw, use_kernel=True), QuantLinear(qw, use_kernel=False)
    assert torch.allclose(fast(x.to(DEVICE)).cpu(), slow(x.cpu()), atol=1e-4, rtol=1e-4)


def test_bad_inputs_name_the_problem():
    qw, kw, _ = weight(16, 256, 51, "col")
    with pytest.raises(ModelError, match="input has 128 features, the weight expects 256"):
        w4a16_linear(act(1, 128, 0), kw)
    qw64 = quantize_weight(torch.randn(16, 256), 64)
    with pytest.raises(ModelError,
                       match=r"layers\.2\.o_proj: the W4A16 kernel takes groups of 128.*groups of 64"):
        to_kernel_layout(qw64, name="layers.2.o_proj")
