"""CUDA basics: every .cu compiles for sm_80 and sm_90 through NVRTC (no GPU needed); on a GPU, results vs
torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from module0_profiling import cudac
from phase0_prototype import cuda_basics as cb

CU_FILES = sorted(Path(cb.__file__).parent.glob("*.cu"))
gpu = [pytest.mark.gpu,
       pytest.mark.skipif(cb.available() is not None, reason=f"CUDA basics {cb.available()}")]


def test_every_kernel_file_is_listed():
    assert {p.name for p in CU_FILES} == set(cb.KERNELS)


@pytest.mark.skipif(not cudac.nvrtc_available(), reason="NVRTC not found (torch CUDA wheel or CUDA toolkit)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_compiles_with_nvrtc(path, arch):
    result = cudac.compile_check(path, arch)
    assert result.ok, result.log
    for name in cb.KERNELS[path.name]:
        assert f".entry {name}(" in result.ptx  # extern "C": the name CuPy will look up


@pytest.mark.parametrize("n", [1, 1000, 2**20 + 3])
def test_vector_add(n):
    if cb.available():
        pytest.skip(f"CUDA basics {cb.available()}")
    a, b = torch.randn(2, n, device="cuda")
    torch.testing.assert_close(cb.vector_add(a, b), a + b)


@pytest.mark.parametrize("stride", [1, 2, 32])
def test_copies(stride):
    if cb.available():
        pytest.skip(f"CUDA basics {cb.available()}")
    x = torch.randn(32 * 1024 + 0, device="cuda")
    assert torch.equal(cb.copy(x, torch.zeros_like(x), stride), x)


@pytest.mark.parametrize("version", cb.MATMULS)
@pytest.mark.parametrize("shape", [(256, 384, 80), (128, 192, 64), (100, 77, 45)])
def test_matmul_vs_torch(version, shape):
    if cb.available():
        pytest.skip(f"CUDA basics {cb.available()}")
    M, N, K = shape
    dm, dn, dk = cb.DIVISIBILITY.get(version, (1, 1, 1))
    if M % dm or N % dn or K % dk:
        with pytest.raises(ValueError):
            cb.matmul(torch.randn(M, K, device="cuda"), torch.randn(K, N, device="cuda"), version)
        return
    a = torch.randn(M, K, device="cuda", dtype=torch.float64)
    b = torch.randn(K, N, device="cuda", dtype=torch.float64)
    got = cb.matmul(a.float().contiguous(), b.float().contiguous(), version)
    torch.testing.assert_close(got.double(), a.float().double() @ b.float().double(), rtol=1e-4, atol=1e-4)


def test_occupancy_table():
    if cb.available():
        pytest.skip(f"CUDA basics {cb.available()}")
    rows = cb.occupancy_table()
    assert {r["kernel"] for r in rows} >= {"matmul_tiled_8", "matmul_tiled_32"}
    for r in rows:
        assert 0 < r["theoretical occupancy"] <= 1 and r["registers/thread"] > 0
