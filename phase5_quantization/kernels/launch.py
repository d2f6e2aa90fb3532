"""``w4a16_linear``: choose the kernel and its configuration, own the split-K workspace, check the inputs.

Which kernel: the weight's layout decides (``layout.KernelWeight.row_major``; ``TITANINFER_W4A16_LAYOUT``
picks the layout ``QuantLinear`` builds). Row layout (default): one row runs the row GEMV (``w4a16_rows``) with a
**fixed** configuration from ``row_gemv_config`` (the GPU sweep's table for this device in ``kernels/tuned/``,
``ROW_GEMV_TABLE`` pins, or a rule; no tuning inside the engine); 2–64 rows (``MMA_MIN_ROWS`` ..
``MMA_MAX_ROWS``) the small-batch tensor-core kernel — on Hopper with bf16/fp16 activations and no RMSNorm or SwiGLU
fused, the Gluon one (``w4a16_wgmma``, ``wgmma_config``; ``wgmma_reason`` says when it cannot run), else the Triton
one (``w4a16_rows_mma``: the row GEMV's streaming with the multiply on the tensor cores; ``mma_config``: the sweep's
``mma_table``, or a rule); the products in ``WGMMA_ONE_ROW`` run the Gluon kernel at one row too; more rows the
tensor-core GEMM reading the same layout (prefill). A ``config`` with ``BLOCK_KW`` still
sends 2–8 rows to the row GEMV (its batched form, kept for A/B and the tests). ``col`` layout: one row runs the
original ``[K/8, N]`` GEMV, more rows the GEMM, both autotuned.

Configurations of the autotuned kernels: on a GPU, ``triton.autotune`` picks among a few per (N, K, M bucket,
fusion, layout) the first time a shape is seen (tens of milliseconds per configuration; warm up before capturing a CUDA graph). The space
is small on purpose and was chosen for TinyLlama's projections on an H100:

- one row (``_gemv_kernel``): 16 output features per program, ``BLOCK_KW`` 128–512 packed words (1024–4096
  input features) per step, 4 or 8 warps, split-K 1–4. Each step's loads are all a program has in flight
  (the loop is not software-pipelined), so the tiles are large: 8–32 KB of codes; configurations holding
  more than 32 words per thread (16 with SwiGLU's two tiles) are dropped (spills);
- ``M ≥ 2`` (``_gemm_kernel``): ``BLOCK_M`` from M (16, 32 or 64), ``BLOCK_N`` 32–128, split-K 1–8 for
  ``M ≤ 64`` (a prefill's many row tiles fill the GPU without it).

Under ``TRITON_INTERPRET=1`` (CPU tests) there is no tuning: one small fixed configuration, overridable
with ``config=`` so the tests reach every path (split-K included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import triton

from phase0_prototype.errors import ModelError
from phase0_prototype.kernels import gemv as phase0_gemv
from phase0_prototype.kernels.gemv import launch_options, pdl_enabled
from phase5_quantization.kernels import w4a16_wgmma
from phase5_quantization.kernels.layout import KernelWeight
from phase5_quantization.kernels.w4a16 import NIBBLE_MASKS, NONE, RESIDUAL, SWIGLU, _gemm_kernel, _gemv_kernel
from phase5_quantization.kernels.w4a16_rows import _row_gemv_kernel
from phase5_quantization.kernels.w4a16_rows_mma import _row_mma_kernel

WS_FLOATS = 1 << 21  # split-K workspace (fp32, 8 MB per device): rows × 2N must fit
LOCKS = 1 << 16


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's zeroed fp32 workspace and ticket counters (every split-K call leaves them zeroed)."""
    if device not in _workspaces:
        _workspaces[device] = (torch.zeros(WS_FLOATS, dtype=torch.float32, device=device),
                               torch.zeros(LOCKS, dtype=torch.int32, device=device))
    return _workspaces[device]


def _fits_split(split: int, m: int, n: int, k: int, group: int, tiles: int) -> bool:
    return split == 1 or (m * 2 * n <= WS_FLOATS and tiles <= LOCKS and k // group >= split)


def _prune_gemv(configs, named_args, **kwargs):
    n, k, group = named_args["N"], named_args["K"], kwargs.get("GROUP", 128)
    words_cap = 16 if kwargs.get("EPILOGUE", NONE) == SWIGLU else 32  # two tiles live with SwiGLU
    kept = []
    for c in configs:
        bn, bkw, split = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_KW"], c.kwargs["SPLIT_K"]
        words_per_thread = bn * bkw // (32 * c.num_warps)
        if (words_per_thread <= words_cap and bkw * 8 * split <= k
                and _fits_split(split, 1, n, k, group, triton.cdiv(n, bn))):
            kept.append(c)
    return kept or configs[:1]


def _prune_gemm(configs, named_args, **kwargs):
    m, n, k, group = named_args["M"], named_args["N"], named_args["K"], kwargs.get("GROUP", 128)
    kept = []
    for c in configs:
        bm, bn, split = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["SPLIT_K"]
        if bm != _block_m(m) or (split > 1 and m > 64):
            continue
        if _fits_split(split, m, n, k, group, triton.cdiv(n, bn) * triton.cdiv(m, bm)):
            kept.append(c)
    return kept or [c for c in configs if c.kwargs["BLOCK_M"] == _block_m(m)][:1]


def _block_m(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def _c(num_warps=4, num_stages=3, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


# (BLOCK_N, BLOCK_KW, SPLIT_K, warps). BLOCK_N = 16: a thread then owns whole 64-byte word-rows, so the tile's
# row layout is the plain 1-D layout of the activation loads (wider rows make Triton reshuffle every
# activation through shared memory); 1–2 rows per thread, 8–32 KB of codes per step.
GEMV_CONFIGS = [_c(BLOCK_N=16, BLOCK_KW=bkw, SPLIT_K=sk, num_warps=w)
                for bkw, sk, w in [(128, 1, 4), (256, 1, 4), (256, 1, 8), (512, 1, 8), (128, 2, 4), (256, 2, 8),
                                   (128, 4, 4)]]
# (BLOCK_N, SPLIT_K, warps, stages) for each BLOCK_M (taken from M, not tuned); M > 64 (prefill) is not tuned:
# PREFILL_CONFIG (prefill speed is not a target here, and every tuned shape costs compilations)
GEMM_CONFIGS = [_c(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, num_warps=w, num_stages=st)
                for bm in (16, 32, 64)
                for bn, sk, w, st in [(64, 1, 4, 3), (128, 1, 4, 3), (64, 2, 4, 3), (64, 4, 4, 3), (128, 2, 8, 3),
                                      (32, 4, 4, 3)]]
PREFILL_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, SPLIT_K=1, num_warps=4, num_stages=3)
KEY = ["N", "K", "M_KEY", "NORM", "EPILOGUE"]  # (USE_PDL is fixed per device)
_tuned: dict[str, object] = {}


def _kernel(which: str):
    """The autotuned kernel on a GPU (built once), the bare one under the interpreter."""
    if interpreting():
        return _gemv_kernel if which == "gemv" else _gemm_kernel
    if which not in _tuned:
        configs, prune, fn = ((GEMV_CONFIGS, _prune_gemv, _gemv_kernel) if which == "gemv"
                              else (GEMM_CONFIGS, _prune_gemm, _gemm_kernel))
        key = KEY if which == "gemv" else KEY + ["stride_wk"]  # the GEMM reads either layout: tune each apart
        _tuned[which] = triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune},
                                        restore_value=["out_ptr"], warmup=5, rep=25)(fn)
    return _tuned[which]


ROW_GEMV_MAX_ROWS = 8
# Whether the row GEMV lets the next kernel launch before waiting on its own inputs (phase 0's GEMV does:
# ``gemv.EARLY_LAUNCH``). Not here: on an H100 the INT4 decode step replayed in 699 µs with the row GEMVs waiting
# first against 734–746 µs letting the next kernel launch at once (scripts/gpu_int4_step.py, 2026-11-23). The INT4
# kernels are short and hold many registers (168 per thread for gate_up): a dependent that launches that early sits on
# the SMs, spinning in its own wait, while the kernel it waits for still needs them. After the wait the next kernel
# still launches at once, so its codes are still requested while this one computes.
ROW_EARLY_LAUNCH = False
# Whether the row GEMV requests each slab's scales and zero-points with its codes (the first slab's before the PDL
# wait, the next one's a slab ahead) and the residual right after the wait (``PREFETCH``), or where it uses them.
ROW_PREFETCH = True
# Whether a row whose words do not fill whole slabs ends in one smaller power-of-two slab (``TAIL_KW``) instead of a
# mostly masked full one.
ROW_TAIL = True
# (n, k, swiglu) -> (BLOCK_N, BLOCK_KW, SPLIT_K, num_warps) at batch 1, pasted from scripts/gpu_gemv_sweep.py
# (the H100 sweep's best per TinyLlama shape); shapes not listed take row_gemv_config's rule.
ROW_GEMV_TABLE: dict[tuple[int, int, bool], tuple[int, ...]] = {
    # down (K = 5632) in the decode step: 8 rows × 512 words over 4 warps. Alone the sweep prefers 4 × 256 × 2 warps
    # (5.59 vs 5.75 µs on an H100), but the whole INT4 step replayed 6–21 µs faster with this one in three runs
    # (scripts/gpu_int4_step.py, 2026-11-23: 629 vs 638 µs; 652 vs 658 µs; 645 vs 666 µs).
    (2048, 5632, False): (8, 512, 1, 4, 0),
}
TUNED_DIR = Path(__file__).with_name("tuned")  # <device slug>.json: the sweep's table for that GPU (--write-table)
_tuned_tables: dict[str, dict] = {}


def _device_slug() -> str:
    from module0_profiling.hardware import detect_device

    return detect_device().slug


def tuned_table(slug: str | None = None) -> dict[tuple[int, int, bool], tuple[int, ...]]:
    """The measured table for this GPU (``TUNED_DIR/<slug>.json``, written by ``gpu_gemv_sweep --write-table``),
    with ``ROW_GEMV_TABLE``'s entries on top; empty for a GPU nobody has swept. Values ``(BLOCK_N, BLOCK_KW,
    SPLIT_K, num_warps[, maxnreg])``: newer tables add the register cap (0 = none), older ones still read."""
    slug = slug or _device_slug()
    if slug not in _tuned_tables:
        path = TUNED_DIR / f"{slug}.json"
        rows = json.loads(path.read_text())["table"] if path.is_file() else []
        _tuned_tables[slug] = {(int(n), int(k), bool(sw)): tuple(int(v) for v in cfg) for n, k, sw, *cfg in rows}
    return {**_tuned_tables[slug], **ROW_GEMV_TABLE}


def row_gemv_config(n: int, k: int, batch: int, swiglu: bool, norm: bool = False) -> dict:
    """``BLOCK_N`` / ``BLOCK_KW`` / ``SPLIT_K`` / ``num_warps`` of the row GEMV for an ``[n, k]`` product of ``batch``
    rows (``n``: output features, the gate half with ``swiglu``). Fixed, not autotuned: tuning inside the
    engine is slow and noisy; ``scripts/gpu_gemv_sweep.py`` measures the space and writes the winners for the GPU
    it ran on (``tuned_table``: ``kernels/tuned/<device>.json``, committed with the report of that run).

    The rule for shapes not in the table, in the spirit of phase 0's ``default_config``: many programs (hundreds
    to thousands) of a few rows each, whole 2048-feature slabs (256 words = 1 KB per row) over 2 warps, so a
    thread loads 16 bytes per row and ``BLOCK_KW = 4 · 32 · num_warps`` (the activation slab then shares the
    word tile's layout, see ``w4a16_rows``). Four rows per program (two gate + two up rows with SwiGLU)
    amortise the activation work — loads, RMSNorm's multiply, ``Σ x`` per group — which INT4 weights, at a
    quarter of bf16's bytes, cannot hide behind bandwidth as phase 0's 1–2 rows do.
    """
    table = tuned_table() if batch == 1 and not interpreting() else {}
    if (n, k, swiglu) in table:
        block_n, block_kw, split, warps, *maxnreg = table[(n, k, swiglu)]  # (maxnreg: newer tables; 0 = none)
        c = dict(BLOCK_N=block_n, BLOCK_KW=block_kw, SPLIT_K=split, num_warps=warps)
        if maxnreg and maxnreg[0]:
            c["maxnreg"] = maxnreg[0]
        return c
    if batch == 1:
        block_n, block_kw, warps = (2, 256, 2) if swiglu else (4, 256, 2)
    else:  # the [B, BLOCK_N, BLOCK_KW] partials live in registers: smaller slabs
        block_n, block_kw, warps = (2, 128, 4) if swiglu else (4, 128, 4)
    block_kw = max(16, min(block_kw, triton.next_power_of_2(k // 8)))
    if interpreting():  # Triton's CPU interpreter pays per program and per step: few, big ones (tests)
        block_n, block_kw = max(block_n, 8) * 4, max(block_kw, 64)
    return dict(BLOCK_N=block_n, BLOCK_KW=block_kw, SPLIT_K=1, num_warps=warps)


MMA_MIN_ROWS = 2  # the small-batch tensor-core kernel from this many rows (the row GEMV below) ...
MMA_MAX_ROWS = 64  # ... up to this many (the GEMM above: prefill)
MMA_KEYS = ("BLOCK_N", "SPLIT_K", "num_warps", "DEPTH", "ONE_DOT", "maxnreg")


def _sm_count(device) -> int:
    if interpreting() or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def mma_block_m(m: int) -> int:
    """Activation rows per program of the small-batch kernel (the MMA's N side): 16, 32 or 64."""
    return 16 if m <= 16 else 32 if m <= 32 else 64


def mma_table(slug: str | None = None) -> dict[tuple[int, int, bool, int], dict]:
    """The sweep's measured small-batch configurations for this GPU (``mma_table`` of ``TUNED_DIR/<slug>.json``):
    ``(n, k, swiglu, BLOCK_M) -> config``; empty for a GPU nobody has swept, or a table from before this kernel."""
    slug = slug or _device_slug()
    key = "mma:" + slug
    if key not in _tuned_tables:
        path = TUNED_DIR / f"{slug}.json"
        rows = json.loads(path.read_text()).get("mma_table", []) if path.is_file() else []
        _tuned_tables[key] = {(int(n), int(k), bool(sw), int(bm)): dict(zip(MMA_KEYS, (int(v) for v in cfg), strict=False))
                              for n, k, sw, bm, *cfg in rows}
    return _tuned_tables[key]


def mma_config(n: int, k: int, m: int, swiglu: bool, norm: bool = False, device=None) -> dict:
    """``BLOCK_N`` / ``SPLIT_K`` / ``num_warps`` / ``DEPTH`` / ``ONE_DOT`` (/ ``maxnreg``) of the small-batch kernel for an
    ``[n, k]`` product of ``m`` rows (``n``: the gate half with ``swiglu``). Fixed, like ``row_gemv_config``:
    the sweep's table for this GPU, else a rule.

    The rule: 64 weight rows per program on one warpgroup (Hopper's ``wgmma`` takes 64 rows; sm_90 builds, Triton
    3.9: 146 registers at 16 activation rows → 3 programs of 4 warps per SM; 173 at 32 rows → 2), 8 warps with
    RMSNorm + SwiGLU (two tiles and two accumulators: 174 registers without spills, 4 warps spill), the joined
    k = 128 MMA per group, and split-K so that the grid is about the resident programs of one wave with at
    least 2 groups per program: every program starts at once, none waits for a second wave.
    """
    block_m = mma_block_m(m)
    table = mma_table() if not interpreting() else {}
    if (n, k, swiglu, block_m) in table:
        return dict(table[(n, k, swiglu, block_m)])
    if interpreting():  # Triton's CPU interpreter pays per program and per step: few, big ones (tests)
        return dict(BLOCK_N=16, SPLIT_K=1, num_warps=4, DEPTH=1, ONE_DOT=1)
    block_n, warps = 64, 8 if swiglu else 4
    per_sm = 1 if swiglu else 3 if block_m == 16 else 2  # resident programs per SM (sm_90 register counts)
    groups = max(1, k // 128)
    tiles = triton.cdiv(n, block_n)
    split = max(1, min(groups // 2, round(per_sm * _sm_count(device) / tiles)))
    split = triton.cdiv(groups, triton.cdiv(groups, split))  # no empty splits
    return dict(BLOCK_N=block_n, SPLIT_K=split, num_warps=warps, DEPTH=1, ONE_DOT=1)


# (n, k, epilogue) products that run the Gluon kernel at one row instead of the row GEMV. Plain, the down projection
# (K = 5632, N = 2048: P5.2's shape) took 4.96 µs against the row GEMV's 5.08 on an H100 (CUDA graph, 2026-11-23);
# with the residual fused, as the decode step calls it, the row GEMV stays: the INT4 step replayed 0.610 ms/token with
# the Gluon kernel there against 0.582 with the row GEMV (make check-phase5, two runs). 2048 → 5632 stays on the row
# GEMV plain too (4.76 vs 4.05 µs): its 5632 rows give the row GEMV enough programs without splitting K.
WGMMA_ONE_ROW = {(2048, 5632, NONE)}


def wgmma_reason(x2: torch.Tensor, w: KernelWeight, norm: bool, swiglu: bool) -> str | None:
    """Why the Gluon kernel (``w4a16_wgmma``) cannot run this product, or ``None`` when it can: a Hopper GPU
    (``wgmma``), a compiled run, bf16/fp16 activations, group size 128, the row layout, no fused RMSNorm or SwiGLU,
    and a Triton with Gluon's Hopper API; ``TITANINFER_W4A16_GLUON=0`` switches it off (A/B)."""
    if os.environ.get("TITANINFER_W4A16_GLUON", "1") == "0":
        return "switched off (TITANINFER_W4A16_GLUON=0)"
    if w4a16_wgmma.GLUON_ERROR:
        return f"this Triton has no Gluon Hopper API ({w4a16_wgmma.GLUON_ERROR})"
    if interpreting() or not x2.is_cuda:
        return "Gluon kernels run compiled on a GPU only (no CPU interpreter)"
    if torch.cuda.get_device_capability(x2.device)[0] != 9:
        return "wgmma needs a Hopper GPU (sm_90)"
    if x2.dtype not in (torch.bfloat16, torch.float16):
        return f"{x2.dtype} activations (bf16/fp16 only)"
    if w.group_size != w4a16_wgmma.GROUP or not w.row_major:
        return f"group size {w.group_size}, {'row' if w.row_major else 'col'} layout (128 and row only)"
    if norm or swiglu:
        return "the RMSNorm prologue and SwiGLU are fused in the Triton kernel only"
    return None


def wgmma_config(n: int, k: int, m: int) -> dict:
    """``BLOCK_M`` / ``BLOCK_N`` / ``GPP`` / ``SPLIT_K`` / ``num_warps`` of the Gluon kernel for an ``[n, k]`` product of
    ``m`` rows: 8/16/32/64 activation rows (the MMA's N side), 128 weight rows per program up to 16 activation rows
    (one warpgroup, two ``m64`` tiles; 167 registers → 3 programs per SM), 64 above (the accumulators grow), and 2
    groups per program, K split over ``cdiv(K/128, 2)`` programs. On an H100 (2026-11-23, plain, 16 rows) 2 groups
    beat 1, 3 and 4 on both MLP shapes (2048 → 5632: 6.0 µs against 8.3 / 7.9 / 9.4; 5632 → 2048: 6.3 against
    8.7 / 7.9 / 9.5), and 128 rows beat 64 (7.3 and 7.4 µs)."""
    block_m = 8 if m <= 8 else mma_block_m(m)
    gpp = 2
    return dict(BLOCK_M=block_m, BLOCK_N=128 if block_m <= 16 else 64, GPP=gpp,
                SPLIT_K=triton.cdiv(max(1, k // w4a16_wgmma.GROUP), gpp), num_warps=4)


def _row_wgmma(x2, w: KernelWeight, out2, res2, epilogue: int, config: dict | None) -> None:
    M, K = x2.shape
    N = out2.shape[1]
    c = wgmma_config(N, K, M)
    c.update({key: v for key, v in (config or {}).items() if key in c})
    groups = K // w4a16_wgmma.GROUP
    if config and "GPP" in config and "SPLIT_K" not in config:
        c["SPLIT_K"] = triton.cdiv(groups, c["GPP"])
    if c["BLOCK_M"] < M or c["SPLIT_K"] * c["GPP"] < groups:
        raise ModelError(f"W4A16 Gluon kernel: BLOCK_M={c['BLOCK_M']} for {M} rows, SPLIT_K·GPP="
                         f"{c['SPLIT_K'] * c['GPP']} for {groups} groups: both must cover the product")
    split, ws, locks, pdl, _ = _launch_state(c, M, N, x2.device)
    w4a16_wgmma._wgmma_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, ws, locks, M, N, K // 8, x2.stride(0), out2.stride(0),
        res2.stride(0), EPILOGUE=epilogue, USE_PDL=pdl, EARLY=phase0_gemv.EARLY_LAUNCH, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], SPLIT_K=split, GPP=c["GPP"], num_warps=c["num_warps"], **launch_options(pdl))


def _launch_state(c: dict, M: int, N: int, device: torch.device) -> tuple:
    """What the row-layout kernels' launches share: ``(split, workspace, locks, pdl, extra launch options)``;
    split-K needs ``2·M·N`` workspace floats."""
    split = c.get("SPLIT_K", 1)
    if split > 1 and M * 2 * N > WS_FLOATS:
        raise ModelError(f"W4A16 linear: split-K for {M}×{N} outputs needs {M * 2 * N} workspace floats, "
                         f"the workspace holds {WS_FLOATS}: use SPLIT_K=1")
    ws, locks = workspace(device)
    extra = {} if interpreting() else {key: c[key] for key in ("num_warps", "maxnreg") if c.get(key)}
    return split, ws, locks, pdl_enabled(device), extra


def _row_mma(x2, w: KernelWeight, out2, res2, nw, eps, epilogue: int, norm: bool, config: dict | None) -> None:
    M, K = x2.shape
    N = out2.shape[1]
    c = mma_config(N, K, M, epilogue == SWIGLU, norm, x2.device)
    c.update(config or {})
    block_m = c.get("BLOCK_M", mma_block_m(M))
    if block_m < M:
        raise ModelError(f"W4A16 small-batch kernel: BLOCK_M={block_m} < {M} rows")
    split, ws, locks, pdl, extra = _launch_state(c, M, N, x2.device)
    _row_mma_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K // 8, x2.stride(0), out2.stride(0),
        res2.stride(0), eps, *NIBBLE_MASKS, GROUP=w.group_size, NORM=norm, EPILOGUE=epilogue, USE_PDL=pdl,
        EARLY=phase0_gemv.EARLY_LAUNCH, DOT_F32=x2.dtype == torch.float32 or interpreting(), BLOCK_M=block_m,
        BLOCK_N=c["BLOCK_N"], SPLIT_K=split, DEPTH=c.get("DEPTH", 1), ONE_DOT=bool(c.get("ONE_DOT", 1)), **extra,
        **launch_options(pdl))


def _row_gemv(x2, w: KernelWeight, out2, res2, nw, eps, epilogue: int, norm: bool, config: dict | None) -> None:
    M, K = x2.shape
    N = out2.shape[1]
    c = row_gemv_config(N, K, M, epilogue == SWIGLU, norm)
    c.update(config or {})
    bkw = c["BLOCK_KW"]
    if bkw < 16 or bkw & (bkw - 1):
        raise ModelError(f"W4A16 row GEMV: BLOCK_KW must be a power of two ≥ 16 (whole groups), got {bkw}")
    split, ws, locks, pdl, extra = _launch_state(c, M, N, x2.device)
    rem = (K // 8) % bkw
    tail = triton.next_power_of_2(rem) if rem and split == 1 and ROW_TAIL else 0
    _row_gemv_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K // 8, x2.stride(0), out2.stride(0),
        res2.stride(0), eps, *NIBBLE_MASKS, GROUP=w.group_size, NORM=norm, EPILOGUE=epilogue, USE_PDL=pdl,
        EARLY=ROW_EARLY_LAUNCH, BLOCK_B=triton.next_power_of_2(M), BLOCK_N=c["BLOCK_N"], BLOCK_KW=bkw, SPLIT_K=split,
        PREFETCH=ROW_PREFETCH, TAIL_KW=tail if tail < bkw else 0, **extra,
        **launch_options(pdl))


KERNELS = ("row", "mma", "wgmma", "gemv", "gemm")


def kernel_for(m: int, row_major: bool, config: dict | None = None) -> str:
    """Which kernel ``w4a16_linear`` runs for ``m`` rows (``config["KERNEL"]`` overrides): row layout ``row``
    (the row GEMV: one row, or 2–8 rows with a ``BLOCK_KW`` config), ``mma`` (2–64 rows), ``gemm`` (more);
    ``col`` layout ``gemv`` (one row) or ``gemm``."""
    if not row_major:
        return "gemv" if m == 1 else "gemm"
    if m < MMA_MIN_ROWS or (m <= ROW_GEMV_MAX_ROWS and config and "BLOCK_KW" in config):
        return "row"
    return "mma" if m <= MMA_MAX_ROWS else "gemm"


INTERPRETER_GEMV = dict(BLOCK_N=16, BLOCK_KW=32, SPLIT_K=1)
INTERPRETER_GEMM = dict(BLOCK_M=16, BLOCK_N=16, SPLIT_K=1)


def w4a16_linear(x: torch.Tensor, w: KernelWeight, *, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                 residual: torch.Tensor | None = None, swiglu: bool = False, out: torch.Tensor | None = None,
                 config: dict | None = None) -> torch.Tensor:
    """``epilogue(prologue(x) · Wᵀ)``: ``x [..., K]`` (fp16/bf16/fp32) -> ``[..., N]`` (``[..., N/2]`` with ``swiglu``).

    ``norm_weight``: RMSNorm ``x`` first (``eps``). ``residual`` (shape of the output): add it (``out=residual``
    for in place). ``swiglu``: the weight is ``[gate; up]`` and the result ``silu(x·gateᵀ) · (x·upᵀ)``.
    ``config``: fixed kernel parameters instead of the default (row GEMV, small-batch kernel) or tuned (others)
    ones: ``BLOCK_N``/``BLOCK_KW``/``SPLIT_K`` for a GEMV (1–8 rows with the row layout, one with ``col``);
    ``BLOCK_N``/``SPLIT_K``/``DEPTH``/``ONE_DOT`` (optional ``BLOCK_M``) for the small-batch kernel (2–64 rows, row
    layout); ``BLOCK_M``/``BLOCK_N``/``SPLIT_K`` for the GEMM; optional ``num_warps`` and ``maxnreg`` (a register
    cap, compiled kernels only); ``BLOCK_M``/``BLOCK_N``/``GPP``/``SPLIT_K`` for the Gluon kernel. ``KERNEL`` (``row``,
    ``mma``, ``wgmma``, ``gemv``, ``gemm``) overrides the choice; a ``config`` without it keeps ``kernel_for``'s (the
    Gluon kernel is taken by default only).
    """
    K = w.k
    if x.shape[-1] != K:
        raise ModelError(f"W4A16 linear: the input has {x.shape[-1]} features, the weight expects {K}")
    if not (x.is_cuda or interpreting()):
        raise ModelError("the Triton W4A16 kernel needs CUDA tensors (or TRITON_INTERPRET=1 on a CPU); "
                         "QuantLinear falls back to dequantize + F.linear elsewhere")
    if x.device != w.device:
        raise ModelError(f"W4A16 linear: input on {x.device}, weight on {w.device}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) != K):
        x2 = x2.contiguous()
    M = x2.shape[0]
    N = w.n // 2 if swiglu else w.n
    if out is None:
        out = torch.empty(*lead, N, dtype=x.dtype, device=x.device)
    out2 = out.view(M, N)
    res2 = residual.reshape(M, N) if residual is not None else out2
    epilogue = SWIGLU if swiglu else RESIDUAL if residual is not None else NONE
    nw = norm_weight if norm_weight is not None else x2
    ws, locks = workspace(x.device)
    if config and config.get("SPLIT_K", 1) > 1 and M * 2 * N > WS_FLOATS:
        raise ModelError(f"W4A16 linear: split-K for {M}×{N} outputs needs {M * 2 * N} workspace floats, "
                         f"the workspace holds {WS_FLOATS}: use SPLIT_K=1")
    common = dict(GROUP=w.group_size, NORM=norm_weight is not None, EPILOGUE=epilogue)
    m_key = M if M <= 64 else triton.next_power_of_2(M)
    config = dict(config) if config else None
    which = config.pop("KERNEL", None) if config else None
    which_given = which is not None
    which = which or kernel_for(M, w.row_major, config)
    if which not in KERNELS:
        raise ModelError(f"W4A16 linear: unknown KERNEL {which!r}: choose among {', '.join(KERNELS)}")
    if not which_given and not config and w.row_major:  # the Gluon kernel where it runs (wgmma_reason)
        if (which == "mma" or (which == "row" and M == 1 and (N, K, epilogue) in WGMMA_ONE_ROW)) and \
                wgmma_reason(x2, w, norm_weight is not None, swiglu) is None:
            which = "wgmma"
    if which == "wgmma" and (why := wgmma_reason(x2, w, norm_weight is not None, swiglu)):
        raise ModelError(f"W4A16 linear: KERNEL='wgmma' cannot run here: {why}")
    if which != "gemm" and (which in ("row", "mma", "wgmma")) != w.row_major:
        raise ModelError(f"W4A16 linear: KERNEL={which!r} does not read this weight's "
                         f"{'row' if w.row_major else 'col'} layout")
    if which == "row":
        _row_gemv(x2, w, out2, res2, nw, eps, epilogue, norm_weight is not None, config)
    elif which == "mma":
        _row_mma(x2, w, out2, res2, nw, eps, epilogue, norm_weight is not None, config)
    elif which == "wgmma":
        _row_wgmma(x2, w, out2, res2, epilogue, config)
    elif which == "gemv":
        pdl = pdl_enabled(x.device)
        common.update(USE_PDL=pdl)
        fn = _kernel("gemv")
        meta = dict(INTERPRETER_GEMV, **(config or {})) if interpreting() or config else {}
        fn_run = fn.fn if (config and not interpreting() and hasattr(fn, "fn")) else fn
        grid = lambda c: (triton.cdiv(N, c["BLOCK_N"]), c["SPLIT_K"])  # noqa: E731
        fn_run[grid](x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, N, K, w.n, eps, m_key, *NIBBLE_MASKS, 1,
                     **common, **meta, **launch_options(pdl))
    else:
        fn = _kernel("gemm")
        if M > 64 and not config and not interpreting():
            config = PREFILL_CONFIG
        meta = dict(INTERPRETER_GEMM, **(config or {})) if interpreting() or config else {}
        if config and "BLOCK_M" not in config:
            meta["BLOCK_M"] = _block_m(M)
        fn_run = fn.fn if (config and not interpreting() and hasattr(fn, "fn")) else fn
        grid = lambda c: (triton.cdiv(N, c["BLOCK_N"]), triton.cdiv(M, c["BLOCK_M"]), c["SPLIT_K"])  # noqa: E731
        fn_run[grid](x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K, *w.strides(), x2.stride(0),
                     out2.stride(0), res2.stride(0), eps, m_key, *NIBBLE_MASKS, **common,
                     DOT_F32=x.dtype == torch.float32 or interpreting(), **meta)
    return out
