"""A pytest plugin for every phase's tests (``-p module0_profiling.pytest_triton`` in pyproject's addopts):
Triton kernels run in the CPU interpreter when there is no CUDA GPU.

``TRITON_INTERPRET`` is read once per process, when kernels are decorated, so it must be set before
``triton`` is first imported: a plugin named with ``-p`` is imported before any test module or conftest.
On a machine without CUDA the interpreter is the only way a Triton kernel runs at all; on a GPU machine
nothing is set and the kernels compile. (``make test`` also sets it; this covers a bare ``pytest``.)
"""

import os
import sys
import warnings

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:  # too late for this process: the kernel tests skip and say so
        warnings.warn("triton was imported before module0_profiling.pytest_triton could set TRITON_INTERPRET=1; "
                      "run pytest with TRITON_INTERPRET=1 in the environment", stacklevel=1)
    os.environ["TRITON_INTERPRET"] = "1"
