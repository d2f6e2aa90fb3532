"""Three fused row-wise kernels for the batched forward pass: fewer, larger launches per layer.

Between its four matmuls, a Llama layer written in PyTorch is ~40 small kernels (RMSNorm alone is
eight: cast, square, mean, add, rsqrt, multiply, cast, scale; RoPE fourteen). At a decode step of 256
rows each moves a few hundred kilobytes and costs its launch floor, so the step is bound by kernel
count, not by the weights it must read (the arithmetic for TinyLlama: ``NOTES.md``). Fused, a layer is
ten kernels:

- ``add_rms_norm``: the residual add and the next RMSNorm in one pass over the row (read x and the
  branch's output once, write the new x and the normalised row);
- ``rope_qkv_cache``: split the fused QKV row, rotate q and k (RoPE), write q, k, v contiguous *and*
  k, v into their paged-cache slots (the contract's layout) — replacing RoPE, three copies and the
  cache write;
- ``silu_mul``: SwiGLU's ``silu(gate) * up``.

Each reproduces PyTorch's rounding step by step (every intermediate the reference rounds to the
activation dtype is rounded here too), so the fused forward matches the PyTorch one to the last bit
but for the order of one fp32 sum (RMSNorm's mean) and ``exp`` in SiLU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(X, Delta, W, Out, stride_x, stride_d, stride_o, N, eps,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        d = tl.load(Delta + row * stride_d + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(X.dtype.element_ty)  # the residual, rounded like x + d
        tl.store(X + row * stride_x + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    h = (xf * (1.0 / tl.sqrt(var + eps))).to(Out.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + cols, (h * w).to(Out.dtype.element_ty), mask=mask)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x += delta`` (in place, when given), then LlamaRMSNorm of ``x`` ``[rows, hidden]``: the normalised rows."""
    rows, n = x.shape
    out = torch.empty_like(x)
    if rows == 0:
        return out
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(rows,)](
        x, x if delta is None else delta, weight, out, x.stride(0), 0 if delta is None else delta.stride(0),
        out.stride(0), n, eps, HAS_DELTA=delta is not None, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out


@triton.jit
def _rope_qkv_cache_kernel(QKV, Pos, Cos, Sin, Slots, Q, K, V, K_cache, V_cache, stride_qkv, stride_cos,
                           HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, HQ_PAD: tl.constexpr,
                           HKV_PAD: tl.constexpr, WRITE_CACHE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    dt = Q.dtype.element_ty
    pos = tl.load(Pos + t).to(tl.int64)
    offs_d = tl.arange(0, D)
    rot_d = (offs_d + D // 2) % D  # rotate_half: [-x2, x1]
    sign = tl.where(offs_d < D // 2, -1.0, 1.0)
    c = tl.load(Cos + pos * stride_cos + offs_d).to(dt).to(tl.float32)  # the reference casts cos/sin first
    s = tl.load(Sin + pos * stride_cos + offs_d).to(dt).to(tl.float32)
    row = QKV + t * stride_qkv

    hq = tl.arange(0, HQ_PAD)
    mq = (hq < HQ)[:, None]
    q = tl.load(row + hq[:, None] * D + offs_d[None, :], mask=mq, other=0.0).to(tl.float32)
    q2 = tl.load(row + hq[:, None] * D + rot_d[None, :], mask=mq, other=0.0).to(tl.float32) * sign[None, :]
    q = ((q * c[None, :]).to(dt).to(tl.float32) + (q2 * s[None, :]).to(dt).to(tl.float32)).to(dt)
    tl.store(Q + t * (HQ * D) + hq[:, None] * D + offs_d[None, :], q, mask=mq)

    hk = tl.arange(0, HKV_PAD)
    mk = (hk < HKV)[:, None]
    kcol = HQ * D + hk[:, None] * D
    k = tl.load(row + kcol + offs_d[None, :], mask=mk, other=0.0).to(tl.float32)
    k2 = tl.load(row + kcol + rot_d[None, :], mask=mk, other=0.0).to(tl.float32) * sign[None, :]
    k = ((k * c[None, :]).to(dt).to(tl.float32) + (k2 * s[None, :]).to(dt).to(tl.float32)).to(dt)
    v = tl.load(row + (HQ + HKV) * D + hk[:, None] * D + offs_d[None, :], mask=mk, other=0.0)
    dst = hk[:, None] * D + offs_d[None, :]
    tl.store(K + t * (HKV * D) + dst, k, mask=mk)
    tl.store(V + t * (HKV * D) + dst, v, mask=mk)
    if WRITE_CACHE:
        slot = tl.load(Slots + t).to(tl.int64)
        if slot >= 0:  # padding rows of a graph bucket have slot -1
            tl.store(K_cache + slot * (HKV * D) + dst, k, mask=mk)
            tl.store(V_cache + slot * (HKV * D) + dst, v, mask=mk)


def rope_qkv_cache(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   num_heads: int, num_kv_heads: int, head_dim: int, slots: torch.Tensor | None = None,
                   k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None):
    """``qkv [tokens, (Hq + 2 Hkv) D]`` -> q ``[tokens, Hq, D]``, k, v ``[tokens, Hkv, D]`` with RoPE at
    ``positions`` (cos/sin fp32 ``[max_pos, D]``); k, v also written to the paged cache at ``slots``
    (skipped where < 0) when a cache is given."""
    n = qkv.shape[0]
    q = torch.empty(n, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(n, num_kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    v = torch.empty_like(k)
    if n == 0:
        return q, k, v
    write = k_cache is not None
    _rope_qkv_cache_kernel[(n,)](
        qkv, positions, cos, sin, slots if write else positions, q, k, v, k_cache if write else k,
        v_cache if write else v, qkv.stride(0), cos.stride(0), HQ=num_heads, HKV=num_kv_heads, D=head_dim,
        HQ_PAD=triton.next_power_of_2(num_heads), HKV_PAD=triton.next_power_of_2(num_kv_heads), WRITE_CACHE=write,
        num_warps=4)
    return q, k, v


@triton.jit
def _silu_mul_kernel(GU, Out, stride_gu, stride_o, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    g = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(GU + row * stride_gu + inter + cols, mask=mask, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(Out.dtype.element_ty).to(tl.float32)  # F.silu rounds, then the product
    tl.store(Out + row * stride_o + cols, (s * u).to(Out.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up [rows, 2 I]`` (gate first) -> ``[rows, I]``."""
    rows, two_i = gate_up.shape
    inter = two_i // 2
    out = torch.empty(rows, inter, dtype=gate_up.dtype, device=gate_up.device)
    if rows == 0:
        return out
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(inter, block))](gate_up, out, gate_up.stride(0), out.stride(0), inter,
                                                        BLOCK=block, num_warps=4)
    return out
