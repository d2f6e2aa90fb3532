"""``w4a16_linear``: pick the W4A16 kernel for a product, launch it with its configuration (``configs``),
own the split-K workspace and check the inputs.

Routing (``kernel_for``; ``config["KERNEL"]`` forces a kernel), for the row layout (``layout``, the default)::

    rows   kernel                                            configuration
    1      row GEMV (``w4a16_rows``)                          configs.row_gemv_config (fixed)
    2-64   Gluon wgmma kernel (``w4a16_wgmma``) on Hopper     configs.wgmma_config (fixed)
           else the Triton small-batch kernel (``w4a16_rows_mma``)  configs.mma_config (fixed)
    more   ``dequantize_rows`` + cuBLAS (``F.linear``)        one float temporary, then cuBLAS's GEMM
           (in Triton's interpreter: the tensor-core GEMM ``w4a16._gemm_kernel``, autotuned)

``wgmma_reason`` says when the Gluon kernel cannot run (then the Triton one does); the products in
``WGMMA_ONE_ROW`` take it at one row too. A ``config`` with ``BLOCK_KW`` sends 2–8 rows to the row GEMV (its
batched form). The ``col`` layout (``to_kernel_layout(..., layout="col")``) runs the ``[K/8, N]`` GEMV at one
row and the GEMM above, both autotuned. Why each choice won: ``phase5_quantization/NOTES.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from phase0_prototype.errors import ModelError
from phase0_prototype.kernels import gemv as phase0_gemv
from phase0_prototype.kernels.gemv import launch_options, pdl_enabled
from phase5_quantization.kernels import w4a16_wgmma
from phase5_quantization.kernels.configs import (
    INTERPRETER_GEMM,
    INTERPRETER_GEMV,
    LOCKS,
    PREFILL_CONFIG,
    WS_FLOATS,
    autotuned,
    interpreting,
    mma_block_m,
    mma_config,
    row_gemv_config,
    wgmma_config,
)
from phase5_quantization.kernels.dequant import dequantize_rows
from phase5_quantization.kernels.layout import KernelWeight
from phase5_quantization.kernels.w4a16 import NIBBLE_MASKS, NONE, RESIDUAL, SWIGLU
from phase5_quantization.kernels.w4a16_rows import _row_gemv_kernel
from phase5_quantization.kernels.w4a16_rows_mma import _row_mma_kernel

_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's zeroed fp32 workspace and ticket counters (every split-K call leaves them zeroed)."""
    if device not in _workspaces:
        _workspaces[device] = (torch.zeros(WS_FLOATS, dtype=torch.float32, device=device),
                               torch.zeros(LOCKS, dtype=torch.int32, device=device))
    return _workspaces[device]


ROW_GEMV_MAX_ROWS = 8  # the row GEMV's batched form (with a BLOCK_KW config) takes up to this many rows
MMA_MIN_ROWS = 2  # the small-batch tensor-core kernel from this many rows (the row GEMV below) ...
MMA_MAX_ROWS = 64  # ... up to this many (the GEMM above: prefill)
# Past the small-batch kernels, writing the float matrix once and running cuBLAS beats the Triton GEMM that
# dequantizes in its inner loop at every size measured on the H100, 128 to 1,024 rows (phase 5's NOTES.md).
DEQUANT_MIN_ROWS = MMA_MAX_ROWS + 1
# (n, k, epilogue) products that take the Gluon kernel at one row instead of the row GEMV: the plain down
# projection (K = 5632 over few rows: the row GEMV has few programs unless it splits K). With the residual
# fused, as the decode step calls it, the row GEMV stays: the whole step is faster with it (NOTES.md).
WGMMA_ONE_ROW = {(2048, 5632, NONE)}


def wgmma_reason(x2: torch.Tensor, w: KernelWeight, norm: bool, swiglu: bool) -> str | None:
    """Why the Gluon kernel (``w4a16_wgmma``) cannot run this product, or ``None`` when it can: a Hopper GPU
    (``wgmma``), a compiled run, bf16/fp16 activations, group size 128, the row layout, no fused RMSNorm or
    SwiGLU, and a Triton with Gluon's Hopper API."""
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
    split, ws, locks, pdl, _ = launch_state(c, M, N, x2.device)
    w4a16_wgmma._wgmma_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, ws, locks, M, N, K // 8, x2.stride(0), out2.stride(0),
        res2.stride(0), EPILOGUE=epilogue, USE_PDL=pdl, EARLY=phase0_gemv.EARLY_LAUNCH, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], SPLIT_K=split, GPP=c["GPP"], num_warps=c["num_warps"], **launch_options(pdl))


def launch_state(c: dict, M: int, N: int, device: torch.device) -> tuple:
    """What the row-layout kernels' launches share: ``(split, workspace, locks, pdl, extra launch options)``;
    split-K needs ``2·M·N`` workspace floats."""
    split = c.get("SPLIT_K", 1)
    if split > 1 and M * 2 * N > WS_FLOATS:
        raise ModelError(f"W4A16 linear: split-K for {M}×{N} outputs needs {M * 2 * N} workspace floats, "
                         f"the workspace holds {WS_FLOATS}: use SPLIT_K=1")
    ws, locks = workspace(device)
    extra = {} if interpreting() else {key: c[key] for key in ("num_warps", "maxnreg") if c.get(key)}
    return split, ws, locks, pdl_enabled(device), extra


def _row_mma(x2, w: KernelWeight, out2, res2, nw, eps, epilogue: int, norm: bool,
             config: dict | None) -> None:
    M, K = x2.shape
    N = out2.shape[1]
    c = mma_config(N, K, M, epilogue == SWIGLU, norm, x2.device)
    c.update(config or {})
    block_m = c.get("BLOCK_M", mma_block_m(M))
    if block_m < M:
        raise ModelError(f"W4A16 small-batch kernel: BLOCK_M={block_m} < {M} rows")
    split, ws, locks, pdl, extra = launch_state(c, M, N, x2.device)
    _row_mma_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K // 8, x2.stride(0),
        out2.stride(0), res2.stride(0), eps, *NIBBLE_MASKS, GROUP=w.group_size, NORM=norm, EPILOGUE=epilogue,
        USE_PDL=pdl, EARLY=phase0_gemv.EARLY_LAUNCH, DOT_F32=x2.dtype == torch.float32 or interpreting(),
        BLOCK_M=block_m, BLOCK_N=c["BLOCK_N"], SPLIT_K=split, DEPTH=c.get("DEPTH", 1),
        ONE_DOT=bool(c.get("ONE_DOT", 1)), **extra, **launch_options(pdl))


def _row_gemv(x2, w: KernelWeight, out2, res2, nw, eps, epilogue: int, norm: bool,
              config: dict | None) -> None:
    M, K = x2.shape
    N = out2.shape[1]
    c = row_gemv_config(N, K, M, epilogue == SWIGLU, norm)
    c.update(config or {})
    bkw = c["BLOCK_KW"]
    if bkw < 16 or bkw & (bkw - 1):
        raise ModelError(f"W4A16 row GEMV: BLOCK_KW must be a power of two ≥ 16 (whole groups), got {bkw}")
    split, ws, locks, pdl, extra = launch_state(c, M, N, x2.device)
    rem = (K // 8) % bkw  # a row's words past the last whole slab: one smaller slab, not a masked full one
    tail = triton.next_power_of_2(rem) if rem and split == 1 else 0
    # EARLY=False: the next kernel launches only after this one's PDL wait. These short kernels hold many
    # registers; a dependent launched before the wait would sit on the SMs, spinning in its own wait, while
    # this one still needs them. PREFETCH: a slab's scales and zero-points travel with its codes (w4a16_rows).
    _row_gemv_kernel[(triton.cdiv(N, c["BLOCK_N"]), split)](
        x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K // 8, x2.stride(0),
        out2.stride(0), res2.stride(0), eps, *NIBBLE_MASKS, GROUP=w.group_size, NORM=norm, EPILOGUE=epilogue,
        USE_PDL=pdl, EARLY=False, BLOCK_B=triton.next_power_of_2(M), BLOCK_N=c["BLOCK_N"], BLOCK_KW=bkw,
        SPLIT_K=split, PREFETCH=True, TAIL_KW=tail if tail < bkw else 0, **extra, **launch_options(pdl))


def _dequant_matmul(x2, w: KernelWeight, out2, res2, norm_weight, eps: float, swiglu: bool) -> None:
    """The float matrix (``dequantize_rows``), then cuBLAS, with the fusions as ``QuantLinear``'s fallback
    applies them (``linear.unfused``). ``res2``: None or the residual."""
    from phase5_quantization.linear import unfused

    unfused(lambda h: F.linear(h, dequantize_rows(w, h.dtype)), x2, norm_weight, eps, res2, swiglu, out2)


KERNELS = ("row", "mma", "wgmma", "gemv", "gemm", "dequant")


def kernel_for(m: int, row_major: bool, config: dict | None = None) -> str:
    """Which kernel ``w4a16_linear`` runs for ``m`` rows (``config["KERNEL"]`` overrides): row layout ``row``
    (the row GEMV: one row, or 2–8 rows with a ``BLOCK_KW`` config), ``mma`` (2–64 rows), ``gemm`` (more);
    ``col`` layout ``gemv`` (one row) or ``gemm``."""
    if not row_major:
        return "gemv" if m == 1 else "gemm"
    if m < MMA_MIN_ROWS or (m <= ROW_GEMV_MAX_ROWS and config and "BLOCK_KW" in config):
        return "row"
    if m <= MMA_MAX_ROWS:
        return "mma"
    return "dequant" if m >= DEQUANT_MIN_ROWS and not interpreting() else "gemm"


def w4a16_linear(x: torch.Tensor, w: KernelWeight, *, norm_weight: torch.Tensor | None = None,
                 eps: float = 0.0, residual: torch.Tensor | None = None, swiglu: bool = False,
                 out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """``epilogue(prologue(x) · Wᵀ)``: ``x [..., K]`` (fp16/bf16/fp32) -> ``[..., N]`` (``[..., N/2]`` with
    ``swiglu``).

    ``norm_weight``: RMSNorm ``x`` first (``eps``). ``residual`` (shape of the output): add it
    (``out=residual`` for in place). ``swiglu``: the weight is ``[gate; up]`` and the result
    ``silu(x·gateᵀ) · (x·upᵀ)``.
    ``config``: fixed kernel parameters instead of the default (row GEMV, small-batch kernels) or tuned
    (others) ones: ``BLOCK_N``/``BLOCK_KW``/``SPLIT_K`` for a GEMV (1–8 rows with the row layout, one with
    ``col``); ``BLOCK_N``/``SPLIT_K``/``DEPTH``/``ONE_DOT`` (optional ``BLOCK_M``) for the small-batch kernel
    (2–64 rows, row layout); ``BLOCK_M``/``BLOCK_N``/``GPP``/``SPLIT_K`` for the Gluon kernel;
    ``BLOCK_M``/``BLOCK_N``/``SPLIT_K`` for the GEMM; optional ``num_warps`` and ``maxnreg`` (a register cap,
    compiled kernels only). ``KERNEL`` (``row``, ``mma``, ``wgmma``, ``gemv``, ``gemm``) forces the kernel; a
    ``config`` without it keeps ``kernel_for``'s (the Gluon kernel is taken by default only).
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
    if which != "gemm" and (which in ("row", "mma", "wgmma", "dequant")) != w.row_major:
        raise ModelError(f"W4A16 linear: KERNEL={which!r} does not read this weight's "
                         f"{'row' if w.row_major else 'col'} layout")
    if which == "dequant":
        _dequant_matmul(x2, w, out2, res2 if residual is not None else None, norm_weight, eps, swiglu)
    elif which == "row":
        _row_gemv(x2, w, out2, res2, nw, eps, epilogue, norm_weight is not None, config)
    elif which == "mma":
        _row_mma(x2, w, out2, res2, nw, eps, epilogue, norm_weight is not None, config)
    elif which == "wgmma":
        _row_wgmma(x2, w, out2, res2, epilogue, config)
    elif which == "gemv":
        pdl = pdl_enabled(x.device)
        common.update(USE_PDL=pdl)
        fn = autotuned("gemv")
        meta = dict(INTERPRETER_GEMV, **(config or {})) if interpreting() or config else {}
        fn_run = fn.fn if (config and not interpreting() and hasattr(fn, "fn")) else fn
        grid = lambda c: (triton.cdiv(N, c["BLOCK_N"]), c["SPLIT_K"])  # noqa: E731
        fn_run[grid](x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, N, K, w.n, eps, m_key,
                     *NIBBLE_MASKS, 1, **common, **meta, **launch_options(pdl))
    else:
        fn = autotuned("gemm")
        if M > 64 and not config and not interpreting():
            config = PREFILL_CONFIG
        meta = dict(INTERPRETER_GEMM, **(config or {})) if interpreting() or config else {}
        if config and "BLOCK_M" not in config:
            meta["BLOCK_M"] = mma_block_m(M)
        fn_run = fn.fn if (config and not interpreting() and hasattr(fn, "fn")) else fn
        grid = lambda c: (triton.cdiv(N, c["BLOCK_N"]), triton.cdiv(M, c["BLOCK_M"]), c["SPLIT_K"])
        fn_run[grid](x2, w.qweight, w.scales, w.zeros, out2, res2, nw, ws, locks, M, N, K, *w.strides(),
                     x2.stride(0), out2.stride(0), res2.stride(0), eps, m_key, *NIBBLE_MASKS, **common,
                     DOT_F32=x.dtype == torch.float32 or interpreting(), **meta)
    return out
