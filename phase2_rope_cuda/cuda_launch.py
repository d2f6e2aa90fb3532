"""Build the phase's ``.cu`` files with NVRTC (through module0's ``cudac``) and pick kernels by dtype.

Each ``.cu`` file instantiates its kernel once per (dtype, position dtype[, head_dim]) under a plain
``extern "C"`` name such as ``rope_v3_bf16_hd64_pos64``; ``kernel_names`` lists them for the shipped
files, so the CPU compile checks and the GPU loader agree on what a file must provide. A learner's file
in ``kernels/`` (``rope_v4_yours.cu``) loads too: ``get_kernel`` then builds it for the one kernel
named. Torch tensors reach the kernels as raw device pointers (``data_ptr()``, no copy) and kernels
run on torch's current stream.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
NVRTC_OPTIONS = (f"-I{KERNEL_DIR}",)  # for the shared rope_dtypes.cuh

DTYPE_TAG = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
POSITION_TAG = {torch.int64: "pos64", torch.int32: "pos32"}
ELEMENT_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}

# The versions, numbered as the lesson builds them (llm.c's dev/cuda style: one file per step).
NAIVE_FILE = "rope_v1_naive.cu"  # a thread per element: the framework
SHARED_FILE = "rope_v2_shared.cu"  # a block per (token, head tile), cos/sin staged in shared memory
VECTORIZED_FILE = "rope_v3_vectorized.cu"  # 128-bit accesses, cos/sin in registers: the solution
SHARED_MAX_HEAD_DIM = 256  # MAX_HEAD_DIM of rope_v2_shared.cu (its shared-memory row)
VECTORIZED_HEAD_DIMS = (64, 128)


class RopeDeviceError(RuntimeError):
    """The CUDA kernels were asked to run where they cannot (CPU tensors, no CuPy)."""


def kernel_names(file_name: str) -> list[str]:
    """Every ``extern "C"`` kernel a file instantiates."""
    names = []
    for pos in POSITION_TAG.values():
        for dt in DTYPE_TAG.values():
            if file_name == NAIVE_FILE:
                names.append(f"rope_v1_{dt}_{pos}")
            elif file_name == SHARED_FILE:
                names.append(f"rope_v2_{dt}_{pos}")
            elif file_name == VECTORIZED_FILE:
                names += [f"rope_v3_{dt}_hd{d}_{pos}" for d in VECTORIZED_HEAD_DIMS]
            else:
                raise ValueError(f"unknown kernel file {file_name}")
    return names


def require_cuda(impl: str, *tensors: torch.Tensor) -> None:
    """Raise one clear line when a CUDA path receives CPU tensors."""
    bad = sorted({str(t.device) for t in tensors if not t.is_cuda})
    if bad:
        raise RopeDeviceError(
            f"phase2_rope_cuda.{impl} runs CUDA C kernels and needs CUDA tensors (got {', '.join(bad)}); "
            "on CPU use the PyTorch reference: phase2_rope_cuda.reference.apply_rope_"
        )


def _file_kernels(file_name: str, name: str) -> tuple[str, ...]:
    """What to build from ``file_name``: a shipped file's every kernel (one compile serves them all), a
    learner's file only ``name`` (its instantiations are the learner's to choose)."""
    return tuple(kernel_names(file_name)) if file_name in (NAIVE_FILE, SHARED_FILE, VECTORIZED_FILE) else (name,)


@lru_cache(maxsize=None)
def _load_file(file_name: str, device_index: int, names: tuple[str, ...]) -> dict:
    from module0_profiling.cudac import load_kernels

    try:
        import cupy
    except ImportError as e:
        raise RopeDeviceError(
            "the CUDA RoPE kernels need CuPy (pip install 'titaninfer[gpu]'); "
            "without it use the PyTorch reference: phase2_rope_cuda.reference.apply_rope_"
        ) from e
    with cupy.cuda.Device(device_index):
        return load_kernels(KERNEL_DIR / file_name, list(names), NVRTC_OPTIONS)


def get_kernel(file_name: str, name: str, device: torch.device):
    """The compiled kernel ``name`` of ``file_name`` for ``device`` (compiled once, then cached)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _load_file(file_name, index, _file_kernels(file_name, name))[name]


def launch_on(device: torch.device, kernel, grid: tuple, block: tuple, args: tuple) -> None:
    """Launch through module0's ``cudac.launch`` on torch's current stream of ``device``."""
    import cupy

    from module0_profiling.cudac import launch

    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), torch.cuda.device(index):
        launch(kernel, grid, block, args)


# ----------------------------------------------------------------------------- the fast launch path
# A RoPE of a full prefill is tens of microseconds of GPU work (NOTES.md); a Python launch path that
# costs as much makes the kernel wait on the CPU. The solution therefore launches the way torch's own generated code does:
# the raw current-stream handle (no Stream object), a CuPy stream wrapper built once per handle, and
# the driver-level ``Function`` called with that stream (no context managers per call).

_STREAMS: dict[tuple[int, int], object] = {}


def current_raw_stream(device_index: int) -> int:
    """torch's current stream on ``device_index`` as a raw ``cudaStream_t`` (what Inductor uses)."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get is not None:
        return get(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def cupy_stream(device_index: int):
    """A CuPy view of torch's current stream, created once per stream handle."""
    handle = current_raw_stream(device_index)
    stream = _STREAMS.get((device_index, handle))
    if stream is None:
        import cupy

        try:
            stream = cupy.cuda.ExternalStream(handle, device_index)
        except TypeError:  # older CuPy: no device_id argument
            stream = cupy.cuda.ExternalStream(handle)
        _STREAMS[(device_index, handle)] = stream
    return stream


def driver_function(file_name: str, name: str, device_index: int):
    """The driver-level ``cupy.cuda.Function`` of a kernel (takes a ``stream`` argument)."""
    import cupy

    with cupy.cuda.Device(device_index):
        return _load_file(file_name, device_index, _file_kernels(file_name, name))[name].kernel


def kernel_attributes(kernel) -> dict:
    """Registers per thread, local memory and the like, as CuPy reports them (for the report)."""
    attrs = getattr(kernel, "attributes", None)
    if isinstance(attrs, dict):
        return dict(attrs)
    return {"num_regs": getattr(kernel, "num_regs", None)}


def is_16b_aligned(t: torch.Tensor, element_strides: tuple[int, ...]) -> bool:
    """Base pointer and the given strides (in elements) all multiples of 16 bytes."""
    elem = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * elem) % 16 == 0 for s in element_strides)
