"""Build CUDA C the way the phases do: NVRTC, for the GPU in hand, without nvcc.

- ``load_kernels(path, names)`` compiles a ``.cu`` file with CuPy's ``RawModule`` (NVRTC, for the
  current device's architecture, cached on disk by CuPy) and returns the kernel functions. GPU only.
- ``compile_check(path, arch)`` compiles the same file to PTX through NVRTC called directly (ctypes),
  which needs no GPU: CI uses it to prove every kernel compiles for sm_80 and sm_90. NVRTC comes with
  PyTorch's CUDA wheels (``nvidia/cu13/lib/libnvrtc.so.13``) or a CUDA toolkit.
- ``nvcc_check(path, arch)`` runs nvcc when it is on PATH (it is on the GPU machines).
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass
class CompileResult:
    ok: bool
    log: str
    ptx: str = ""


@lru_cache(maxsize=1)
def _nvrtc_paths() -> tuple[str | None, str | None]:
    """(libnvrtc path, CUDA include dir) from the nvidia wheels or a toolkit; (None, None) if absent."""
    roots = [Path(p) / "nvidia" for p in sys.path if p and Path(p, "nvidia").is_dir()]
    candidates = []
    for root in roots:
        candidates += sorted(glob.glob(str(root / "*" / "lib" / "libnvrtc.so*")))
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates += sorted(glob.glob(f"{home}/lib64/libnvrtc.so*"))
    for lib in candidates:
        if "builtins" in lib:
            continue
        include = Path(lib).parent.parent / "include"
        return lib, str(include) if include.is_dir() else None
    return None, None


def nvrtc_available() -> bool:
    return _nvrtc_paths()[0] is not None


def compile_check(path: str | Path, arch: str = "sm_90", options: tuple[str, ...] = (),
                  cubin: bool = False) -> CompileResult:
    """Compile ``path`` to PTX for ``arch`` with NVRTC; no GPU needed. ``cubin``: for the real ``arch`` instead
    (NVRTC runs ptxas, so inline PTX is checked too; ``log`` then holds ptxas's ``-v`` report, ``ptx`` is empty)."""
    lib_path, include = _nvrtc_paths()
    if lib_path is None:
        raise RuntimeError("NVRTC not found: install torch's CUDA wheel or a CUDA toolkit (CUDA_HOME)")
    nvrtc = ctypes.CDLL(lib_path)
    source = Path(path).read_bytes()
    prog = ctypes.c_void_p()
    _check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, str(path).encode(), 0, None, None))
    arch_flag = arch if cubin or not arch.startswith("sm_") else arch.replace("sm_", "compute_")
    opts = [f"--gpu-architecture={arch_flag}", "--std=c++17", *(["--ptxas-options=-v"] if cubin else []), *options]
    if include:
        opts.append(f"--include-path={include}")
    opt_array = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), opt_array)
    log_size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(log_size))
    log = ctypes.create_string_buffer(log_size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if status == 0 and cubin:  # a failed assembly returns an error status; an empty cubin counts as one too
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        status = 0 if size.value > 0 else -1
    elif status == 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return CompileResult(ok=status == 0, log=log.value.decode(errors="replace"), ptx=ptx)


def _check(nvrtc: ctypes.CDLL, status: int) -> None:
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {status}: {nvrtc.nvrtcGetErrorString(status).decode()}")


def nvcc_check(path: str | Path, arch: str = "sm_90") -> CompileResult:
    """Compile ``path`` with nvcc to a cubin for ``arch`` (needs nvcc on PATH)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc is not on PATH")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / (Path(path).stem + f".{arch}.cubin")
    proc = subprocess.run(
        [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
    )
    return CompileResult(ok=proc.returncode == 0, log=proc.stdout + proc.stderr)


def load_kernels(path: str | Path, names: list[str], options: tuple[str, ...] = ()) -> dict:
    """Compile ``path`` with CuPy's RawModule for the current device and return ``{name: kernel}``.

    CuPy caches compiled modules on disk, so only the first call pays for NVRTC. Kernels take torch
    CUDA tensors through ``tensor.data_ptr()`` and launch on torch's current stream via
    ``launch(kernel, grid, block, args, shared_mem)``.
    """
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "CUDA C kernels need CuPy on a CUDA machine (pip install 'titaninfer[gpu]'); "
            "on CPU use the PyTorch reference implementation"
        ) from e
    source = Path(path).read_text()
    module = cupy.RawModule(code=source, options=("--std=c++17", *options), name_expressions=None)
    return {name: module.get_function(name) for name in names}


def launch(kernel, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
    """Launch a CuPy kernel on PyTorch's current CUDA stream (so it orders with torch's work)."""
    import cupy
    import torch

    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
    with stream:
        kernel(grid, block, args, shared_mem=shared_mem)
