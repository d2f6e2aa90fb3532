"""The end of a greedy decode step as one kernel, so a CUDA graph replay is the whole per-token work.

After the logits, a greedy step needs: the argmax over the vocabulary, EOS bookkeeping (a finished sequence
keeps emitting padding; a new EOS marks it finished), the token fed back as the next step's input, the
position advanced, and the token recorded. Launched from the host these are five to eight tiny kernels, each
paying a launch and a gap of a few µs against a ~1 ms step — a percent of MBU at batch 1. Inside the graph,
as one program of 16 warps per sequence, it is one small kernel that reads 64 KB of logits in four rounds of
wide loads, unrolled so the rounds' loads are in flight together, and launched with programmatic dependent
launch: it reads its bookkeeping inputs, then waits for the logits (a few µs, mostly one load round trip).

``greedy_tail(logits, tokens, positions, finished, eos, pad, history)`` (device tensors, updated in place):

- ``tok = argmax(logits[b])`` — the first index of the maximum, like ``torch.argmax``;
- ``tok = pad[b]`` if ``finished[b]``; then ``finished[b] |= tok ∈ eos`` (``eos`` padded with -1: no match);
- ``tokens[b] = tok``; ``positions[b] += 1``; ``history[b, positions[b]] = tok``.

``history[b, p]`` is therefore the token at position ``p``: the engine reads a generation's tokens from it.
The position saturates at the last slot ``L - 1`` of ``history [B, L]`` (the KV cache's length), so a timing
loop that replays past the end rewrites that slot instead of writing out of bounds; ``generate`` checks the
context up front and never gets there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 8192  # logits per loop iteration (16 per thread at 16 warps): 4 iterations for a 32 k vocabulary


@triton.jit
def _greedy_tail_kernel(Logits, stride_l, V, Tokens, Positions, Finished, Eos, n_eos, Pad, History, stride_h,
                        L, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, EOS_BLOCK: tl.constexpr,
                        USE_PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    # The bookkeeping inputs were written by the previous step, not by the logits' kernel: read them before
    # waiting for it (programmatic dependent launch), so only the logits are on the critical path.
    fin = tl.load(Finished + row) != 0
    pad = tl.load(Pad + row)
    e = tl.arange(0, EOS_BLOCK)
    eos = tl.load(Eos + e, mask=e < n_eos, other=-1)
    pos = tl.minimum(tl.load(Positions + row) + 1, L - 1)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    # Each lane keeps its running maximum and where it was first seen (strict > keeps the earliest) ...
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    where = tl.zeros([BLOCK], tl.int32)
    for r in tl.static_range(ROUNDS):  # unrolled: the rounds' loads are independent and issue together
        cols = r * BLOCK + lanes
        v = tl.load(Logits + row * stride_l + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        take = v > best
        best = tl.where(take, v, best)
        where = tl.where(take, cols, where)
    # ... then the maximum over lanes, and the smallest index holding it: torch.argmax's first occurrence.
    top = tl.max(best, 0)
    tok = tl.min(tl.where(best == top, where, V), 0).to(tl.int64)

    tok = tl.where(fin, pad, tok)
    hit = tl.sum((eos == tok).to(tl.int32), 0) > 0
    tl.store(Finished + row, (fin | hit).to(tl.uint8))
    tl.store(Positions + row, pos)
    tl.store(Tokens + row, tok)
    tl.store(History + row * stride_h + pos, tok)


def greedy_tail(logits: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, finished: torch.Tensor,
                eos: torch.Tensor, pad: torch.Tensor, history: torch.Tensor) -> None:
    """In place: see the module docstring. ``logits [B, V]``; ``tokens``, ``positions``, ``pad`` ``[B]``
    int64; ``finished [B]`` uint8; ``eos [n]`` int64; ``history [B, L]`` int64 (position ``p + 1`` saturates
    at ``L - 1``)."""
    B, V = logits.shape
    assert logits.stride(1) == 1 and history.stride(1) == 1, "logits and history rows must be contiguous"
    assert finished.dtype == torch.uint8 and tokens.dtype == positions.dtype == history.dtype == torch.int64
    from phase0_prototype.kernels.gemv import launch_options, pdl_enabled

    eos_block = max(1, triton.next_power_of_2(eos.numel()))
    block = min(BLOCK, triton.next_power_of_2(V))
    pdl = pdl_enabled(logits.device)
    _greedy_tail_kernel[(B,)](logits, logits.stride(0), V, tokens, positions, finished, eos, eos.numel(), pad,
                              history, history.stride(0), history.shape[1], BLOCK=block,
                              ROUNDS=triton.cdiv(V, block), EOS_BLOCK=eos_block, USE_PDL=pdl,
                              num_warps=max(1, min(16, block // 512)), **launch_options(pdl))
