"""The decode GEMV over the row layout: ``out[b] = epilogue(W · x[b])`` for 1–8 activation rows, W as INT4
codes.

At batch 1 each weight is read once for 2 FLOPs: the limit is copy bandwidth (0.52 byte per weight), then
issue slots (an H100 has ~5 per INT4 weight at full bandwidth). Phase 0's bf16 GEMV design carried over to
INT4:

- **rows contiguous along K**: a program owns ``BLOCK_N`` rows and walks K in ``BLOCK_KW``-word slabs, each
  thread loading 16 bytes per row per slab; ``N / BLOCK_N`` programs keep every SM's memory pipe full;
- **requests early**: the next slab's codes before the current one is used, the first slab (and, with
  ``PREFETCH``, its scales and zero-points) before the PDL wait, since the weights do not depend on the
  previous kernel, and the residual right after it: no DRAM round trip between the last FMA and the store;
- **no masked-off slab** (``TAIL_KW``): a row's words past the last whole slab form one smaller slab
  (K = 5632: 512 + 256 words) instead of a mostly masked full one (every lane executes, masked or not);
- **few instructions per weight**: one LOP3 + one FADD (``w4a16._code_plus_magic``) + one FMA; zero-point and
  scale applied per group (``s·(Σ q·x − z·Σ x)``); with ``BLOCK_KW = 4 · 32 · num_warps`` the activation slab
  shares the word tile's layout (no shared-memory reshuffle). ``EARLY``: see ``launch._row_gemv``.

Fusions and roundings as ``w4a16``; ``SPLIT_K > 1`` goes through ``w4a16._finish``. Runs: ``NOTES.md``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from phase0_prototype.kernels.gemv import pdl_wait
from phase5_quantization.kernels.w4a16 import _code_plus_magic, _finish, _magic, _mask, _row_rsqrt, _zero


@triton.jit
def _x_nibble(x_ptr, nw_ptr, offs_b, mask_b, stride_xb, feat, mask_w, NORM: tl.constexpr,
              BLOCK_B: tl.constexpr):
    """The activations nibble ``j`` multiplies (``feat``): ``[BLOCK_KW]`` for one row, else
    ``[BLOCK_B, BLOCK_KW]``; also the raw values (for ``Σ x²``)."""
    if BLOCK_B == 1:
        raw = tl.load(x_ptr + feat, mask=mask_w, other=0.0).to(tl.float32)
    else:
        raw = tl.load(x_ptr + offs_b[:, None] * stride_xb + feat[None, :],
                      mask=mask_b[:, None] & mask_w[None, :], other=0.0).to(tl.float32)
    x = raw
    if NORM:
        g = tl.load(nw_ptr + feat, mask=mask_w, other=0.0).to(tl.float32)
        x = raw * (g if BLOCK_B == 1 else g[None, :])
    return x, raw


@triton.jit
def _slab(words, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3, m4,
          NORM: tl.constexpr, SUMSQ: tl.constexpr, GW: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr):
    """Per group of a slab: ``Σ q·x`` (``[BLOCK_B, BLOCK_N, groups]``), ``Σ x`` (``[BLOCK_B, groups]``) and
    ``Σ x²`` (``[BLOCK_B]``, when ``SUMSQ``).

    Several rows use a 3-D ``[BLOCK_B, BLOCK_N, BLOCK_KW]`` product (each code extracted once, multiplied by
    every row); Triton lays it out apart from the 2-D loads, so codes and activations pass through shared
    memory once per nibble — correct, not tuned (batched decode is not a target of this phase).
    """
    words_hi = words >> 12
    if BLOCK_B == 1:
        part = tl.zeros([BLOCK_N, BLOCK_KW], dtype=tl.float32)
        xs = tl.zeros([BLOCK_KW], dtype=tl.float32)
    else:
        part = tl.zeros([BLOCK_B, BLOCK_N, BLOCK_KW], dtype=tl.float32)
        xs = tl.zeros([BLOCK_B, BLOCK_KW], dtype=tl.float32)
    sq = tl.zeros_like(xs)
    for j in tl.static_range(8):
        x, raw = _x_nibble(x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base + GW * j, mask_w, NORM, BLOCK_B)
        if SUMSQ:
            sq += raw * raw
        xs += x
        q = _code_plus_magic(words, words_hi, j, _mask(j, m0, m1, m2, m3, m4)) - _magic(j)
        if BLOCK_B == 1:
            part += q * x[None, :]
        else:
            part += q[None, :, :] * x[:, None, :]
    NG: tl.constexpr = BLOCK_KW // GW
    if BLOCK_B == 1:
        part_g = tl.sum(tl.reshape(part, [BLOCK_N, NG, GW]), axis=2)[None, :, :]
        xs_g = tl.sum(tl.reshape(xs, [NG, GW]), axis=1)[None, :]
        sq_t = tl.sum(sq)[None]
    else:
        part_g = tl.sum(tl.reshape(part, [BLOCK_B, BLOCK_N, NG, GW]), axis=3)
        xs_g = tl.sum(tl.reshape(xs, [BLOCK_B, NG, GW]), axis=2)
        sq_t = tl.sum(sq, axis=1)
    return part_g, xs_g, sq_t


@triton.jit
def _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw0, kw_end, GW: tl.constexpr, NG: tl.constexpr,
                  SWIGLU: tl.constexpr):
    """The scales and zero-points (``[BLOCK_N, groups]`` fp32) of the slab starting at word ``kw0``: gate
    rows, and the matching up rows when ``SWIGLU`` (else the same values again)."""
    offs_g = kw0 // GW + tl.arange(0, NG)
    mask_g = mask_n[:, None] & (offs_g * GW < kw_end)[None, :]
    gidx = offs_n[:, None] * G + offs_g[None, :]
    s = tl.load(s_ptr + gidx, mask=mask_g, other=0.0, eviction_policy="evict_first").to(tl.float32)
    z = _zero(z_ptr + gidx, mask_g)
    s_up, z_up = s, z
    if SWIGLU:
        s_up = tl.load(s_ptr + N * G + gidx, mask=mask_g, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
        z_up = _zero(z_ptr + N * G + gidx, mask_g)
    return s, z, s_up, z_up


@triton.jit
def _apply_groups(part_g, xs_g, s, z):
    """``Σ_g s_g · (Σ q·x − z_g · Σ x)`` -> ``[BLOCK_B, BLOCK_N]`` (``s``, ``z``: ``[BLOCK_N, groups]``)."""
    return tl.sum((part_g - z[None, :, :] * xs_g[:, None, :]) * s[None, :, :], axis=2)


@triton.jit
def _slab_codes(rows, rows_up, offs_w, mask_n, kw_lim, SWIGLU: tl.constexpr):
    """The ``[BLOCK_N, slab]`` codes at words ``offs_w`` (masked past ``kw_lim``), and the up rows' with
    SwiGLU."""
    wmask = mask_n[:, None] & (offs_w < kw_lim)[None, :]
    words = tl.load(rows + offs_w[None, :], mask=wmask, other=0, eviction_policy="evict_first")
    words_up = words
    if SWIGLU:
        words_up = tl.load(rows_up + offs_w[None, :], mask=wmask, other=0, eviction_policy="evict_first")
    return words, words_up


@triton.jit
def _slab_sums(words, words_up, s, z, s_up, z_up, offs_w, kw_lim, x_ptr, nw_ptr, offs_b, mask_b, stride_xb,
               m0, m1, m2, m3, m4, GROUP: tl.constexpr, NORM: tl.constexpr, SUMSQ: tl.constexpr,
               SWIGLU: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, SLAB: tl.constexpr):
    """One slab's contribution to the accumulators (``[BLOCK_B, BLOCK_N]``; the up rows' with SwiGLU, else the
    same tensor again) and to ``Σ x²`` (``[BLOCK_B]``, when ``SUMSQ``)."""
    GW: tl.constexpr = GROUP // 8
    base = (offs_w // GW) * GROUP + offs_w % GW  # feature of nibble 0 of each word
    mask_w = offs_w < kw_lim
    part, xs, sq = _slab(words, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3, m4,
                         NORM, SUMSQ, GW, BLOCK_B, BLOCK_N, SLAB)
    acc = _apply_groups(part, xs, s, z)
    acc_up = acc
    if SWIGLU:
        part, xs, _ = _slab(words_up, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3,
                            m4, NORM, False, GW, BLOCK_B, BLOCK_N, SLAB)
        acc_up = _apply_groups(part, xs, s_up, z_up)
    return acc, acc_up, sq


@triton.jit
def _row_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, lock_ptr,
                     B, N, KW, stride_xb, stride_ob, stride_rb, eps, m0, m1, m2, m3, m4,
                     GROUP: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, USE_PDL: tl.constexpr,
                     EARLY: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_KW: tl.constexpr, SPLIT_K: tl.constexpr, PREFETCH: tl.constexpr = True,
                     TAIL_KW: tl.constexpr = 0):
    """``out[b, n] = epilogue(Σ_k x[b, k] · W[n, k])`` for ``b < B ≤ BLOCK_B``; grid
    ``(cdiv(N, BLOCK_N), SPLIT_K)``.

    ``qw [rows, K/8]`` int32 and ``s``/``z [rows, K/GROUP]`` (rows = N, or 2N with SwiGLU); ``m0..m4`` must be
    ``w4a16.NIBBLE_MASKS``. ``PREFETCH``: each slab's scales and zero-points are requested with its codes (the
    first slab's before the PDL wait) and the residual right after the wait; else where they are used.
    ``TAIL_KW`` (a power of two < ``BLOCK_KW``, ``SPLIT_K == 1``): the row's last ``KW mod BLOCK_KW`` words
    are one ``[BLOCK_N, TAIL_KW]`` slab, requested before the PDL wait with the first, instead of a
    ``BLOCK_KW`` slab mostly masked off (K = 5632: 704 words = 512 + 192, a 256-word tail instead of a second
    512-word slab).
    """
    GW: tl.constexpr = GROUP // 8  # words per group
    NG: tl.constexpr = BLOCK_KW // GW  # groups per slab
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_b = tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    K = KW * 8  # KW (words per row) is the argument: its divisibility by 16 is what lets masked loads be 16 bytes
    G = KW // GW
    per_split = tl.cdiv(tl.cdiv(KW, SPLIT_K), BLOCK_KW) * BLOCK_KW
    kw_begin = pid_k * per_split
    kw_end = tl.minimum(kw_begin + per_split, KW)
    kw_stop = kw_end  # the full slabs end here; a TAIL_KW slab covers the rest
    if TAIL_KW > 0:
        kw_stop = kw_begin + ((kw_end - kw_begin) // BLOCK_KW) * BLOCK_KW
    rows = qw_ptr + offs_n.to(tl.int64)[:, None] * KW  # row n's words are contiguous
    rows_up = rows + N.to(tl.int64) * KW  # SwiGLU: the matching up row
    words, words_up = _slab_codes(rows, rows_up, kw_begin + tl.arange(0, BLOCK_KW), mask_n, kw_stop,
                                  EPILOGUE == 2)
    # the first slab's scales and zero-points too: requested after the loop's math they put a DRAM round trip
    # between the last FMA and the store of every program
    if PREFETCH:
        s, z, s_up, z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw_begin, kw_stop, GW, NG,
                                         EPILOGUE == 2)
    if TAIL_KW > 0:
        offs_t = kw_stop + tl.arange(0, TAIL_KW)
        t_words, t_words_up = _slab_codes(rows, rows_up, offs_t, mask_n, kw_end, EPILOGUE == 2)
        t_s, t_z, t_s_up, t_z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw_stop, kw_end, GW,
                                                 TAIL_KW // GW, EPILOGUE == 2)
    pdl_wait(USE_PDL, EARLY)  # x (and the residual) are the previous kernel's output
    RES_EARLY: tl.constexpr = PREFETCH and EPILOGUE == 1 and SPLIT_K == 1
    if RES_EARLY:  # an L2 round trip that then overlaps the activation loads instead of following the math
        res = tl.load(res_ptr + offs_b[:, None] * stride_rb + offs_n[None, :],
                      mask=mask_b[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    SUMSQ: tl.constexpr = NORM and SPLIT_K == 1  # with split-K no program sees the whole row: separate pass
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    sumsq = tl.zeros([BLOCK_B], dtype=tl.float32)
    for kw0 in range(kw_begin, kw_stop, BLOCK_KW):
        offs_w = kw0 + tl.arange(0, BLOCK_KW)
        cur, cur_up = words, words_up
        if PREFETCH:
            cur_s, cur_z, cur_s_up, cur_z_up = s, z, s_up, z_up
        else:
            cur_s, cur_z, cur_s_up, cur_z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw0, kw_stop,
                                                             GW, NG, EPILOGUE == 2)
        # the next slab (masked off past the end): codes, scales and zero-points
        words, words_up = _slab_codes(rows, rows_up, offs_w + BLOCK_KW, mask_n, kw_stop, EPILOGUE == 2)
        if PREFETCH:
            s, z, s_up, z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw0 + BLOCK_KW, kw_stop, GW,
                                             NG, EPILOGUE == 2)
        a, a_up, sq = _slab_sums(cur, cur_up, cur_s, cur_z, cur_s_up, cur_z_up, offs_w, kw_stop, x_ptr,
                                 nw_ptr, offs_b, mask_b, stride_xb, m0, m1, m2, m3, m4, GROUP, NORM, SUMSQ,
                                 EPILOGUE == 2, BLOCK_B, BLOCK_N, BLOCK_KW)
        acc += a
        if EPILOGUE == 2:
            acc_up += a_up
        sumsq += sq
    if TAIL_KW > 0:
        a, a_up, sq = _slab_sums(t_words, t_words_up, t_s, t_z, t_s_up, t_z_up, offs_t, kw_end, x_ptr, nw_ptr,
                                 offs_b, mask_b, stride_xb, m0, m1, m2, m3, m4, GROUP, NORM, SUMSQ,
                                 EPILOGUE == 2, BLOCK_B, BLOCK_N, TAIL_KW)
        acc += a
        if EPILOGUE == 2:
            acc_up += a_up
        sumsq += sq
    if NORM:
        if SUMSQ:
            r = 1.0 / tl.sqrt(sumsq / K + eps)
        else:
            r = _row_rsqrt(x_ptr, stride_xb, offs_b, mask_b, K, eps, BLOCK_B, 256)
        acc = acc * r[:, None]
        acc_up = acc_up * r[:, None]
    if RES_EARLY:  # _epilogue's residual add, with the residual already here
        y = acc.to(out_ptr.dtype.element_ty).to(tl.float32) + res
        tl.store(out_ptr + offs_b[:, None] * stride_ob + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=mask_b[:, None] & mask_n[None, :])
    else:
        _finish(acc, acc_up, out_ptr, res_ptr, ws_ptr, lock_ptr, pid_n, offs_b, offs_n,
                mask_b[:, None] & mask_n[None, :], N, stride_ob, stride_rb, EPILOGUE, SPLIT_K)
