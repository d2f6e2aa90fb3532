"""The small-batch tensor-core kernel over the row layout (``kernels.w4a16_rows_mma``, 2–64 rows) in the CPU
interpreter at small shapes, against float64 products with the dequantized matrix: every variant (``DEPTH``,
``ONE_DOT``, split-K, ``BLOCK_M``), the fusions the engine's batched decode step calls (RMSNorm → qkv, RMSNorm
+ SwiGLU → gate/up, in-place residual → o/down), bf16 roundings, and the launcher's choice and tables."""

import json
import os

import pytest
import torch
from p5_kernel_helpers import DEVICE, act, rms, weight

from phase0_prototype.errors import ModelError

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on a CPU needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

from phase5_quantization.kernels import configs, launch, w4a16_linear  # noqa: E402

K = 384  # 3 groups: an odd count, so split-K 2 gives unequal halves and split-K 4 an empty split
VARIANTS = [dict(DEPTH=1, ONE_DOT=1), dict(DEPTH=2,
                                           ONE_DOT=1), dict(DEPTH=1, ONE_DOT=0), dict(DEPTH=2, ONE_DOT=0)]


def _mma(**kw):
    return dict(KERNEL="mma", BLOCK_N=16, **kw)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"depth{v['DEPTH']}-onedot{v['ONE_DOT']}")
@pytest.mark.parametrize("split", [1, 2, 4])
def test_variants_match_dequantized_matmul(variant, split):
    """fp32 activations, 40 outputs (the last tile partly masked), 5 of 16 activation rows."""
    _, kw, deq = weight(40, K, 100 + split)
    x = act(5, K, 200 + split)
    y = w4a16_linear(x, kw, config=_mma(SPLIT_K=split, **variant))
    ref = x.double() @ deq.t()
    assert y.shape == (5, 40)
    assert torch.allclose(y.double(), ref, atol=1e-4, rtol=1e-4), float((y.double() - ref).abs().max())


@pytest.mark.parametrize("m", [2, 16, 33])
def test_rows_and_block_m(m):
    """2 rows (BLOCK_M 16), a full 16, and 33 (BLOCK_M 64: the launcher's bucket)."""
    _, kw, deq = weight(32, 256, 300 + m)
    x = act(m, 256, 400 + m)
    assert launch.kernel_for(m, True) == "mma"
    assert configs.mma_block_m(m) == (16 if m <= 16 else 64 if m > 32 else 32)
    y = w4a16_linear(x, kw)  # the launcher's own configuration (the interpreter's rule)
    assert torch.allclose(y.double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("one_dot", [0, 1])
def test_bf16_within_output_rounding(one_dot):
    """Exact ``q − z`` operands and fp32 accumulation: only the final bf16 rounding remains."""
    _, kw, deq = weight(32, K, 500 + one_dot)
    x = act(16, K, 600 + one_dot, torch.bfloat16)
    y = w4a16_linear(x, kw, config=_mma(SPLIT_K=2, DEPTH=1, ONE_DOT=one_dot))
    ref = x.double() @ deq.t()
    ulps = 0.5 if torch.cuda.is_available() else 1.0  # the interpreter's fp32 -> bf16 conversion truncates
    assert y.dtype == torch.bfloat16
    assert ((y.double() - ref).abs() <= ref.abs() * ulps * 2 ** -7 + 1e-6).all()


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS[:3], ids=lambda v: f"depth{v['DEPTH']}-onedot{v['ONE_DOT']}")
def test_decode_step_fusions(split, variant):
    """What the INT4 decode step calls at batch 16: RMSNorm → qkv, RMSNorm + SwiGLU → gate/up (Σx² in the
    loop, or the separate pass with split-K), and the in-place residual of o/down."""
    m, inter = 16, 24
    gen = torch.Generator().manual_seed(7 + split)
    x = torch.randn(m, K, generator=gen).to(DEVICE)
    g = (1 + 0.1 * torch.randn(K, generator=gen)).to(DEVICE)
    cfg = _mma(SPLIT_K=split, **variant)
    _, kw_qkv, deq_qkv = weight(48, K, 700 + split)
    y = w4a16_linear(x, kw_qkv, norm_weight=g, eps=1e-5, config=cfg)
    assert torch.allclose(y.double(), rms(x, g) @ deq_qkv.t(), atol=1e-4, rtol=1e-4)
    _, kw_gu, deq_gu = weight(2 * inter, K, 800 + split)
    gate, up = (rms(x, g) @ deq_gu.t()).chunk(2, -1)
    a = w4a16_linear(x, kw_gu, norm_weight=g, eps=1e-5, swiglu=True, config=cfg)
    assert a.shape == (m, inter)
    assert torch.allclose(a.double(), torch.nn.functional.silu(gate) * up, atol=1e-4, rtol=1e-3)
    _, kw_o, deq_o = weight(K, K, 900 + split)
    res = torch.randn(m, K, generator=gen).to(DEVICE)
    expect = res.double() + x.double() @ deq_o.t()
    out = w4a16_linear(x, kw_o, residual=res, out=res, config=dict(cfg, BLOCK_N=64))
    assert out.data_ptr() == res.data_ptr()
    assert torch.allclose(res.double(), expect, atol=1e-4, rtol=1e-4)


def test_bf16_fusions_match_the_unfused_roundings():
    """bf16 activations: the fused SwiGLU and residual round as the unfused code (projection in bf16
    first)."""
    m, inter = 8, 16
    x = act(m, 256, 11, torch.bfloat16)
    _, kw, deq = weight(2 * inter, 256, 12)
    y = (x.double() @ deq.t()).to(torch.bfloat16).double()
    gate, up = y.chunk(2, -1)
    ref = (torch.nn.functional.silu(gate).to(torch.bfloat16).double() * up)
    a = w4a16_linear(x, kw, swiglu=True, config=_mma(SPLIT_K=2))
    assert torch.allclose(a.double(), ref, atol=1e-2, rtol=2 ** -6)
    res = act(m, 2 * inter, 13, torch.bfloat16)
    r = w4a16_linear(x, kw, residual=res)
    assert torch.allclose(r.double(), res.double() + y, atol=1e-2, rtol=2 ** -6)


def test_split_k_leaves_workspace_clean():
    _, kw, deq = weight(32, 512, 31)
    for seed in (1, 2, 3):  # a stale partial or ticket would corrupt the next call
        x = act(4, 512, seed)
        y = w4a16_linear(x, kw, config=_mma(SPLIT_K=4))
        assert torch.allclose(y.double(), x.double() @ deq.t(), atol=1e-4, rtol=1e-4)


def test_kernel_choice_and_overrides():
    rows = (1, 2, 8, 16, 64, 65, launch.DEQUANT_MIN_ROWS)
    large = "gemm" if launch.interpreting() else "dequant"  # the interpreter runs the Triton GEMM at any M
    assert [launch.kernel_for(m, True) for m in rows] == ["row", "mma", "mma", "mma", "mma", "gemm", large]
    assert launch.kernel_for(4, True, {"BLOCK_KW": 16}) == "row" and launch.kernel_for(1, False) == "gemv"
    _, kw, deq = weight(32, 256, 41)
    x = act(3, 256, 42)
    ref = x.double() @ deq.t()
    for kernel in ("row", "mma", "gemm"):  # every kernel that reads the row layout, forced
        assert torch.allclose(w4a16_linear(x, kw, config={"KERNEL": kernel}).double(), ref, atol=1e-4,
                              rtol=1e-4)
    with pytest.raises(ModelError, match="unknown KERNEL 'fast'"):
        w4a16_linear(x, kw, config={"KERNEL": "fast"})
    with pytest.raises(ModelError, match="KERNEL='gemv' does not read this weight's row layout"):
        w4a16_linear(x, kw, config={"KERNEL": "gemv"})
    with pytest.raises(ModelError, match="BLOCK_M=16 < 17 rows"):
        w4a16_linear(act(17, 256, 0), kw, config=_mma(BLOCK_M=16))


def test_mma_config_rule_and_the_sweeps_table(tmp_path, monkeypatch):
    """The sweep's ``mma_table`` drives ``mma_config`` (per BLOCK_M bucket); a table without it (older sweeps)
    still reads, rows of the row-GEMV table with a register cap too; elsewhere the rule: one resident wave."""
    (tmp_path / "gpu-a.json").write_text(json.dumps({
        "table": [[2560, 2048, False, 8, 128, 2, 4, 96]],
        "mma_table": [[5632, 2048, False, 16, 128, 2, 8, 2, 0, 128]]}))
    (tmp_path / "gpu-old.json").write_text(json.dumps({"table": [[2560, 2048, False, 8, 128, 2, 4]]}))
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    monkeypatch.setattr(configs, "_tuned_tables", {})
    monkeypatch.setattr(configs, "interpreting", lambda: False)
    monkeypatch.setattr(configs, "_device_slug", lambda: "gpu-a")
    assert configs.mma_config(5632, 2048, 16, False) == dict(BLOCK_N=128, SPLIT_K=2, num_warps=8, DEPTH=2,
                                                             ONE_DOT=0,
                                                            maxnreg=128)
    assert configs.row_gemv_config(2560, 2048, 1,
                                   False) == dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4,
                                                                maxnreg=96)
    rule = configs.mma_config(5632, 2048, 32, False)  # another BLOCK_M bucket: the rule
    # 32 rows: 2 programs per SM; 88 tiles, 16 groups: split ≈ 2·132/88 = 3 (16 groups in splits of 6)
    assert rule == dict(BLOCK_N=64, SPLIT_K=3, num_warps=4, DEPTH=1, ONE_DOT=1)
    monkeypatch.setattr(configs, "_device_slug", lambda: "gpu-old")
    assert configs.row_gemv_config(2560, 2048, 1,
                                   False) == dict(BLOCK_N=8, BLOCK_KW=128, SPLIT_K=2, num_warps=4)
    c = configs.mma_config(2048, 5632, 16, False)
    # 32 tiles × 11 splits of 4 groups
    assert c == dict(BLOCK_N=64, SPLIT_K=11, num_warps=4, DEPTH=1, ONE_DOT=1)
    c = configs.mma_config(5632, 2048, 16, False)
    assert c["BLOCK_N"] == 64 and c["SPLIT_K"] == 4  # 88 tiles × 4 splits of 4 groups: 352 ≤ 3 × 132 programs
