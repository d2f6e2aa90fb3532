"""A pytest plugin for every phase's tests (``-p module0_profiling.pytest_triton`` in pyproject's addopts):
Triton kernels run in the CPU interpreter when there is no CUDA GPU, and no test module leaves a thread behind.

``TRITON_INTERPRET`` is read once per process, when kernels are decorated, so it must be set before
``triton`` is first imported: a plugin named with ``-p`` is imported before any test module or conftest.
On a machine without CUDA the interpreter is the only way a Triton kernel runs at all; on a GPU machine
nothing is set and the kernels compile. (``make test`` also sets it; this covers a bare ``pytest``.)

While an interpreted kernel runs, the interpreter patches ``triton.language`` process-wide and restores it
after. Two threads running kernels at once interleave those patch scopes, so one thread's restore can leave
the other's patch in place for good, and a later ``triton.compile`` then builds with the interpreter's
semantics. So every test module must end the threads it starts (an engine loop still stepping, a server
still draining): one still alive ``THREAD_GRACE_S`` after the module's last test fails that module.
(Compiling for a real GPU target is done in a child process anyway: see phase 5's ``test_p5_wgmma``.)
"""

import os
import sys
import threading
import time
import warnings

import pytest
import torch

THREAD_GRACE_S = 30.0  # how long a module's threads may take to finish after its last test
# process-wide threads of libraries that run no project code (tqdm's monitor lives as long as any bar did)
LIBRARY_THREADS = ("TMonitor",)

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    if "triton" in sys.modules:  # too late for this process: the kernel tests skip and say so
        warnings.warn("triton was imported before module0_profiling.pytest_triton could set TRITON_INTERPRET=1; "
                      "run pytest with TRITON_INTERPRET=1 in the environment", stacklevel=1)
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module", autouse=True)
def _module_ends_its_threads(request):
    """Fails the module whose threads outlive it (autouse: torn down after the module's own fixtures)."""
    before = set(threading.enumerate())
    yield
    started = [t for t in set(threading.enumerate()) - before if type(t).__name__ not in LIBRARY_THREADS]
    deadline = time.monotonic() + THREAD_GRACE_S
    for t in started:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sorted(t.name for t in started if t.is_alive())
    if alive:
        pytest.fail(f"{request.module.__name__} left threads running {THREAD_GRACE_S:.0f} s after its last test: "
                    f"{', '.join(alive)} (stop or join them in the test or its fixture)", pytrace=False)
