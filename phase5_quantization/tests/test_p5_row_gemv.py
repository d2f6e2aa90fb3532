"""The row-layout W4A16 GEMV (1–8 rows) and the GEMM over the row layout, in the CPU interpreter at small shapes,
against float64 products with the dequantized matrix."""

import os

import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.framework import quantize_weight
from phase5_quantization.kernels.layout import from_kernel_layout, to_kernel_layout
from phase5_quantization.linear import QuantLinear

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase5_quantization.kernels import row_gemv_config, w4a16_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K = 384  # 3 groups, 48 words: not a multiple of a 32- or 64-word slab


def _weight(n, k, seed, layout="row"):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, 7] *= 8  # an outlier column: its groups get wide ranges
    qw = quantize_weight(w, 128)
    return qw, to_kernel_layout(qw, DEVICE, layout=layout), qw.dequantize(torch.float64).to(DEVICE)


def _x(m, k, seed, dtype=torch.float32):
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def _rms(x, g, eps=1e-5):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g.double()


def test_row_layout_positions_and_round_trip():
    qw, kw, _ = _weight(24, 256, 0)
    assert kw.row_major and kw.qweight.shape == (24, 32) and (kw.n, kw.k) == (24, 256)
    g, w, j, n = 1, 5, 6, 17  # word (n, 16g + w), nibble j holds input feature 128g + 16j + w
    word = int(kw.qweight[n, 16 * g + w]) & 0xFFFFFFFF
    assert (word >> (4 * j)) & 0xF == int(qw.codes()[n, 128 * g + 16 * j + w])
    back = from_kernel_layout(kw)
    assert torch.equal(back.qweight.cpu(), qw.qweight) and torch.equal(back.scales.cpu(), qw.scales)
    assert torch.equal(back.zeros.cpu(), qw.zeros)
    assert kw.scales.data_ptr() == qw.scales.data_ptr() or DEVICE != "cpu"  # shared, not copied


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("config", [None, {"BLOCK_N": 8, "BLOCK_KW": 32}])
def test_row_gemv_matches_dequantized_matmul_fp32(m, config):
    """fp32 activations: every code, zero-point and scale must land where the float64 reference puts it."""
    qw, kw, deq = _weight(40, K, m)  # 40 rows: the last program is partly masked
    x = _x(m, K, 7 * m)
    y = w4a16_linear(x, kw, config=config)
    ref = x.double() @ deq.t()
    assert y.shape == (m, 40) and y.dtype == torch.float32
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4), float((y.double() - ref).abs().max())


@pytest.mark.parametrize("m", [1, 8])
def test_row_gemv_bf16_within_output_rounding(m):
    qw, kw, deq = _weight(32, 256, 11)
    x = _x(m, 256, 12, torch.bfloat16)
    y = w4a16_linear(x, kw)
    ref = x.double() @ deq.t()
    assert y.dtype == torch.bfloat16
    ulps = 0.5 if torch.cuda.is_available() else 1.0  # the interpreter's fp32 -> bf16 conversion truncates
    assert ((y.double() - ref).abs() <= ref.abs() * ulps * 2 ** -7 + 1e-6).all()


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("split", [1, 2])
def test_row_gemv_norm_swiglu(m, split):
    """RMSNorm prologue (in-loop Σx², or the separate pass under split-K) and SwiGLU on [gate; up] rows."""
    inter = 48
    gen = torch.Generator().manual_seed(3 + m)
    x = torch.randn(m, K, generator=gen).to(DEVICE)
    g = (1 + 0.1 * torch.randn(K, generator=gen)).to(DEVICE)
    qw, kw, deq = _weight(2 * inter, K, 21 + m)
    gate, up = (_rms(x, g) @ deq.t()).chunk(2, -1)
    act = w4a16_linear(x, kw, norm_weight=g, eps=1e-5, swiglu=True, config={"SPLIT_K": split, "BLOCK_KW": 16})
    assert act.shape == (m, inter)
    assert torch.allclose(act.double(), torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-3)
    y = w4a16_linear(x, kw, norm_weight=g, eps=1e-5, config={"SPLIT_K": split, "BLOCK_KW": 16})  # qkv's fusion
    assert torch.allclose(y.double(), _rms(x, g) @ deq.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", [1, 5])
def test_row_gemv_residual_in_place(m):
    qw, kw, deq = _weight(64, K, 23)
    x = _x(m, K, 24)
    res = _x(m, 64, 25)
    expect = res.double() + x.double() @ deq.t()
    out = w4a16_linear(x, kw, residual=res, out=res)
    assert out.data_ptr() == res.data_ptr()
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)


def test_row_gemv_split_k_leaves_workspace_clean():
    qw, kw, deq = _weight(32, 512, 31)
    for seed in (1, 2, 3):  # a stale partial or ticket would corrupt the next call
        x = _x(2, 512, seed)
        y = w4a16_linear(x, kw, config={"SPLIT_K": 4, "BLOCK_KW": 16})
        assert torch.allclose(y.double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("swiglu", [False, True])
def test_gemm_reads_the_row_layout(swiglu):
    """More rows than the GEMV takes: the tensor-core kernel over the same (row) layout, as over ``col``."""
    m, n = 12, 64
    qw, kw, deq = _weight(n, 256, 41)
    _, kw_col, _ = _weight(n, 256, 41, layout="col")
    x = _x(m, 256, 42)
    y = w4a16_linear(x, kw, swiglu=swiglu)
    ref = x.double() @ deq.t()
    if swiglu:
        ref = torch.nn.functional.silu(ref[:, : n // 2]) * ref[:, n // 2:]
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-3)
    assert torch.allclose(y, w4a16_linear(x, kw_col, swiglu=swiglu), atol=1e-5, rtol=1e-5)


def test_layout_switch_and_quantlinear(monkeypatch):
    qw, _, deq = _weight(48, 256, 51)
    x = _x(1, 256, 52)
    row = QuantLinear(qw, use_kernel=True)
    assert row.kernel_weight(DEVICE).row_major
    monkeypatch.setenv("TITANINFER_W4A16_LAYOUT", "col")
    col = QuantLinear(qw, use_kernel=True)
    assert not col.kernel_weight(DEVICE).row_major
    ref = x.double() @ deq.t()
    for lin in (row, col):
        assert torch.allclose(lin(x).double(), ref, atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("TITANINFER_W4A16_LAYOUT", "diagonal")
    with pytest.raises(ModelError, match="TITANINFER_W4A16_LAYOUT='diagonal': choose row"):
        to_kernel_layout(qw, DEVICE)


def test_default_config_and_bad_config():
    c = row_gemv_config(2048, 5632, 1, swiglu=False)
    assert set(c) == {"BLOCK_N", "BLOCK_KW", "SPLIT_K", "num_warps"}
    qw, kw, _ = _weight(16, 256, 61)
    with pytest.raises(ModelError, match="BLOCK_KW must be a power of two ≥ 16"):
        w4a16_linear(_x(1, 256, 0), kw, config={"BLOCK_KW": 24})


def test_release_storage_keeps_one_copy_and_the_same_numbers():
    """What ``Int4Engine`` does: after the repack only the kernel layout is held; ``qw`` is rebuilt on demand."""
    qw, _, deq = _weight(32, 256, 71)
    lin = QuantLinear(qw, use_kernel=True)
    with pytest.raises(ValueError, match="before kernel_weight"):
        lin.release_storage()
    kw = lin.kernel_weight(DEVICE)
    lin.release_storage()
    assert lin._qw is None and lin.nbytes() == qw.nbytes() == kw.nbytes()
    back = lin.qw
    assert torch.equal(back.qweight.cpu(), qw.qweight) and torch.equal(back.zeros.cpu(), qw.zeros)
    moved = lin.to(DEVICE)
    assert moved._qw is None and moved.kernel_weight(DEVICE) is kw
    x = _x(2, 256, 72)
    assert torch.allclose(moved(x).double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


def test_row_gemv_config_reads_the_sweeps_table_for_this_device(tmp_path, monkeypatch):
    """The sweep's ``--write-table`` file for a device drives ``row_gemv_config`` there, pins on top; other
    devices, other shapes and several rows keep the rule."""
    import json

    from phase5_quantization.kernels import launch

    (tmp_path / "gpu-a.json").write_text(json.dumps({"table": [[2560, 2048, False, 8, 128, 2, 4],
                                                               [5632, 2048, True, 1, 256, 1, 8]]}))
    monkeypatch.setattr(launch, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(launch, "_tuned_tables", {})
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(launch, "_device_slug", lambda: "gpu-b")  # nobody swept this one: the rule
    rule = {args: launch.row_gemv_config(*args) for args in
            [(2560, 2048, 1, False, True), (2048, 5632, 1, False, False), (2560, 2048, 4, False, True)]}
    monkeypatch.setattr(launch, "_device_slug", lambda: "gpu-a")
    assert launch.row_gemv_config(2560, 2048, 1, False, True) == dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4)
    assert launch.row_gemv_config(5632, 2048, 1, True, True) == dict(BLOCK_N=1, BLOCK_KW=256, SPLIT_K=1, num_warps=8)
    assert launch.row_gemv_config(2048, 5632, 1, False, False) == rule[(2048, 5632, 1, False, False)]  # not swept
    assert launch.row_gemv_config(2560, 2048, 4, False, True) == rule[(2560, 2048, 4, False, True)]  # 4 rows
    monkeypatch.setattr(launch, "ROW_GEMV_TABLE", {(2560, 2048, False): (2, 256, 1, 2)})
    assert launch.row_gemv_config(2560, 2048, 1, False, True) == dict(BLOCK_N=2, BLOCK_KW=256, SPLIT_K=1, num_warps=2)
    assert rule[(2560, 2048, 1, False, True)] != dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4)
