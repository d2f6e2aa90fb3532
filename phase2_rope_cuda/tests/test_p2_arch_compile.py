"""Every CUDA C kernel of the project (phase 2's RoPE files, phase 0's CUDA basics) builds for an A100 (sm_80)
and an RTX 4090 (sm_89), down to the machine code, with no GPU here.

``cudac.compile_check`` stops at PTX for the virtual arch (``compute_80``): NVRTC's front end checks the C++,
but inline PTX (``rope_dtypes.cuh``'s ``cvt.rn.bf16.f32``) is only checked by ptxas. So each file is also
compiled by NVRTC for the real arch (``sm_80``, ``sm_89``: NVRTC runs ptxas and returns a cubin), every
kernel the wrappers launch must be in it, and its static shared memory within the arch's per-block limit. The
control: an sm_90-only instruction (PDL's ``griddepcontrol.wait``) passes the PTX stage and fails the cubin
one. Limit: registers per block and occupancy depend on the launch and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from module0_profiling import cudac
from module0_profiling.portable import MAX_SHARED
from phase0_prototype import cuda_basics
from phase2_rope_cuda.cuda_launch import (
    KERNEL_DIR,
    NAIVE_FILE,
    NVRTC_OPTIONS,
    SHARED_FILE,
    VECTORIZED_FILE,
    kernel_names,
)

ARCHS = ("sm_80", "sm_89")
BASICS_DIR = Path(cuda_basics.__file__).parent
# (path, NVRTC options, the kernels its wrappers look up)
FILES = [(KERNEL_DIR / f, NVRTC_OPTIONS, kernel_names(f)) for f in (NAIVE_FILE, SHARED_FILE, VECTORIZED_FILE)]
FILES += [(BASICS_DIR / f, (), names) for f, names in sorted(cuda_basics.KERNELS.items())]
PDL_SOURCE = 'extern "C" __global__ void wait_then_store(float* x) { asm volatile("griddepcontrol.wait;"); *x = 1.f; }\n'

pytestmark = pytest.mark.skipif(not cudac.nvrtc_available(),
                                reason="NVRTC not found (install torch's CUDA wheel or a CUDA toolkit)")


def nvrtc_cubin(path: Path, arch: str, options: tuple[str, ...] = ()) -> tuple[bool, str]:
    """``(ok, ptxas log)`` of NVRTC building ``path`` for the real ``arch`` (``cudac.compile_check(cubin=True)``)."""
    r = cudac.compile_check(path, arch, options, cubin=True)
    return r.ok, r.log


def kernel_shared(log: str) -> dict[str, int]:
    """``{kernel: static shared memory bytes}`` from ptxas's ``-v`` report (0 when it names none)."""
    out, current = {}, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = m.group(1)
            out[current] = 0
        elif current and (m := re.search(r"(\d+) bytes smem", line)):
            out[current] = int(m.group(1))
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path, options, names", FILES, ids=[p.name for p, _, _ in FILES])
def test_builds_for_arch(path, options, names, arch):
    ptx = cudac.compile_check(path, arch, options)
    assert ptx.ok, ptx.log
    assert f".target {arch}" in ptx.ptx
    ok, log = nvrtc_cubin(path, arch, options)
    assert ok, f"{path.name} does not assemble for {arch}:\n{log[-3000:]}"
    shared = kernel_shared(log)
    assert set(names) <= set(shared), f"missing from the {arch} cubin: {sorted(set(names) - set(shared))}"
    limit = MAX_SHARED[int(arch[3:])]
    assert all(v <= limit for v in shared.values()), f"shared memory over {limit} bytes on {arch}: {shared}"


@pytest.mark.parametrize("arch", ARCHS)
def test_sm90_instruction_fails_only_at_the_cubin_stage(tmp_path, arch):
    path = tmp_path / "pdl.cu"
    path.write_text(PDL_SOURCE)
    assert cudac.compile_check(path, arch).ok  # PTX for compute_8x: inline PTX is not checked yet
    ok, log = nvrtc_cubin(path, arch)
    assert not ok and "requires .target sm_90" in log, log
    assert nvrtc_cubin(path, "sm_90")[0]  # and it is valid where it belongs
