"""The peers the solution is measured against, each given the inputs it would get in a real model.

- eager PyTorch: the reference (gather cos/sin rows, rotate_half, fp32 math) op by op, out of place;
- torch.compile of the same function: Inductor fuses it into one or two generated Triton kernels;
- liger-kernel's ``liger_rotary_pos_emb`` (a Triton RoPE used by HF training stacks): in place, it
  takes HF's per-token ``cos``/``sin`` ``[1, tokens, D]`` in the model dtype, which a model computes
  once per forward and shares across layers — so building them is left out of its timing;
- FlashInfer's ``apply_rope_with_cos_sin_cache`` (vLLM's rotary contract: positions, q and k as
  ``[tokens, heads·D]``, head_size, the same ``[max_position, D]`` fp32 cos|sin cache, is_neox), out of
  place as named, and its ``_inplace`` twin (what vLLM calls). CUDA C++ JIT-built with nvcc at first
  use, bf16/fp16 only; the builder runs one tiny call so a failed build is a reason, not a crash.
Each builder returns ``(fn, reason)``: ``fn(inputs)`` runs one RoPE, or None with why it is absent.
"""

from __future__ import annotations

from typing import Callable

import torch

from phase2_rope_cuda.reference import build_cos_sin_cache, cos_sin_for_positions, rope_math
from phase2_rope_cuda.workload import TOLERANCE, RopeInputs, error_ratio

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


def _one_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[-1] if lines else '')[:160]}"


def flashinfer_peers(device: str = "cuda") -> tuple[dict[str, PeerFn], str]:
    """``{"flashinfer": out of place, "flashinfer in-place": in place}``, or ``{}`` and why not."""
    try:
        import flashinfer.rope as fr
    except Exception as e:  # absent, or present without its runtime deps (tvm-ffi, pynvml)
        return {}, f"flashinfer is not importable ({_one_line(e)})"

    def out_of_place(x: RopeInputs):
        tokens, head_dim = x.q.shape[0], x.q.shape[2]
        return fr.apply_rope_with_cos_sin_cache(x.positions, x.q.view(tokens, -1), x.k.view(tokens, -1),
                                                head_dim, x.cache, is_neox=True)

    def in_place(x: RopeInputs):
        tokens, head_dim = x.q.shape[0], x.q.shape[2]
        fr.apply_rope_with_cos_sin_cache_inplace(x.positions, x.q.view(tokens, -1), x.k.view(tokens, -1),
                                                 head_dim, x.cache, is_neox=True)

    print("flashinfer: JIT-building its RoPE kernel with nvcc on first use (about a minute; cached under "
          "~/.cache/flashinfer)...", flush=True)
    try:
        q = torch.zeros(1, 1, 64, dtype=torch.bfloat16, device=device)
        out_of_place(RopeInputs(q, q.clone(), torch.zeros(1, dtype=torch.int64, device=device),
                                build_cos_sin_cache(64, 1, device=device), 1))
        torch.cuda.synchronize()
    except Exception as e:  # nvcc missing or failing, an unsupported GPU: the peer is absent
        return {}, f"flashinfer imported but its RoPE kernel did not build or run ({_one_line(e)})"
    return {"flashinfer": out_of_place, "flashinfer in-place": in_place}, ""


def flashinfer_agreement(ours: Callable, flashinfer_fn: PeerFn, x: RopeInputs) -> float:
    """Max error / tolerance between our in-place RoPE and FlashInfer's out-of-place one on ``x``."""
    q_fi, k_fi = flashinfer_fn(x)
    q, k = x.q.clone(), x.k.clone()
    try:
        ours(q, k, x.positions, x.cache)
    except Exception:  # a learner's kernel that refuses the shape cannot be compared
        return float("inf")
    atol, rtol = TOLERANCE[x.q.dtype]
    return max(error_ratio(q, q_fi.view_as(q), atol, rtol), error_ratio(k, k_fi.view_as(k), atol, rtol))
