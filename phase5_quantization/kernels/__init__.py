"""Phase 5's Triton W4A16 kernels (``w4a16``: the tensor-core GEMM and the original ``[K/8, N]`` GEMV;
``w4a16_rows``: the row-layout decode GEMV, phase 0's bandwidth-bound design over INT4; ``w4a16_rows_mma``: the
same streaming with the multiply on the tensor cores, for 2–64 rows; ``w4a16_wgmma``: its Hopper form in Gluon,
codes dequantized straight into ``wgmma``'s register operand — the default there for plain and residual products),
their launcher
(``launch.w4a16_linear``, fixed row-GEMV configurations from ``launch.row_gemv_config``) and the kernel
layouts (``layout.KernelWeight``, repacked from storage by ``layout.to_kernel_layout``; rows by default,
``TITANINFER_W4A16_LAYOUT=col`` for the original one).

On a CPU they run under ``TRITON_INTERPRET=1`` (the tests, at small shapes); ``QuantLinear`` uses them on CUDA
tensors and falls back to dequantize + ``F.linear`` elsewhere.
"""

from phase5_quantization.kernels.launch import kernel_for, mma_config, row_gemv_config, w4a16_linear
from phase5_quantization.kernels.layout import (
           KernelWeight,
           default_layout,
           from_kernel_layout,
           to_kernel_layout,
)

__all__ = ["w4a16_linear", "row_gemv_config", "mma_config", "kernel_for", "KernelWeight", "default_layout", "to_kernel_layout",
           "from_kernel_layout"]
