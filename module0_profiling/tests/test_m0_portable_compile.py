"""Every Triton kernel of the product builds for an A100 (sm_80) and an RTX 4090 (sm_89), with no GPU here,
and the launchers keep the Hopper-only paths (Gluon ``wgmma``, programmatic dependent launch) off there.

Each case is one kernel at the constexprs its launcher passes at TinyLlama's shapes (hidden 2048, 32 q / 4 kv
heads of 64, intermediate 5632, vocabulary 32000, bf16) on a non-Hopper GPU (``USE_PDL`` off), compiled down
to a cubin by ``module0_profiling.portable`` (Triton's bundled ``ptxas``), and its shared memory checked
against the arch's per-block limit. The compiles run in one child process per arch (Triton's compiled path
must not share a process with the interpreter), both at once. The Gluon kernel (``w4a16_wgmma``) is
sm_90-only by design: it is not compiled here, its routing is tested instead. Its sm_90 build:
``phase5_quantization/tests/test_p5_wgmma.py``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from module0_profiling.portable import compile_in_child

ARCHS = (80, 89)
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB, MAX_SEQ, PAGE = 2048, 32, 4, 64, 5632, 32000, 2048, 16
BF16 = "*bf16"
W4 = dict(x_ptr=BF16, qw_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", out_ptr=BF16, res_ptr=BF16, nw_ptr=BF16,
          ws_ptr="*fp32", lock_ptr="*i32", eps="fp32")  # the W4A16 kernels' shared parameters


def _p2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# Each case: () -> (kernel, constexprs, runtime parameter types (unnamed: i32), launch options). The imports
# are inside so that they run in the child process, with the compiled path on.
def _p0_attend_split():
    from phase0_prototype.kernels import decode_attention as m

    chunk = m.split_len(MAX_SEQ)
    consts = dict(ROPE=True, G=HEADS // KV_HEADS, BLOCK_G=max(16, _p2(HEADS // KV_HEADS)), D=HEAD_DIM,
                  SPLIT_LEN=chunk, BLOCK_S=m.BLOCK_S, USE_PDL=False, IS_FP32=False, DOT_IN_FP32=False)
    types = dict(qkv_ptr=BF16, k_ptr=BF16, v_ptr=BF16, cos_ptr="*fp32", sin_ptr="*fp32", pos_ptr="*i64",
                 part_o_ptr="*fp32", part_ml_ptr="*fp32", scale="fp32")
    return m._attend_split_kernel, consts, types, dict(num_warps=4)


def _p0_combine():
    from phase0_prototype.kernels import decode_attention as m

    chunk = m.split_len(MAX_SEQ)
    consts = dict(D=HEAD_DIM, BLOCK_SPLITS=_p2(-(-MAX_SEQ // chunk)), SPLIT_LEN=chunk, USE_PDL=False)
    types = dict(part_o_ptr="*fp32", part_ml_ptr="*fp32", out_ptr=BF16, pos_ptr="*i64")
    return m._combine_kernel, consts, types, dict(num_warps=1)


def _p0_greedy():
    from phase0_prototype.kernels import greedy as m

    block = min(m.BLOCK, _p2(VOCAB))
    consts = dict(BLOCK=block, ROUNDS=-(-VOCAB // block), EOS_BLOCK=1, USE_PDL=False)
    types = dict(Logits=BF16, Tokens="*i64", Positions="*i64", Finished="*u8", Eos="*i64", Pad="*i64",
                 History="*i64")
    return m._greedy_tail_kernel, consts, types, dict(num_warps=max(1, min(16, block // 512)))


def _p0_gemv(n: int, k: int, norm: bool, epilogue: int, pdl: bool = False):
    def case():
        from phase0_prototype.kernels import gemv as m

        block_n, block_k, warps = m.default_config(n, k, 1, epilogue == m.SWIGLU, norm)
        consts = dict(NORM=norm, EPILOGUE=epilogue, EVEN_K=k % block_k == 0, ONE_SLAB=k <= block_k,
                      USE_PDL=pdl, EARLY=m.EARLY_LAUNCH, BLOCK_B=1, BLOCK_N=block_n, BLOCK_K=block_k)
        types = dict(x_ptr=BF16, w_ptr=BF16, out_ptr=BF16, res_ptr=BF16, nw_ptr=BF16, eps="fp32")
        return m._gemv_kernel, consts, types, dict(num_warps=warps)
    return case


def _p3_naive_decode():
    from phase3_paged_attention.kernels import decode_naive as m

    consts = dict(GROUP=HEADS // KV_HEADS, HEAD_DIM=HEAD_DIM, BLOCK_D=HEAD_DIM, PAGE_SIZE=PAGE, BLOCK_P=PAGE)
    types = dict(Q=BF16, K_cache=BF16, V_cache=BF16, Block_tables="*i32", Context_lens="*i32",
                 Scores="*fp32", Out=BF16, scale="fp32")
    return m._naive_decode_kernel, consts, types, dict(num_warps=4)


def _p3_flash_decode():
    from phase3_paged_attention.kernels import decode_flash as m

    block_n, warps, stages, heads_first = m.DEFAULT_CONFIG
    consts = dict(GROUP=HEADS // KV_HEADS, GROUP_PAD=max(16, _p2(HEADS // KV_HEADS)), NUM_KV_HEADS=KV_HEADS, HEAD_DIM=HEAD_DIM,
                  BLOCK_D=HEAD_DIM, PAGE_SIZE=PAGE, SPLIT=True, BLOCK_N=block_n, UPCAST_DOT=False,
                  HEADS_FIRST=heads_first)
    types = dict(Q=BF16, K_cache=BF16, V_cache=BF16, Block_tables="*i32", Context_lens="*i32", Out=BF16,
                 Part_out="*fp32", Part_lse="*fp32", scale_log2e="fp32")
    return m._flash_decode_kernel, consts, types, dict(num_warps=warps, num_stages=stages)


def _p3_combine_splits():
    from phase3_paged_attention.kernels import decode_flash as m

    splits = m.choose_num_splits(1, KV_HEADS, MAX_SEQ, 108)  # one sequence on an A100's 108 SMs
    consts = dict(SPLITS_PAD=_p2(splits), HEAD_DIM=HEAD_DIM, BLOCK_D=HEAD_DIM)
    types = dict(Part_out="*fp32", Part_lse="*fp32", Out=BF16)
    return m._combine_splits_kernel, consts, types, dict(num_warps=1)


def _p3_flash_prefill():
    from phase3_paged_attention.kernels import prefill_flash as m

    # the autotuner's largest tile (most shared memory) of its list
    c = max(m._configs(), key=lambda c: (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.num_stages)
    consts = dict(GROUP=HEADS // KV_HEADS, HEAD_DIM=HEAD_DIM, IS_CAUSAL=True, WRITE_CACHE=True, UPCAST_DOT=False,
                  **c.kwargs)
    types = dict(Q=BF16, K=BF16, V=BF16, Out=BF16, Cu_seqlens="*i32", K_cache=BF16, V_cache=BF16,
                 Slot_mapping="*i64", scale_log2e="fp32")
    return m._flash_prefill_kernel, consts, types, dict(num_warps=c.num_warps, num_stages=c.num_stages)


def _p3_kv_write():
    from phase3_paged_attention.kernels import kv_cache_write as m

    consts = dict(NUM_KV_HEADS=KV_HEADS, HEAD_DIM=HEAD_DIM, BLOCK_H=KV_HEADS, BLOCK_D=HEAD_DIM)
    types = dict(K=BF16, V=BF16, K_cache=BF16, V_cache=BF16, Slot_mapping="*i64")
    return m._write_kv_cache_kernel, consts, types, dict(num_warps=1 if KV_HEADS * HEAD_DIM <= 256 else 4)


def _p4_add_rms_norm():
    from phase4_scheduler.kernels import fused as m

    types = dict(X=BF16, Delta=BF16, W=BF16, Out=BF16, eps="fp32")
    return m._add_rms_norm_kernel, dict(HAS_DELTA=True, BLOCK=HIDDEN), types, dict(num_warps=8)


def _p4_rope_qkv_cache():
    from phase4_scheduler.kernels import fused as m

    consts = dict(HQ=HEADS, HKV=KV_HEADS, D=HEAD_DIM, HQ_PAD=HEADS, HKV_PAD=KV_HEADS, WRITE_CACHE=True)
    types = dict(QKV=BF16, Pos="*i64", Cos="*fp32", Sin="*fp32", Slots="*i64", Q=BF16, K=BF16, V=BF16,
                 K_cache=BF16, V_cache=BF16)
    return m._rope_qkv_cache_kernel, consts, types, dict(num_warps=4)


def _p4_silu_mul():
    from phase4_scheduler.kernels import fused as m

    return m._silu_mul_kernel, dict(BLOCK=1024), dict(GU=BF16, Out=BF16), dict(num_warps=4)


def _p4_copy_blocks():
    from phase4_scheduler.disagg import copy_kernel as m

    types = dict(Ref=BF16, SrcPtrs="*i64", DstPtrs="*i64", SrcBlocks="*i64", DstBlocks="*i64")
    return m._copy_blocks_kernel, dict(BLOCK=min(_p2(PAGE * KV_HEADS * HEAD_DIM), 4096)), types, {}


def _p5_dequant():
    from phase5_quantization.kernels import dequant as m

    types = dict(q_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", out_ptr=BF16)
    return m._dequant_rows_kernel, dict(BLOCK_N=32), types, dict(num_warps=4)


def _p5_col_gemv():
    from phase5_quantization.kernels import configs, w4a16

    c = next(c for c in configs.GEMV_CONFIGS if c.kwargs["SPLIT_K"] > 1)  # split-K: the atomics too
    consts = dict(GROUP=128, NORM=False, EPILOGUE=w4a16.NONE, USE_PDL=False, **c.kwargs)
    return w4a16._gemv_kernel, consts, W4, dict(num_warps=c.num_warps, num_stages=c.num_stages)


def _p5_gemm():
    from phase5_quantization.kernels import configs, w4a16

    c = dict(configs.PREFILL_CONFIG)
    options = dict(num_warps=c.pop("num_warps"), num_stages=c.pop("num_stages"))
    consts = dict(GROUP=128, NORM=True, EPILOGUE=w4a16.SWIGLU, DOT_F32=False, **c)
    return w4a16._gemm_kernel, consts, W4, options


def _p5_row_gemv(n: int, k: int, norm: bool, epilogue: int):
    def case():
        from phase5_quantization.kernels import configs, w4a16_rows

        c = configs.row_gemv_config(n, k, 1, epilogue == 2, norm)
        bkw = c["BLOCK_KW"]
        tail = _p2((k // 8) % bkw) if (k // 8) % bkw and c["SPLIT_K"] == 1 else 0
        consts = dict(GROUP=128, NORM=norm, EPILOGUE=epilogue, USE_PDL=False, EARLY=False, BLOCK_B=1,
                      BLOCK_N=c["BLOCK_N"], BLOCK_KW=bkw, SPLIT_K=c["SPLIT_K"], PREFETCH=True,
                      TAIL_KW=tail if tail < bkw else 0)
        return w4a16_rows._row_gemv_kernel, consts, W4, dict(num_warps=c["num_warps"], maxnreg=c.get("maxnreg"))
    return case


def _p5_row_mma(n: int, k: int, m_rows: int, norm: bool, epilogue: int):
    def case():
        from phase5_quantization.kernels import configs, w4a16_rows_mma

        c = configs.mma_config(n, k, m_rows, epilogue == 2, norm)
        consts = dict(GROUP=128, NORM=norm, EPILOGUE=epilogue, USE_PDL=False, EARLY=True, DOT_F32=False,
                      BLOCK_M=configs.mma_block_m(m_rows), BLOCK_N=c["BLOCK_N"], SPLIT_K=c["SPLIT_K"],
                      DEPTH=c["DEPTH"], ONE_DOT=bool(c["ONE_DOT"]))
        return w4a16_rows_mma._row_mma_kernel, consts, W4, dict(num_warps=c["num_warps"], maxnreg=c.get("maxnreg"))
    return case


def _p6_rms_norm():
    from phase6_tensor_parallel.kernels import rmsnorm as m

    types = dict(x_ptr=BF16, w_ptr=BF16, out_ptr=BF16, eps="fp32")
    return m._rms_norm_kernel, dict(BLOCK=HIDDEN), types, dict(num_warps=max(1, min(8, HIDDEN // 256)))


CASES = {
    "p0.attend_split": _p0_attend_split,
    "p0.combine": _p0_combine,
    "p0.greedy_tail": _p0_greedy,
    "p0.gemv-qkv-norm": _p0_gemv(HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN, True, 0),
    "p0.gemv-down-residual": _p0_gemv(HIDDEN, INTER, False, 1),
    "p0.gemv-gate_up-swiglu": _p0_gemv(INTER, HIDDEN, True, 2),
    "p3.naive_decode": _p3_naive_decode,
    "p3.flash_decode": _p3_flash_decode,
    "p3.combine_splits": _p3_combine_splits,
    "p3.flash_prefill": _p3_flash_prefill,
    "p3.kv_cache_write": _p3_kv_write,
    "p4.add_rms_norm": _p4_add_rms_norm,
    "p4.rope_qkv_cache": _p4_rope_qkv_cache,
    "p4.silu_mul": _p4_silu_mul,
    "p4.copy_blocks": _p4_copy_blocks,
    "p5.dequant_rows": _p5_dequant,
    "p5.col_gemv-splitk": _p5_col_gemv,
    "p5.gemm-norm-swiglu": _p5_gemm,
    "p5.row_gemv-down-residual": _p5_row_gemv(HIDDEN, INTER, False, 1),
    "p5.row_gemv-gate_up-norm-swiglu": _p5_row_gemv(INTER, HIDDEN, True, 2),
    "p5.row_mma-o-m16": _p5_row_mma(HIDDEN, HIDDEN, 16, False, 1),
    "p5.row_mma-gate_up-m64": _p5_row_mma(INTER, HIDDEN, 64, True, 2),
    "p6.rms_norm": _p6_rms_norm,
}
# The control: with USE_PDL on (what a launch on Hopper passes) ptxas refuses sm_8x, so the compiles above do
# reach the arch's checks, and pdl_enabled's arch gate is what keeps sm_8x launches valid.
PDL_CONTROL = "p0.gemv-qkv-norm-pdl"
CONTROLS = {PDL_CONTROL: _p0_gemv(HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN, True, 0, pdl=True)}


def compile_all(arch: int) -> dict[str, dict]:
    """In the child process: every case compiled for ``sm_<arch>``; per case its PTX target, cubin size,
    shared memory, whether it can launch there (``fits``) and whether it uses PDL, or the error's last line."""
    import triton  # noqa: F401  (first: phase 3's kernels package must see Triton already imported)

    from module0_profiling.portable import compile_for, fits

    results = {}
    for name, case in {**CASES, **CONTROLS}.items():
        try:
            kernel, consts, types, options = case()
            compiled = compile_for(kernel, arch, consts, types, **options)
        except Exception as e:  # reported per case: ptxas's first error line, else the message's last line
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            errors = [line for line in lines if "; error" in line] or lines[-1:]
            results[name] = dict(error=f"{type(e).__name__}: {errors[0] if errors else ''}")
            continue
        ptx = compiled.asm["ptx"]
        target = next(line.split()[1] for line in ptx.splitlines() if line.startswith(".target"))
        results[name] = dict(error=None, target=target, cubin=len(compiled.asm["cubin"]),
                             shared=compiled.metadata.shared, fits=fits(compiled, arch),
                             pdl="griddepcontrol" in ptx)
    return results


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[int, dict[str, dict]]:
    """``{arch: compile_all(arch)}``, the archs in two child processes at once (a fresh Triton cache each)."""
    def run(arch):
        return compile_in_child(__file__, "compile_all", arch,
                                env=dict(TRITON_CACHE_DIR=str(tmp_path_factory.mktemp(f"triton_sm{arch}"))))
    with ThreadPoolExecutor(len(ARCHS)) as pool:
        return dict(zip(ARCHS, pool.map(run, ARCHS), strict=True))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_compiles_for_arch(compiled, name, arch):
    r = compiled[arch][name]
    assert r["error"] is None, f"{name} does not compile for sm_{arch}: {r['error']}"
    assert r["target"] == f"sm_{arch}" and r["cubin"] > 0
    assert r["fits"] is None, f"{name} on sm_{arch}: {r['fits']}"
    assert not r["pdl"], f"{name} emits griddepcontrol (PDL, sm_90+) with USE_PDL off"


@pytest.mark.parametrize("arch", ARCHS)
def test_pdl_kernel_does_not_build_below_sm90(compiled, arch):
    error = compiled[arch][PDL_CONTROL]["error"]
    assert error is not None and "requires .target sm_90" in error, error


def _cuda_like(dtype=torch.bfloat16) -> SimpleNamespace:
    """What ``wgmma_reason`` reads of the activations, as a tensor on GPU 0 would show it (none here)."""
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=dtype)


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0)])
def test_wgmma_only_on_hopper(monkeypatch, capability):
    from phase5_quantization.framework import quantize_weight
    from phase5_quantization.kernels import launch, to_kernel_layout, w4a16_wgmma

    if w4a16_wgmma.GLUON_ERROR:
        pytest.skip(f"this Triton has no Gluon: {w4a16_wgmma.GLUON_ERROR}")
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    kw = to_kernel_layout(quantize_weight(torch.randn(64, 256) * 0.02, 128), "cpu")
    reason = launch.wgmma_reason(_cuda_like(), kw, False, False)
    if capability[0] == 9:
        assert reason is None  # the control: the same product takes wgmma on Hopper
    else:
        assert reason == "wgmma needs a Hopper GPU (sm_90)"


@pytest.mark.parametrize("rows, expect", [(1, "gemv"), (16, "mma"), (64, "mma")])
def test_launcher_routes_to_triton_when_wgmma_cannot_run(monkeypatch, rows, expect):
    """``w4a16_linear`` takes the Gluon kernel only when ``wgmma_reason`` is ``None``: with a reason (sm_8x),
    the Triton kernels; without one (the control), the Gluon kernel. No kernel runs: the launches are
    recorded."""
    from phase5_quantization.framework import quantize_weight
    from phase5_quantization.kernels import launch, to_kernel_layout

    taken = []
    for kernel in ("gemv", "mma", "wgmma"):
        monkeypatch.setattr(launch, f"_row_{kernel}", lambda *a, kernel=kernel, **k: taken.append(kernel))
    monkeypatch.setattr(launch, "interpreting", lambda: True)  # CPU tensors reach the routing
    n, k = 2048, 5632  # the one-row product of WGMMA_ONE_ROW
    assert (n, k, launch.NONE) in launch.WGMMA_ONE_ROW
    kw = to_kernel_layout(quantize_weight(torch.randn(n, k) * 0.02, 128), "cpu")
    x = torch.randn(rows, k, dtype=torch.bfloat16)
    monkeypatch.setattr(launch, "wgmma_reason", lambda *a: "wgmma needs a Hopper GPU (sm_90)")
    launch.w4a16_linear(x, kw)
    monkeypatch.setattr(launch, "wgmma_reason", lambda *a: None)
    launch.w4a16_linear(x, kw)
    assert taken == [expect, "wgmma"]


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0)])
def test_pdl_only_on_hopper(monkeypatch, capability):
    from phase0_prototype.kernels import gemv

    monkeypatch.setattr(gemv, "INTERPRETED", False)
    monkeypatch.setattr(gemv, "_PDL", {})  # the per-device cache: decided afresh
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    on = gemv.pdl_enabled(torch.device("cuda", 0))
    assert on == (capability[0] >= 9)
    assert gemv.launch_options(on) == ({"launch_pdl": True} if on else {})
