"""Triton kernels of phase 3, one idea per file.

- ``kv_cache_write``: scatter new K/V rows into their paged slots.
- ``decode_naive``: framework decode — one program per (sequence, q head), the score row in memory.
- ``decode_flash``: solution decode — online softmax, one program per (sequence, kv head), split-KV.
- ``prefill_flash``: FlashAttention-2 causal prefill over a ragged batch, writing K/V into the cache.

Triton decides at import time whether ``@triton.jit`` compiles for the GPU or interprets on the CPU
(``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported). On a machine without CUDA
the compiled path cannot run at all, so importing this package there turns the interpreter on —
the only way these kernels can run on CPU tensors. That setting is process-wide.
"""

from __future__ import annotations

import os
import sys

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
