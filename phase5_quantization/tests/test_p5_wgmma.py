"""CPU: the Gluon W4A16 kernel (``kernels.w4a16_wgmma``) has no interpreter, so here: its operand column order
against the packing's own definition (NumPy), its sm_90 compilation (Gluon checks that the dequantized codes
already sit in ``wgmma``'s register layout: ``assert_trivial``), and the launcher's routing and errors. Its
results are the GPU tests' (``test_p5_gpu.py``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from phase0_prototype.errors import ModelError
from phase5_quantization.kernels import w4a16_wgmma
from phase5_quantization.packing import pack_int4


def test_feature_of_column_is_a_permutation():
    feats = [w4a16_wgmma.feature_of_column(c) for c in range(128)]
    assert sorted(feats) == list(range(128))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operand_columns_hold_the_documented_features(seed):
    """``column_order_model`` (the kernel's pairs, joins and permutation) against the row layout's definition:
    nibble ``j`` of word ``w`` of a group is feature ``16j + w``, written with the packing's own code."""
    rng = np.random.default_rng(seed)
    # [rows, features] of one group
    codes = torch.from_numpy(rng.integers(0, 16, size=(5, 128))).to(torch.uint8)
    # row layout inside a group: word w holds features w, 16 + w, ..., 112 + w (nibbles 0..7)
    words = pack_int4(codes.reshape(5, 8, 16).transpose(1, 2).reshape(5, 128)).numpy().view(np.uint32)
    model = w4a16_wgmma.column_order_model(words.astype(np.int64))
    expect = codes.numpy()[:, [w4a16_wgmma.feature_of_column(c) for c in range(128)]]
    np.testing.assert_array_equal(model, expect)


CONFIGS = {"m16-split": dict(dtype="bf16", BLOCK_M=16, BLOCK_N=128, SPLIT_K=8, GPP=2, EPILOGUE=0),
           "m8-residual": dict(dtype="bf16", BLOCK_M=8, BLOCK_N=128, SPLIT_K=22, GPP=2, EPILOGUE=1),
           "m64-fp16-nosplit": dict(dtype="fp16", BLOCK_M=64, BLOCK_N=64, SPLIT_K=1, GPP=3, EPILOGUE=1)}

# Runs in a fresh interpreter: Triton's CPU interpreter patches ``triton.language`` process-wide while a
# kernel runs, and a device-function call (``tl.sum``, ``tl.max``) patches ``triton.language.core`` without
# restoring it, so after the other tests' interpreted kernels a compile in this process would build with the
# interpreter's semantics ("'value' object has no attribute 'dtype'").
COMPILE_PTX = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from phase5_quantization.kernels import w4a16_wgmma

ptx = {}
for name, consts in json.loads(sys.argv[1]).items():
    dt = consts.pop("dtype")
    sig = dict(x_ptr=f"*{dt}", qw_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", out_ptr=f"*{dt}", res_ptr=f"*{dt}",
               ws_ptr="*fp32", lock_ptr="*i32", M="i32", N="i32", KW="i32", stride_xm="i32", stride_om="i32",
               stride_rm="i32")
    consts = dict(USE_PDL=True, EARLY=True, num_warps=4, **consts)
    sig.update({k: "constexpr" for k in consts})
    fn = w4a16_wgmma._wgmma_kernel
    # as a launch specializes them: pointers 16-byte aligned, N, K/8 and the strides multiples of 16
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
             for a, t in sig.items() if t != "constexpr" and a != "M"}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=consts["num_warps"]))
    ptx[name] = kernel.asm["ptx"]
print(json.dumps(ptx))
"""


@pytest.fixture(scope="module")
def sm90_ptx() -> dict[str, str]:
    """The PTX of each configuration in ``CONFIGS``, compiled for sm_90 in a child process."""
    if w4a16_wgmma.GLUON_ERROR:
        pytest.skip(f"this Triton has no Gluon: {w4a16_wgmma.GLUON_ERROR}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_PTX, json.dumps(CONFIGS)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiles_for_sm90_with_codes_in_the_mma_operand(sm90_ptx, name):
    """Compiles (the operand conversion is checked trivial at compile time), the multiply is one k = 128
    ``wgmma`` per group (8 k16 instructions), and split-K reductions are 16-byte vectors."""
    consts, ptx = CONFIGS[name], sm90_ptx[name]
    assert ptx.count("wgmma.mma_async") == 8 * (consts["BLOCK_N"] // 64)
    assert "sub.rn.bf16x2" in ptx or "sub.rn.f16x2" in ptx
    if consts["SPLIT_K"] > 1:
        assert ".v4.f32" in ptx  # red/atom .global.add.v4.f32


def test_routing_and_errors_on_cpu(monkeypatch):
    from phase5_quantization.framework import quantize_weight
    from phase5_quantization.kernels import configs, launch, to_kernel_layout, w4a16_linear

    kw = to_kernel_layout(quantize_weight(torch.randn(64, 256) * 0.02, 128), "cpu")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    assert launch.wgmma_reason(x, kw, False, False) is not None  # no GPU here
    assert configs.wgmma_config(5632, 2048, 16) == dict(BLOCK_M=16, BLOCK_N=128, GPP=2, SPLIT_K=8,
                                                        num_warps=4)
    assert configs.wgmma_config(2048, 5632, 1)["BLOCK_M"] == 8
    assert configs.wgmma_config(2048, 5632, 40)["BLOCK_N"] == 64
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors reach the routing on a GPU host too
    with pytest.raises(ModelError, match="KERNEL='wgmma' cannot run here"):
        w4a16_linear(x, kw, config=dict(KERNEL="wgmma"))
