"""Every shipped .cu compiles for sm_80 and sm_90 and defines every kernel the wrappers ask for.

NVRTC (from torch's CUDA wheel or a toolkit) needs no GPU, so this runs in CPU CI; nvcc is tried
too when it is on PATH (it is on the GPU machines).
"""

import re
import shutil

import pytest

from module0_profiling import cudac
from phase2_rope_cuda.cuda_launch import (
    KERNEL_DIR,
    NAIVE_FILE,
    NVRTC_OPTIONS,
    SHARED_FILE,
    VECTORIZED_FILE,
    kernel_names,
)

SHIPPED = [NAIVE_FILE, SHARED_FILE, VECTORIZED_FILE]
FILES = sorted({p.name for p in KERNEL_DIR.glob("*.cu")} | set(SHIPPED))  # a learner's rope_v4_*.cu is checked too
ARCHS = ["sm_80", "sm_90"]


@pytest.mark.skipif(not cudac.nvrtc_available(), reason="NVRTC not found (install torch's CUDA wheel or a CUDA toolkit)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file_name", FILES)
def test_nvrtc_compiles_every_instantiation(file_name, arch):
    result = cudac.compile_check(KERNEL_DIR / file_name, arch, NVRTC_OPTIONS)
    assert result.ok, result.log
    if file_name not in SHIPPED:
        return
    entries = set(re.findall(r"\.entry\s+(\w+)\(", result.ptx))
    assert entries == set(kernel_names(file_name))
    # 128-bit global accesses are the point of v3; v1 and v2 must not have them (the scalar steps).
    vector_loads = len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.u32", result.ptx))
    if file_name == VECTORIZED_FILE:
        assert vector_loads >= 2 * len(entries)
    else:
        assert vector_loads == 0
    # v2's point is the shared-memory row: one static array, a barrier, and reads of it in every kernel.
    shared_loads = len(re.findall(r"ld\.shared(?:\.\w+)*\.f32", result.ptx))
    if file_name == SHARED_FILE:
        assert ".shared .align 4 .b8" in result.ptx and result.ptx.count("bar.sync") >= len(entries)
        assert shared_loads >= 2 * len(entries)
    else:
        assert shared_loads == 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH (NVRTC checks above still run)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file_name", FILES)
def test_nvcc_compiles(file_name, arch):
    result = cudac.nvcc_check(KERNEL_DIR / file_name, arch)
    assert result.ok, result.log


def test_a_learners_kernel_file_is_built_for_the_kernel_asked():
    from phase2_rope_cuda.cuda_launch import VECTORIZED_FILE, _file_kernels, kernel_names

    assert _file_kernels("rope_v4_yours.cu", "rope_v4_bf16_pos64") == ("rope_v4_bf16_pos64",)
    assert set(_file_kernels(VECTORIZED_FILE, "rope_v3_bf16_hd64_pos64")) == set(kernel_names(VECTORIZED_FILE))
