"""Phase 5 tests: the Triton W4A16 kernels run in the CPU interpreter when there is no CUDA GPU.

TRITON_INTERPRET must be set before ``triton`` is first imported (it is read once per process, when kernels
are decorated): setting it here makes every later Triton kernel in the same pytest process run interpreted.
On a GPU machine nothing is set and the kernels compile.
"""

import os
import sys
import warnings

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:  # too late for this process: the kernel tests skip and say so
        warnings.warn("triton was imported before phase5's conftest could set TRITON_INTERPRET=1; "
                      "run pytest with TRITON_INTERPRET=1 in the environment", stacklevel=1)
    os.environ["TRITON_INTERPRET"] = "1"
