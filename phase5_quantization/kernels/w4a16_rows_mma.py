"""The small-batch W4A16 kernel over the row layout: ``out[m] = epilogue(W · x[m])`` for 2–64 activation rows
on the tensor cores, codes streamed as the decode GEMV streams them.

At 16 rows a projection is still memory-bound, and the prefill GEMM (``w4a16._gemm_kernel``: 64-byte pieces of
many rows, nothing requested ahead, a small grid) loses to bf16 ``F.linear`` there. This kernel is the row
GEMV (``w4a16_rows``) with the multiply moved to the tensor cores:

- **swapped operands**: ``outᵀ = W · xᵀ``, so the weights are the MMA's ``A`` (``BLOCK_N`` rows: its M side,
  where ``wgmma`` wants 64) and the few activation rows its ``B`` (``BLOCK_M`` = 16/32/64): nothing padded;
- **a group per step, requested ahead**: codes, scales and zero-points of the next group (``DEPTH=2``: two)
  before the current one is used, the first before the PDL wait;
- **exact dequantisation, scale after the MMA**: ``q − z`` by the mantissa trick is exact in bf16/fp16, so
  ``Σ x (q − z)`` accumulates in fp32 with no weight rounding; the group scale multiplies the partial.
  ``ONE_DOT``: the 8 nibble tiles joined (``tl.join``) into one k = 128 MMA instead of 8 of k = 16;
- **split-K** (``SPLIT_K``, ``w4a16._finish``) so that a short N still fills the GPU in one resident wave.

Fusions and roundings as ``w4a16``. Its cost: the activation tile staged through shared memory per group (the
Gluon kernel, ``w4a16_wgmma``, avoids that on Hopper). Variants measured and dropped: ``NOTES.md``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from phase0_prototype.kernels.gemv import pdl_wait
from phase5_quantization.kernels.w4a16 import _code_plus_magic, _dot, _finish, _magic, _mask, _row_rsqrt


@triton.jit
def _group_codes(rows, s_row, z_row, g, g_end, mask_n, GW: tl.constexpr):
    """Group ``g``'s words ``[BLOCK_N, GW]`` of the rows at ``rows`` (and their scales / zero-points), masked
    off when ``g`` is past the program's last group (a prefetch past the end)."""
    offs = g * GW + tl.arange(0, GW)
    ok = mask_n & (tl.full(mask_n.shape, g, tl.int32) < g_end)
    words = tl.load(rows + offs[None, :], mask=ok[:, None], other=0, eviction_policy="evict_first")
    s = tl.load(s_row + g, mask=ok, other=0.0)
    z = tl.load(z_row + g, mask=ok, other=0)
    return words, s, z


@triton.jit
def _nibble(words, words_hi, zmagic_base, j: tl.constexpr, m0, m1, m2, m3, m4, dtype: tl.constexpr):
    """``q − z`` of nibble ``j`` (exact small integers) in the MMA's operand dtype: ``zmagic_base`` is
    ``2**23 + z`` as a float (``_zero`` without its subtract), shifted to nibble ``j``'s power of two."""
    off = zmagic_base + (_magic(j) - 8388608.0)
    return (_code_plus_magic(words, words_hi, j, _mask(j, m0, m1, m2, m3, m4)) - off[:, None]).to(dtype)


@triton.jit
def _joined(words, words_hi, zm, m0, m1, m2, m3, m4, dtype: tl.constexpr, BLOCK_N: tl.constexpr,
            GW: tl.constexpr):
    """The group's 8 nibble tiles as one ``[BLOCK_N, 8·GW]`` operand, column ``8w + j`` = nibble ``j`` of word
    ``w`` (feature ``128g + 16j + w``): ``tl.join`` stacks on a new last axis, in registers, so nibbles are
    joined 4 apart, then 2, then 1."""
    n0 = _nibble(words, words_hi, zm, 0, m0, m1, m2, m3, m4, dtype)
    n1 = _nibble(words, words_hi, zm, 1, m0, m1, m2, m3, m4, dtype)
    n2 = _nibble(words, words_hi, zm, 2, m0, m1, m2, m3, m4, dtype)
    n3 = _nibble(words, words_hi, zm, 3, m0, m1, m2, m3, m4, dtype)
    n4 = _nibble(words, words_hi, zm, 4, m0, m1, m2, m3, m4, dtype)
    n5 = _nibble(words, words_hi, zm, 5, m0, m1, m2, m3, m4, dtype)
    n6 = _nibble(words, words_hi, zm, 6, m0, m1, m2, m3, m4, dtype)
    n7 = _nibble(words, words_hi, zm, 7, m0, m1, m2, m3, m4, dtype)
    a = tl.join(tl.join(n0, n4), tl.join(n2, n6))
    b = tl.join(tl.join(n1, n5), tl.join(n3, n7))
    return tl.reshape(tl.join(a, b), [BLOCK_N, 8 * GW])


@triton.jit
def _row_mma_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, lock_ptr,
                    M, N, KW, stride_xm, stride_om, stride_rm, eps, m0, m1, m2, m3, m4,
                    GROUP: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, USE_PDL: tl.constexpr,
                    EARLY: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    SPLIT_K: tl.constexpr, DEPTH: tl.constexpr, ONE_DOT: tl.constexpr):
    """``out[m, n] = epilogue(Σ_k x[m, k] · W[n, k])`` for ``m < M ≤ BLOCK_M``; grid
    ``(cdiv(N, BLOCK_N), SPLIT_K)``.

    ``qw [rows, K/8]`` int32, ``s [rows, K/GROUP]`` fp16, ``z [rows, K/GROUP]`` uint8 (rows = N, or 2N with
    SwiGLU); ``m0..m4`` must be ``w4a16.NIBBLE_MASKS``. ``DEPTH`` (1 or 2): groups requested ahead.
    """
    GW: tl.constexpr = GROUP // 8  # words per group
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    K = KW * 8
    G = KW // GW
    per_split = tl.cdiv(G, SPLIT_K)
    g_begin = pid_k * per_split
    g_end = tl.minimum(g_begin + per_split, G)
    rows = qw_ptr + offs_n.to(tl.int64)[:, None] * KW  # row n's words are contiguous
    rows_up = rows + N.to(tl.int64) * KW  # SwiGLU: the matching up rows
    s_row = s_ptr + offs_n * G
    z_row = z_ptr + offs_n * G
    # the weights do not depend on the previous kernel: request the first group(s) before waiting for it
    words, s, z = _group_codes(rows, s_row, z_row, g_begin, g_end, mask_n, GW)
    words_up, s_up, z_up = words, s, z
    if EPILOGUE == 2:
        words_up, s_up, z_up = _group_codes(rows_up, s_row + N * G, z_row + N * G, g_begin, g_end, mask_n, GW)
    words2, s2, z2 = words, s, z
    words2_up, s2_up, z2_up = words, s, z
    if DEPTH == 2:
        words2, s2, z2 = _group_codes(rows, s_row, z_row, g_begin + 1, g_end, mask_n, GW)
        if EPILOGUE == 2:
            words2_up, s2_up, z2_up = _group_codes(rows_up, s_row + N * G, z_row + N * G, g_begin + 1, g_end,
                                                   mask_n, GW)
    pdl_wait(USE_PDL, EARLY)  # x (and the residual) are the previous kernel's output
    dtype: tl.constexpr = tl.float32 if DOT_F32 else x_ptr.dtype.element_ty
    SUMSQ: tl.constexpr = NORM and SPLIT_K == 1  # with split-K no program sees the whole row: separate pass
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    sq = tl.zeros([8 * GW if ONE_DOT else GW, BLOCK_M], dtype=tl.float32)
    if ONE_DOT:  # feature of column c of the joined operand, within a group (_joined's order)
        cc = tl.arange(0, 8 * GW)
        c_feat = GW * (cc % 8) + cc // 8
    for g in range(g_begin, g_end):
        cur, cur_s, cur_z = words, s, z
        cur_up, cur_s_up, cur_z_up = words_up, s_up, z_up
        if DEPTH == 2:
            words, s, z = words2, s2, z2
            words_up, s_up, z_up = words2_up, s2_up, z2_up
            words2, s2, z2 = _group_codes(rows, s_row, z_row, g + 2, g_end, mask_n, GW)
            if EPILOGUE == 2:
                words2_up, s2_up, z2_up = _group_codes(rows_up, s_row + N * G, z_row + N * G, g + 2, g_end,
                                                       mask_n, GW)
        else:
            words, s, z = _group_codes(rows, s_row, z_row, g + 1, g_end, mask_n, GW)
            if EPILOGUE == 2:
                words_up, s_up, z_up = _group_codes(rows_up, s_row + N * G, z_row + N * G, g + 1, g_end,
                                                    mask_n, GW)
        hi = cur >> 12
        zm = (cur_z.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)  # 2**23 + z
        hi_up = cur_up >> 12
        zm_up = (cur_z_up.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
        part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        part_up = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        if ONE_DOT:
            feat = g * GROUP + c_feat
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + feat[:, None], mask=mask_m[None, :], other=0.0)
            if SUMSQ:
                sq += xt.to(tl.float32) * xt.to(tl.float32)
            if NORM:
                xt = (xt.to(tl.float32) * tl.load(nw_ptr + feat).to(tl.float32)[:, None]).to(x_ptr.dtype.element_ty)
            xt = xt.to(dtype)
            part = _dot(_joined(cur, hi, zm, m0, m1, m2, m3, m4, dtype, BLOCK_N, GW), xt, part, DOT_F32)
            if EPILOGUE == 2:
                part_up = _dot(_joined(cur_up, hi_up, zm_up, m0, m1, m2, m3, m4, dtype, BLOCK_N, GW), xt,
                               part_up, DOT_F32)
        else:
            for j in tl.static_range(8):
                feat = g * GROUP + GW * j + tl.arange(0, GW)
                xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + feat[:, None], mask=mask_m[None, :],
                             other=0.0)
                if SUMSQ:
                    sq += xt.to(tl.float32) * xt.to(tl.float32)
                if NORM:
                    xt = (xt.to(tl.float32) * tl.load(nw_ptr + feat).to(tl.float32)[:, None]).to(
                        x_ptr.dtype.element_ty)
                xt = xt.to(dtype)
                part = _dot(_nibble(cur, hi, zm, j, m0, m1, m2, m3, m4, dtype), xt, part, DOT_F32)
                if EPILOGUE == 2:
                    part_up = _dot(_nibble(cur_up, hi_up, zm_up, j, m0, m1, m2, m3, m4, dtype), xt, part_up,
                                   DOT_F32)
        acc += part * cur_s.to(tl.float32)[:, None]
        if EPILOGUE == 2:
            acc_up += part_up * cur_s_up.to(tl.float32)[:, None]
    if NORM:
        if SUMSQ:
            r = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / K + eps)
        else:
            r = _row_rsqrt(x_ptr, stride_xm, offs_m, mask_m, K, eps, BLOCK_M, 256)
        acc = acc * r[None, :]
        acc_up = acc_up * r[None, :]
    _finish(tl.trans(acc), tl.trans(acc_up), out_ptr, res_ptr, ws_ptr, lock_ptr, pid_n, offs_m, offs_n,
            mask_m[:, None] & mask_n[None, :], N, stride_om, stride_rm, EPILOGUE, SPLIT_K)
