"""What only the row layout has, in the CPU interpreter at small shapes against float64: several rows with the
RMSNorm pass split-K needs, the row GEMV's launch variants (``dev.row_gemv_variants``), the GEMM over the row
layout agreeing with ``col``'s, the layout argument, one copy of the weight after ``release_storage``, and the
sweep's per-GPU configuration table. Products of every kernel vs the dequantized matrix, for both layouts:
``test_p5_kernel``."""

import os

import pytest
import torch
from p5_kernel_helpers import DEVICE, act, rms, weight

from phase0_prototype.errors import ModelError
from phase5_quantization.kernels.layout import to_kernel_layout
from phase5_quantization.linear import QuantLinear

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase5_quantization.kernels import row_gemv_config, w4a16_linear  # noqa: E402

K = 384  # 3 groups, 48 words: not a multiple of a 32- or 64-word slab


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("split", [1, 2])
# 32: a 16-word tail slab; 64: the whole (split of the) row is one slab
@pytest.mark.parametrize("bkw", [16, 32, 64])
def test_row_gemv_norm_swiglu(m, split, bkw):
    """RMSNorm prologue (in-loop Σx², or the separate pass under split-K) and SwiGLU on [gate; up] rows."""
    inter = 48
    gen = torch.Generator().manual_seed(3 + m)
    x = torch.randn(m, K, generator=gen).to(DEVICE)
    g = (1 + 0.1 * torch.randn(K, generator=gen)).to(DEVICE)
    qw, kw, deq = weight(2 * inter, K, 21 + m)
    gate, up = (rms(x, g) @ deq.t()).chunk(2, -1)
    act = w4a16_linear(x, kw, norm_weight=g, eps=1e-5, swiglu=True,
                       config={"SPLIT_K": split, "BLOCK_KW": bkw})
    assert act.shape == (m, inter)
    assert torch.allclose(act.double(), torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-3)
    # qkv's fusion
    y = w4a16_linear(x, kw, norm_weight=g, eps=1e-5, config={"SPLIT_K": split, "BLOCK_KW": bkw})
    assert torch.allclose(y.double(), rms(x, g) @ deq.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("split", [1, 2])
def test_row_gemv_residual_in_place(split):
    """The product's launch: scales and zero-points a slab ahead, the residual read right after the wait, the
    row's last words as a tail slab (48 words in 32-word slabs): the same sums, in place."""
    n = 40
    qw, kw, deq = weight(n, K, 31 + split)
    x = act(1, K, 32)
    res = act(1, n, 33)
    expect = res.double() + x.double() @ deq.t()
    out = w4a16_linear(x, kw, residual=res, out=res, config={"SPLIT_K": split, "BLOCK_KW": 32, "BLOCK_N": 8})
    assert out is res
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", [dict(prefetch=False), dict(tail=False), dict(early=True)])
@pytest.mark.parametrize("split", [1, 2])
def test_row_gemv_variants(variant, split):
    """The launch variants ``scripts/gpu_int4_step.py`` times change scheduling only: the same sums, over
    several slabs, with the residual in place and with RMSNorm + SwiGLU."""
    from phase5_quantization.dev.row_gemv_variants import RowVariant, row_gemv

    v = RowVariant(**variant)
    n = 40
    qw, kw, deq = weight(n, K, 31 + split)
    x = act(1, K, 32)
    res = act(1, n, 33)
    expect = res.double() + x.double() @ deq.t()
    out = row_gemv(x, kw, v, residual=res, out=res, config={"SPLIT_K": split, "BLOCK_KW": 32, "BLOCK_N": 8})
    assert out is res
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)
    g = (1 + 0.1 * torch.randn(K, generator=torch.Generator().manual_seed(34))).to(DEVICE)
    gate, up = (rms(x, g) @ deq.t()).chunk(2, -1)
    y = row_gemv(x, kw, v, norm_weight=g, eps=1e-5, swiglu=True, config={"SPLIT_K": split, "BLOCK_KW": 32})
    assert torch.allclose(y.double(), torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("swiglu", [False, True])
def test_gemm_reads_the_row_layout(swiglu):
    """More rows than the GEMV takes: the tensor-core kernels over the row layout (the small-batch kernel
    here), as the GEMM over ``col``."""
    m, n = 12, 64
    qw, kw, deq = weight(n, 256, 41)
    _, kw_col, _ = weight(n, 256, 41, layout="col")
    x = act(m, 256, 42)
    y = w4a16_linear(x, kw, swiglu=swiglu)
    ref = x.double() @ deq.t()
    if swiglu:
        ref = torch.nn.functional.silu(ref[:, : n // 2]) * ref[:, n // 2:]
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-3)
    assert torch.allclose(y, w4a16_linear(x, kw_col, swiglu=swiglu), atol=1e-5, rtol=1e-5)


def test_layout_argument_and_quantlinear():
    qw, _, deq = weight(48, 256, 51)
    x = act(1, 256, 52)
    row = QuantLinear(qw, use_kernel=True)
    assert row.kernel_weight(DEVICE).row_major
    col = to_kernel_layout(qw, DEVICE, layout="col")
    assert not col.row_major
    ref = x.double() @ deq.t()
    assert torch.allclose(row(x).double(), ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(w4a16_linear(x, col).double(), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ModelError, match="unknown W4A16 layout 'diagonal': choose row or col"):
        to_kernel_layout(qw, DEVICE, layout="diagonal")


def test_default_config_and_bad_config():
    c = row_gemv_config(2048, 5632, 1, swiglu=False)
    assert set(c) == {"BLOCK_N", "BLOCK_KW", "SPLIT_K", "num_warps"}
    qw, kw, _ = weight(16, 256, 61)
    with pytest.raises(ModelError, match="BLOCK_KW must be a power of two ≥ 16"):
        w4a16_linear(act(1, 256, 0), kw, config={"BLOCK_KW": 24})


def test_release_storage_keeps_one_copy_and_the_same_numbers():
    """What ``Int4Engine`` does: after the repack only the kernel layout is held; ``qw`` is rebuilt on
    demand."""
    qw, _, deq = weight(32, 256, 71)
    lin = QuantLinear(qw, use_kernel=True)
    with pytest.raises(ValueError, match="before kernel_weight"):
        lin.release_storage()
    kw = lin.kernel_weight(DEVICE)
    if DEVICE == "cpu":  # the row layout rewrites the codes only: scales and zero-points are storage's own
        assert kw.scales.data_ptr() == qw.scales.data_ptr() and kw.zeros.data_ptr() == qw.zeros.data_ptr()
    lin.release_storage()
    assert lin._qw is None and lin.nbytes() == qw.nbytes() == kw.nbytes()
    back = lin.qw
    assert torch.equal(back.qweight.cpu(), qw.qweight) and torch.equal(back.zeros.cpu(), qw.zeros)
    moved = lin.to(DEVICE)
    assert moved._qw is None and moved.kernel_weight(DEVICE) is kw
    x = act(2, 256, 72)
    assert torch.allclose(moved(x).double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


def test_row_gemv_config_reads_the_sweeps_table_for_this_device(tmp_path, monkeypatch):
    """The sweep's ``--write-table`` file for a device drives ``row_gemv_config`` there, pins on top; other
    devices, other shapes and several rows keep the rule."""
    import json

    from phase5_quantization.kernels import configs

    (tmp_path / "gpu-a.json").write_text(json.dumps({"table": [[2560, 2048, False, 8, 128, 2, 4],
                                                               [5632, 2048, True, 1, 256, 1, 8]]}))
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(configs, "_tuned_tables", {})
    monkeypatch.setattr(configs, "interpreting", lambda: False)
    monkeypatch.setattr(configs, "_device_slug", lambda: "gpu-b")  # nobody swept this one: the rule
    rule = {args: configs.row_gemv_config(*args) for args in
            [(2560, 2048, 1, False, True), (2048, 5632, 1, False, False), (2560, 2048, 4, False, True)]}
    monkeypatch.setattr(configs, "_device_slug", lambda: "gpu-a")
    assert configs.row_gemv_config(2560, 2048, 1, False,
                                   True) == dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4)
    assert configs.row_gemv_config(5632, 2048, 1, True,
                                   True) == dict(BLOCK_N=1, BLOCK_KW=256, SPLIT_K=1, num_warps=8)
    assert configs.row_gemv_config(2048, 5632, 1, False,
                                   False) == rule[(2048, 5632, 1, False, False)]  # not swept
    assert configs.row_gemv_config(2560, 2048, 4, False, True) == rule[(2560, 2048, 4, False, True)]  # 4 rows
    monkeypatch.setattr(configs, "ROW_GEMV_TABLE", {(2560, 2048, False): (2, 256, 1, 2)})
    assert configs.row_gemv_config(2560, 2048, 1, False,
                                   True) == dict(BLOCK_N=2, BLOCK_KW=256, SPLIT_K=1, num_warps=2)
    assert rule[(2560, 2048, 1, False, True)] != dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4)
