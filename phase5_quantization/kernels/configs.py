"""The W4A16 kernels' launch configurations: fixed ones for the decode kernels, autotuned spaces for the rest.

Fixed, not tuned inside the engine (tuning there is slow and noisy, and a CUDA graph must not capture it):

- ``row_gemv_config`` (row GEMV) and ``mma_config`` (Triton small-batch kernel): the GPU sweep's table for
  this device (``kernels/tuned/<device>.json``, written by ``scripts/gpu_gemv_sweep.py --write-table``), the
  pins in ``ROW_GEMV_TABLE`` on top, else a rule derived from the hardware (docstrings below);
- ``wgmma_config`` (the Gluon kernel): a rule.

Autotuned on a GPU (``autotuned``): the ``col`` layout's ``[K/8, N]`` GEMV and the tensor-core GEMM, over
small spaces chosen for TinyLlama's projections, once per (N, K, M bucket, fusion, layout): warm up before
capturing.
Under ``TRITON_INTERPRET=1`` (the CPU tests) every rule returns few, large programs: the interpreter pays per
program and per step. Measured winners and their runs: ``phase5_quantization/NOTES.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton

from phase5_quantization.kernels import w4a16_wgmma
from phase5_quantization.kernels.w4a16 import NONE, SWIGLU, _gemm_kernel, _gemv_kernel

WS_FLOATS = 1 << 21  # split-K workspace (fp32, 8 MB per device): rows × 2N must fit
LOCKS = 1 << 16


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fits_split(split: int, m: int, n: int, k: int, group: int, tiles: int) -> bool:
    return split == 1 or (m * 2 * n <= WS_FLOATS and tiles <= LOCKS and k // group >= split)


def _prune_gemv(configs, named_args, **kwargs):
    n, k, group = named_args["N"], named_args["K"], kwargs.get("GROUP", 128)
    words_cap = 16 if kwargs.get("EPILOGUE", NONE) == SWIGLU else 32  # two tiles live with SwiGLU
    kept = []
    for c in configs:
        bn, bkw, split = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_KW"], c.kwargs["SPLIT_K"]
        words_per_thread = bn * bkw // (32 * c.num_warps)  # more than the cap spills registers
        if (words_per_thread <= words_cap and bkw * 8 * split <= k
                and _fits_split(split, 1, n, k, group, triton.cdiv(n, bn))):
            kept.append(c)
    return kept or configs[:1]


def _prune_gemm(configs, named_args, **kwargs):
    m, n, k, group = named_args["M"], named_args["N"], named_args["K"], kwargs.get("GROUP", 128)
    kept = []
    for c in configs:
        bm, bn, split = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["SPLIT_K"]
        if bm != mma_block_m(m) or (split > 1 and m > 64):  # a prefill's row tiles fill the GPU unsplit
            continue
        if _fits_split(split, m, n, k, group, triton.cdiv(n, bn) * triton.cdiv(m, bm)):
            kept.append(c)
    return kept or [c for c in configs if c.kwargs["BLOCK_M"] == mma_block_m(m)][:1]


def _c(num_warps=4, num_stages=3, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


# (BLOCK_N, BLOCK_KW, SPLIT_K, warps). BLOCK_N = 16: a thread then owns whole 64-byte word-rows, so the tile's
# row layout is the plain 1-D layout of the activation loads (wider rows make Triton reshuffle every
# activation through shared memory). The loop is not software-pipelined, so each step's loads are all a
# program has in flight: large tiles, 8–32 KB of codes per step.
GEMV_CONFIGS = [_c(BLOCK_N=16, BLOCK_KW=bkw, SPLIT_K=sk, num_warps=w)
                for bkw, sk, w in [(128, 1, 4), (256, 1, 4), (256, 1, 8), (512, 1, 8), (128, 2, 4),
                                   (256, 2, 8), (128, 4, 4)]]
# (BLOCK_N, SPLIT_K, warps, stages) for each BLOCK_M (taken from M, not tuned). M > 64 (prefill) is not tuned
# when compiled: PREFILL_CONFIG (prefill speed is not this phase's target; every shape costs compilations).
GEMM_CONFIGS = [_c(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, num_warps=w, num_stages=st)
                for bm in (16, 32, 64)
                for bn, sk, w, st in [(64, 1, 4, 3), (128, 1, 4, 3), (64, 2, 4, 3), (64, 4, 4, 3),
                                      (128, 2, 8, 3), (32, 4, 4, 3)]]
PREFILL_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, SPLIT_K=1, num_warps=4, num_stages=3)
INTERPRETER_GEMV = dict(BLOCK_N=16, BLOCK_KW=32, SPLIT_K=1)
INTERPRETER_GEMM = dict(BLOCK_M=16, BLOCK_N=16, SPLIT_K=1)
KEY = ["N", "K", "M_KEY", "NORM", "EPILOGUE"]  # (USE_PDL is fixed per device)
_tuned: dict[str, object] = {}


def autotuned(which: str):
    """The autotuned ``gemv`` or ``gemm`` kernel on a GPU (built once), the bare one under the interpreter."""
    if interpreting():
        return _gemv_kernel if which == "gemv" else _gemm_kernel
    if which not in _tuned:
        configs, prune, fn = ((GEMV_CONFIGS, _prune_gemv, _gemv_kernel) if which == "gemv"
                              else (GEMM_CONFIGS, _prune_gemm, _gemm_kernel))
        key = KEY if which == "gemv" else KEY + ["stride_wk"]  # the GEMM reads either layout: tune each apart
        _tuned[which] = triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune},
                                        restore_value=["out_ptr"], warmup=5, rep=25)(fn)
    return _tuned[which]


# (n, k, swiglu) -> (BLOCK_N, BLOCK_KW, SPLIT_K, num_warps, maxnreg) pinned over the device's table. down
# (K = 5632): the sweep times it alone and prefers 4 rows × 256 words × 2 warps, but in the whole decode step
# (its neighbours' tails overlapping its ramp-up) 8 rows × 512 words over 4 warps was faster (NOTES.md).
ROW_GEMV_TABLE: dict[tuple[int, int, bool], tuple[int, ...]] = {
    (2048, 5632, False): (8, 512, 1, 4, 0),
}
TUNED_DIR = Path(__file__).with_name("tuned")  # <device slug>.json: the sweep's table for that GPU
_tuned_tables: dict[str, dict] = {}


def _device_slug() -> str:
    from module0_profiling.hardware import detect_device

    return detect_device().slug


def tuned_table(slug: str | None = None) -> dict[tuple[int, int, bool], tuple[int, ...]]:
    """The measured row-GEMV table for this GPU (``TUNED_DIR/<slug>.json``), ``ROW_GEMV_TABLE`` on top; empty
    for a GPU nobody has swept. Values ``(BLOCK_N, BLOCK_KW, SPLIT_K, num_warps[, maxnreg])`` (0 = no cap;
    older tables have no cap and still read)."""
    slug = slug or _device_slug()
    if slug not in _tuned_tables:
        path = TUNED_DIR / f"{slug}.json"
        rows = json.loads(path.read_text())["table"] if path.is_file() else []
        _tuned_tables[slug] = {(int(n), int(k), bool(sw)): tuple(int(v) for v in cfg)
                               for n, k, sw, *cfg in rows}
    return {**_tuned_tables[slug], **ROW_GEMV_TABLE}


def row_gemv_config(n: int, k: int, batch: int, swiglu: bool, norm: bool = False) -> dict:
    """``BLOCK_N`` / ``BLOCK_KW`` / ``SPLIT_K`` / ``num_warps`` (/ ``maxnreg``) of the row GEMV for an
    ``[n, k]`` product of ``batch`` rows (``n``: output features, the gate half with ``swiglu``):
    ``tuned_table`` at one row, else the rule.

    The rule, in the spirit of phase 0's ``default_config``: many programs (hundreds to thousands) of a few
    rows each, whole 2048-feature slabs (256 words = 1 KB per row) over 2 warps, so a thread loads 16 bytes
    per row and ``BLOCK_KW = 4 · 32 · num_warps`` (the activation slab then shares the word tile's layout, see
    ``w4a16_rows``). Four rows per program (two gate + two up with SwiGLU) amortise the activation work
    (loads, RMSNorm's multiply, ``Σ x`` per group), which INT4 weights, at a quarter of bf16's bytes, cannot
    hide behind bandwidth as phase 0's 1–2 rows do.
    """
    table = tuned_table() if batch == 1 and not interpreting() else {}
    if (n, k, swiglu) in table:
        block_n, block_kw, split, warps, *maxnreg = table[(n, k, swiglu)]
        c = dict(BLOCK_N=block_n, BLOCK_KW=block_kw, SPLIT_K=split, num_warps=warps)
        if maxnreg and maxnreg[0]:
            c["maxnreg"] = maxnreg[0]
        return c
    if batch == 1:
        block_n, block_kw, warps = (2, 256, 2) if swiglu else (4, 256, 2)
    else:  # the [B, BLOCK_N, BLOCK_KW] partials live in registers: smaller slabs
        block_n, block_kw, warps = (2, 128, 4) if swiglu else (4, 128, 4)
    block_kw = max(16, min(block_kw, triton.next_power_of_2(k // 8)))
    if interpreting():
        block_n, block_kw = max(block_n, 8) * 4, max(block_kw, 64)
    return dict(BLOCK_N=block_n, BLOCK_KW=block_kw, SPLIT_K=1, num_warps=warps)


MMA_KEYS = ("BLOCK_N", "SPLIT_K", "num_warps", "DEPTH", "ONE_DOT", "maxnreg")


def _sm_count(device) -> int:
    if interpreting() or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def mma_block_m(m: int) -> int:
    """Activation rows per program of the small-batch kernel (the MMA's N side) and of the GEMM below 64 rows:
    16, 32 or 64."""
    return 16 if m <= 16 else 32 if m <= 32 else 64


def mma_table(slug: str | None = None) -> dict[tuple[int, int, bool, int], dict]:
    """The sweep's small-batch configurations for this GPU (``mma_table`` of ``TUNED_DIR/<slug>.json``):
    ``(n, k, swiglu, BLOCK_M) -> config``; empty for a GPU nobody has swept."""
    slug = slug or _device_slug()
    key = "mma:" + slug
    if key not in _tuned_tables:
        path = TUNED_DIR / f"{slug}.json"
        rows = json.loads(path.read_text()).get("mma_table", []) if path.is_file() else []
        _tuned_tables[key] = {(int(n), int(k), bool(sw), int(bm)): dict(zip(MMA_KEYS, (int(v) for v in cfg),
                                                                            strict=False))
                              for n, k, sw, bm, *cfg in rows}
    return _tuned_tables[key]


def mma_config(n: int, k: int, m: int, swiglu: bool, norm: bool = False, device=None) -> dict:
    """``BLOCK_N`` / ``SPLIT_K`` / ``num_warps`` / ``DEPTH`` / ``ONE_DOT`` (/ ``maxnreg``) of the small-batch
    kernel for an ``[n, k]`` product of ``m`` rows (``n``: the gate half with ``swiglu``): ``mma_table``, else
    the rule.

    The rule: 64 weight rows per program on one warpgroup (Hopper's ``wgmma`` takes 64 rows), 8 warps with
    SwiGLU (two tiles and two accumulators spill on 4), the joined k = 128 MMA per group, and split-K so that
    the grid is about the programs resident in one wave (from sm_90's register counts: 3 per SM at 16 rows,
    2 at 32–64, 1 with SwiGLU) with at least 2 groups per program: every program starts at once.
    """
    block_m = mma_block_m(m)
    table = mma_table() if not interpreting() else {}
    if (n, k, swiglu, block_m) in table:
        return dict(table[(n, k, swiglu, block_m)])
    if interpreting():
        return dict(BLOCK_N=16, SPLIT_K=1, num_warps=4, DEPTH=1, ONE_DOT=1)
    block_n, warps = 64, 8 if swiglu else 4
    per_sm = 1 if swiglu else 3 if block_m == 16 else 2
    groups = max(1, k // 128)
    tiles = triton.cdiv(n, block_n)
    split = max(1, min(groups // 2, round(per_sm * _sm_count(device) / tiles)))
    split = triton.cdiv(groups, triton.cdiv(groups, split))  # no empty splits
    return dict(BLOCK_N=block_n, SPLIT_K=split, num_warps=warps, DEPTH=1, ONE_DOT=1)


def wgmma_config(n: int, k: int, m: int) -> dict:
    """``BLOCK_M`` / ``BLOCK_N`` / ``GPP`` / ``SPLIT_K`` / ``num_warps`` of the Gluon kernel for an ``[n, k]``
    product of ``m`` rows: 8/16/32/64 activation rows (the MMA's N side); 128 weight rows per program up to 16
    activation rows (one warpgroup, two ``m64`` tiles, 3 programs per SM), 64 above (the accumulators grow);
    2 groups per program (``GPP``), K split over ``cdiv(K/128, 2)`` programs (measured winners: NOTES.md)."""
    block_m = 8 if m <= 8 else mma_block_m(m)
    gpp = 2
    return dict(BLOCK_M=block_m, BLOCK_N=128 if block_m <= 16 else 64, GPP=gpp,
                SPLIT_K=triton.cdiv(max(1, k // w4a16_wgmma.GROUP), gpp), num_warps=4)
