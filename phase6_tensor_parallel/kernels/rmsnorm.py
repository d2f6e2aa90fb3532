"""RMSNorm as one Triton kernel: one program per row, the row held in registers.

PyTorch's reference (``phase0_prototype.model.rms_norm``: upcast, square, mean, rsqrt, multiply, cast,
scale) is seven kernels; in a CUDA-graph decode step of TinyLlama each costs its launch and ramp-up
for a few KB of data, and a step has 45 (TP=1) to 90 (the overlapped TP=2 solution) norms. The
kernel keeps the reference's roundings: normalise in fp32, round to the activation dtype, then multiply
by the weight in that dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_o, n, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    h = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n + eps)
    normed = (h * r).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def triton_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x · rsqrt(mean(x²) + eps))`` over the last dim, any leading shape."""
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match the last dim {n}")
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), n, eps, BLOCK=block,
                                       num_warps=max(1, min(8, block // 256)))
    return out.view(*x.shape[:-1], n)
