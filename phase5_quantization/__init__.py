"""Phase 5: INT4 weight-only quantization (issue 9): RTN, AWQ, GPTQ, W4A16 kernels, AutoAWQ checkpoints.

Public contract (``framework``, ``solution`` and ``gptq`` share it)::

    def quantize(model: LinearLlama, calibration_ids: list[int] | None, *, group_size: int = 128,
                 quantize_lm_head: bool = False, ...) -> LinearLlama
        # framework: RTN (no calibration); solution: AWQ (block-output scale search + clip search, scales
        # folded into norms / previous linears); gptq: GPTQ (Hessian error feedback, optional act_order)

- ``packing``: group-wise asymmetric INT4 codes, the storage layout (``QuantizedWeight``: qweight [out, in/8]
  int32, fp16 scales and uint8 zero-points per (row, group of 128)), AutoAWQ's GEMM tensors
  (``to_awq_gemm`` / ``from_awq_gemm``); ``awq_checkpoint``: whole AutoAWQ checkpoint directories.
- ``kernels``: the W4A16 kernels (row GEMV for decode, tensor-core kernels for 2–64 rows and prefill) behind
  ``w4a16_linear`` (fused RMSNorm / residual / SwiGLU), over a kernel layout repacked at load time.
- ``linear``: ``QuantLinear`` (kernel on CUDA, dequantize + ``F.linear`` elsewhere) and ``DenseLinear``;
  ``model``: ``LinearLlama`` (phase 0's fused layout over those; save/load of quantized safetensors).
- ``integration``: ``quantize_for_generate`` and ``build_engine`` (``--quant rtn|awq|gptq|DIR``): phase 0's
  solution engine with W4A16 projections (``Int4Engine``).
- ``bench``/``checks``: P5.1 (accuracy: CPU or GPU), P5.2/P5.3 (``bench_speed``: GPU); ``peers``: tinygemm,
  AutoAWQ. Measurements and design history: ``NOTES.md``; the H100 report: ``reports/phase5_quantization/``.
"""

from __future__ import annotations

from types import ModuleType

from phase5_quantization.model import DenseLinear, LinearLlama, QuantLinear
from phase5_quantization.packing import GROUP_SIZE, QuantizedWeight, from_awq_gemm, to_awq_gemm

__all__ = ["DenseLinear", "LinearLlama", "QuantLinear", "GROUP_SIZE", "QuantizedWeight", "from_awq_gemm",
           "to_awq_gemm", "load_impl", "quantize_for_generate", "build_engine"]


def quantize_for_generate(model, method: str, **options):
    """``integration.quantize_for_generate`` (imported on use: it pulls in phase 0's engine)."""
    from phase5_quantization.integration import quantize_for_generate as quantize

    return quantize(model, method, **options)


def build_engine(model, method: str, **options):
    """``integration.build_engine``: phase 0's engine contract with ``method``'s INT4 weights."""
    from phase5_quantization.integration import build_engine as build

    return build(model, method, **options)


def load_impl(name: str) -> ModuleType:
    """``framework`` (RTN), ``solution`` (AWQ), ``gptq`` or a module path exposing ``quantize``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase5_quantization", name)
