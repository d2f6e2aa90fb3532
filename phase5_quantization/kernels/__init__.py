"""Phase 5's Triton W4A16 kernels (``w4a16``), their launcher (``launch.w4a16_linear``) and the kernel layout
(``layout.KernelWeight``, repacked from storage by ``layout.to_kernel_layout``).

On a CPU they run under ``TRITON_INTERPRET=1`` (the tests, at small shapes); ``QuantLinear`` uses them on CUDA
tensors and falls back to dequantize + ``F.linear`` elsewhere.
"""

from phase5_quantization.kernels.launch import w4a16_linear
from phase5_quantization.kernels.layout import KernelWeight, from_kernel_layout, to_kernel_layout

__all__ = ["w4a16_linear", "KernelWeight", "to_kernel_layout", "from_kernel_layout"]
