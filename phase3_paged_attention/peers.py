"""FlashInfer as the peer of P3.6: its batch decode over our paged cache and its batch prefill, same run.

Our cache is already FlashInfer's "NHD" layout (``[num_pages, page_size, kv_heads, head_dim]`` per K and
V), so only the page lists differ: a block table row per sequence here, a CSR list there
(``to_flashinfer_layout``). FlashInfer is used the way vLLM's FlashInfer backend uses it: a wrapper is
planned once per batch (host work shared by every layer of a step, so outside the timing) and each
``run`` is timed. Decode is timed with CUDA-core and tensor-core kernels (``use_tensor_cores``; vLLM picks
tensor cores for GQA groups > 4) and the faster one is the yardstick; prefill is the ragged wrapper
(q, k, v packed by ``cu_seqlens``, causal), attention only — FlashInfer writes the cache in a separate
call, so ours is timed without its fused cache write too. The kernels are CUDA C++ JIT-built with nvcc
on first use (minutes; cached under ``~/.cache/flashinfer``). Missing, unbuildable or failing, the peer
is absent with a one-line reason: its metrics are SKIP, never a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType

import torch

from phase3_paged_attention import default_scale, tolerance
from phase3_paged_attention.workloads import DecodeInputs, PrefillInputs, decode_inputs, prefill_inputs

WORKSPACE_BYTES = 128 * 2**20  # FlashInfer's recommended float workspace (split-KV partial results)
DECODE_VARIANTS = {"flashinfer decode (CUDA cores)": False, "flashinfer decode (tensor cores)": True}


@dataclass(frozen=True)
class FlashInferPagedLayout:
    """FlashInfer's page lists: sequence b owns pages ``indices[indptr[b]:indptr[b+1]]``, in order; its
    last page holds ``last_page_len[b]`` tokens (1..page_size; 0 for an empty sequence)."""

    indptr: torch.Tensor  # [batch + 1] int32
    indices: torch.Tensor  # [indptr[-1]] int32
    last_page_len: torch.Tensor  # [batch] int32


def to_flashinfer_layout(block_tables: torch.Tensor, context_lens: torch.Tensor, block_size: int) -> FlashInferPagedLayout:
    """Our ``block_tables`` [batch, max_blocks] + ``context_lens`` [batch] → FlashInfer's CSR page lists.

    Only the first ``ceil(len / block_size)`` entries of a row are pages (the rest are never read); they
    are concatenated row by row. Works on any device, no sync beyond the boolean gather.
    """
    lens = context_lens.long()
    pages = (lens + block_size - 1) // block_size
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32, device=lens.device)
    indptr[1:] = pages.cumsum(0)
    used = torch.arange(block_tables.shape[1], device=lens.device)[None, :] < pages[:, None]
    last = torch.where(lens > 0, (lens - 1) % block_size + 1, torch.zeros_like(lens))
    return FlashInferPagedLayout(indptr, block_tables[used].to(torch.int32), last.to(torch.int32))


def import_flashinfer() -> tuple[ModuleType | None, str]:
    try:
        import flashinfer
    except Exception as e:  # absent, or present without its runtime deps (tvm-ffi, pynvml)
        return None, f"flashinfer is not importable ({_one_line(e)})"
    return flashinfer, ""


def _one_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[-1] if lines else '')[:160]}"


class FlashInferPeer:
    """Planned FlashInfer calls over the phase's inputs; one float workspace shared (as vLLM does)."""

    def __init__(self, fi: ModuleType, device: str = "cuda"):
        self.fi = fi
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)

    def decode(self, d: DecodeInputs, use_tensor_cores: bool, scale: float | None = None):
        """A zero-argument callable running FlashInfer's batch decode on ``d`` into a preallocated output."""
        _, block_size, num_kv_heads, head_dim = d.k_cache.shape
        layout = to_flashinfer_layout(d.block_tables, d.context_lens, block_size)
        wrapper = self.fi.BatchDecodeWithPagedKVCacheWrapper(self.workspace, kv_layout="NHD",
                                                             use_tensor_cores=use_tensor_cores)
        wrapper.plan(layout.indptr, layout.indices, layout.last_page_len, d.q.shape[1], num_kv_heads, head_dim,
                     block_size, q_data_type=d.q.dtype, kv_data_type=d.k_cache.dtype,
                     sm_scale=default_scale(head_dim, scale))
        out = torch.empty_like(d.q)
        return lambda: wrapper.run(d.q, (d.k_cache, d.v_cache), out=out)

    def prefill(self, p: PrefillInputs, scale: float | None = None):
        """A zero-argument callable running FlashInfer's ragged causal prefill on ``p`` (no cache write)."""
        head_dim = p.q.shape[2]
        wrapper = self.fi.BatchPrefillWithRaggedKVCacheWrapper(self.workspace, kv_layout="NHD")
        wrapper.plan(p.cu_seqlens, p.cu_seqlens, p.q.shape[1], p.k.shape[1], head_dim, causal=True,
                     q_data_type=p.q.dtype, kv_data_type=p.k.dtype, sm_scale=default_scale(head_dim, scale))
        out = torch.empty_like(p.q)
        return lambda: wrapper.run(p.q, p.k, p.v, out=out)


def build_peer(device: str = "cuda") -> tuple[FlashInferPeer | None, str]:
    """The peer, or None and why; prints before the first (long) JIT build."""
    fi, reason = import_flashinfer()
    if fi is None:
        return None, reason
    print("flashinfer: JIT-building its decode and prefill kernels with nvcc on first use (minutes; cached under "
          "~/.cache/flashinfer)...", flush=True)
    return FlashInferPeer(fi, device), ""


def error_over_tolerance(out: torch.Tensor, expected: torch.Tensor) -> float:
    """Worst |out − expected| / (atol + rtol·|expected|) at ``out``'s dtype tolerance; inf when not finite."""
    if not torch.isfinite(out.float()).all():
        return float("inf")
    atol, rtol = tolerance(out.dtype)
    err = (out.float() - expected.float()).abs() / (atol + rtol * expected.float().abs())
    return float(err.max()) if err.numel() else 0.0


def try_build(fn, *args) -> tuple[object | None, str]:
    """``fn(*args)`` and a first call (the JIT build happens there); None and the reason on failure."""
    try:
        call = fn(*args)
        if call().is_cuda:  # errors of an asynchronous launch surface here, not at the first timed call
            torch.cuda.synchronize()
        return call, ""
    except Exception as e:  # nvcc missing or failing, an unsupported shape or GPU: the variant is absent
        return None, f"flashinfer {getattr(fn, '__name__', 'call')} did not build or run ({_one_line(e)})"


def main() -> int:
    """``python -m phase3_paged_attention.peers``: JIT-build the kernels the bench uses (bf16, 32 q / 4 kv heads,
    head_dim 64) ahead of it, so the build stays outside the tests' and the check's time limits."""
    peer, reason = build_peer()
    if peer is None:
        print(f"SKIP: {reason}")
        return 0
    heads = dict(num_q_heads=32, num_kv_heads=4, head_dim=64, dtype=torch.bfloat16, device="cuda")
    d, p = decode_inputs([17, 100], **heads), prefill_inputs([17, 100], **heads)
    builds = [(name, peer.decode, (d, tc)) for name, tc in DECODE_VARIANTS.items()]
    for name, fn, args in [*builds, ("flashinfer ragged prefill", peer.prefill, (p,))]:
        start = time.perf_counter()
        _, why = try_build(fn, *args)
        print(f"{name}: {why or 'built'} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
