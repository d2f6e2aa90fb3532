"""CUDA basics, three first kernels: vector add, coalesced vs strided copy, naive vs shared-memory-tiled matmul.

The kernels are plain ``.cu`` files beside this module, compiled by NVRTC through CuPy
(``module0_profiling.cudac.load_kernels``) and launched on PyTorch's stream on torch tensors; every result
is checked against torch. GPU only: on a CPU machine ``available()`` says why not, and the tests
compile-check the ``.cu`` files for sm_80/sm_90 through NVRTC without a GPU.

``occupancy_table()`` reads each kernel's registers and static shared memory and asks the CUDA occupancy
API how many blocks fit on one SM: theoretical occupancy = resident warps / the SM's maximum.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MATMULS = ("naive", "tiled_8", "tiled_16", "tiled_32", "tiled_4x4", "tiled_8x8")
# Register-blocked versions cover whole tiles only: (M multiple, N multiple, K multiple).
DIVISIBILITY = {"tiled_4x4": (64, 64, 16), "tiled_8x8": (128, 128, 8)}
KERNELS = {
    "vector_add.cu": ["vector_add"],
    "memory_access.cu": ["copy_coalesced", "copy_strided"],
    "matmul.cu": [f"matmul_{v}" for v in MATMULS],
}


def available() -> str | None:
    """None when the kernels can run here, else the reason they cannot."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "needs CuPy (pip install 'titaninfer[gpu]')"
    return None


@lru_cache(maxsize=None)
def kernels() -> dict:
    from module0_profiling.cudac import load_kernels

    reason = available()
    if reason:
        raise RuntimeError(f"CUDA basics {reason}")
    found = {}
    for file, names in KERNELS.items():
        found.update(load_kernels(HERE / file, names))
    return found


def _ptr(t: torch.Tensor) -> np.uint64:
    return np.uint64(t.data_ptr())


def _launch(name: str, grid: tuple, block: tuple, args: tuple) -> None:
    from module0_profiling.cudac import launch

    launch(kernels()[name], grid, block, args)


def vector_add(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty_like(a) if out is None else out
    n = a.numel()
    blocks = min((n + 255) // 256, 65535 * 8)
    _launch("vector_add", (blocks,), (256,), (_ptr(a), _ptr(b), _ptr(out), np.int64(n)))
    return out


def copy(x: torch.Tensor, out: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Copy ``x`` into ``out`` (fp32, contiguous); ``stride > 1`` uses the strided mapping."""
    n = x.numel()
    grid = ((n + 255) // 256,)
    if stride == 1:
        _launch("copy_coalesced", grid, (256,), (_ptr(x), _ptr(out), np.int64(n)))
    else:
        if n % stride:
            raise ValueError(f"n={n} must be a multiple of stride={stride}")
        _launch("copy_strided", grid, (256,), (_ptr(x), _ptr(out), np.int64(n), np.int32(stride)))
    return out


def matmul_launch_shape(version: str, M: int, N: int) -> tuple[tuple, tuple]:
    if version == "naive":
        return ((N + 15) // 16, (M + 15) // 16), (16, 16)
    if version in DIVISIBILITY:
        block_m, block_n, _ = DIVISIBILITY[version]
        return (N // block_n, M // block_m), (16, 16)
    tile = int(version.split("_")[1])
    return ((N + tile - 1) // tile, (M + tile - 1) // tile), (tile, tile)


def matmul(a: torch.Tensor, b: torch.Tensor, version: str, out: torch.Tensor | None = None) -> torch.Tensor:
    M, K = a.shape
    N = b.shape[1]
    if version in DIVISIBILITY:
        dm, dn, dk = DIVISIBILITY[version]
        if M % dm or N % dn or K % dk:
            raise ValueError(f"matmul_{version} needs M a multiple of {dm}, N of {dn}, K of {dk}")
    out = torch.empty(M, N, device=a.device, dtype=torch.float32) if out is None else out
    grid, block = matmul_launch_shape(version, M, N)
    _launch(f"matmul_{version}", grid, block,
            (_ptr(a), _ptr(b), _ptr(out), np.int32(M), np.int32(N), np.int32(K)))
    return out


def _attr(kernel, name: str):
    value = getattr(kernel, name, None)
    if value is None and hasattr(kernel, "attributes"):
        value = kernel.attributes.get(name)
    return value


def occupancy_table() -> list[dict]:
    """Per kernel and block size: registers, static shared memory, blocks per SM and theoretical occupancy."""
    from cupy.cuda import driver

    props = torch.cuda.get_device_properties(0)
    max_warps = props.max_threads_per_multi_processor // 32
    rows = []
    launches = [("vector_add", 256), ("copy_coalesced", 256), ("copy_strided", 256)]
    launches += [(f"matmul_{v}", int(np.prod(matmul_launch_shape(v, 4096, 4096)[1]))) for v in MATMULS]
    for name, threads in launches:
        k = kernels()[name]
        ptr = k.kernel.ptr if hasattr(k, "kernel") else k.ptr
        blocks = driver.occupancyMaxActiveBlocksPerMultiprocessor(ptr, threads, 0)
        rows.append({
            "kernel": name,
            "threads/block": threads,
            "registers/thread": _attr(k, "num_regs"),
            "static smem/block (B)": _attr(k, "shared_size_bytes"),
            "blocks/SM": blocks,
            "theoretical occupancy": blocks * threads / 32 / max_warps,
        })
    return rows
