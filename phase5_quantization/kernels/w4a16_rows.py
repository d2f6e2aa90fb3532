"""The decode GEMV over the row layout (``layout.KernelWeight`` with ``row_major``): ``out[b] = epilogue(W · x[b])``
for 1–8 activation rows, W as INT4 codes.

At batch 1 a projection reads each weight once and does 2 FLOPs with it, so the limit is **copy bandwidth**:
0.52 byte per weight (codes + group scale and zero-point) at ~3 TB/s. The design is phase 0's bf16 GEMV
(``phase0_prototype.kernels.gemv``, ~90 % of copy bandwidth) carried over to INT4:

- **rows contiguous along K**: a program owns ``BLOCK_N`` output rows (1, 2, 4 …) and walks K in slabs of
  ``BLOCK_KW`` packed words (256 words = 2048 input features = 1 KB per row), every thread loading 16 bytes
  (4 words) per row per slab; a grid of ``N / BLOCK_N`` programs (hundreds to thousands) keeps every SM's
  memory pipe full, where the ``[K/8, N]`` kernel (``w4a16._gemv_kernel``) had few programs and 64-byte
  segments;
- **a two-deep pipeline by hand**: the next slab's codes are requested before the current one is used (even
  when the row is one slab and that load is masked off: dropping it, as phase 0's GEMV does with
  ``ONE_SLAB``, measured slower here on an H100 — qkv 3.9 → 4.2 µs, o 3.3 → 4.9 µs in the sweep), and
  under programmatic dependent launch (``USE_PDL``) the first slab is requested *before* waiting for the
  previous kernel (the codes do not depend on it), so this kernel's ramp-up hides the previous one's tail,
  and the next kernel may launch once this one's wait is over (``EARLY``: before it, as phase 0's GEMV does — slower
  for these short kernels, ``launch.ROW_EARLY_LAUNCH`` says why);
- **every DRAM round trip requested early** (``PREFETCH``, ``launch.ROW_PREFETCH``): a slab's scales and zero-points
  travel with its codes (the first slab's before the PDL wait, the next one's a slab ahead) and the residual is
  read right after the wait. Requested where they are used, they put a DRAM round trip between the last FMA and
  the store of every program: on an H100 the INT4 decode step replayed in 638 µs with them early against 669 µs
  (the four projections of a layer chained: 22.3 vs 24.1 µs; ``scripts/gpu_int4_step.py``, 2026-11-23).
  Tried and dropped in the same runs: asking L2 for the *next* projection's weight (``prefetch.global.L2``, the
  programs sharing its 128-byte lines, before the PDL wait, after it or after the loop; ``evict_last`` or not):
  the step took 681–777 µs against 645–658 µs without — the prefetch's DRAM traffic lands on top of this
  kernel's own loads instead of in the idle time between kernels;
- **no masked-off slab** (``TAIL_KW``, ``launch.ROW_TAIL``): K = 5632 is 704 words per row, 512 + 192; a second
  512-word slab would spend a full slab's instructions on 192 words (every lane executes, masked or not), so the
  row ends in a 256-word slab requested with the first. On an H100 the down projection took 5.17 µs per layer
  instead of 5.56–5.62 and the INT4 step replayed in 593 µs against 624 µs with the masked slab;
- **few instructions per weight** (at 3 TB/s an H100 has ~5 issue slots per INT4 weight): nibble ``j`` of a
  word is masked in place and OR-ed into the exponent of a power of two (``w4a16._code_plus_magic``: one
  LOP3 + one FADD, no shift for 5 of the 8 nibbles, no int→float conversion), then one FMA with the
  activation. The zero-point and scale are applied per *group*, not per weight:
  ``Σ_k s·(q_k − z)·x_k = s·(Σ_k q_k·x_k − z·Σ_k x_k)``, so per-word partials are summed over each group's 16
  words (a reshape + reduction) and only then meet the group's scale and zero-point;
- **contiguous activations per nibble**: inside a group the row layout keeps the kernel layout's nibble
  order (nibble ``j`` of word ``w`` = feature ``128g + 16j + w``), so the activations nibble ``j`` of a
  thread's 4 words multiplies are 4 consecutive features — one vector load, shared by the ``BLOCK_N`` rows.
  With ``BLOCK_KW = 4 · 32 · num_warps`` the activation slab and one row of the word tile have the same
  layout (4 per thread), so no shared-memory reshuffle sits between them (other sizes are correct, and pay it).

**Issue slots are the second limit.** Compiled for sm_90 (Triton 3.9, ``BLOCK_N=4, BLOCK_KW=256``, 2 warps), the
loop body issues ~5.0 instructions per weight: 1 LOP3 + 1 FADD + 1 FFMA per weight, the rest per activation
(bf16 → fp32, ``Σ x``, the RMSNorm multiply: shared by the ``BLOCK_N`` rows) and per group. An H100 issues
~33·10¹² thread-instructions per second, ~6.7·10¹² weights/s at 5 per weight, ≈ 3.5 TB/s of INT4: just above
its copy bandwidth, so the kernel can only approach the roof with enough warps to keep every scheduler
issuing — and larger ``BLOCK_N`` (fewer instructions per weight) trades against fewer programs.
(Compiled, not yet timed: shifting every nibble to bit 12 or 16 — four shifts per word — makes each code the float
``M + q`` with ``M`` = 2048 or 128, so the per-weight FADD can go and ``M·Σx`` come off per group. It cuts ~10 % of the
instructions, but ptxas keeps the four shifted copies live — 71 → 167 registers at ``BLOCK_N=4, BLOCK_KW=256`` —
and the fp32 partials lose ~7 bits to ``M``: ~1e-4 relative error, over the fp32 tests' tolerance.)

Fusions as ``w4a16``'s other kernels: RMSNorm prologue (``Σ x²`` accumulated in the same loop; with split-K
a separate pass over the row, from L2), residual epilogue (in place when ``out is residual``) and SwiGLU
(``[gate; up]`` rows: each program reads gate rows ``n`` and up rows ``N + n``). Roundings as the unfused
code (``w4a16._epilogue``). ``SPLIT_K > 1`` splits K across programs through ``w4a16._finish``'s workspace.
"""

from __future__ import annotations

import triton
import triton.language as tl

from phase0_prototype.kernels.gemv import pdl_wait
from phase5_quantization.kernels.w4a16 import _code_plus_magic, _finish, _magic, _mask, _row_rsqrt, _zero


@triton.jit
def _x_nibble(x_ptr, nw_ptr, offs_b, mask_b, stride_xb, feat, mask_w, NORM: tl.constexpr, BLOCK_B: tl.constexpr):
    """The activations nibble ``j`` multiplies (``feat``): ``[BLOCK_KW]`` for one row, else ``[BLOCK_B, BLOCK_KW]``;
    also the raw values (for ``Σ x²``)."""
    if BLOCK_B == 1:
        raw = tl.load(x_ptr + feat, mask=mask_w, other=0.0).to(tl.float32)
    else:
        raw = tl.load(x_ptr + offs_b[:, None] * stride_xb + feat[None, :], mask=mask_b[:, None] & mask_w[None, :],
                      other=0.0).to(tl.float32)
    x = raw
    if NORM:
        g = tl.load(nw_ptr + feat, mask=mask_w, other=0.0).to(tl.float32)
        x = raw * (g if BLOCK_B == 1 else g[None, :])
    return x, raw


@triton.jit
def _slab(words, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3, m4,
          NORM: tl.constexpr, SUMSQ: tl.constexpr, GW: tl.constexpr, BLOCK_B: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr):
    """Per group of a slab: ``Σ q·x`` (``[BLOCK_B, BLOCK_N, groups]``), ``Σ x`` (``[BLOCK_B, groups]``) and ``Σ x²``
    (``[BLOCK_B]``, when ``SUMSQ``).

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
    """The scales and zero-points (``[BLOCK_N, groups]`` fp32) of the slab starting at word ``kw0``: gate rows,
    and the matching up rows when ``SWIGLU`` (else the same values again)."""
    offs_g = kw0 // GW + tl.arange(0, NG)
    mask_g = mask_n[:, None] & (offs_g * GW < kw_end)[None, :]
    gidx = offs_n[:, None] * G + offs_g[None, :]
    s = tl.load(s_ptr + gidx, mask=mask_g, other=0.0, eviction_policy="evict_first").to(tl.float32)
    z = _zero(z_ptr + gidx, mask_g)
    s_up, z_up = s, z
    if SWIGLU:
        s_up = tl.load(s_ptr + N * G + gidx, mask=mask_g, other=0.0, eviction_policy="evict_first").to(tl.float32)
        z_up = _zero(z_ptr + N * G + gidx, mask_g)
    return s, z, s_up, z_up


@triton.jit
def _apply_groups(part_g, xs_g, s, z):
    """``Σ_g s_g · (Σ q·x − z_g · Σ x)`` -> ``[BLOCK_B, BLOCK_N]`` (``s``, ``z``: ``[BLOCK_N, groups]``)."""
    return tl.sum((part_g - z[None, :, :] * xs_g[:, None, :]) * s[None, :, :], axis=2)


@triton.jit
def _slab_codes(rows, rows_up, offs_w, mask_n, kw_lim, SWIGLU: tl.constexpr):
    """The ``[BLOCK_N, slab]`` codes at words ``offs_w`` (masked past ``kw_lim``), and the up rows' with SwiGLU."""
    wmask = mask_n[:, None] & (offs_w < kw_lim)[None, :]
    words = tl.load(rows + offs_w[None, :], mask=wmask, other=0, eviction_policy="evict_first")
    words_up = words
    if SWIGLU:
        words_up = tl.load(rows_up + offs_w[None, :], mask=wmask, other=0, eviction_policy="evict_first")
    return words, words_up


@triton.jit
def _slab_sums(words, words_up, s, z, s_up, z_up, offs_w, kw_lim, x_ptr, nw_ptr, offs_b, mask_b, stride_xb,
               m0, m1, m2, m3, m4, GROUP: tl.constexpr, NORM: tl.constexpr, SUMSQ: tl.constexpr, SWIGLU: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, SLAB: tl.constexpr):
    """One slab's contribution to the accumulators (``[BLOCK_B, BLOCK_N]``; the up rows' with SwiGLU, else the same
    tensor again) and to ``Σ x²`` (``[BLOCK_B]``, when ``SUMSQ``)."""
    GW: tl.constexpr = GROUP // 8
    base = (offs_w // GW) * GROUP + offs_w % GW  # feature of nibble 0 of each word
    mask_w = offs_w < kw_lim
    part, xs, sq = _slab(words, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3, m4,
                         NORM, SUMSQ, GW, BLOCK_B, BLOCK_N, SLAB)
    acc = _apply_groups(part, xs, s, z)
    acc_up = acc
    if SWIGLU:
        part, xs, _ = _slab(words_up, x_ptr, nw_ptr, offs_b, mask_b, stride_xb, base, mask_w, m0, m1, m2, m3, m4,
                            NORM, False, GW, BLOCK_B, BLOCK_N, SLAB)
        acc_up = _apply_groups(part, xs, s_up, z_up)
    return acc, acc_up, sq


@triton.jit
def _row_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, lock_ptr,
                     B, N, KW, stride_xb, stride_ob, stride_rb, eps, m0, m1, m2, m3, m4,
                     GROUP: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, USE_PDL: tl.constexpr,
                     EARLY: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
                     SPLIT_K: tl.constexpr, PREFETCH: tl.constexpr = True, TAIL_KW: tl.constexpr = 0):
    """``out[b, n] = epilogue(Σ_k x[b, k] · W[n, k])`` for ``b < B ≤ BLOCK_B``; grid ``(cdiv(N, BLOCK_N), SPLIT_K)``.

    ``qw [rows, K/8]`` int32 and ``s``/``z [rows, K/GROUP]`` (rows = N, or 2N with SwiGLU); ``m0..m4`` must be
    ``w4a16.NIBBLE_MASKS``. ``PREFETCH``: each slab's scales and zero-points are requested with its codes (the
    first slab's before the PDL wait) and the residual right after the wait; else where they are used (A/B).
    ``TAIL_KW`` (a power of two < ``BLOCK_KW``, ``SPLIT_K == 1``): the row's last ``KW mod BLOCK_KW`` words are one
    ``[BLOCK_N, TAIL_KW]`` slab, requested before the PDL wait with the first, instead of a ``BLOCK_KW`` slab
    mostly masked off (K = 5632: 704 words = 512 + 192, a 256-word tail instead of a second 512-word slab).
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
    words, words_up = _slab_codes(rows, rows_up, kw_begin + tl.arange(0, BLOCK_KW), mask_n, kw_stop, EPILOGUE == 2)
    # the first slab's scales and zero-points too: requested after the loop's math they put a DRAM round trip
    # between the last FMA and the store of every program
    if PREFETCH:
        s, z, s_up, z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw_begin, kw_stop, GW, NG, EPILOGUE == 2)
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
            cur_s, cur_z, cur_s_up, cur_z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw0, kw_stop, GW, NG,
                                                             EPILOGUE == 2)
        # the next slab (masked off past the end): codes, scales and zero-points
        words, words_up = _slab_codes(rows, rows_up, offs_w + BLOCK_KW, mask_n, kw_stop, EPILOGUE == 2)
        if PREFETCH:
            s, z, s_up, z_up = _group_params(s_ptr, z_ptr, N, G, offs_n, mask_n, kw0 + BLOCK_KW, kw_stop, GW, NG,
                                             EPILOGUE == 2)
        a, a_up, sq = _slab_sums(cur, cur_up, cur_s, cur_z, cur_s_up, cur_z_up, offs_w, kw_stop, x_ptr, nw_ptr, offs_b,
                                 mask_b, stride_xb, m0, m1, m2, m3, m4, GROUP, NORM, SUMSQ, EPILOGUE == 2, BLOCK_B,
                                 BLOCK_N, BLOCK_KW)
        acc += a
        if EPILOGUE == 2:
            acc_up += a_up
        sumsq += sq
    if TAIL_KW > 0:
        a, a_up, sq = _slab_sums(t_words, t_words_up, t_s, t_z, t_s_up, t_z_up, offs_t, kw_end, x_ptr, nw_ptr, offs_b,
                                 mask_b, stride_xb, m0, m1, m2, m3, m4, GROUP, NORM, SUMSQ, EPILOGUE == 2, BLOCK_B,
                                 BLOCK_N, TAIL_KW)
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
