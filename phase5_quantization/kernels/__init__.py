"""Phase 5's W4A16 kernels (Triton, and Gluon on Hopper) and their launcher.

- ``w4a16``: the shared arithmetic (codes dequantized by the mantissa trick, split-K, fused epilogues), the
  tensor-core GEMM (prefill) and the ``[K/8, N]`` GEMV of the ``col`` layout;
- ``w4a16_rows``: the decode GEMV over the row layout, phase 0's bandwidth-bound design over INT4;
- ``w4a16_rows_mma``: the same streaming with the multiply on the tensor cores, for 2–64 rows;
- ``w4a16_wgmma``: its Hopper form in Gluon, codes dequantized straight into ``wgmma``'s register operand;
- ``launch.w4a16_linear``: picks the kernel; ``configs``: their fixed and autotuned configurations;
- ``layout``: ``KernelWeight``, repacked from storage by ``to_kernel_layout``.

On a CPU the Triton kernels run under ``TRITON_INTERPRET=1`` (the tests, at small shapes); ``QuantLinear``
uses them on CUDA tensors and falls back to dequantize + ``F.linear`` elsewhere.
"""

from phase5_quantization.kernels.configs import mma_config, row_gemv_config
from phase5_quantization.kernels.launch import kernel_for, w4a16_linear
from phase5_quantization.kernels.layout import KernelWeight, from_kernel_layout, to_kernel_layout

__all__ = ["w4a16_linear", "row_gemv_config", "mma_config", "kernel_for", "KernelWeight", "to_kernel_layout",
           "from_kernel_layout"]
