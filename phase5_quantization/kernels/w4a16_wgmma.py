"""The Hopper W4A16 kernel for 1–64 activation rows, in Gluon (Triton's explicit-layout dialect): the codes
are dequantized straight into ``wgmma``'s register operand and split-K partials meet in 16-byte reductions at
L2.

Why a second small-batch kernel: Triton (``w4a16_rows_mma``) dequantizes each nibble tile in its load layout,
then stages it through shared memory into the MMA's register layout, eight times per group. Here the layouts
are written down, so nothing moves:

- **the word tile is loaded in the operand's layout** (``words_layout``): lane ``t`` of warp ``w`` holds rows
  ``16w + t/4`` and ``+8``; the K order inside a group is ours to choose (the activations are gathered in the
  same order), so each thread loads its two rows' words ``4(t%4) .. +3`` in one 16-byte load per row;
- **two weights per two instructions** (``_pair``, inline PTX): one ``LOP3`` puts nibbles ``p`` and ``p + 4``
  into the mantissas of two bf16 ``128.0``, one ``HSUB2`` subtracts ``128 + z``: exactly one operand register;
- **the register order is a relabelling** (``_operand``): Gluon's ``assert_trivial`` makes any shuffle a
  compile error; column ``c`` of a group holds feature ``feature_of_column(c)``;
- **activations up front**: after the PDL wait a program gathers all its groups' activation tiles into shared
  memory behind one barrier; the loop is then codes, dequantisation, one k = 128 ``wgmma``, the scale FMA;
- **vector split-K**: the accumulator moves to a layout where a thread owns 4 consecutive outputs, so each
  reduction, read-back and store is 16 bytes (the reduction was the kernel's largest cost; runs:
  ``NOTES.md``).

Scope (``launch.wgmma_reason`` routes): bf16/fp16 activations, group size 128, plain or residual epilogue;
sm_90, compiled only (no CPU interpreter: the CPU tests compile it for sm_90 and model the column order in
NumPy).
"""

from __future__ import annotations

import triton

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma

    GLUON_ERROR: str | None = None
except Exception as e:  # a Triton without Gluon's Hopper API
    gluon = gl = None
    GLUON_ERROR = f"{type(e).__name__}: {e}"

GROUP = 128  # features per group (the layout below assumes 16 words)


def feature_of_column(c: int) -> int:
    """Feature (within a group of 128) that operand column ``c`` holds: ``c`` =
    ``a·32 + p0·16 + p1·8 + q·2 + e`` (word ``w = 4q + a``, nibble ``j = 2·p1 + p0 + 4e``, and nibble ``j`` of
    word ``w`` is feature ``16j + w``)."""
    e, q, p1, p0, a = c & 1, (c >> 1) & 3, (c >> 3) & 1, (c >> 4) & 1, (c >> 5) & 3
    return 16 * (2 * p1 + p0 + 4 * e) + 4 * q + a


def column_order_model(words):
    """NumPy model of ``_operand``: ``[rows, 16]`` uint32 words -> ``[rows, 128]`` codes in operand-column
    order, built with the kernel's own steps (pairs of nibbles ``p``/``p + 4``, the joins, reshape and
    permutation)."""
    import numpy as np

    def pair(p):
        return (words >> (4 * p)) & 0xF, (words >> (16 + 4 * p)) & 0xF

    def join(a, b):
        return np.stack([a, b], axis=-1)

    (l0, h0), (l1, h1), (l2, h2), (l3, h3) = (pair(p) for p in range(4))
    v = join(join(join(l0, h0), join(l2, h2)), join(join(l1, h1), join(l3, h3)))
    v = v.reshape(words.shape[0], 4, 4, 2, 2, 2).transpose(0, 2, 5, 4, 1, 3)
    return v.reshape(words.shape[0], 128)


if gluon is not None:
    _barrier = getattr(gl, "barrier", None) or gl.thread_barrier  # renamed between Triton 3.6 and 3.9

    @triton.constexpr_function
    def words_layout(BLOCK_N, num_warps):
        """``[BLOCK_N, 16]`` int32 words: lane ``t`` of warp ``w`` holds words ``4(t%4)..+3`` of rows
        ``16w + t/4`` and ``+8`` (and the same ``16·num_warps`` rows further down per repetition)."""
        reg = [[0, 1], [0, 2], [8, 0]]
        r = 16 * num_warps
        while r < BLOCK_N:
            reg.append([r, 0])
            r *= 2
        warp, r = [], 16
        while r < 16 * num_warps:
            warp.append([r, 0])
            r *= 2
        return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                          warp_bases=warp, block_bases=[], shape=[BLOCK_N, 16])

    @triton.constexpr_function
    def pair_asm(P, F16):
        """PTX: nibbles ``P`` and ``P + 4`` of ``$2`` into two halves of 128 + q (bf16) or 1024 + q (fp16),
        minus ``$3`` (both halves ``128 + z`` / ``1024 + z``), split into the two 16-bit results."""
        magic, sub = ("0x64006400", "sub.rn.f16x2") if F16 else ("0x43004300", "sub.rn.bf16x2")
        shift = f"shr.u32 t, $2, {4 * P}; " if P else "mov.b32 t, $2; "
        return ("{ .reg .b32 t, d; " + shift + f"lop3.b32 t, t, 0x000F000F, {magic}, 0xEA; "
                f"{sub} d, t, $3; mov.b32 {{$0, $1}}, d; }}")

    @gluon.jit
    def _pair(words, zz, P: gl.constexpr, F16: gl.constexpr):
        if F16:
            return gl.inline_asm_elementwise(pair_asm(P, True), "=h,=h,r,r", [words, zz],
                                             dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
        else:
            return gl.inline_asm_elementwise(pair_asm(P, False), "=h,=h,r,r", [words, zz],
                                             dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=1)

    @gluon.jit
    def _operand(words, zz, F16: gl.constexpr, BLOCK_N: gl.constexpr, a_layout: gl.constexpr):
        """The group's ``[BLOCK_N, 128]`` ``q − z`` in the MMA's register-operand layout
        (``column_order_model``)."""
        l0, h0 = _pair(words, zz, 0, F16)
        l1, h1 = _pair(words, zz, 1, F16)
        l2, h2 = _pair(words, zz, 2, F16)
        l3, h3 = _pair(words, zz, 3, F16)
        v = gl.join(gl.join(gl.join(l0, h0), gl.join(l2, h2)), gl.join(gl.join(l1, h1), gl.join(l3, h3)))
        v = gl.permute(gl.reshape(v, [BLOCK_N, 4, 4, 2, 2, 2]), (0, 2, 5, 4, 1, 3))
        return gl.convert_layout(gl.reshape(v, [BLOCK_N, 128]), a_layout, assert_trivial=True)

    @gluon.jit
    def _pdl_wait(EARLY: gl.constexpr):
        """``w4a16``'s ``pdl_wait`` in Gluon: wait for the previous kernel, let the next one launch (before
        the wait with ``EARLY``)."""
        if EARLY:
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; griddepcontrol.wait; // $0", "=r",
                                      [], dtype=gl.int32, is_pure=False, pack=1)
        else:
            gl.inline_asm_elementwise("griddepcontrol.wait; griddepcontrol.launch_dependents; // $0", "=r",
                                      [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _wgmma_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, res_ptr, ws_ptr, lock_ptr, M, N, KW, stride_xm,
                      stride_om, stride_rm, EPILOGUE: gl.constexpr, USE_PDL: gl.constexpr,
                      EARLY: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      SPLIT_K: gl.constexpr, GPP: gl.constexpr, num_warps: gl.constexpr):
        """``out[m, n] = epilogue(Σ_k x[m, k] · W[n, k])`` for ``m < M ≤ BLOCK_M``; grid
        ``(cdiv(N, BLOCK_N), SPLIT_K)``, program ``(i, j)`` owns rows ``i·BLOCK_N ..`` and groups ``j·GPP ..``
        (``SPLIT_K·GPP ≥ K/128``). ``qw [N, K/8]`` int32 (row layout), ``s [N, K/128]`` fp16,
        ``z [N, K/128]`` uint8; ``EPILOGUE`` 1: add ``res``. ``ws``/``lock``: ``launch.workspace`` (zeroed;
        left zeroed)."""
        dtype: gl.constexpr = x_ptr.dtype.element_ty
        W_L: gl.constexpr = words_layout(BLOCK_N, num_warps)
        MMA_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                        instr_shape=[16, BLOCK_M, 16])
        A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA_L, k_width=2)
        # the gathered activations
        X_L: gl.constexpr = gl.BlockedLayout([1, 2], [4, 8], [num_warps, 1], [1, 0])
        V_L: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])  # 4 consecutive outputs
        X_S: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, 128], dtype)
        G = KW // 16
        pid_n = gl.program_id(0)
        pid_k = gl.program_id(1)
        g_begin = pid_k * GPP
        g_end = gl.minimum(g_begin + GPP, G)
        # the first group's codes, scales and zero-points: they do not depend on the previous kernel
        rows_w = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, W_L))
        offs_w = gl.arange(0, 16, layout=gl.SliceLayout(0, W_L))
        wptr = qw_ptr + rows_w.to(gl.int64)[:, None] * KW + offs_w[None, :]
        ok_w = rows_w < N
        wmask = ok_w[:, None] & (offs_w < 16)[None, :]
        zrow = z_ptr + rows_w * G
        rows_s = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA_L))
        srow = s_ptr + rows_s * G
        ok_s = rows_s < N
        words = gl.load(wptr + g_begin * 16, mask=wmask, other=0, eviction_policy="evict_first")
        z = gl.load(zrow + g_begin, mask=ok_w, other=0)
        s = gl.load(srow + g_begin, mask=ok_s, other=0.0)
        if USE_PDL:
            _pdl_wait(EARLY)  # x (and the residual) are the previous kernel's output
        # every group's activations, gathered in the operand's column order, into shared memory at once
        xs = gl.allocate_shared_memory(dtype, [GPP, BLOCK_M, 128], gl.NVMMASharedLayout(
            swizzle_byte_width=X_S.swizzle_byte_width, element_bitwidth=X_S.element_bitwidth, rank=2))
        cc = gl.arange(0, 128, layout=gl.SliceLayout(0, X_L))
        feat = 16 * (((cc >> 3) & 1) * 2 + ((cc >> 4) & 1) + 4 * (cc & 1)) + 4 * ((cc >> 1) & 3) + ((cc >> 5) & 3)
        offs_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, X_L))
        xptr = x_ptr + offs_m[:, None] * stride_xm + feat[None, :]
        for i in gl.static_range(GPP):
            live = (offs_m < M)[:, None] & ((feat * 0 + g_begin + i) < g_end)[None, :]
            xs.index(i).store(gl.load(xptr + (g_begin + i) * 128, mask=live, other=0.0))
        fence_async_shared()
        _barrier()
        acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA_L)
        zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA_L)
        magic: gl.constexpr = 0x6400 if dtype == gl.float16 else 0x4300
        for i in range(0, g_end - g_begin):
            g = g_begin + i
            cur, cur_z, cur_s = words, z, s
            nxt = g + 1 < g_end  # the next group's codes (masked off past the end)
            words = gl.load(wptr + (g + 1) * 16, mask=wmask & nxt, other=0, eviction_policy="evict_first")
            z = gl.load(zrow + g + 1, mask=ok_w & nxt, other=0)
            s = gl.load(srow + g + 1, mask=ok_s & nxt, other=0.0)
            zz = (cur_z.to(gl.int32) | magic) * 0x10001  # (magic + z) in both halves
            a = _operand(cur, zz[:, None], dtype == gl.float16, BLOCK_N, A_L)
            part = warpgroup_mma(a, xs.index(i).permute((1, 0)), zero, use_acc=False)
            acc += part * cur_s.to(gl.float32)[:, None]
        # out[m, n] = acc[n, m], from a layout where a thread owns 4 consecutive n: 16-byte atomics and stores
        accv = gl.convert_layout(acc, V_L)
        vn = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, V_L))
        vm = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, V_L))
        vmask = (vn < N)[:, None] & (vm < M)[None, :]
        if SPLIT_K == 1:
            _epilogue(accv, out_ptr, res_ptr, vm, vn, vmask, stride_om, stride_rm, EPILOGUE)
        else:
            ws = ws_ptr + vm[None, :] * (2 * N) + vn[:, None]  # [M, 2N] fp32, as w4a16._finish
            gl.atomic_add(ws, accv, mask=vmask, sem="relaxed")
            _barrier()  # every thread's partials are in before the ticket is drawn
            ticket = gl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel")
            if ticket == SPLIT_K - 1:
                zv = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, V_L)
                total = gl.atomic_add(ws, zv, mask=vmask, sem="relaxed")  # read at L2, where the partials are
                gl.store(ws, zv, mask=vmask)
                gl.atomic_xchg(lock_ptr + pid_n, 0, sem="relaxed")
                _epilogue(total, out_ptr, res_ptr, vm, vn, vmask, stride_om, stride_rm, EPILOGUE)

    @gluon.jit
    def _epilogue(acc, out_ptr, res_ptr, vm, vn, mask, stride_om, stride_rm, EPILOGUE: gl.constexpr):
        """``w4a16._epilogue``'s roundings: the product in the output dtype, then the residual add."""
        dtype: gl.constexpr = out_ptr.dtype.element_ty
        y = acc.to(dtype).to(gl.float32)
        if EPILOGUE == 1:
            y = gl.load(res_ptr + vm[None, :] * stride_rm + vn[:, None], mask=mask,
                        other=0.0).to(gl.float32) + y
        gl.store(out_ptr + vm[None, :] * stride_om + vn[:, None], y.to(dtype), mask=mask)
