"""The peers the solution is measured against, each given the inputs it would get in a real model.

- eager PyTorch: the reference (gather cos/sin rows, rotate_half, fp32 math) op by op, out of place;
- torch.compile of the same function: Inductor fuses it into one or two generated Triton kernels;
- liger-kernel's ``liger_rotary_pos_emb`` (a Triton RoPE used by HF training stacks): in place, it
  takes HF's per-token ``cos``/``sin`` ``[1, tokens, D]`` in the model dtype, which a model computes
  once per forward and shares across layers — so building them is left out of its timing.
Each builder returns ``(fn, reason)``: ``fn(inputs)`` runs one RoPE, or None with why it is absent.
"""

from __future__ import annotations

from typing import Callable

import torch

from phase2_rope_cuda.reference import cos_sin_for_positions, rope_math
from phase2_rope_cuda.workload import RopeInputs

PeerFn = Callable[[RopeInputs], object]


def eager_peer() -> tuple[PeerFn, str]:
    return (lambda x: rope_math(*x.args)), ""


_COMPILED = {}


def compiled_peer() -> tuple[PeerFn | None, str]:
    if not hasattr(torch, "compile"):
        return None, "this torch has no torch.compile"
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(rope_math)
    compiled = _COMPILED["fn"]
    return (lambda x: compiled(*x.args)), ""


def liger_peer() -> tuple[PeerFn | None, str]:
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception as e:  # ImportError, or a triton/torch mismatch inside liger
        return None, f"liger-kernel is not importable ({type(e).__name__}: {str(e)[:80]})"

    def run(x: RopeInputs):
        if x.hf_cos is None:
            cos, sin = cos_sin_for_positions(x.cache, x.positions)
            x.hf_cos, x.hf_sin = cos.to(x.q.dtype)[None], sin.to(x.q.dtype)[None]
        # HF layout [batch, heads, tokens, D] as a view of our [tokens, heads, D]: no copy.
        q4 = x.q.unsqueeze(0).transpose(1, 2)
        k4 = x.k.unsqueeze(0).transpose(1, 2)
        return liger_rotary_pos_emb(q4, k4, x.hf_cos, x.hf_sin)

    return run, ""


def prepare_liger(sets: list[RopeInputs]) -> None:
    """Build HF's cos/sin per set before timing (a model builds them once per forward)."""
    for x in sets:
        cos, sin = cos_sin_for_positions(x.cache, x.positions)
        x.hf_cos, x.hf_sin = cos.to(x.q.dtype)[None], sin.to(x.q.dtype)[None]
