"""Matrix-vector products for decode: ``out[b] = epilogue(W · prologue(x[b]))`` for a few rows ``b``.

At batch 1 a projection reads every weight once and does 2 FLOPs per weight: the only thing that matters is
streaming ``W`` at copy bandwidth. cuBLAS and inductor's reductions fall well short of it on TinyLlama's
shapes because they launch too few blocks or keep too little in flight; here each program owns ``BLOCK_N``
rows and walks the whole ``K`` dimension in ``BLOCK_K`` slabs of wide (128-bit) loads, and the grid has
hundreds of programs so every SM keeps many loads outstanding. Accumulation is fp32.

The work around the product is fused so it costs no extra kernel and no extra pass over memory:

- **RMSNorm prologue** (``norm_weight``): ``W·(g ⊙ x·r) = r · W·(g ⊙ x)``, ``r = rsqrt(mean(x²) + eps)``,
  so each program accumulates ``Σ x²`` in the same loop that reads ``x`` (the 4 KB input is re-read from L2
  by every program, which is free next to the weights) and scales its results at the end;
- **residual epilogue** (``residual``): ``out = residual + y``, in place when ``out is residual``;
- **SwiGLU epilogue** (``swiglu=True``, weight = ``[gate; up]`` rows): each program reads the gate rows and
  the matching up rows and writes ``silu(gate) · up`` — the ``2·I`` wide intermediate never exists.

Roundings follow the unfused PyTorch code (projection rounded to the activation dtype before the add / the
SiLU), so bf16 results differ from it only by summation order. Figures: ``reports/phase0_prototype/``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

NONE, RESIDUAL, SWIGLU = 0, 1, 2
MAX_BATCH = 8  # rows per program; larger batches are a GEMM's job (the engine compiles the PyTorch step)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_PDL: dict[int, bool] = {}  # device index -> Hopper or newer (``dev.pdl_off`` clears it for a comparison)
EARLY_LAUNCH = True  # the GEMVs let the next kernel launch before waiting on their inputs (``pdl_enabled``)


def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch: Hopper or newer, compiled kernels (not the CPU interpreter).

    With PDL a kernel may start while the previous one in the stream is still finishing; our kernels issue
    their first weight loads, then ``gdc_wait`` for the previous kernel's results. Each kernel also lets its
    dependent launch *before* that wait (``gdc_launch_dependents`` first, ``EARLY_LAUNCH``): once all of a
    kernel's programs have started, the next kernel's programs take the free SM slots and stream their
    weights in, so the output projection's weights arrive while the attention runs. It is safe because a
    kernel's ``gdc_wait`` returns only when the previous kernel has finished, and that one finished only
    after its own wait: completion is ordered down the chain. CUDA graphs keep the overlap (captured as
    programmatic edges).
    """
    if INTERPRETED or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PDL:
        _PDL[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _PDL[index]


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr, EARLY: tl.constexpr):
    """A kernel's input boundary under programmatic dependent launch (``pdl_enabled``): wait for the previous
    kernel's output (``gdc_wait``) and let the next kernel launch (``gdc_launch_dependents``) — before the
    wait with ``EARLY`` (it may then prefetch its weights while this kernel waits and runs), after it
    otherwise (at most one kernel runs ahead of its inputs). Nothing without ``USE_PDL``. Every kernel of the
    decode steps calls it after requesting the loads that do not depend on the previous kernel."""
    if USE_PDL:
        if EARLY:
            tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
        if not EARLY:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, B, N, K, up_offset, stride_xb, stride_ob, stride_rb,
                 eps, NORM: tl.constexpr, EPILOGUE: tl.constexpr, EVEN_K: tl.constexpr,
                 ONE_SLAB: tl.constexpr, USE_PDL: tl.constexpr,
                 EARLY: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    rows = w_ptr + offs_n.to(tl.int64)[:, None] * K  # the weight is contiguous [rows, K]
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_B,), dtype=tl.float32)
    # The weights do not depend on the previous kernel: with programmatic dependent launch (PDL) the first
    # slab is requested before waiting for the previous kernel (whose output ``x`` is) to finish, so this
    # kernel's ramp-up overlaps the previous one's tail. Each step then loads the next slab before using
    # the current one (a two-deep software pipeline by hand).
    offs_k = tl.arange(0, BLOCK_K)
    if EVEN_K:
        w_mask = mask_n[:, None]
    else:
        w_mask = mask_n[:, None] & (offs_k[None, :] < K)
    w = tl.load(rows + offs_k[None, :], mask=w_mask, other=0.0, eviction_policy="evict_first")
    if EPILOGUE == 2:
        w_up = tl.load(rows + up_offset + offs_k[None, :], mask=w_mask, other=0.0,
                       eviction_policy="evict_first")
    pdl_wait(USE_PDL, EARLY)  # x (and the residual) are the previous kernel's output
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            x_mask = mask_b[:, None]
        else:
            x_mask = mask_b[:, None] & (offs_k[None, :] < K)
        x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :], mask=x_mask,
                    other=0.0).to(tl.float32)
        if NORM:
            sumsq += tl.sum(x * x, axis=1)
            if EVEN_K:
                g = tl.load(nw_ptr + offs_k).to(tl.float32)
            else:
                g = tl.load(nw_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
            x = x * g[None, :]
        w_cur = w.to(tl.float32)
        if EPILOGUE == 2:
            w_up_cur = w_up.to(tl.float32)
        if not ONE_SLAB:  # the next slab (masked off past the end); with K ≤ BLOCK_K there is none to hold
            nxt = offs_k + BLOCK_K
            n_mask = mask_n[:, None] & (nxt[None, :] < K)
            w = tl.load(rows + nxt[None, :], mask=n_mask, other=0.0, eviction_policy="evict_first")
            if EPILOGUE == 2:
                w_up = tl.load(rows + up_offset + nxt[None, :], mask=n_mask, other=0.0,
                               eviction_policy="evict_first")
        if BLOCK_B == 1:  # one row: a 2-D multiply-reduce (no [1, N, K] broadcast for the compiler)
            acc += tl.sum(w_cur * x, axis=1)[None, :]
            if EPILOGUE == 2:
                acc_up += tl.sum(w_up_cur * x, axis=1)[None, :]
        else:
            acc += tl.sum(x[:, None, :] * w_cur[None, :, :], axis=2)
            if EPILOGUE == 2:
                acc_up += tl.sum(x[:, None, :] * w_up_cur[None, :, :], axis=2)
    if NORM:
        r = 1.0 / tl.sqrt(sumsq / K + eps)
        acc = acc * r[:, None]
        acc_up = acc_up * r[:, None]
    dtype = out_ptr.dtype.element_ty
    mask = mask_b[:, None] & mask_n[None, :]
    if EPILOGUE == 1:
        res = tl.load(res_ptr + offs_b[:, None] * stride_rb + offs_n[None, :], mask=mask,
                      other=0.0).to(tl.float32)
        acc = res + acc.to(dtype).to(tl.float32)
    if EPILOGUE == 2:
        gate = acc.to(dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        acc = silu * acc_up.to(dtype).to(tl.float32)
    tl.store(out_ptr + offs_b[:, None] * stride_ob + offs_n[None, :], acc.to(dtype), mask=mask)


def launch_options(pdl: bool) -> dict:
    """Extra launch keywords: ``launch_pdl`` only when used (the CPU interpreter does not know it)."""
    return {"launch_pdl": True} if pdl else {}


def default_config(n: int, k: int, batch: int, swiglu: bool, norm: bool = False) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, num_warps)`` for an ``[n, k]`` product of ``batch`` rows.

    Chosen on an H100 at TinyLlama's shapes (``scripts/gpu_gemv_ops.py`` per projection, then
    ``scripts/gpu_pdl_variants.py`` for the whole step; figures in ``NOTES.md``). At batch 1 a row is one
    whole slab (up to 2048 wide), so a program's weights are requested before it waits on the previous kernel;
    the large projections want many small programs (gate_up: one gate and one up row each), o and down fewer,
    fatter ones. ``ONE_SLAB`` (K ≤ BLOCK_K) leaves no next slab to hold in registers: registers decide how
    many programs wait, weights in hand, for the previous kernel — and so how much of the next kernels'
    streaming overlaps the current one's tail (count them without a GPU: compile for sm_90 and read
    ``cuobjdump --dump-resource-usage``). lm_head keeps 8 rows and 1024-wide slabs.
    """
    if n >= 16384:
        block_n, block_k, warps = 8, 1024, 8
    elif batch > 1:  # 2-8 rows: the first sweep's tiles
        block_n, block_k, warps = (8, 256, 4) if swiglu else (8, 1024, 8) if norm else (2, 1024, 4)
    elif swiglu:  # two weight tiles (gate and up rows) per step
        block_n, block_k, warps = 1, 2048, 4
    elif norm:  # qkv
        block_n, block_k, warps = 2, 2048, 4
    elif k > 4096:  # down
        block_n, block_k, warps = 4, 2048, 8
    else:  # o
        block_n, block_k, warps = 8, 2048, 8
    block_k = min(block_k, triton.next_power_of_2(k))
    if batch > 1:  # the [B, N, K] product lives in registers: keep it the same size
        block_k = max(32, block_k // triton.next_power_of_2(batch))
    if INTERPRETED:  # Triton's CPU interpreter pays per program: fewer, bigger ones (tests)
        block_n = max(block_n, 8) * 4
    return block_n, block_k, warps


def fused_gemv(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None,
               eps: float = 0.0, residual: torch.Tensor | None = None, swiglu: bool = False,
               out: torch.Tensor | None = None, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``x [B, K]`` (last dim contiguous), ``weight [N, K]`` (``[2I, K]`` with ``swiglu``) -> ``[B, N]``
    (``[B, I]``).

    ``norm_weight``: RMSNorm ``x`` first (``eps``). ``residual [B, N]``: add it (``out=residual``: in place).
    ``swiglu``: ``silu(x·W[:I]ᵀ) · (x·W[I:]ᵀ)``. ``config``: ``(BLOCK_N, BLOCK_K, num_warps)`` override.
    """
    B, K = x.shape
    if B > MAX_BATCH:
        raise ValueError(f"fused_gemv handles at most {MAX_BATCH} rows, got {B}: use F.linear for more")
    if weight.shape[1] != K or not weight.is_contiguous() or x.stride(1) != 1:
        raise ValueError(f"fused_gemv needs x [B, K] with a contiguous last dim and a contiguous weight "
                         f"[N, {K}], got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    N = weight.shape[0] // 2 if swiglu else weight.shape[0]
    if out is None:
        out = torch.empty(B, N, dtype=x.dtype, device=x.device)
    block_n, block_k, warps = config or default_config(N, K, B, swiglu, norm_weight is not None)
    pdl = pdl_enabled(x.device)
    epilogue = SWIGLU if swiglu else RESIDUAL if residual is not None else NONE
    res = residual if residual is not None else out
    nw = norm_weight if norm_weight is not None else weight
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, out, res, nw, B, N, K, N * K, x.stride(0), out.stride(0), res.stride(0), eps,
        NORM=norm_weight is not None, EPILOGUE=epilogue, EVEN_K=K % block_k == 0, ONE_SLAB=K <= block_k,
        USE_PDL=pdl, EARLY=EARLY_LAUNCH, BLOCK_B=triton.next_power_of_2(B), BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, **launch_options(pdl))
    return out
