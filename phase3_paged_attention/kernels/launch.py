"""Host-side helpers shared by the kernel launchers."""

from __future__ import annotations

import functools
import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def require_runnable(t: torch.Tensor) -> None:
    """A one-line error instead of a Triton stack trace when a kernel cannot run on ``t``'s device."""
    if not t.is_cuda and not interpreting():
        raise RuntimeError(
            "Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 before triton is imported "
            "(or use phase3_paged_attention.load_impl('reference'))"
        )


def upcast_dot(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether tl.dot should see float32 operands (exact 'ieee' products).

    float32 caches must not be silently rounded to tf32; and the interpreter multiplies bf16 operands
    as raw bits, so on CPU every dot is upcast (the probabilities are still rounded to the cache dtype
    first, so the interpreter exercises the same rounding as the GPU).
    """
    return dtype == torch.float32 or device.type != "cuda"


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: any small number; splitting is still exercised by the tests
