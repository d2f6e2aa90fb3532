"""Phase 2 — RoPE as CUDA C kernels, built at run time with NVRTC through CuPy.

The contract (every implementation — ``framework``, ``solution``, ``reference``, a learner's
``phase2_rope_cuda.mine`` — exports this function)::

    def apply_rope_(q, k, positions, cos_sin_cache) -> tuple[q, k]

- ``q``: ``[tokens, num_q_heads, head_dim]``, ``k``: ``[tokens, num_kv_heads, head_dim]`` — one
  dtype among float32 / bfloat16 / float16; the head counts may differ (GQA). The last dimension is
  contiguous; token and head strides are free, so ``qkv[:, :Hq*D].view(T, Hq, D)`` slices of a fused
  QKV projection work without a copy.
- ``positions``: ``[tokens]`` int64 or int32, any values in ``[0, max_position)`` (prefill, decode,
  a packed batch of sequences: every token carries its own position).
- ``cos_sin_cache``: ``[max_position, head_dim]`` float32; row p is ``[cos(p·θ_0..θ_{D/2−1}),
  sin(p·θ_0..θ_{D/2−1})]`` — the cosines and sines concatenated in ONE row (vLLM's layout), so a
  token's kernel reads one contiguous 4·D-byte row. Build it with ``build_cos_sin_cache``.
- Effect: ``q`` and ``k`` are rotated **in place** with the HF / GPT-NeoX rotate-half convention,
  ``x·cos + rotate_half(x)·sin`` with ``rotate_half([x1, x2]) = [−x2, x1]``, computed in fp32 and
  rounded once to the input dtype — HF ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb``. The
  same tensors are returned for chaining.

Implementations: ``framework`` (``kernels/rope_v1_naive.cu``: a thread per element, correct, slow),
``phase2_rope_cuda.staged`` (``kernels/rope_v2_shared.cu``: a block per token and head tile, cos/sin
in shared memory, in place, still scalar accesses), ``solution`` (``kernels/rope_v3_vectorized.cu``: bandwidth-bound, head_dim 64/128), ``reference``
(PyTorch, any device: the oracle). The CUDA ones raise ``RopeDeviceError`` on CPU tensors.
``integration.phase0_rope_fn(impl)`` adapts any of them to phase 0's ``RopeFn``.
"""

from __future__ import annotations

from types import ModuleType

from phase2_rope_cuda.cuda_launch import RopeDeviceError
from phase2_rope_cuda.reference import apply_rope_reference, build_cos_sin_cache
from phase2_rope_cuda.shapes import RopeInputError

PHASE = "phase2_rope_cuda"

__all__ = [
    "PHASE",
    "RopeDeviceError",
    "RopeInputError",
    "apply_rope_reference",
    "build_cos_sin_cache",
    "load_impl",
]


def load_impl(name: str) -> ModuleType:
    """``framework``, ``solution``, ``reference``, or a module path exporting ``apply_rope_``."""
    from module0_profiling.impl import load_impl as _load

    if name == "reference":
        name = f"{PHASE}.reference"
    module = _load(PHASE, name)
    if not callable(getattr(module, "apply_rope_", None)):
        raise RopeInputError(f"{module.__name__} does not define apply_rope_(q, k, positions, cos_sin_cache)")
    return module
