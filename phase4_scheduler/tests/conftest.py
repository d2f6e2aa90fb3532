"""Phase 4 tests: the fused Triton kernels run in the CPU interpreter when there is no CUDA GPU.

TRITON_INTERPRET must be set before ``triton`` is first imported, and it is read once per process:
setting it here (the first thing pytest loads from this directory) makes every later Triton kernel in
the same pytest process — other phases' too — run interpreted. On a machine without CUDA that is the
only way a Triton kernel can run at all; on a GPU machine nothing is set and the kernels compile.
"""

import os
import sys
import warnings

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:  # too late for this process: the kernel tests will say so when they run
        warnings.warn("triton was imported before phase4's conftest could set TRITON_INTERPRET=1; "
                      "run pytest with TRITON_INTERPRET=1 in the environment", stacklevel=1)
    os.environ["TRITON_INTERPRET"] = "1"
