"""Phase 5 — INT4 weight-only quantization (issue 9).

Public contract (``framework``, ``solution`` and ``gptq`` share it)::

    def quantize(model: LinearLlama, calibration_ids: list[int] | None, *, group_size: int = 128,
                 quantize_lm_head: bool = False, ...) -> LinearLlama
        # framework: RTN (no calibration); solution: AWQ (scale + clip search, scales folded);
        # gptq: GPTQ (Hessian error feedback, optional act_order)

- ``packing``: group-wise asymmetric INT4 codes, our packed layout (``QuantizedWeight``: qweight
  [out, in/8] int32, fp16 scales and uint8 zero-points per (row, group of 128)), and AutoAWQ's GEMM
  format (``to_awq_gemm`` / ``from_awq_gemm``: qweight [in, out/8] with order [0,2,4,6,1,3,5,7]).
- ``model``: ``QuantLinear``/``DenseLinear`` and ``LinearLlama`` (phase 0's fused layout; ``from_loaded``,
  ``forward_logits``, ``greedy``, ``save``/``load`` of quantized safetensors), ``calibration_inputs``.
- ``bench``/``checks``: P5.1 (accuracy, measured on CPU) and P5.2/P5.3 (GPU kernel: not built yet, SKIP).

Not built yet: the Triton W4A16 kernel (``kernels/``), ``--quant`` on phase 0's generate CLI, the notebook
and PROFILING_TEMPLATE.md.
"""

from __future__ import annotations

from types import ModuleType

from phase5_quantization.model import DenseLinear, LinearLlama, QuantLinear
from phase5_quantization.packing import GROUP_SIZE, QuantizedWeight, from_awq_gemm, to_awq_gemm

__all__ = ["DenseLinear", "LinearLlama", "QuantLinear", "GROUP_SIZE", "QuantizedWeight", "from_awq_gemm",
           "to_awq_gemm", "load_impl"]


def load_impl(name: str) -> ModuleType:
    """``framework`` (RTN), ``solution`` (AWQ), ``gptq`` or a module path exposing ``quantize``."""
    from module0_profiling.impl import load_impl as _load

    return _load("phase5_quantization", name)
