"""W4A16 in Triton: ``y = x · Wᵀ`` with ``W`` as INT4 codes (``layout.KernelWeight``) dequantized in
registers, and what every W4A16 kernel shares. Only the codes (and one fp16 scale + one uint8 zero-point per
128 weights) cross memory; the float weight never exists.

- ``_gemm_kernel`` (prefill; either layout, through strides): per group, ``q − z`` (small integers, exact in
  bf16/fp16) enters one ``tl.dot`` per 16 features accumulating in fp32, and the group's scale multiplies that
  partial: ``y = Σ_g s_g · (x_g · (q_g − z_g))``: no rounding of dequantized weights.
- ``_gemv_kernel`` (one row, the ``col`` layout): a program owns ``BLOCK_N`` outputs and walks K in slabs of
  ``BLOCK_KW`` words spread over its warps, reduced once at the end; ``SPLIT_K`` splits K across programs.
- **No int→float conversion** (``cvt`` runs at a quarter of the FMA rate): a code OR-ed into the mantissa of
  2²³ is the float ``2²³ + q``, so ``q − z`` is one exact subtract (``_code_plus_magic``).
- **Split-K** (``_finish``): relaxed atomic adds of fp32 partials into a workspace at L2, one ``acq_rel``
  ticket per tile; the last program reads back, re-zeroes and runs the epilogue. One kernel, no memset (graph
  capturable); the workspace is per device, so kernels must not run on two streams at once.
- **Fusions**: RMSNorm prologue, residual add (in place when ``out is residual``), SwiGLU over ``[gate; up]``;
  the projection is rounded to the activation dtype before the residual or SiLU, as phase 0's unfused code.
"""

from __future__ import annotations

import triton
import triton.language as tl

from phase0_prototype.kernels.gemv import pdl_wait

NONE, RESIDUAL, SWIGLU = 0, 1, 2
NIBBLE_MASKS = (0xF, 0xF0, 0xF00, 0xF000, 0xF0000)  # the kernels' m0..m4 arguments (see _code)


@triton.jit
def _mask(j: tl.constexpr, m0, m1, m2, m3, m4):
    """``0xF << 4j`` for codes 0..4, and for codes 5..7 (which sit at positions 2..4 of ``words >> 12``)."""
    if j == 0:
        return m0
    elif j == 1:
        return m1
    elif j == 2 or j == 5:
        return m2
    elif j == 3 or j == 6:
        return m3
    else:
        return m4


@triton.jit
def _code_plus_magic(words, words_hi, j: tl.constexpr, mask):
    """Code ``j`` of each word as the exact float32 ``2**(23 - 4j') + q`` (subtract ``_magic(j)`` for ``q``).

    The nibble is masked *in place* and OR-ed into the exponent of ``2**(23 - 4j')``, whose mantissa unit is
    ``2**-4j'``. Only nibbles 0..4 lie inside the 23-bit mantissa, so codes 5..7 come from ``words_hi =
    words >> 12`` (at positions ``j' = j - 3``). ``mask`` (``0xF << 4j'``) is a kernel *argument*: it lives in
    the constant bank, and AND + OR compile to one LOP3 (two immediates would need two instructions).
    """
    jj: tl.constexpr = j if j < 5 else j - 3
    src = words if j < 5 else words_hi
    return ((src & mask) | ((150 - 4 * jj) << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _magic(j: tl.constexpr):
    jj: tl.constexpr = j if j < 5 else j - 3
    return 2.0 ** (23 - 4 * jj)


@triton.jit
def _zero(z_ptrs, mask):
    """uint8 zero-points as float32, by the mantissa trick on 2**23 (no int→float conversion)."""
    bits = tl.load(z_ptrs, mask=mask, other=0).to(tl.int32) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _row_rsqrt(x_ptr, stride_xm, offs_m, mask_m, K, eps, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """``rsqrt(mean(x²) + eps)`` per row (RMSNorm's factor), reading whole rows."""
    sq = tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        offs_k = k0 + tl.arange(0, CHUNK)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)
        sq += x * x
    return 1.0 / tl.sqrt(tl.sum(sq, axis=1) / K + eps)


@triton.jit
def _epilogue(acc, acc_up, out_ptr, res_ptr, offs_m, offs_n, mask, stride_om, stride_rm,
              EPILOGUE: tl.constexpr):
    dtype = out_ptr.dtype.element_ty
    y = acc.to(dtype).to(tl.float32)
    if EPILOGUE == 1:
        y = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                    other=0.0).to(tl.float32) + y
    if EPILOGUE == 2:
        silu = (y / (1.0 + tl.exp(-y))).to(dtype).to(tl.float32)
        y = silu * acc_up.to(dtype).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y.to(dtype), mask=mask)


@triton.jit
def _finish(acc, acc_up, out_ptr, res_ptr, ws_ptr, lock_ptr, tile, offs_m, offs_n, mask, N, stride_om,
            stride_rm, EPILOGUE: tl.constexpr, SPLIT_K: tl.constexpr):
    """Epilogue directly, or (``SPLIT_K > 1``) through the workspace by the program that finishes the tile
    last.

    Only the ticket orders memory (``acq_rel``: its release covers the partials every thread of the program
    added before the barrier, its acquire the partials of the programs before); the partial adds, the
    read-back and the lock's reset are relaxed. Each relaxed add is a fire-and-forget reduction at L2;
    ``acq_rel`` on every add would wrap each in a GPU-wide fence and wait for it: a chain of L2 round trips
    per program."""
    if SPLIT_K == 1:
        _epilogue(acc, acc_up, out_ptr, res_ptr, offs_m, offs_n, mask, stride_om, stride_rm, EPILOGUE)
    else:
        ws = ws_ptr + offs_m[:, None] * (2 * N) + offs_n[None, :]  # [M, 2N] fp32: sums, then up-sums (SwiGLU)
        tl.atomic_add(ws, acc, mask=mask, sem="relaxed")
        if EPILOGUE == 2:
            tl.atomic_add(ws + N, acc_up, mask=mask, sem="relaxed")
        tl.debug_barrier()  # every thread's partials are in before the ticket is drawn
        ticket = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            zero = tl.zeros_like(acc)
            # read at L2, where every partial was added
            total = tl.atomic_add(ws, zero, mask=mask, sem="relaxed")
            total_up = total
            if EPILOGUE == 2:
                total_up = tl.atomic_add(ws + N, zero, mask=mask, sem="relaxed")
            tl.store(ws, zero, mask=mask)  # nobody else touches this tile until the next launch
            if EPILOGUE == 2:
                tl.store(ws + N, zero, mask=mask)
            tl.atomic_xchg(lock_ptr + tile, 0, sem="relaxed")
            _epilogue(total, total_up, out_ptr, res_ptr, offs_m, offs_n, mask, stride_om, stride_rm, EPILOGUE)


@triton.jit
def _gemv_group_part(words, x_ptr, nw_ptr, xbase, mask_r, m0, m1, m2, m3, m4, NORM: tl.constexpr):
    """``Σ_j x[feature(j)] · q_j`` per word and ``Σ_j x[feature(j)]`` per word-row (for the zero-points)."""
    words_hi = words >> 12
    part = tl.zeros(words.shape, dtype=tl.float32)
    xs = tl.zeros(xbase.shape, dtype=tl.float32)
    for j in tl.static_range(8):
        # [rows, 1] loads (not [rows]): they take the word tile's row layout, no shared-memory reshuffle
        xj = tl.load(x_ptr + xbase + 16 * j, mask=mask_r, other=0.0).to(tl.float32)
        if NORM:
            xj = xj * tl.load(nw_ptr + xbase + 16 * j, mask=mask_r, other=0.0).to(tl.float32)
        xs += xj
        q = _code_plus_magic(words, words_hi, j, _mask(j, m0, m1, m2, m3, m4)) - _magic(j)
        part += q * xj[:, None]
    return part, xs


@triton.jit(do_not_specialize=["one"])
def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, lock_ptr,
                 N, K, ldw, eps, M_KEY, m0, m1, m2, m3, m4, one,
                 GROUP: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, USE_PDL: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr, SPLIT_K: tl.constexpr):
    """One row: ``out[n] = epilogue(Σ_k x[k] · W[n, k])``; grid ``(cdiv(N, BLOCK_N), SPLIT_K)``.

    The ``[BLOCK_KW, BLOCK_N]`` word tile is spread over all warps (K split across them); each thread keeps
    fp32 partials per (word-row, feature) and the one reduction over K happens after the loop. The next
    tile's codes are requested before the current one is used (a two-deep pipeline by hand), and the first
    tile before waiting for the previous kernel under programmatic dependent launch (``USE_PDL``): the
    codes do not depend on it, so this kernel's ramp-up overlaps the previous one's tail.
    ``m0..m4`` must be ``NIBBLE_MASKS`` and ``one`` 1: a runtime factor (not specialised) on the activation
    offsets hides their contiguity from the coalescing pass, so the activation loads keep the word tile's row
    layout instead of a 1-D one that costs a shared-memory reshuffle per code position.
    """
    GW: tl.constexpr = GROUP // 8  # words per group
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    KW = K // 8
    per_split = tl.cdiv(tl.cdiv(KW, SPLIT_K), BLOCK_KW) * BLOCK_KW
    kw_begin = pid_k * per_split
    kw_end = tl.minimum(kw_begin + per_split, KW)
    offs_w = tl.arange(0, BLOCK_KW)
    rows = kw_begin + offs_w
    mask = (rows < kw_end)[:, None] & mask_n[None, :]
    words = tl.load(qw_ptr + rows[:, None] * ldw + offs_n[None, :], mask=mask, other=0,
                    eviction_policy="evict_first")
    words_up = words
    if EPILOGUE == 2:
        words_up = tl.load(qw_ptr + rows[:, None] * ldw + offs_n[None, :] + N, mask=mask, other=0,
                           eviction_policy="evict_first")
    pdl_wait(USE_PDL, False)  # x (and the residual) are the previous kernel's output
    r = 1.0
    if NORM:
        r = tl.sum(_row_rsqrt(x_ptr, 0, tl.arange(0, 1), tl.arange(0, 1) < 1, K, eps, 1, 1024))
    acc = tl.zeros([BLOCK_KW, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_KW, BLOCK_N], dtype=tl.float32)
    for kw0 in range(kw_begin, kw_end, BLOCK_KW):
        rows = kw0 + offs_w  # word-rows: group rows // 16, word rows % 16
        mask_r = rows < kw_end
        mask = mask_r[:, None] & mask_n[None, :]
        cur, cur_up = words, words_up
        nxt = rows + BLOCK_KW
        nmask = (nxt < kw_end)[:, None] & mask_n[None, :]
        words = tl.load(qw_ptr + nxt[:, None] * ldw + offs_n[None, :], mask=nmask, other=0,
                        eviction_policy="evict_first")
        if EPILOGUE == 2:
            words_up = tl.load(qw_ptr + nxt[:, None] * ldw + offs_n[None, :] + N, mask=nmask, other=0,
                               eviction_policy="evict_first")
        xbase = (rows + (GROUP - GW) * (rows // GW)) * one  # feature of code 0: 128g + w
        gp = (rows // GW)[:, None] * ldw + offs_n[None, :]
        part, xs = _gemv_group_part(cur, x_ptr, nw_ptr, xbase, mask_r, m0, m1, m2, m3, m4, NORM)
        # Σ_j x_j (q_j − z) = Σ_j x_j q_j − z · Σ_j x_j, times the group's scale
        acc += (part - _zero(z_ptr + gp,
                             mask) * xs[:, None]) * tl.load(s_ptr + gp, mask=mask, other=0.0).to(tl.float32)
        if EPILOGUE == 2:
            part, xs = _gemv_group_part(cur_up, x_ptr, nw_ptr, xbase, mask_r, m0, m1, m2, m3, m4, NORM)
            acc_up += ((part - _zero(z_ptr + gp + N, mask) * xs[:, None])
                       * tl.load(s_ptr + gp + N, mask=mask, other=0.0).to(tl.float32))
    y = (tl.sum(acc, axis=0) * r)[None, :]
    y_up = (tl.sum(acc_up, axis=0) * r)[None, :]
    _finish(y, y_up, out_ptr, res_ptr, ws_ptr, lock_ptr, pid_n, tl.arange(0, 1), offs_n, mask_n[None, :], N,
            0, 0, EPILOGUE, SPLIT_K)


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr):
    if DOT_F32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _gemm_group(x_ptr, nw_ptr, qw_ptr, z_ptr, g, offs_m, mask_m, offs_n, mask_n, stride_xm, stride_wk,
                stride_wn, stride_sk, stride_sn, m0, m1, m2, m3, m4, NORM: tl.constexpr,
                DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``x_g · (q_g − z_g)`` for group ``g``: 8 MMA steps of k = 16, nibble ``j`` of the 16 words against the
    16 contiguous input features ``128g + 16j ..``; exact small integers in the MMA's operand dtype.
    The strides say which layout (``layout.KernelWeight.strides``): ``[K/8, N]`` or rows ``[N, K/8]``."""
    words = tl.load(qw_ptr + (g * 16 + tl.arange(0, 16))[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=mask_n[None, :], other=0, eviction_policy="evict_first")
    words_hi = words >> 12
    z = _zero(z_ptr + g * stride_sk + offs_n * stride_sn, mask_n)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(8):
        cols = g * 128 + 16 * j + tl.arange(0, 16)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + cols[None, :], mask=mask_m[:, None], other=0.0)
        if NORM:
            x = (x.to(tl.float32) * tl.load(nw_ptr + cols).to(tl.float32)[None, :]).to(x_ptr.dtype.element_ty)
        if DOT_F32:  # fp32 activations, or the CPU interpreter (which multiplies 16-bit operands as raw bits)
            x = x.to(tl.float32)
        b = _code_plus_magic(words, words_hi, j, _mask(j, m0, m1, m2, m3, m4)) - (_magic(j) + z)[None, :]
        acc = _dot(x, b.to(x.dtype), acc, DOT_F32)
    return acc


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, lock_ptr,
                 M, N, K, stride_wk, stride_wn, stride_sk, stride_sn, stride_xm, stride_om, stride_rm, eps,
                 M_KEY, m0, m1, m2, m3, m4,
                 GROUP: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, DOT_F32: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    """``out = epilogue(x · Wᵀ)`` for ``x [M, K]``; grid ``(cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), SPLIT_K)``."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    n_groups = K // GROUP
    per_split = tl.cdiv(n_groups, SPLIT_K)
    g_begin = pid_k * per_split
    g_end = tl.minimum(g_begin + per_split, n_groups)
    r = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if NORM:
        r = _row_rsqrt(x_ptr, stride_xm, offs_m, mask_m, K, eps, BLOCK_M, 256)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(g_begin, g_end):
        part = _gemm_group(x_ptr, nw_ptr, qw_ptr, z_ptr, g, offs_m, mask_m, offs_n, mask_n, stride_xm,
                           stride_wk, stride_wn, stride_sk, stride_sn, m0, m1, m2, m3, m4, NORM, DOT_F32,
                           BLOCK_M, BLOCK_N)
        s_off = g * stride_sk + offs_n * stride_sn
        acc += part * tl.load(s_ptr + s_off, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE == 2:  # the up rows: N features further
            part = _gemm_group(x_ptr, nw_ptr, qw_ptr + N * stride_wn, z_ptr + N * stride_sn, g, offs_m,
                               mask_m, offs_n, mask_n, stride_xm, stride_wk, stride_wn, stride_sk, stride_sn,
                               m0, m1, m2, m3, m4, NORM, DOT_F32, BLOCK_M, BLOCK_N)
            acc_up += part * tl.load(s_ptr + N * stride_sn + s_off, mask=mask_n,
                                     other=0.0).to(tl.float32)[None, :]
    acc = acc * r[:, None]
    acc_up = acc_up * r[:, None]
    tile = pid_m * tl.num_programs(0) + pid_n
    _finish(acc, acc_up, out_ptr, res_ptr, ws_ptr, lock_ptr, tile, offs_m, offs_n,
            mask_m[:, None] & mask_n[None, :], N, stride_om, stride_rm, EPILOGUE, SPLIT_K)
