"""``dequantize_rows``: an INT4 matrix in the row kernel layout -> its float matrix ``[N, K]``, one Triton pass.

Why: at many rows (a prefill chunk, a 256-row decode step) a W4A16 product is compute-bound, and cuBLAS's
bf16 GEMM runs at a large share of the tensor-core peak that a Triton GEMM dequantizing in its inner loop
does not reach. Writing the float matrix costs ``2·N·K`` bytes once per call against ``2·M·N·K`` FLOPs:
from a few hundred rows on that is a small fraction of the GEMM (vLLM's AWQ layer makes the same choice
above 256 tokens). The float matrix is a temporary: the INT4 codes remain the only copy held.

Each program expands ``BLOCK_N`` output rows of one group (16 words = 128 features): nibble ``j`` of word
``w`` is feature ``128g + 16j + w`` (``layout``), so a ``[BLOCK_N, 8, 16]`` tile of shifted words reshapes
straight into the group's 128 contiguous features. Limit: the row layout with groups of 128 only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from phase0_prototype.errors import ModelError
from phase5_quantization.kernels.layout import KERNEL_GROUP, KernelWeight


@triton.jit
def _dequant_rows_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, KW, GROUPS, BLOCK_N: tl.constexpr):
    pid_n, g = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = rows < N
    w = tl.arange(0, 16)
    words = tl.load(q_ptr + rows[:, None] * KW + g * 16 + w[None, :], mask=keep[:, None], other=0)
    shifts = tl.arange(0, 8) * 4
    codes = (words[:, None, :] >> shifts[None, :, None]) & 0xF  # [BLOCK_N, 8 (j), 16 (w)]
    codes = tl.reshape(codes, (BLOCK_N, 128))  # feature 16j + w of the group
    scale = tl.load(s_ptr + rows * GROUPS + g, mask=keep, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + rows * GROUPS + g, mask=keep, other=0).to(tl.float32)
    values = (codes.to(tl.float32) - zero[:, None]) * scale[:, None]
    cols = g * 128 + tl.arange(0, 128)
    tl.store(out_ptr + rows[:, None] * (KW * 8) + cols[None, :], values.to(out_ptr.dtype.element_ty),
             mask=keep[:, None])


def dequantize_rows(w: KernelWeight, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - z) · s`` of every code of ``w`` (row layout) as a ``[N, K]`` matrix of ``dtype``."""
    if not w.row_major or w.group_size != KERNEL_GROUP:
        raise ModelError(f"dequantize_rows reads the row layout with groups of {KERNEL_GROUP}; got the "
                         f"{'row' if w.row_major else 'col'} layout with groups of {w.group_size}")
    n, k = w.n, w.k
    if out is None:
        out = torch.empty(n, k, dtype=dtype, device=w.device)
    block_n = 32
    _dequant_rows_kernel[(triton.cdiv(n, block_n), k // KERNEL_GROUP)](
        w.qweight, w.scales, w.zeros, out, n, k // 8, k // KERNEL_GROUP, BLOCK_N=block_n, num_warps=4)
    return out
